"""Fused CPU RMSNorm, RoPE, SwiGLU, MoE experts, causal attention, cross-entropy and the MoE router
losses against the PyTorch expressions they replace, and the routing ops' C++ autograd against their torch.library ops: forward+backward at a preset's shapes, both
through autograd as the model calls them. Prints a table; run:

    python bench/bench_fused.py [--preset debug] [--batch 8] [--iters 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lumina.model.layers import rope_tables
from lumina.ops import backend, fused, routing, routing_reference
from lumina.presets import get_preset


def time_calls(fn, grad: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn().backward(grad)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=50, help="forward+backward calls per timing")
    args = parser.parse_args()
    if backend.load_extension() is None:
        raise SystemExit(f"bench_fused: lumina._C is not built ({backend.extension_error()}); "
                         "pip install --no-build-isolation -e . builds it")

    cfg = get_preset(args.preset, "dense")
    B, T, D, H, hd = args.batch, cfg.seq_length, cfg.hidden_size, cfg.num_heads, cfg.head_dim
    torch.manual_seed(0)
    x = torch.randn(B, T, D, requires_grad=True)
    w = torch.ones(D, requires_grad=True)
    q = torch.randn(B, T, H, hd, requires_grad=True)
    cos, sin = (t[None] for t in rope_tables(T, hd, cfg.rope_theta))
    F = cfg.ffn_hidden_size
    gate, up = torch.randn(B, T, F, requires_grad=True), torch.randn(B, T, F, requires_grad=True)
    # MoE at the moe preset's router: B*T tokens, top-k of E experts, capacity factor 1.25.
    moe = get_preset(args.preset, "moe").moe
    S, E, k = B * T, moe.num_experts, moe.top_k
    capacity = routing.expert_capacity(S, E, k, moe.capacity_factor_train)
    logits = torch.randn(S, E, requires_grad=True)
    tokens = torch.randn(S, D, requires_grad=True)
    # Attention as the model calls it: q and v transposed views, k contiguous (RoPE's output).
    kv = cfg.num_kv_heads
    aq = torch.randn(B, T, H, hd).transpose(1, 2).requires_grad_()
    ak = torch.randn(B, kv, T, hd, requires_grad=True)
    av = torch.randn(B, T, kv, hd).transpose(1, 2).requires_grad_()
    # The loss over the LM head's logits: one row per predicted token of a micro-batch.
    lm = torch.randn(B * T, cfg.vocab_size, requires_grad=True)
    labels = torch.randint(0, cfg.vocab_size, (B * T,))
    counts = [S * k // E] * E
    # The router losses at the moe preset's router, on one fixed route.
    route = routing.topk_route(logits, k, capacity)
    probs, chosen = route.probs.detach().requires_grad_(), route.expert_index

    def router_losses():
        balance, z = fused.router_losses(logits, probs, chosen)
        return moe.aux_loss_coef * balance + moe.z_loss_coef * z

    def router_losses_expression():
        return (moe.aux_loss_coef * routing_reference.switch_balance_loss(probs, chosen)
                + moe.z_loss_coef * routing_reference.router_z_loss(logits))
    xs = torch.randn(sum(counts), D, requires_grad=True)
    ws = [(torch.randn(*shape) * 0.1).requires_grad_() for shape in ((E, D, F), (E, D, F), (E, F, D))]

    def route_front():
        r = routing.topk_route(logits, k, capacity)
        plan = routing.dispatch_plan(r.expert_index, r.slot, E)
        return routing.unpermute(routing.permute(tokens, plan), plan, r.weights, S)

    def route_library():
        expert_index, weights, slot, _ = torch.ops.lumina.topk_route(logits, k, capacity)
        token_index, assign_index, _ = torch.ops.lumina.dispatch_plan(expert_index, slot, E)
        permuted = torch.ops.lumina.permute(tokens, token_index)
        return torch.ops.lumina.unpermute(permuted, token_index, assign_index, weights, S)

    cases = {
        f"RMSNorm ({B}, {T}, {D})": (torch.randn(B, T, D),
                                     lambda: fused.rms_norm(x, w, cfg.norm_eps),
                                     lambda: fused.rms_norm_reference(x, w, cfg.norm_eps)),
        f"RoPE ({B}, {H}, {T}, {hd})": (torch.randn(B, H, T, hd),
                                        lambda: fused.apply_rope(q.transpose(1, 2), cos, sin),
                                        lambda: fused.rope_reference(q.transpose(1, 2), cos, sin)),
        f"SwiGLU ({B}, {T}, {F})": (torch.randn(B, T, F),
                                    lambda: fused.swiglu(gate, up),
                                    lambda: fused.swiglu_reference(gate, up)),
        f"MoE experts ({E} x {D}-{F}-{D})": (torch.randn(sum(counts), D),
                                             lambda: fused.expert_mlp(xs, *ws, counts),
                                             lambda: fused.expert_mlp_reference(xs, *ws, counts)),
        f"attention ({B}, {H}/{kv}, {T}, {hd})": (torch.randn(B, H, T, hd),
                                                  lambda: fused.causal_attention(aq, ak, av),
                                                  lambda: fused.causal_attention_reference(aq, ak, av)),
        f"cross-entropy ({B * T}, {cfg.vocab_size})": (torch.tensor(1.0),
                                                     lambda: fused.cross_entropy(lm, labels),
                                                     lambda: fused.cross_entropy_reference(lm, labels)),
        f"MoE router losses ({S} x {E})": (torch.tensor(1.0), router_losses, router_losses_expression),
        # Same kernels both ways: what the C++ autograd saves is the torch.library glue.
        f"MoE routing ({S} x {E}, k={k})": (torch.randn(S, D), route_front, route_library),
    }
    print(f"threads={torch.get_num_threads()} preset={args.preset} ({args.iters} interleaved rounds of "
          f"{args.calls} forward+backward calls; median per-round speedup)")
    print("(MoE routing: route, plan, permute and unpermute; its 'expression' column is the same kernels "
          "through their torch.library ops)")
    print(f"{'op':<28} {'expression':>12} {'kernel':>10} {'speedup':>8}")
    for name, (grad, kernel, expression) in cases.items():
        for fn in (kernel, expression):  # warm-up
            time_calls(fn, grad, 5)
        # Interleaved, so a slow spell of the machine hits both; the median of per-round ratios.
        ours, theirs = [], []
        for _ in range(args.iters):
            theirs.append(time_calls(expression, grad, args.calls))
            ours.append(time_calls(kernel, grad, args.calls))
        speedup = statistics.median(t / o for t, o in zip(theirs, ours))
        print(f"{name:<28} {statistics.median(theirs) * 1e6:>9.0f} us {statistics.median(ours) * 1e6:>7.0f} us "
              f"{speedup:>7.2f}x")


if __name__ == "__main__":
    main()
