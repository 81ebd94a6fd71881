// Launchers of the CUDA routing kernels, on raw pointers and a stream. They include no torch
// header, so scripts/check_cuda_compile.sh compiles the device code with nvcc alone; the tensor
// glue is routing_cuda.cpp. Every launcher is asynchronous on `stream`.
//
// Value errors are reported through `flags`, an int64 device array of 2 * kNumErrors entries:
// flags[2c] becomes 1 when error c happened and flags[2c + 1] holds one offending value. A kernel
// that meets a bad value skips the access it would have made, so nothing reads or writes out of
// bounds; the glue reads the flags once the kernels are queued and raises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lumina {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

enum Error : int {
  kNanProbs = 0,       // router softmax produced NaN
  kBadExpert = 1,      // expert_index outside [0, num_experts)
  kBadSlot = 2,        // slot >= tokens * top_k
  kRepeatedSlot = 3,   // two kept assignments of one expert share a slot (value: the key)
  kBadIndex = 4,       // a row index outside its range
  kRepeatedIndex = 5,  // scatter_tokens: a position twice in one row
  kNanScores = 6,      // MoD scores contain NaN
  kBadPlan = 7,        // assign_index out of range or token_index != assign_index // top_k
  kNumErrors = 8,
};

// Per row of probs (S, E): top-k experts (ties: lower index), weights renormalised over the k,
// and sort keys (expert << 32 | ~bits(prob)) whose ascending order is expert-major, prob-desc.
void launch_topk_select(const float* probs, int64_t S, int64_t E, int64_t k, int64_t* expert, float* weights,
                        int64_t* keys, int64_t* flags, cudaStream_t stream);
// The same for fp64 probabilities (fp64 logits, e.g. gradcheck), without keys: a double does not fit
// beside the expert in 64 bits, so the caller orders the assignments with two stable sorts instead.
void launch_topk_select(const double* probs, int64_t S, int64_t E, int64_t k, int64_t* expert, double* weights,
                        int64_t* flags, cudaStream_t stream);
// slot[order[i]] = rank of i within its expert (i - starts[e]), or -1 past capacity (< 0: none).
void launch_assign_slots(const int64_t* order, const int64_t* expert, const int64_t* starts, int64_t A,
                         int64_t capacity, int64_t* slot, cudaStream_t stream);
// counts[e] += number of i with index[i] == e (and keep[i] >= 0 when keep is given); counts zeroed
// by the caller.
void launch_histogram(const int64_t* index, const int64_t* keep, int64_t n, int64_t E, int64_t* counts,
                      int64_t* flags, cudaStream_t stream);
// d(loss)/d(logits) per row, computed in fp32; out has dtype out_dtype (the logits').
void launch_topk_backward(const float* grad_weights, const float* grad_probs, const float* probs,
                          const int64_t* expert, const float* weights, int64_t S, int64_t E, int64_t k, void* out,
                          DType out_dtype, cudaStream_t stream);
// The same in fp64 throughout (fp64 logits).
void launch_topk_backward(const double* grad_weights, const double* grad_probs, const double* probs,
                          const int64_t* expert, const double* weights, int64_t S, int64_t E, int64_t k, double* out,
                          cudaStream_t stream);
// keys[a] = expert << 32 | slot for kept assignments, INT64_MAX for dropped ones.
void launch_plan_keys(const int64_t* expert, const int64_t* slot, int64_t A, int64_t E, int64_t* keys,
                      int64_t* flags, cudaStream_t stream);
// Flags kRepeatedSlot when two of the first n sorted keys are equal.
void launch_check_unique_sorted(const int64_t* sorted_keys, int64_t n, int64_t* flags, cudaStream_t stream);
// Flags `error` for index values outside [0, limit).
void launch_check_range(const int64_t* index, int64_t n, int64_t limit, int error, int64_t* flags,
                        cudaStream_t stream);
// Flags kBadIndex / kBadPlan unless token_index in [0, S), assign_index in [0, S*k) and they agree.
void launch_check_plan(const int64_t* token_index, const int64_t* assign_index, int64_t N, int64_t S, int64_t k,
                       int64_t* flags, cudaStream_t stream);
// dst row i = src row (i / group) * stride + index[i], rows of row_bytes; index checked against limit.
void launch_gather_rows(const void* src, const int64_t* index, int64_t n, int64_t group, int64_t stride,
                        int64_t limit, int64_t row_bytes, void* dst, int64_t* flags, cudaStream_t stream);
// dst row (i / group) * stride + index[i] = src row i; marks (zeroed int32, one per dst row) find
// repeated positions.
void launch_scatter_rows(const void* src, const int64_t* index, int64_t n, int64_t group, int64_t stride,
                         int64_t limit, int64_t row_bytes, void* dst, int32_t* marks, int64_t* flags,
                         cudaStream_t stream);
// out[t] = sum over r in [offsets[t], offsets[t+1]) of scale(rows[r]) * src[rows[r]], in order of r,
// accumulated in fp32 (fp64 for fp64); scale(i) = weights[weight_index[i]] or 1 when weights is null.
// weights has the dtype of src.
void launch_segment_sum(const void* src, const int64_t* offsets, const int64_t* rows, int64_t num_targets,
                        int64_t D, const void* weights, const int64_t* weight_index, DType dtype, void* out,
                        cudaStream_t stream);
// grad_y[n] = grad[token[n]] * w_y[assign[n]]; grad_w[assign[n]] = <grad[token[n]], y[n]>, summed in
// fp32 (fp64 for fp64) and rounded once to w_dtype, any of the four (grad_w zeroed by the caller).
void launch_unpermute_backward(const void* grad, const void* y, const void* w_y, const int64_t* token,
                               const int64_t* assign, int64_t N, int64_t D, DType dtype, void* grad_y, void* grad_w,
                               DType w_dtype, cudaStream_t stream);
// Per row of scores (B, T): the k largest (ties: lower position), written in ascending position order.
void launch_mod_select(const float* scores, int64_t B, int64_t T, int64_t k, int64_t* out, int64_t* flags,
                       cudaStream_t stream);

}  // namespace cuda
}  // namespace lumina
