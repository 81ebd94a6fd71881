"""Layout search: every valid TP x PP x EP x DP x ZeRO x micro-batch x recompute layout for a
GPU count, its memory (lumina.plan.memory) and projected speed, and the fastest that fits.

Validity is `ParallelLayout.build`, the check the trainer itself runs, so a plan never proposes a
layout `lumina/pretrain.py` would refuse. Speed is a projection, not a measurement:

    compute time = step tokens x FLOPs per token / (MFU x pipeline eff. x recompute eff. x peak x GPUs)
    step time    = max(compute time, communication time)


with MFU from lumina.plan.hardware (cited, per GPU family and mode) or, where lower, the roofline
bound of the layout's micro-batch (lumina.plan.roofline: a small model is bound by memory
bandwidth and kernel launches, not FLOPs), FLOPs per token from
lumina.accounting (training = 3 x forward, MoE top-k and MoD capacity included), the 1F1B bubble
m / (m + P - 1) for m micro-batches per step (Narayanan et al. 2021, arXiv 2104.04473, eq. 1), and
3/4 for full recompute (one extra forward per forward + backward).

Communication (`comm_seconds`) is the bytes each GPU sends per step over the link its group uses
(NVLink inside a node, the node's network per GPU between nodes; lumina.plan.hardware), with ring
volumes: DP gradients (ZeRO 0: all-reduce 2(n-1)/n of FP32 gradients; ZeRO 1-2: that plus an
all-gather of BF16 weights, which is what DeepSpeed 0.19 does, docs/parallelism.md; ZeRO-3: per
micro-batch two weight all-gathers and a gradient reduce-scatter), TP (4 all-reduces of the hidden
states per layer and micro-batch, 6 with recompute), EP (4 all-to-alls of the k routed copies per
MoE layer and micro-batch) and PP (activations and their gradients across each stage boundary).
The cited MFUs come from runs that overlap communication with compute, so communication is
assumed hidden up to the compute time and to set the pace beyond it: an optimistic bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lumina.accounting import account
from lumina.config import ModelConfig
from lumina.parallel.layout import ParallelLayout
from lumina.plan.hardware import GIB, GPU, MFUAssumption, mfu_for
from lumina.plan.memory import FRAGMENTATION, MemoryBreakdown, estimate
from lumina.plan.roofline import capped
from lumina.util.argtypes import parse_count  # noqa: F401  (re-exported: the planner's count syntax)

MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 (arXiv 2203.15556)


@dataclass(frozen=True)
class Plan:
    cfg: ModelConfig
    gpu: GPU
    gpus: int
    gpus_per_node: int
    tp: int
    pp: int
    ep: int
    dp: int
    zero: int
    micro_batch: int
    grad_accum: int
    recompute: str
    stage_layers: tuple[int, ...]
    seq: int
    memory: MemoryBreakdown
    flops_per_token: float
    mfu: MFUAssumption
    efficiency: float          # pipeline bubble x recompute, multiplies the MFU
    tokens: float              # tokens to train
    price_per_hour: float
    fits: bool = True
    notes: tuple[str, ...] = field(default=())
    comm_s: float = 0.0        # communication seconds per step (comm_seconds)

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp

    @property
    def compute_s(self) -> float:
        rate = self.mfu.mfu * self.efficiency * self.gpu.peak_tflops * 1e12 * self.gpus
        return self.global_batch * self.seq * self.flops_per_token / rate

    @property
    def tokens_per_s(self) -> float:
        return self.global_batch * self.seq / max(self.compute_s, self.comm_s)

    @property
    def hours(self) -> float:
        return self.tokens / self.tokens_per_s / 3600.0

    @property
    def cost(self) -> float:
        return self.hours * self.gpus * self.price_per_hour

    def train_flags(self) -> list[str]:
        """The lumina/pretrain.py flags that run this layout (the DeepSpeed JSON carries ZeRO)."""
        flags = ["--preset", self.cfg.name, "--mode", self.cfg.mode, "--seq-length", str(self.seq),
                 "--micro-batch-size", str(self.micro_batch), "--global-batch-size", str(self.global_batch),
                 "--tensor-model-parallel-size", str(self.tp), "--pipeline-model-parallel-size", str(self.pp),
                 "--expert-model-parallel-size", str(self.ep), "--gpus-per-node", str(self.gpus_per_node)]
        if self.pp > 1:
            flags += ["--pipeline-layers", ",".join(map(str, self.stage_layers))]
        if self.recompute == "full":
            flags.append("--recompute-activations")
        return flags

    def to_dict(self) -> dict:
        return {
            "preset": self.cfg.name, "mode": self.cfg.mode, "gpu": self.gpu.name, "gpus": self.gpus,
            "nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "fits": self.fits,
            "tp": self.tp, "pp": self.pp, "ep": self.ep, "dp": self.dp, "zero": self.zero,
            "micro_batch": self.micro_batch, "grad_accum": self.grad_accum, "global_batch": self.global_batch,
            "seq_length": self.seq, "recompute": self.recompute, "stage_layers": list(self.stage_layers),
            "memory_bytes": self.memory.to_dict(), "memory_gib": self.memory.total / GIB,
            "gpu_memory_gib": self.gpu.memory_gib, "flops_per_token": self.flops_per_token,
            "mfu": self.mfu.mfu, "mfu_source": self.mfu.source, "efficiency": self.efficiency,
            "compute_s_per_step": self.compute_s, "comm_s_per_step": self.comm_s,
            "tokens_per_s": self.tokens_per_s, "tokens": self.tokens, "hours": self.hours,
            "price_per_hour": self.price_per_hour, "cost_usd": self.cost, "notes": list(self.notes),
        }


_SPLITS: dict[tuple[ModelConfig, int], tuple[int, ...]] = {}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def comm_seconds(cfg: ModelConfig, gpu: GPU, tp: int, pp: int, ep: int, dp: int, zero: int, mb: int,
                 ga: int, gpn: int, seq: int, mem: MemoryBreakdown, recompute: str) -> float:
    """Seconds per step each GPU spends sending, by the volumes in the module docstring."""
    def bw(span: int) -> float:  # a group whose ranks lie `span` ranks apart end to end
        return (gpu.intra_node_gbs if span <= gpn else gpu.inter_node_gbs) * 1e9

    hidden = 2.0 * seq * mb * cfg.hidden_size   # bytes of one micro-batch's BF16 hidden states
    t = 0.0
    # (parameters, group size, rank distance between the group's members)
    for params, group, stride in ((mem.params_dense, dp, tp), (mem.params_expert, max(dp // ep, 1), tp * ep)):
        if group == 1 or params == 0:
            continue
        f = (group - 1) / group
        if zero == 3:
            volume = ga * f * (2 * 2 * params + 4 * params)
        else:
            volume = 2 * f * 4 * params + (f * 2 * params if zero >= 1 else 0.0)
        t += volume / bw(stride * group)
    if tp > 1:
        per_layer = (6 if recompute == "full" else 4) * 2 * (tp - 1) / tp * hidden
        t += per_layer * mem.layers * ga / bw(tp)
    if ep > 1 and cfg.moe is not None:
        per_layer = 4 * (ep - 1) / ep * cfg.moe.top_k * hidden / tp
        t += per_layer * mem.layers * ga / bw(tp * ep)
    if pp > 1:
        t += 2 * hidden / tp * ga / bw(tp * dp + 1)
    return t


def candidates(cfg: ModelConfig, gpu: GPU, gpus: int, gpus_per_node: int, global_batch: int, seq: int,
               tokens: float, price: float, mfu: MFUAssumption | None = None,
               fixed: dict[str, int] | None = None, fit_only: bool = False) -> list[Plan]:
    """Every layout the trainer accepts for `gpus` GPUs, with its memory and speed (fitting or not).
    `fixed` pins any of tp, pp, ep, zero; `fit_only` skips what cannot fit (memory grows with the
    micro-batch, so the first micro-batch that fits neither with nor without recompute ends the scan)."""
    fixed = fixed or {}
    given = mfu is not None
    acc = account(cfg, seq)
    assumed = mfu or mfu_for(gpu.name, cfg.mode)
    experts = cfg.moe.num_experts if cfg.moe else 1
    plans = []
    for tp in [t for t in _divisors(min(gpus_per_node, gpus, 8)) if gpus % t == 0 and fixed.get("tp", t) == t]:
        for pp in [p for p in _divisors(gpus // tp) if p <= cfg.num_layers and fixed.get("pp", p) == p]:
            dp = gpus // (tp * pp)
            # The balanced split depends on the model and PP only: computed once, then passed in.
            split = _SPLITS.get((cfg, pp))
            for ep in [e for e in _divisors(experts) if dp % e == 0 and fixed.get("ep", e) == e]:
                for zero in [z for z in (0, 1, 2, 3) if fixed.get("zero", z) == z]:
                    try:
                        layout = ParallelLayout.build(gpus, tp, pp, ep, gpus_per_node, model_cfg=cfg,
                                                      zero_stage=zero, pipeline_layers=split)
                    except ValueError:
                        continue
                    split = _SPLITS[(cfg, pp)] = layout.stage_num_layers
                    for mb in MICRO_BATCHES:
                        # The step keeps about the asked-for batch: accumulation rounds to the nearest
                        # whole number of micro-batches per DP rank (Plan.global_batch is exact).
                        if mb * dp > 1.5 * global_batch:
                            continue
                        ga = max(1, round(global_batch / (mb * dp)))
                        before = len(plans)
                        # An MFU given with --mfu is taken as it is; the published one is capped.
                        mfu = assumed if given else capped(assumed, cfg, gpu, seq, mb, tp)
                        for recompute in ("none", "full"):
                            mem = estimate(cfg, tp=tp, pp=pp, ep=ep, dp=dp, zero=zero, micro_batch=mb,
                                           grad_accum=ga, stage_layers=layout.stage_num_layers, seq=seq,
                                           recompute=recompute)
                            eff = (ga / (ga + pp - 1)) * (0.75 if recompute == "full" else 1.0)
                            comm = comm_seconds(cfg, gpu, tp, pp, ep, dp, zero, mb, ga, gpus_per_node, seq, mem,
                                                recompute)
                            plans.append(Plan(cfg, gpu, gpus, gpus_per_node, tp, pp, ep, dp, zero, mb, ga,
                                              recompute, layout.stage_num_layers, seq, mem, acc.flops_per_token,
                                              mfu, eff, tokens, price,
                                              fits=mem.total <= gpu.memory_gib * GIB, comm_s=comm))
                            if fit_only and not plans[-1].fits:
                                plans.pop()
                        if fit_only and len(plans) == before:
                            break
    return plans


def _rank_key(p: Plan) -> tuple:
    # Fastest first; among equals the least model parallelism, the lowest ZeRO stage, the most headroom.
    return (-round(p.tokens_per_s, 6), p.tp * p.pp * p.ep, p.zero, p.memory.total)


def fastest_fitting(cfg: ModelConfig, gpu: GPU, gpus: int, global_batch_tokens: int = 4 * 1024 * 1024) -> Plan | None:
    """The fastest plan that fits on `gpus` (default node size, batch and token budget), or None.
    Cheap when nothing can fit: 16 bytes a parameter spread over every GPU is a lower bound."""
    acc = account(cfg, cfg.seq_length)
    if 16 * acc.params_total / gpus > gpu.memory_gib * GIB:
        return None
    gpn = min(gpu.gpus_per_node, gpus)
    if gpus > gpn and gpus % gpn:
        return None
    plans = candidates(cfg, gpu, gpus, gpn, max(1, global_batch_tokens // cfg.seq_length), cfg.seq_length,
                       CHINCHILLA_TOKENS_PER_PARAM * acc.params_active, gpu.price_per_hour, fit_only=True)
    return min(plans, key=_rank_key) if plans else None


def best(cfg: ModelConfig, gpu: GPU, gpus: int, *, gpus_per_node: int | None = None,
         global_batch_tokens: int = 4 * 1024 * 1024, seq: int | None = None, tokens: float | None = None,
         price: float | None = None, mfu: float | None = None, fixed: dict[str, int] | None = None) -> Plan:
    """The fastest fitting plan, or the least-memory one marked `fits=False` with the reason."""
    seq = seq or cfg.seq_length
    gpn = gpus_per_node or min(gpu.gpus_per_node, gpus)
    if gpus <= 0:
        raise ValueError(f"--gpus={gpus} is invalid: must be a positive number of GPUs")
    if gpus > gpn and gpus % gpn:
        raise ValueError(f"--gpus={gpus} is not a whole number of {gpn}-GPU nodes: use a multiple of {gpn}")
    if global_batch_tokens < seq:
        raise ValueError(f"--global-batch-tokens={global_batch_tokens} is smaller than one sequence of {seq} tokens")
    global_batch = max(1, global_batch_tokens // seq)
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    # A pinned size gets the trainer's own message when the layout rules refuse it (TP > GPUs per node, ...).
    ParallelLayout.build(gpus, fixed.get("tp", 1), fixed.get("pp", 1), fixed.get("ep", 1), gpn, model_cfg=cfg,
                         zero_stage=fixed.get("zero", 0))
    acc = account(cfg, seq)
    tokens = tokens if tokens is not None else CHINCHILLA_TOKENS_PER_PARAM * acc.params_active
    price = gpu.price_per_hour if price is None else price
    assumption = None if mfu is None else MFUAssumption(mfu, "given with --mfu")
    plans = candidates(cfg, gpu, gpus, gpn, global_batch, seq, tokens, price, assumption, fixed)
    if not plans:
        raise ValueError(f"no layout of {gpus} GPU(s) passes the trainer's checks for {cfg.name}/{cfg.mode} with a "
                         f"global batch of {global_batch} x {seq} tokens: change --gpus or --global-batch-tokens")
    fitting = [p for p in plans if p.fits]
    if fitting:
        return min(fitting, key=_rank_key)
    smallest = min(plans, key=lambda p: p.memory.total)
    return Plan(**{**smallest.__dict__, "notes": (nothing_fits_reason(cfg, gpu, gpus, gpn, global_batch, seq,
                                                                     smallest),)})


def nothing_fits_reason(cfg: ModelConfig, gpu: GPU, gpus: int, gpn: int, global_batch: int, seq: int,
                        smallest: Plan) -> str:
    """'needs at least N x GPU, or optimizer offload': N from searching more nodes (powers of two)."""
    need = smallest.memory.total / GIB
    parts = [f"nothing fits in {gpus} x {gpu.name} ({gpu.memory_gib:g} GiB each): the smallest layout "
             f"(TP {smallest.tp}, PP {smallest.pp}, EP {smallest.ep}, ZeRO {smallest.zero}, micro-batch "
             f"{smallest.micro_batch}, recompute {smallest.recompute}) needs {need:.1f} GiB per GPU"]
    n = max(gpus, gpn)
    found = None
    while n <= 1 << 16:
        n *= 2
        gb = max(global_batch, n)  # at least one sequence per data-parallel rank
        if candidates(cfg, gpu, n, gpn, gb, seq, 1.0, 0.0, fit_only=True):
            found = n
            break
    if found is not None:
        parts.append(f"needs at least {found} x {gpu.name.upper()}")
    offloaded = smallest.memory.total - smallest.memory.optimizer * (1 + FRAGMENTATION)
    if offloaded <= gpu.memory_gib * GIB:
        parts.append("or optimizer offload (ZeRO-3 with offload_optimizer to CPU: ds_configs/bf16_zero3_offload.json)")
    return "; ".join(parts)


def tokens_label(n: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def hours_label(h: float) -> str:
    if h < 1:
        return f"{h * 60:.1f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.1f} days"


__all__ = ["Plan", "best", "candidates", "parse_count", "tokens_label", "hours_label"]
