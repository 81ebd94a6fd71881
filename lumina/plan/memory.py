"""Memory per GPU of a training layout, term by term.

Model states follow the ZeRO paper (Rajbhandari et al. 2019, arXiv 1910.02054, section 3): BF16
weights (2 bytes a parameter), gradients accumulated in FP32 (4 bytes: Lumina's DeepSpeed configs
set `grad_accum_dtype: fp32`), and Adam's FP32 master weights, momentum and variance (K = 12
bytes). ZeRO-1 divides the optimizer states over the data-parallel group, ZeRO-2 the gradients
too, ZeRO-3 the weights too. Dense weights are divided over DP; expert weights, which EP ranks
hold different blocks of, over the expert-data-parallel group (DP / EP).

Activations follow the term-by-term accounting of Korthikanti et al. 2022 (arXiv 2205.05198,
section 4), adapted to Lumina's block: no dropout (its 1-byte masks vanish), RMSNorm, GQA (K and V
are `kv_heads x head_dim` wide), SwiGLU (gate, up and their product are stored: 3 x ffn), BF16
activations (2 bytes). Per layer and micro-batch of b sequences of s tokens, hidden h, ffn F,
heads a, KV width g, tensor parallel t:

    attention  2sb * (2h + (h + 2g)/t + h/t)  +  2 a s^2 b / t   (softmax output; not with SDPA/flash)
    dense MLP  2sb * (2h + 3F/t)
    MoE MLP    2sb * 2h + 4sb(E + noop) + k * cf * 2sb * (2h + 3F/t)   (fp32 router logits; each of
               the k assignments keeps its permuted input, expert activations and output, up to
               the capacity factor cf)
    MoD layer  capacity x the block (the block runs on the selected tokens) + 2sb*h (gathered copy)

Full recompute keeps only each layer's input (2sbh) plus one layer's activations during its
backward. Under 1F1B pipeline parallel the first stage holds min(P, micro-batches) micro-batches
of activations (Korthikanti et al., section 4.2.3), which is the worst stage. The last stage adds
the logits: FP32 for the loss and their BF16 copy, 6 s b V / t.

Buffers: DeepSpeed's reduce bucket (5e7 FP32 elements) and all-gather bucket (5e7 BF16 elements)
as Lumina's configs set them, 1 GiB for the CUDA context, NCCL and allocator workspaces (an
assumption), and under ZeRO-3 two layers' gathered weights (the working and the prefetched one).
A fragmentation margin of 10% of everything is added last.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lumina.accounting import _expert_params, layer_params
from lumina.config import ModelConfig

BYTES_WEIGHT, BYTES_GRAD, BYTES_OPTIM = 2, 4, 12
BUCKET_BYTES = 50_000_000 * 4 + 50_000_000 * 2
CONTEXT_BYTES = 1 << 30
FRAGMENTATION = 0.10
RECOMPUTE = ("none", "selective", "full")


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


def layer_activation_bytes(cfg: ModelConfig, seq: int, micro_batch: int, tp: int, flash: bool,
                           routed: bool, with_mod: bool = True) -> float:
    """Activation bytes one layer stores for one micro-batch (no recompute)."""
    s, b, h, F, t = seq, micro_batch, cfg.hidden_size, cfg.ffn_hidden_size, tp
    g = cfg.num_kv_heads * cfg.head_dim
    attn = 2 * s * b * (2 * h + (h + 2 * g) / t + h / t)
    if not flash:
        attn += 2 * cfg.num_heads * s * s * b / t
    if cfg.moe:
        cf = float(cfg.moe.num_experts) / cfg.moe.top_k if cfg.moe.dropless else cfg.moe.capacity_factor_train  # dropless: worst case
        k = cfg.moe.top_k
        mlp = (2 * s * b * 2 * h + 4 * s * b * (cfg.moe.num_experts + cfg.moe.num_noop_experts)
               + min(k * cf, cfg.moe.num_experts) * 2 * s * b * (2 * h + 3 * F / t))
    else:
        mlp = 2 * s * b * (2 * h + 3 * F / t)
    block = attn + mlp
    if routed and with_mod and cfg.mod is not None:
        return cfg.mod.capacity * block + 2 * s * b * h
    return block


def estimate(cfg: ModelConfig, *, tp: int, pp: int, ep: int, dp: int, zero: int, micro_batch: int,
             grad_accum: int, stage_layers: tuple[int, ...], seq: int | None = None,
             recompute: str = "none", flash: bool = True) -> MemoryBreakdown:
    """Per-GPU memory of the busiest stage for this layout."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute={recompute!r} is unknown: choose one of {', '.join(RECOMPUTE)}")
    s = seq or cfg.seq_length
    routed = set(cfg.routed_layers())
    edp = max(dp // ep, 1)
    # Per-layer figures depend only on whether the layer is MoD-routed: compute each kind once.
    kinds = {r: (*_layer_split(cfg, next(i for i in range(cfg.num_layers) if (i in routed) == r)),
                 layer_activation_bytes(cfg, s, micro_batch, tp, flash, r),
                 layer_activation_bytes(cfg, s, micro_batch, tp, flash, r, with_mod=False))
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
            w = count * BYTES_WEIGHT / (group if zero >= 3 else 1)
            g = count * BYTES_GRAD / (group if zero >= 2 else 1)
            o = count * BYTES_OPTIM / (group if zero >= 1 else 1)
            return w, g, o

        dw, dg, do = states(dense, dp)
        ew, eg, eo = states(expert, edp)

        act_all = sum(kinds[r][2] * c for r, c in counts.items() if c)
        plain_all = sum(kinds[r][3] * c for r, c in counts.items() if c)
        if recompute == "full":
            inputs = 2 * s * micro_batch * cfg.hidden_size * n * in_flight
            act = inputs + max(kinds[r][2] for r, c in counts.items() if c)
            act_plain = inputs + max(kinds[r][3] for r, c in counts.items() if c)
        else:
            act, act_plain = act_all * in_flight, plain_all * in_flight
        if stage == pp - 1:
            logits = 6 * s * micro_batch * cfg.vocab_size / tp
            act, act_plain = act + logits, act_plain + logits
        buffers = CONTEXT_BYTES + (BUCKET_BYTES if zero >= 1 else 0)
        if zero >= 3:
            biggest = max(sum(kinds[r][:2]) for r, c in counts.items() if c) / tp
            buffers += 2 * biggest * BYTES_WEIGHT
        subtotal = dw + ew + dg + eg + do + eo + act + buffers
        candidate = MemoryBreakdown(weights=dw + ew, gradients=dg + eg, optimizer=do + eo, activations=act,
                                    buffers=buffers, fragmentation=FRAGMENTATION * subtotal, stage=stage,
                                    expert_weights=ew, mod_activation_saving=act_plain - act,
                                    params_dense=dense, params_expert=expert, layers=n, routed_layers=n_routed)
        if best is None or candidate.total > best.total:
            best = candidate
    assert best is not None
    return best
