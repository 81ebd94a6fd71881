"""RMSNorm, RoPE, SwiGLU's gate and the MoE experts' MLPs: fused C++ kernels on CPU, the PyTorch
expression elsewhere.

Each is many torch ops (torch's profiler counts 23 non-view ops for RMSNorm's forward and backward
together, 18 for RoPE), and on CPU each op is a pass over memory plus a dispatch. `lumina._C` does
each direction in one pass for CPU tensors (docs/kernels.md has the measurements).

The PyTorch expressions below (`*_reference`) are the specification and what runs on CUDA (where
torch's own kernels are cheap next to the matmuls), under `torch.compile` (Inductor fuses them
itself), with LUMINA_ROUTING_BACKEND=reference, and when the extension is missing (one warning, from
`lumina.ops.backend`). The kernels agree with them within the tolerances in tests/ops/test_fused.py.
Autograd for the kernels is C++ (csrc/fused_autograd.cpp, csrc/experts_cpu.cpp), so their backward
never enters Python; double backward through them is not supported (nothing in training needs it).

The experts' MLPs (`expert_mlp`) are matmuls, which torch does well; what the kernel removes is the
per-expert Python loop around them (about twenty ops and four autograd nodes per expert and step),
and it keeps each expert's intermediates in cache between its matmuls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lumina.ops import backend

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _cpu_kernel(op: str, *tensors: Tensor):
    """lumina._C's differentiable `op` when every tensor is a CPU float tensor of one dtype and
    nothing traces; else None (`backend.kernel` warns once when the build is missing)."""
    first = tensors[0]
    if first.dtype not in _DTYPES or any(t.device.type != "cpu" or t.dtype != first.dtype for t in tensors[1:]):
        return None
    return backend.eager_kernel(f"{op}_autograd", first)


# RMSNorm.

def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square norm (Zhang & Sennrich 2019) in fp32, returned in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    kernel = _cpu_kernel("rms_norm", x, weight)
    if kernel is None or x.shape[-1] != weight.shape[0]:
        return rms_norm_reference(x, weight, eps)
    return kernel(x, weight, eps)


# SwiGLU's gate (Shazeer 2020).

def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    return torch.nn.functional.silu(gate) * up


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up."""
    kernel = _cpu_kernel("swiglu", gate, up)
    if kernel is None or gate.shape != up.shape:
        return swiglu_reference(gate, up)
    return kernel(gate, up)


# Rotate-half RoPE (Su et al. 2021).

def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, hd); cos/sin: (B or 1, T, hd), indexed by each token's true position."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    kernel = _cpu_kernel("rope", x)
    if (kernel is None or x.dim() != 4 or x.shape[-1] % 2 or x.stride(-1) != 1 or cos.dtype != torch.float32
            or sin.dtype != torch.float32 or cos.device.type != "cpu" or cos.requires_grad or sin.requires_grad):
        return rope_reference(x, cos, sin)
    return kernel(x, cos, sin)


# The MoE experts: one SwiGLU MLP per expert, each on its contiguous chunk of expert-ordered tokens.

def expert_mlp_reference(xs: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, counts: list[int],
                         ids: list[int] | None = None) -> Tensor:
    """Chunk i of xs (the next counts[i] rows) through expert ids[i] (default i)."""
    outs = []
    # One unbind per weight, not one index per expert: the backward of `w[e]` writes each expert's
    # gradient into a zero tensor of the whole stack (E fills and adds per weight and step), while
    # unbind's backward stacks the E gradients once.
    gate, up, down = w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0)
    for i, chunk in enumerate(torch.split(xs, counts)):
        if chunk.shape[0] == 0:
            continue
        e = i if ids is None else ids[i]
        outs.append(swiglu(chunk @ gate[e], chunk @ up[e]) @ down[e])
    # With no tokens, stay connected to the input: under expert parallel every rank must run the
    # backward all-to-all, which happens only if this output is part of the graph.
    return torch.cat(outs) if outs else xs[:0]


def expert_mlp(xs: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, counts: list[int],
               ids: list[int] | None = None) -> Tensor:
    """(N, D) expert-ordered tokens, weights (E, D, F), (E, D, F), (E, F, D) -> (N, D)."""
    kernel = _cpu_kernel("expert_mlp", xs, w_gate, w_up, w_down)
    if kernel is None:
        return expert_mlp_reference(xs, w_gate, w_up, w_down, counts, ids)
    return kernel(xs, w_gate, w_up, w_down, counts, [] if ids is None else ids)
