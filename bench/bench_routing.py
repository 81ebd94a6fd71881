"""Routing kernels against the PyTorch reference and DeepSpeed's top2gating, measured in one run.

Each op runs through the public front (`lumina.ops.routing`, custom-op dispatch included) and
through `lumina.ops.routing_reference` on the same inputs; gating (top-k route + dispatch plan)
also runs through `deepspeed.moe.sharded_moe.top2gating` with the same capacity (k=2 only). On
CUDA, permute and unpermute also report achieved bandwidth against the device's peak.

    python bench/bench_routing.py                        # CPU, S=8192 E=8 k=2
    python bench/bench_routing.py --device cuda --tokens 65536 --hidden 4096
    python bench/bench_routing.py --threads 1 --json out.json

Times are the best of --repeats runs after warm-up (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable

import torch

from lumina.ops import backend, routing
from lumina.ops import routing_reference as ref
from lumina.util.provenance import write_json

# HBM bandwidth in GB/s by device name; --peak-gbps overrides.
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
             "A100 80GB": 1935.0, "A100": 1555.0}


def timer(device: torch.device, repeats: int, warmup: int = 3) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)
    return measure


def deepspeed_top2(logits: torch.Tensor, capacity_factor: float) -> Callable[[], object] | None:
    try:
        from deepspeed.moe.sharded_moe import top2gating
    except Exception as exc:  # noqa: BLE001 - report and carry on without the comparison
        print(f"deepspeed top2gating unavailable: {exc}")
        return None
    # No Gumbel sampling for the 2nd expert, so it does the same work as a plain top-2; top2gating
    # adds noise to its argument in place when sampling, hence the clone in any case.
    return lambda: top2gating(logits.clone(), capacity_factor, min_capacity=4, drop_tokens=True,
                              top2_2nd_expert_sampling=False)


def peak_gbps(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=8192, help="S, tokens per routing call")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024, help="D, for permute and unpermute")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="dtype of the permuted tokens (router logits are fp32, as in the MoE layer)")
    parser.add_argument("--mod-batch", type=int, default=4)
    parser.add_argument("--mod-seq", type=int, default=4096)
    parser.add_argument("--mod-capacity", type=float, default=0.125)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-gbps", type=float, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    S, E, k, D = args.tokens, args.experts, args.top_k, args.hidden
    measure = timer(device, args.repeats)
    torch.manual_seed(0)

    logits = torch.randn(S, E, device=device)
    capacity = ref.expert_capacity(S, E, k, args.capacity_factor)
    route = ref.topk_route(logits, k, capacity)
    plan = ref.dispatch_plan(route.expert_index, route.slot, E)
    x = torch.randn(S, D, device=device).to(dtype)
    y = torch.randn(plan.token_index.numel(), D, device=device).to(dtype)
    B, T = args.mod_batch, args.mod_seq
    mod_k = max(1, math.ceil(args.mod_capacity * T))
    scores = torch.randn(B, T, device=device)
    index = ref.mod_select(scores, mod_k)
    xm = torch.randn(B, T, D, device=device).to(dtype)
    values = torch.randn(B, mod_k, D, device=device).to(dtype)

    def topk_reference_with_torch_topk() -> object:
        # The pre-kernel reference: torch.topk instead of the stable sort that defines ties.
        probs = torch.softmax(logits.float(), dim=-1)
        top_p, expert_index = torch.topk(probs, k, dim=-1)
        weights = top_p / top_p.sum(-1, keepdim=True)
        return weights, ref.assign_slots(expert_index, top_p, E, capacity)

    def gating(module) -> Callable[[], object]:
        def run():
            r = module.topk_route(logits, k, capacity)
            return module.dispatch_plan(r.expert_index, r.slot, E)
        return run

    cases: list[tuple[str, Callable[[], object], Callable[[], object], int | None]] = [
        ("gating (topk_route + dispatch_plan)", gating(routing), gating(ref), None),
        ("topk_route", lambda: routing.topk_route(logits, k, capacity), lambda: ref.topk_route(logits, k, capacity), None),
        ("topk_route vs torch.topk reference", lambda: routing.topk_route(logits, k, capacity),
         topk_reference_with_torch_topk, None),
        ("dispatch_plan", lambda: routing.dispatch_plan(route.expert_index, route.slot, E),
         lambda: ref.dispatch_plan(route.expert_index, route.slot, E), None),
        ("expert_histogram", lambda: routing.expert_histogram(route.expert_index, E),
         lambda: ref.expert_histogram(route.expert_index, E), None),
        ("permute", lambda: routing.permute(x, plan), lambda: ref.permute(x, plan),
         2 * y.numel() * y.element_size()),
        ("unpermute", lambda: routing.unpermute(y, plan, route.weights, S),
         lambda: ref.unpermute(y, plan, route.weights, S), (y.numel() + x.numel()) * y.element_size()),
        ("mod_select", lambda: routing.mod_select(scores, mod_k), lambda: ref.mod_select(scores, mod_k), None),
        ("gather_tokens", lambda: routing.gather_tokens(xm, index), lambda: ref.gather_tokens(xm, index),
         2 * values.numel() * values.element_size()),
        ("scatter_tokens", lambda: routing.scatter_tokens(xm, index, values),
         lambda: ref.scatter_tokens(xm, index, values), None),
    ]

    threads = torch.get_num_threads()
    peak = peak_gbps(device, args.peak_gbps)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    print(f"device={device} ({where}) threads={threads} torch={torch.__version__} dtype={args.dtype}")
    print(f"S={S} E={E} k={k} capacity={capacity} (factor {args.capacity_factor}) D={D}; "
          f"MoD B={B} T={T} k={mod_k}; best of {args.repeats}")
    print(f"kernel backend: {backend.describe('topk_route', device.type)}")
    header = f"{'op':<36}{'kernel us':>11}{'reference us':>14}{'x ref':>8}"
    if device.type == "cuda":
        header += f"{'GB/s':>9}{'% peak':>8}"
    print(header)
    results = []
    for name, kernel_fn, reference_fn, nbytes in cases:
        t_kernel, t_ref = measure(kernel_fn), measure(reference_fn)
        row = {"op": name, "kernel_us": t_kernel * 1e6, "reference_us": t_ref * 1e6, "speedup": t_ref / t_kernel}
        line = f"{name:<36}{t_kernel * 1e6:>11.1f}{t_ref * 1e6:>14.1f}{t_ref / t_kernel:>8.2f}"
        if device.type == "cuda" and nbytes:
            gbps = nbytes / t_kernel / 1e9
            row["gbps"] = gbps
            line += f"{gbps:>9.0f}"
            if peak:
                row["fraction_of_peak"] = gbps / peak
                line += f"{gbps / peak:>8.0%}"
        print(line)
        results.append(row)

    ds = deepspeed_top2(logits, args.capacity_factor) if k == 2 else None
    if ds is not None:
        try:
            t_ds = measure(ds)
        except torch.OutOfMemoryError as exc:
            # Its dense [S, E, C] masks need 10 GiB each at S=65536 on CUDA; the figures above still count.
            print(f"deepspeed top2gating ran out of memory at this size ({str(exc).splitlines()[0]})")
            ds = None
    if ds is not None:
        t_gate = results[0]["kernel_us"] / 1e6
        print(f"{'deepspeed top2gating':<36}{t_ds * 1e6:>11.1f}   gating kernel is {t_ds / t_gate:.2f}x faster, "
              f"reference is {t_ds / (results[0]['reference_us'] / 1e6):.2f}x faster")
        results.append({"op": "deepspeed top2gating", "time_us": t_ds * 1e6, "kernel_speedup": t_ds / t_gate})

    if args.json:
        meta = {"device": str(device), "device_name": where, "threads": threads, "torch": torch.__version__,
                "S": S, "E": E, "k": k, "D": D, "capacity": capacity, "dtype": args.dtype, "peak_gbps": peak}
        write_json(args.json, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
