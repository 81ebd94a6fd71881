// Fused CPU kernels for three parts of a transformer block that torch runs as several ops each:
// RMSNorm, rotate-half RoPE and SwiGLU's gate, forward and backward. On CPU those ops are
// memory-bound, so one pass over the data instead of one per op is most of their cost
// (docs/kernels.md has the measurements). lumina/ops/fused.py wraps them in autograd and keeps the PyTorch expressions they
// match for every other device.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lumina {

// x (..., D), weight (D,) of x's dtype -> (y like x, rstd (rows,) in fp32, fp64 for fp64 x).
std::vector<at::Tensor> rms_norm_forward_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
// -> (grad_x like x, grad_weight like weight)
std::vector<at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                              const at::Tensor& weight, const at::Tensor& rstd);
// silu(gate) * up, both of one shape and dtype -> (y, sigmoid(gate)), the latter for the backward.
std::vector<at::Tensor> swiglu_forward_cpu(const at::Tensor& gate, const at::Tensor& up);
// -> (grad_gate, grad_up)
std::vector<at::Tensor> swiglu_backward_cpu(const at::Tensor& grad_y, const at::Tensor& gate, const at::Tensor& up,
                                            const at::Tensor& sigmoid_gate);
// Rotate-half RoPE of x (B, H, T, hd) (any strides but the last, which must be 1) with cos and sin
// (B or 1, T, hd) in fp32; returns a contiguous tensor. transpose=true applies the rotation's
// transpose, which is the backward.
at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool transpose);

// The same, differentiable (fused_autograd.cpp): RMSNorm w.r.t. x and weight, RoPE w.r.t. x (the
// tables are constants), SwiGLU w.r.t. both. None supports double backward (it raises).
at::Tensor rms_norm_autograd_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rope_autograd_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor swiglu_autograd_cpu(const at::Tensor& gate, const at::Tensor& up);

}  // namespace lumina
