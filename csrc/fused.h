// Fused CPU kernels for parts of a transformer block that torch runs as several ops each: RMSNorm,
// rotate-half RoPE and SwiGLU's gate, forward and backward, the MoE experts' whole MLPs, causal
// attention and the cross-entropy loss. On CPU
// the elementwise ops are memory-bound, so one pass over the data instead of one per op is most of
// their cost; for the experts, the per-op dispatch and autograd overhead is (docs/kernels.md has the
// measurements). lumina/ops/fused.py keeps the PyTorch expressions they match for every other device.
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
// The same on contiguous tensors of one shape and dtype, into outputs the caller allocated (for the
// experts' MLP, which runs them on each expert's block of rows); unchecked.
void swiglu_forward_out(const at::Tensor& gate, const at::Tensor& up, at::Tensor& y, at::Tensor& sigmoid_gate);
void swiglu_backward_out(const at::Tensor& grad_y, const at::Tensor& gate, const at::Tensor& up,
                         const at::Tensor& sigmoid_gate, at::Tensor& grad_gate, at::Tensor& grad_up);
// Rotate-half RoPE of x (B, H, T, hd) (any strides but the last, which must be 1) with cos and sin
// (B or 1, T, hd) in fp32; returns a contiguous tensor. transpose=true applies the rotation's
// transpose, which is the backward.
at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool transpose);

// The same, differentiable (fused_autograd.cpp): RMSNorm w.r.t. x and weight, RoPE w.r.t. x (the
// tables are constants), SwiGLU w.r.t. both. None supports double backward (it raises).
at::Tensor rms_norm_autograd_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rope_autograd_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor swiglu_autograd_cpu(const at::Tensor& gate, const at::Tensor& up);

// The MoE experts' SwiGLU MLPs in one differentiable op (experts_cpu.cpp). xs (N, D) holds the
// tokens in expert-contiguous order: chunk i is the next counts[i] rows, run by local expert ids[i]
// (by expert i when ids is empty). w_gate, w_up (E, D, F), w_down (E, F, D), of xs's dtype.
// Returns (N, D): silu(x @ w_gate[e]) * (x @ w_up[e]) @ w_down[e] for each chunk. Differentiable
// w.r.t. xs and the three weights; no double backward.
at::Tensor expert_mlp_autograd_cpu(const at::Tensor& xs, const at::Tensor& w_gate, const at::Tensor& w_up,
                                   const at::Tensor& w_down, std::vector<int64_t> counts, std::vector<int64_t> ids);

// Causal self-attention softmax(q k^T / sqrt(hd)) v, differentiable w.r.t. q, k and v
// (attention_cpu.cpp). q (B, H, T, hd), k and v (B, KV, T, hd) with KV dividing H (grouped-query:
// query head h reads kv head h / (H / KV)); float32 or float64, any strides with hd contiguous.
// Returns (B, H, T, hd) laid out as (B, T, H, hd). No double backward.
at::Tensor causal_attention_autograd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
// Whether torch's build exports the BLAS sgemm_/dgemm_ the attention kernel calls.
bool blas_gemm_available();

// Mean cross-entropy of logits (N, V), float32 or float64, against int64 labels (N,) in [0, V),
// over the rows whose label is not ignore_index (loss_cpu.cpp); NaN when every row is ignored, as
// in torch. Differentiable w.r.t. logits; no double backward.
at::Tensor cross_entropy_autograd_cpu(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index);

}  // namespace lumina
