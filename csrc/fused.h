// Fused CPU kernels for two parts of a transformer block that torch runs as several ops each:
// RMSNorm and rotate-half RoPE, forward and backward. On CPU those ops are memory-bound, so one
// pass over the data instead of one per op is most of their cost (docs/kernels.md has the
// measurements). lumina/ops/fused.py wraps them in autograd and keeps the PyTorch expressions they
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
// Rotate-half RoPE of x (B, H, T, hd) (any strides but the last, which must be 1) with cos and sin
// (B or 1, T, hd) in fp32; returns a contiguous tensor. transpose=true applies the rotation's
// transpose, which is the backward.
at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool transpose);

}  // namespace lumina
