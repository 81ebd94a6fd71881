"""RMSNorm and RoPE: one fused C++ kernel each way on CPU, the PyTorch expression elsewhere.

Each is several torch ops (RMSNorm's forward and backward together are about fifteen), and on CPU
each op is a pass over memory plus a dispatch. `lumina._C` does each direction in one pass for CPU
tensors (docs/kernels.md has the measurements, and why SwiGLU's gate is not among them).

The PyTorch expressions below (`*_reference`) are the specification and what runs on CUDA (where
torch's own kernels are cheap next to the matmuls), under `torch.compile` (Inductor fuses them
itself), with LUMINA_ROUTING_BACKEND=reference, and when the extension is missing (one warning, from
`lumina.ops.backend`). The kernels agree with them within the tolerances in tests/ops/test_fused.py.
Double backward through the kernels is not supported (nothing in training needs it).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lumina.ops import backend

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _cpu_kernels(*tensors: Tensor):
    """lumina._C when every tensor is a CPU float tensor of one dtype and nothing traces; else None."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in _DTYPES or torch.compiler.is_compiling():
        return None
    if any(t.device.type != "cpu" or t.dtype != first.dtype for t in tensors[1:]):
        return None
    if backend.kernel("rms_norm_forward", first.device) is None:  # warns once when the build is missing
        return None
    return backend.load_extension()


# RMSNorm.

def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square norm (Zhang & Sennrich 2019) in fp32, returned in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, ext) -> Tensor:
        y, rstd = ext.rms_norm_forward_cpu(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.ext = ext
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight, rstd = ctx.saved_tensors
        grad_x, grad_w = ctx.ext.rms_norm_backward_cpu(grad_y, x, weight, rstd)
        return grad_x, grad_w, None, None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    ext = _cpu_kernels(x, weight)
    if ext is None or x.shape[-1] != weight.shape[0]:
        return rms_norm_reference(x, weight, eps)
    return _RMSNorm.apply(x, weight, eps, ext)


# Rotate-half RoPE (Su et al. 2021).

def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, hd); cos/sin: (B or 1, T, hd), indexed by each token's true position."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, ext) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.ext = ext
        return ext.rope_cpu(x, cos, sin, False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        cos, sin = ctx.saved_tensors
        return ctx.ext.rope_cpu(grad_y.contiguous(), cos, sin, True), None, None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    ext = _cpu_kernels(x)
    if (ext is None or x.dim() != 4 or x.shape[-1] % 2 or x.stride(-1) != 1 or cos.dtype != torch.float32
            or sin.dtype != torch.float32 or cos.device.type != "cpu" or cos.requires_grad or sin.requires_grad):
        return rope_reference(x, cos, sin)
    return _RoPE.apply(x, cos, sin, ext)
