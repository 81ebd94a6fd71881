"""RMSNorm, RoPE, SwiGLU's gate, the MoE experts' MLPs, causal attention and the cross-entropy loss:
fused C++ kernels on CPU, the PyTorch expression elsewhere.

Each is many torch ops (torch's profiler counts 23 non-view ops for RMSNorm's forward and backward
together, 18 for RoPE), and on CPU each op is a pass over memory plus a dispatch. `lumina._C` does
each direction in one pass for CPU tensors (docs/kernels.md has the measurements).

The PyTorch expressions below (`*_reference`) are the specification and what runs on CUDA (where
torch's own kernels are cheap next to the matmuls; RMSNorm runs NVIDIA apex's fused kernel there when
apex is installed, `lumina.ops.nvidia_apex`), under `torch.compile` (Inductor fuses them
itself), with LUMINA_ROUTING_BACKEND=reference, and when the extension is missing (one warning, from
`lumina.ops.backend`). The kernels agree with them within the tolerances in tests/ops/test_fused.py.
Autograd for the kernels is C++ (csrc/fused_autograd.cpp, csrc/experts_cpu.cpp,
csrc/attention_cpu.cpp, csrc/loss_cpu.cpp, csrc/router_losses_cpu.cpp), so their backward
never enters Python; double backward through them is not supported (nothing in training needs it).

The experts' MLPs (`expert_mlp`) are matmuls, which torch does well; what the kernel removes is the
per-expert Python loop around them (about twenty ops and four autograd nodes per expert and step),
and it keeps each expert's intermediates in cache between its matmuls.

Causal attention (`causal_attention`) runs torch's scaled_dot_product_attention everywhere but on
CPU in fp32/fp64, where the kernel does each (sequence, head) as a few BLAS calls on blocks of
query rows, faster than torch's CPU flash attention at the presets' shapes (docs/kernels.md has
the measurements). The loss (`cross_entropy`) makes
one pass over the logits each way where torch's log_softmax and nll_loss make several, and the
MoE router's balance and z-losses (`router_losses`) are one node instead of about twenty ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lumina.ops import backend, nvidia_apex
from lumina.ops import routing_reference

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_FP32_64 = (torch.float32, torch.float64)  # the dtypes of the attention, loss and router-loss kernels


def _cpu_kernel(op: str, *tensors: Tensor, dtypes: tuple[torch.dtype, ...] = _DTYPES):
    """lumina._C's differentiable `op` when every tensor is a CPU tensor of one dtype in `dtypes` and
    nothing traces; else None (`backend.kernel` warns once when the build is missing)."""
    first = tensors[0]
    if first.dtype not in dtypes or any(t.device.type != "cpu" or t.dtype != first.dtype for t in tensors[1:]):
        return None
    return backend.eager_kernel(f"{op}_autograd", first)


# RMSNorm.

def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square norm (Zhang & Sennrich 2019) in fp32, returned in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    apex_kernel = nvidia_apex.rms_norm_kernel(x.device.type)  # CUDA only; warns once without apex
    if (apex_kernel is not None and x.dtype == weight.dtype and x.shape[-1] == weight.shape[0]
            and not torch.compiler.is_compiling()):
        return apex_kernel(x, weight, (x.shape[-1],), eps)
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


# Causal self-attention with grouped-query heads.

def causal_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q (B, H, T, hd), k and v (B, KV, T, hd) with KV dividing H -> (B, H, T, hd)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def _blas_gemm() -> bool:
    """Whether the attention kernel finds BLAS gemm in torch's build (warns once when not)."""
    if getattr(backend.load_extension(), "HAS_BLAS_GEMM", False):
        return True
    backend.warn_once("blas", "this torch build exports no BLAS sgemm_/dgemm_, which lumina._C's CPU attention "
                      "calls; attention runs torch's scaled_dot_product_attention")
    return False


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hd), causal) v. On CPU the result is laid out as (B, T, H, hd), so the
    caller's transpose back to tokens-major is a view."""
    kernel = _cpu_kernel("causal_attention", q, k, v, dtypes=_FP32_64)
    if (kernel is None or q.dim() != 4 or k.shape != v.shape
            or k.dim() != 4 or k.shape[1] == 0 or q.shape[1] % k.shape[1] or q.shape[-1] == 0
            or (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]) or not _blas_gemm()):
        return causal_attention_reference(q, k, v)
    return kernel(q, k, v)


# The LM loss.

def cross_entropy_reference(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy in fp32 (fp64 for fp64 logits) over the rows whose label is not ignore_index."""
    return F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), labels,
                           ignore_index=ignore_index)


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """logits (N, V), int64 labels (N,) -> the mean loss, a 0-d tensor."""
    kernel = _cpu_kernel("cross_entropy", logits, dtypes=_FP32_64)
    if (kernel is None or logits.dim() != 2
            or labels.dtype != torch.int64 or labels.device.type != "cpu" or labels.shape != logits.shape[:1]):
        return cross_entropy_reference(logits, labels, ignore_index)
    return kernel(logits, labels, ignore_index)


# The MoE router's auxiliary losses.

def router_losses(logits: Tensor, probs: Tensor, expert_index: Tensor) -> tuple[Tensor, Tensor]:
    """(Switch balance loss, router z-loss) of one MoE layer from its router logits and
    probabilities (S, R) and top-k choices (S, k): `routing_reference.switch_balance_loss` and
    `router_z_loss`, one C++ node on CPU."""
    kernel = _cpu_kernel("router_losses", logits, probs, dtypes=_FP32_64)
    if (kernel is None or logits.dim() != 2
            or probs.shape != logits.shape or expert_index.dtype != torch.int64 or expert_index.dim() != 2
            or expert_index.device.type != "cpu"):
        return routing_reference.switch_balance_loss(probs, expert_index), routing_reference.router_z_loss(logits)
    balance, z = kernel(logits, probs, expert_index)
    return balance, z
