// Routing kernels behind lumina.ops.routing: the tensor-level entry points of the CPU and CUDA
// implementations. The Python front validates shapes and dtypes before calling these; the kernels
// check index values as they read them. A bad value throws std::invalid_argument, which pybind11
// raises in Python as ValueError.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace lumina {

// Bumped when a signature here or in fused.h changes or a kernel is added, so a stale build is
// refused instead of misused (2: the fused CPU kernels; 3: the experts' MLP and the routing ops'
// C++ autograd; 5: kernel_calls(), bf16/fp16 weights in unpermute's backward, fp64 topk_route on CUDA).
constexpr int64_t kApiVersion = 5;

// (expert_index (S, k) int64, weights (S, k), slot (S, k) int64, probs (S, E)); capacity < 0 is
// unlimited. weights and probs are fp32, or fp64 for fp64 logits (on CPU and CUDA alike).
std::vector<at::Tensor> topk_route_cpu(const at::Tensor& logits, int64_t top_k, int64_t capacity);
at::Tensor topk_route_backward_cpu(const at::Tensor& grad_weights, const at::Tensor& grad_probs,
                                   const at::Tensor& probs, const at::Tensor& expert_index,
                                   const at::Tensor& weights, at::ScalarType logits_dtype);
// (token_index (N,), assign_index (N,), counts (E,)), all int64.
std::vector<at::Tensor> dispatch_plan_cpu(const at::Tensor& expert_index, const at::Tensor& slot,
                                          int64_t num_experts);
at::Tensor permute_cpu(const at::Tensor& x, const at::Tensor& token_index);
at::Tensor permute_backward_cpu(const at::Tensor& grad, const at::Tensor& token_index, int64_t num_tokens);
at::Tensor unpermute_cpu(const at::Tensor& y, const at::Tensor& token_index, const at::Tensor& assign_index,
                         const at::Tensor& weights, int64_t num_tokens);
// (grad_y like y, grad_weights like weights): weights may be fp32, fp64, bf16 or fp16 on CPU and
// CUDA alike; each weight's gradient is a dot product accumulated in fp32 (fp64 for fp64 y) and
// rounded once to the weights' dtype.
std::vector<at::Tensor> unpermute_backward_cpu(const at::Tensor& grad_out, const at::Tensor& y,
                                               const at::Tensor& token_index, const at::Tensor& assign_index,
                                               const at::Tensor& weights);
at::Tensor expert_histogram_cpu(const at::Tensor& expert_index, int64_t num_experts);
at::Tensor mod_select_cpu(const at::Tensor& scores, int64_t k);
at::Tensor gather_tokens_cpu(const at::Tensor& x, const at::Tensor& index);
at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad, const at::Tensor& index, int64_t seq_len);
at::Tensor scatter_tokens_cpu(const at::Tensor& x, const at::Tensor& index, const at::Tensor& values);

// The differentiable ops above with their autograd in C++ (routing_autograd.cpp), for eager CPU
// tensors: gradients as the torch.library ops of lumina/ops/routing.py give them; no double backward.
std::vector<at::Tensor> topk_route_autograd_cpu(const at::Tensor& logits, int64_t top_k, int64_t capacity);
at::Tensor permute_autograd_cpu(const at::Tensor& x, const at::Tensor& token_index);
at::Tensor unpermute_autograd_cpu(const at::Tensor& y, const at::Tensor& token_index, const at::Tensor& assign_index,
                                  const at::Tensor& weights, int64_t num_tokens);
at::Tensor gather_tokens_autograd_cpu(const at::Tensor& x, const at::Tensor& index);
at::Tensor scatter_tokens_autograd_cpu(const at::Tensor& x, const at::Tensor& index, const at::Tensor& values);
// (Switch balance loss, router z-loss) of one MoE layer (router_losses_cpu.cpp): logits and probs
// (S, R) float32/float64, expert_index (S, k) int64 in [0, R). Differentiable w.r.t. logits (z)
// and probs (balance); no double backward.
std::vector<at::Tensor> router_losses_autograd_cpu(const at::Tensor& logits, const at::Tensor& probs,
                                                   const at::Tensor& expert_index);

#ifdef LUMINA_WITH_CUDA
std::vector<at::Tensor> topk_route_cuda(const at::Tensor& logits, int64_t top_k, int64_t capacity);
at::Tensor topk_route_backward_cuda(const at::Tensor& grad_weights, const at::Tensor& grad_probs,
                                    const at::Tensor& probs, const at::Tensor& expert_index,
                                    const at::Tensor& weights, at::ScalarType logits_dtype);
std::vector<at::Tensor> dispatch_plan_cuda(const at::Tensor& expert_index, const at::Tensor& slot,
                                           int64_t num_experts);
at::Tensor permute_cuda(const at::Tensor& x, const at::Tensor& token_index);
at::Tensor permute_backward_cuda(const at::Tensor& grad, const at::Tensor& token_index, int64_t num_tokens);
at::Tensor unpermute_cuda(const at::Tensor& y, const at::Tensor& token_index, const at::Tensor& assign_index,
                          const at::Tensor& weights, int64_t num_tokens);
std::vector<at::Tensor> unpermute_backward_cuda(const at::Tensor& grad_out, const at::Tensor& y,
                                                const at::Tensor& token_index, const at::Tensor& assign_index,
                                                const at::Tensor& weights);
at::Tensor expert_histogram_cuda(const at::Tensor& expert_index, int64_t num_experts);
at::Tensor mod_select_cuda(const at::Tensor& scores, int64_t k);
at::Tensor gather_tokens_cuda(const at::Tensor& x, const at::Tensor& index);
at::Tensor gather_tokens_backward_cuda(const at::Tensor& grad, const at::Tensor& index, int64_t seq_len);
at::Tensor scatter_tokens_cuda(const at::Tensor& x, const at::Tensor& index, const at::Tensor& values);
#endif

}  // namespace lumina
