"""Memory per GPU of a training layout, term by term.

Model states follow the ZeRO paper (Rajbhandari et al. 2019, arXiv 1910.02054, section 3): BF16
weights (2 bytes a parameter), gradients accumulated in FP32 (4 bytes: Lumina's DeepSpeed configs
set `grad_accum_dtype: fp32`), and Adam's FP32 master weights, momentum and variance (K = 12
bytes). ZeRO-1 divides the optimizer states over the data-parallel group, ZeRO-2 the gradients
too, ZeRO-3 the weights too. Dense weights are divided over DP; expert weights, which EP ranks
hold different blocks of, over the expert-data-parallel group (DP / EP).

Activations follow the term-by-term method of Korthikanti et al. 2022 (arXiv 2205.05198,
section 4): count every tensor autograd keeps for the backward pass. The terms are Lumina's own
block, checked tensor by tensor with `torch.autograd.graph.saved_tensors_hooks` and against the
measured peak (`lumina.plan.validate`, docs/ops.md): no dropout, RMSNorm computed in FP32, GQA (K
and V are `kv_heads x head_dim` = g wide), SwiGLU as torch's ops. These are the PyTorch
expressions of `lumina.ops.fused`, which is what runs on a GPU; on CPU its fused kernels keep less
(an RMSNorm its input and one FP32 scalar a row), so CPU estimates are slightly high. With `a` bytes an
activation element (2 in BF16, 4 in FP32), per token of a micro-batch of b sequences of s tokens,
hidden h, ffn F, heads n, tensor parallel t:

    each RMSNorm  (4 + 4 + a) h        FP32 input, FP32 normalised value, output in the model dtype
    attention     norm + a (h + 2g)/t + a h/t + 4n/t
                  (Q, K, V after RoPE, the SDPA output, which the output projection reads as a
                  view, and the FP32 log-sum-exp); without flash/SDPA + a n s / t (softmax output)
    dense MLP     norm + 4aF/t         (gate, up, silu(gate) and their product: torch's SwiGLU)
    MoE MLP       norm + 8(E + noop) + k r (2ah + 4aF/t)
                  (FP32 router logits and probabilities; each of the k assignments the experts
                  run keeps its permuted input, its output and the expert's 4F). r is the
                  fraction of the k assignments a token makes that the experts run, 1 - the
                  dropped fraction. The planner takes r = 1: balanced routing, which the balance
                  loss drives towards and which no capacity factor >= 1 lets exceed. Early in
                  training routing is far from balanced and drops many (debug moe at capacity
                  1.25: 8%, 29%, 41% of assignments in its first 3 iterations), so a measured
                  peak there is lower; `lumina.plan.validate` passes the run's measured r.
    MoD layer     the block at capacity c (run on the c s gathered tokens) + a h (the router's
                  input) + 2aP (the predictor's hidden layer of width P) + a c h (the gated update)

Full recompute keeps only each layer's input (a h) plus one layer's activations during its
backward. Under 1F1B pipeline parallel the first stage holds min(P, micro-batches) micro-batches
of activations (Korthikanti et al., section 4.2.3), which is the worst stage. The last stage adds
the logits: the model-dtype logits and the FP32 log-softmax the loss keeps, (a + 4) s b V / t,
plus the FP32 gradients of both that the backward of the loss creates, 8 s b V / t: (a + 12) s b V / t.
With `loss_kernel` (lumina._C's CPU cross-entropy, which keeps one log-sum-exp per row and whose
backward writes only the logits' gradient) that is 2 a s b V / t.

Buffers: DeepSpeed's reduce bucket (5e7 FP32 elements) and all-gather bucket (5e7 BF16 elements)
as Lumina's configs set them, 1 GiB for the CUDA context (none on CPU), NCCL and allocator workspaces (an
assumption), and under ZeRO-3 two layers' gathered weights (the working and the prefetched one).
A fragmentation margin of 10% of everything is added last.

Gradients: DeepSpeed's BF16 and ZeRO optimizers keep them in flat buffers allocated once, so all
of them count. Plain FP32 at ZeRO-0 (Lumina on CPU) frees them after each step; its peak is the
larger of the backward's start (activations and the output layer's gradient) and its end (every
gradient plus, with more than one process, the flat copy DeepSpeed's ZeRO-0 all-reduce makes of
them), and `gradients` holds
what that peak adds to weights, optimizer states and activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lumina.accounting import _expert_params, layer_params
from lumina.config import ModelConfig

BUCKET_BYTES = 50_000_000 * 4 + 50_000_000 * 2
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's MEMORY_OPT_ALLREDUCE_SIZE (ZeRO-0 all-reduce)
CONTEXT_BYTES = 1 << 30
FRAGMENTATION = 0.10
RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Precision:
    """Bytes a parameter takes as weight, gradient and optimizer state, and an activation element."""
    name: str
    weight: int
    grad: int
    optim: int
    act: int
    # DeepSpeed's BF16/ZeRO optimizers keep gradients in flat buffers allocated once, so all of them
    # are live at the peak. With a plain torch optimizer (FP32 at ZeRO-0, Lumina's CPU path) they
    # are freed after each step and created during the backward as activations are freed.
    grads_persist: bool


PRECISIONS = {
    # Mixed precision (ZeRO paper): BF16 weights, FP32-accumulated gradients, FP32 master + Adam m, v.
    "bf16": Precision("bf16", 2, 4, 12, 2, grads_persist=True),
    # Plain FP32 (Lumina on CPU): FP32 weights and gradients, Adam m and v; no master copy.
    "fp32": Precision("fp32", 4, 4, 8, 4, grads_persist=False),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on the busiest GPU (the pipeline stage with the largest total)."""
    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float
    fragmentation: float
    stage: int                 # which pipeline stage these bytes are for
    expert_weights: float      # the part of `weights` that is MoE experts (after EP and ZeRO)
    mod_activation_saving: float  # activation bytes MoD saves on that stage versus no routing
    params_dense: float = 0.0     # parameters on this GPU before ZeRO partitioning (after TP/PP)
    params_expert: float = 0.0    # expert parameters on this GPU before ZeRO (after TP/PP/EP)
    layers: int = 0               # transformer layers on this stage
    routed_layers: int = 0        # of which MoD-routed

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.buffers
                + self.fragmentation)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _layer_split(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(dense, expert) parameters of one layer."""
    expert = cfg.moe.num_experts * _expert_params(cfg) if cfg.moe else 0
    return layer_params(cfg, layer) - expert, expert


def _block_bytes(cfg: ModelConfig, tokens: float, seq: float, tp: int, flash: bool, a: int,
                 moe_kept: float = 1.0) -> float:
    """Activation bytes of one block (attention + MLP) run on `tokens` tokens of sequences `seq`
    long; `moe_kept` of the MoE assignments reach an expert (see the module doc)."""
    h, F, t, n = cfg.hidden_size, cfg.ffn_hidden_size, tp, cfg.num_heads
    g = cfg.num_kv_heads * cfg.head_dim
    norm = (8 + a) * h
    attn = norm + a * (h + 2 * g) / t + a * h / t + 4 * n / t
    if not flash:
        attn += a * n * seq / t
    if cfg.moe:
        mlp = (norm + 8 * (cfg.moe.num_experts + cfg.moe.num_noop_experts)
               + cfg.moe.top_k * moe_kept * (2 * a * h + 4 * a * F / t))
    else:
        mlp = norm + 4 * a * F / t
    return tokens * (attn + mlp)


def layer_activation_bytes(cfg: ModelConfig, seq: int, micro_batch: int, tp: int, flash: bool,
                           routed: bool, with_mod: bool = True, act_bytes: int = 2, moe_kept: float = 1.0) -> float:
    """Activation bytes one layer stores for one micro-batch (no recompute)."""
    a, tokens = act_bytes, seq * micro_batch
    if routed and with_mod and cfg.mod is not None:
        c, h = cfg.mod.capacity, cfg.hidden_size
        return (_block_bytes(cfg, c * tokens, c * seq, tp, flash, a, moe_kept)
                + tokens * (a * h + 2 * a * cfg.mod.predictor_hidden + a * c * h))
    return _block_bytes(cfg, tokens, seq, tp, flash, a, moe_kept)


def logits_bytes(cfg: ModelConfig, seq: int, micro_batch: int, tp: int, act_bytes: int = 2,
                 loss_kernel: bool = False) -> float:
    """The last stage's logits, log-softmax and the loss backward's two FP32 gradients of them; with
    the CPU loss kernel, the logits and their gradient."""
    per_element = 2 * act_bytes if loss_kernel else act_bytes + 12
    return per_element * seq * micro_batch * cfg.vocab_size / tp


def estimate(cfg: ModelConfig, *, tp: int, pp: int, ep: int, dp: int, zero: int, micro_batch: int,
             grad_accum: int, stage_layers: tuple[int, ...], seq: int | None = None,
             recompute: str = "none", flash: bool = True, precision: str = "bf16",
             context_bytes: float = CONTEXT_BYTES, loss_kernel: bool = False,
             moe_kept: float = 1.0) -> MemoryBreakdown:
    """Per-GPU memory of the busiest stage for this layout. loss_kernel: the loss runs lumina._C's
    CPU kernel (a CPU run with the extension built), not torch's log-softmax and NLL. moe_kept:
    the fraction of MoE assignments the experts run (1 - dropped; see the module doc)."""
    if not 0.0 <= moe_kept <= 1.0:
        raise ValueError(f"moe_kept={moe_kept} is invalid: must be in [0, 1]")
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute={recompute!r} is unknown: choose one of {', '.join(RECOMPUTE)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown: choose one of {', '.join(PRECISIONS)}")
    p = PRECISIONS[precision]
    s = seq or cfg.seq_length
    routed = set(cfg.routed_layers())
    edp = max(dp // ep, 1)
    # Per-layer figures depend only on whether the layer is MoD-routed: compute each kind once.
    kinds = {r: (*_layer_split(cfg, next(i for i in range(cfg.num_layers) if (i in routed) == r)),
                 layer_activation_bytes(cfg, s, micro_batch, tp, flash, r, act_bytes=p.act, moe_kept=moe_kept),
                 layer_activation_bytes(cfg, s, micro_batch, tp, flash, r, with_mod=False, act_bytes=p.act,
                                        moe_kept=moe_kept))
             for r in {i in routed for i in range(cfg.num_layers)}}
    best: MemoryBreakdown | None = None
    first = 0
    for stage, n in enumerate(stage_layers):
        n_routed = sum(1 for i in range(first, first + n) if i in routed)
        in_flight = min(pp - stage, grad_accum)  # 1F1B: stage s holds P - s micro-batches at most
        first += n
        counts = {True: n_routed, False: n - n_routed}
        dense = sum(kinds[r][0] * c for r, c in counts.items() if c) / tp
        expert = sum(kinds[r][1] * c for r, c in counts.items() if c) / (tp * ep)
        embed = cfg.vocab_size * cfg.hidden_size / tp
        if stage == 0:
            dense += embed
        if stage == pp - 1:
            dense += cfg.hidden_size + (embed if (pp > 1 or not cfg.tie_embeddings) else 0)

        def states(count: float, group: int) -> tuple[float, float, float]:
            w = count * p.weight / (group if zero >= 3 else 1)
            g = count * p.grad / (group if zero >= 2 else 1)
            o = count * p.optim / (group if zero >= 1 else 1)
            return w, g, o

        dw, dg, do = states(dense, dp)
        ew, eg, eo = states(expert, edp)

        act_all = sum(kinds[r][2] * c for r, c in counts.items() if c)
        plain_all = sum(kinds[r][3] * c for r, c in counts.items() if c)
        if recompute == "full":
            inputs = p.act * s * micro_batch * cfg.hidden_size * n * in_flight
            act = inputs + max(kinds[r][2] for r, c in counts.items() if c)
            act_plain = inputs + max(kinds[r][3] for r, c in counts.items() if c)
        else:
            act, act_plain = act_all * in_flight, plain_all * in_flight
        if stage == pp - 1:
            logits = logits_bytes(cfg, s, micro_batch, tp, p.act, loss_kernel)
            act, act_plain = act + logits, act_plain + logits
        if not p.grads_persist and zero == 0:
            # The peak is either at the start of the backward (all activations, plus the gradient
            # of the first weight the backward reaches: the output layer's) or at its end (all
            # gradients, activations gone, and the flat copy DeepSpeed's ZeRO-0 all-reduce makes
            # of them, bucket by bucket, when there is more than one process):
            # W + O + max(A + G_first, G + flat) = W + O + A + max(G_first, G + flat - A).
            first_grad = (embed if stage == pp - 1 else kinds[False if counts[False] else True][0] / tp) * p.grad
            world = tp * pp * dp  # the trainer turns the all-reduce off in a one-process run
            flat = min(dg + eg, ALLREDUCE_BUCKET_ELEMENTS * p.grad) if world > 1 else 0.0
            dg, eg = max(first_grad, dg + eg + flat - act), 0.0
        buffers = context_bytes + (BUCKET_BYTES if zero >= 1 else 0)
        if zero >= 3:
            biggest = max(sum(kinds[r][:2]) for r, c in counts.items() if c) / tp
            buffers += 2 * biggest * p.weight
        subtotal = dw + ew + dg + eg + do + eo + act + buffers
        candidate = MemoryBreakdown(weights=dw + ew, gradients=dg + eg, optimizer=do + eo, activations=act,
                                    buffers=buffers, fragmentation=FRAGMENTATION * subtotal, stage=stage,
                                    expert_weights=ew, mod_activation_saving=act_plain - act,
                                    params_dense=dense, params_expert=expert, layers=n, routed_layers=n_routed)
        if best is None or candidate.total > best.total:
            best = candidate
    assert best is not None
    return best
