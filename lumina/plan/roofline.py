"""An upper bound on MFU from the roofline: what a model's kernels can reach on a device at best.

The roofline model (Williams, Waterman and Patterson 2009, "Roofline: an insightful visual
performance model for multicore architectures", CACM 52(4)) bounds a kernel's time below by
max(FLOPs / peak, bytes / memory bandwidth). Each launch also costs a few microseconds of host and
driver time that no work hides when kernels are this short (`LAUNCH_S`). A training step of one
micro-batch is taken as the kernels of eager PyTorch, each at its own bound:

    time >= sum over kernels of max(FLOPs / peak, bytes / bandwidth, launch)
    MFU  <= model FLOPs / (peak x time)

Kernels per layer, forward, on T = micro_batch x seq tokens (per TP rank; a = activation bytes):
two RMSNorms, the Q, K, V and output GEMMs, RoPE, attention, two residual adds, and either the
SwiGLU MLP (gate and up GEMMs, SwiGLU, down GEMM) or the MoE MLP (router GEMM, top-k, permute,
each expert's three GEMMs and SwiGLU on its k T / E tokens, unpermute, router losses); a MoD-routed
layer runs the block on its c T tokens, plus its router GEMM, top-k, gather and scatter. The model
adds the embedding, the final norm, the output GEMM and the loss. The backward runs two GEMMs of
the same shape for each forward GEMM (input and weight gradients), and one kernel moving twice the
bytes for each other kernel. A GEMM moves a (T in + in out + T out) bytes; optimizer steps are
left out (once per step, not per micro-batch), and so is pipeline parallel (a stage's bound is
its share of the layers, nearly the same ratio).

This is a bound, not a prediction: it takes every GEMM at the datasheet peak. The planner uses it
to cap the published MFU it assumes (`lumina.plan.hardware.mfu_for`), which holds for large
models only: at `debug` size on a GPU the launches, not the FLOPs, take the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from lumina.accounting import account
from lumina.config import ModelConfig
from lumina.plan.hardware import GPU, MFUAssumption

# Per kernel launch. Gray ("Getting Started with CUDA Graphs", NVIDIA Developer Blog, 2019)
# measured a few microseconds per launch of short kernels issued back to back from one stream;
# eager PyTorch adds its own dispatch on the host. 5 us is Lumina's assumption in that range.
LAUNCH_S = 5e-6


@dataclass(frozen=True)
class Kernel:
    flops: float
    bytes: float
    count: int = 1


@dataclass(frozen=True)
class Bound:
    model_flops: float   # training FLOPs of one micro-batch (lumina.accounting)
    seconds: float       # the roofline time of its kernels
    kernels: int
    peak_tflops: float

    @property
    def mfu(self) -> float:
        return min(1.0, self.model_flops / (self.peak_tflops * 1e12 * self.seconds))


def _gemm(tokens: float, n_in: float, n_out: float, a: int, count: int = 1) -> Kernel:
    return Kernel(2 * tokens * n_in * n_out, a * (tokens * n_in + n_in * n_out + tokens * n_out), count)


def _mlp(tokens: float, h: int, f: float, a: int, count: int = 1) -> list[Kernel]:
    """SwiGLU: gate, up, SwiGLU (reads 2F, writes F), down; `count` copies (one per expert)."""
    return [_gemm(tokens, h, f, a, 2 * count), Kernel(0, 3 * a * tokens * f, count), _gemm(tokens, f, h, a, count)]


def _block(cfg: ModelConfig, tokens: float, context: float, tp: int, a: int) -> list[Kernel]:
    h, n, t = cfg.hidden_size, cfg.num_heads * cfg.head_dim / tp, tp
    g = cfg.num_kv_heads * cfg.head_dim / tp
    out = [Kernel(0, 2 * a * tokens * h, 2),                                  # two RMSNorms
           _gemm(tokens, h, n, a), _gemm(tokens, h, g, a, 2), _gemm(tokens, n, h, a),
           Kernel(0, 2 * a * tokens * (n + g)),                               # RoPE on Q and K
           Kernel(4 * tokens * context * n, a * tokens * (2 * n + 2 * g)),    # attention (flash)
           Kernel(0, 3 * a * tokens * h, 2)]                                  # two residual adds
    if cfg.moe is None:
        return out + _mlp(tokens, h, cfg.ffn_hidden_size / t, a)
    E, k = cfg.moe.num_experts, cfg.moe.top_k
    routes = E + cfg.moe.num_noop_experts
    per_expert = k * tokens / E
    return out + [_gemm(tokens, h, routes, a), Kernel(0, 8 * tokens * routes),  # router, top-k
                  Kernel(0, 2 * a * k * tokens * h, 2),                       # permute, unpermute
                  Kernel(0, 8 * tokens * routes)                              # router losses
                  ] + _mlp(per_expert, h, cfg.ffn_hidden_size / t, a, E)


def forward_kernels(cfg: ModelConfig, seq: int, micro_batch: int, tp: int, act_bytes: int) -> list[Kernel]:
    a, T, h = act_bytes, seq * micro_batch, cfg.hidden_size
    routed = set(cfg.routed_layers())
    out: list[Kernel] = [Kernel(0, 2 * a * T * h)]                            # embedding gather
    for layer in range(cfg.num_layers):
        if layer in routed and cfg.mod is not None:
            kept = max(1, math.ceil(cfg.mod.capacity * seq))
            c_tokens = kept * micro_batch
            out += _block(cfg, c_tokens, kept, tp, a)
            out += [_gemm(T, h, 1, a), Kernel(0, 8 * T),                      # router, top-k
                    Kernel(0, 2 * a * c_tokens * h), Kernel(0, 3 * a * c_tokens * h)]  # gather, scatter-add
        else:
            out += _block(cfg, T, seq, tp, a)
    V = cfg.vocab_size / tp
    return out + [Kernel(0, 2 * a * T * h), _gemm(T, h, V, a), Kernel(0, (a + 4) * T * V, 2)]  # norm, logits, loss


@lru_cache(maxsize=4096)
def bound(cfg: ModelConfig, seq: int, micro_batch: int, tp: int, peak_tflops: float, bandwidth_gbs: float,
          launch_s: float = LAUNCH_S, act_bytes: int = 2) -> Bound:
    """The roofline bound of one training micro-batch (forward and backward) on one device."""
    peak, bw = peak_tflops * 1e12, bandwidth_gbs * 1e9
    seconds, kernels = 0.0, 0
    for k in forward_kernels(cfg, seq, micro_batch, tp, act_bytes):
        # Backward: a GEMM's input and weight gradients are two more of its shape (attention's
        # backward likewise twice its forward); any other kernel's moves twice the bytes.
        passes = [(k.flops, k.bytes)] * 3 if k.flops else [(0.0, k.bytes), (0.0, 2 * k.bytes)]
        for flops, nbytes in passes:
            seconds += k.count * max(flops / peak, nbytes / bw, launch_s)
            kernels += k.count
    model_flops = account(cfg, seq).flops_per_token * seq * micro_batch / tp
    return Bound(model_flops, seconds, kernels, peak_tflops)


def capped(assumed: MFUAssumption, cfg: ModelConfig, gpu: GPU, seq: int, micro_batch: int, tp: int) -> MFUAssumption:
    """The assumed (published) MFU, or the roofline bound where that is lower (a small model)."""
    b = bound(cfg, seq, micro_batch, tp, gpu.peak_tflops, gpu.hbm_gbs)
    if b.mfu >= assumed.mfu:
        return assumed
    return MFUAssumption(round(b.mfu, 4), f"roofline bound of micro-batch {micro_batch} x {seq} at TP {tp} "
                                          f"({b.kernels} kernels at max(FLOPs / peak, bytes / {gpu.hbm_gbs:g} GB/s, "
                                          f"{LAUNCH_S * 1e6:g} us launch), lumina.plan.roofline), below the assumed "
                                          f"{assumed.mfu:.0%} ({assumed.source})", bound=True)
