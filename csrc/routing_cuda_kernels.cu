// CUDA routing kernels (sm_80, sm_90). Declarations and contracts: routing_cuda_kernels.h.
//
// Half and bfloat16 values are converted with explicit intrinsics only: torch builds extensions
// with __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__.
#include "routing_cuda_kernels.h"

#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace lumina {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

int blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

int row_blocks(int64_t rows) { return static_cast<int>(rows < kMaxBlocks ? (rows < 1 ? 1 : rows) : kMaxBlocks); }

// Threads for a row of `units` elements: a multiple of a warp, at most kThreads.
int row_threads(int64_t units) {
  int64_t t = ((units + 31) / 32) * 32;
  return static_cast<int>(t < 32 ? 32 : (t > kThreads ? kThreads : t));
}

void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(kernel) + " launch failed: " + cudaGetErrorString(err));
}

__device__ __forceinline__ void raise_flag(int64_t* flags, int error, int64_t value) {
  atomicExch(reinterpret_cast<unsigned long long*>(flags + 2 * error), 1ULL);
  atomicExch(reinterpret_cast<unsigned long long*>(flags + 2 * error + 1), static_cast<unsigned long long>(value));
}

__device__ __forceinline__ int64_t global_thread() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Loads to and stores from the accumulation type (fp32, or fp64 for fp64).
template <typename T>
struct Num;
template <>
struct Num<float> {
  using acc = float;
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Num<double> {
  using acc = double;
  __device__ static double load(double v) { return v; }
  __device__ static double store(double v) { return v; }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16(v); }  // round to nearest even
};
template <>
struct Num<__half> {
  using acc = float;
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half(v); }
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename F>
void dispatch_dtype(DType dtype, F f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    case DType::kFloat16: f(__half{}); break;
    default: throw std::invalid_argument("unsupported dtype for a CUDA routing kernel");
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// T is float, or double for fp64 logits; keys (fp32 only) may be null.
template <typename T>
__global__ void topk_select_kernel(const T* probs, int64_t S, int64_t E, int64_t k, int64_t* expert, T* weights,
                                   int64_t* keys, int64_t* flags) {
  for (int64_t s = global_thread(); s < S; s += grid_threads()) {
    const T* row = probs + s * E;
    int64_t* ex = expert + s * k;
    bool nan = false;
    for (int64_t e = 0; e < E; ++e) nan |= isnan(row[e]);
    if (nan) {  // flagged; fill in valid experts so the later kernels stay in bounds
      raise_flag(flags, kNanProbs, s);
      for (int64_t j = 0; j < k; ++j) {
        ex[j] = j;
        weights[s * k + j] = T(0);
        if (keys != nullptr) keys[s * k + j] = j << 32;
      }
      continue;
    }
    T sum = T(0);
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken |= ex[i] == e;
        if (taken) continue;
        if (best < 0 || row[e] > row[best]) best = e;  // strict: a tie keeps the lower index
      }
      ex[j] = best;
      const T p = row[best];
      sum += p;
      if constexpr (std::is_same_v<T, float>) {
        if (keys != nullptr) keys[s * k + j] = (best << 32) | static_cast<int64_t>(~__float_as_uint(p));
      }
    }
    for (int64_t j = 0; j < k; ++j) weights[s * k + j] = row[ex[j]] / sum;
  }
}

__global__ void assign_slots_kernel(const int64_t* order, const int64_t* expert, const int64_t* starts, int64_t A,
                                    int64_t capacity, int64_t* slot) {
  for (int64_t i = global_thread(); i < A; i += grid_threads()) {
    const int64_t a = order[i];
    const int64_t rank = i - starts[expert[a]];
    slot[a] = (capacity < 0 || rank < capacity) ? rank : -1;
  }
}

__global__ void histogram_kernel(const int64_t* index, const int64_t* keep, int64_t n, int64_t E, int64_t* counts,
                                 int64_t* flags, bool block_local) {
  extern __shared__ unsigned int local[];
  if (block_local) {
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) local[e] = 0;
    __syncthreads();
  }
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t e = index[i];
    if (e < 0 || e >= E) {
      raise_flag(flags, kBadExpert, e);
      continue;
    }
    if (keep != nullptr && keep[i] < 0) continue;
    if (block_local) {
      atomicAdd(&local[e], 1u);
    } else {
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + e), 1ULL);
    }
  }
  if (block_local) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
      if (local[e] != 0) atomicAdd(reinterpret_cast<unsigned long long*>(counts + e), static_cast<unsigned long long>(local[e]));
    }
  }
}

// T (float or double) is the dtype of probs, weights and the incoming gradients, and of the sums.
template <typename T, typename OutT>
__global__ void topk_backward_kernel(const T* grad_weights, const T* grad_probs, const T* probs,
                                     const int64_t* expert, const T* weights, int64_t S, int64_t E, int64_t k,
                                     OutT* out) {
  for (int64_t s = global_thread(); s < S; s += grid_threads()) {
    const T* p = probs + s * E;
    const T* gp = grad_probs + s * E;
    const T* gw = grad_weights + s * k;
    const int64_t* ex = expert + s * k;
    T total = T(0), dot = T(0);
    for (int64_t j = 0; j < k; ++j) {
      total += p[ex[j]];
      dot += gw[j] * weights[s * k + j];
    }
    // w_j = p_j / total, so dL/dp_j gains (g_j - sum_i g_i w_i) / total; then softmax backward.
    T inner = T(0);
    for (int64_t e = 0; e < E; ++e) inner += gp[e] * p[e];
    for (int64_t j = 0; j < k; ++j) inner += (gw[j] - dot) / total * p[ex[j]];
    for (int64_t e = 0; e < E; ++e) {
      T g = gp[e];
      for (int64_t j = 0; j < k; ++j)
        if (ex[j] == e) g += (gw[j] - dot) / total;
      out[s * E + e] = Num<OutT>::store(static_cast<typename Num<OutT>::acc>(p[e] * (g - inner)));
    }
  }
}

__global__ void plan_keys_kernel(const int64_t* expert, const int64_t* slot, int64_t A, int64_t E, int64_t* keys,
                                 int64_t* flags) {
  for (int64_t a = global_thread(); a < A; a += grid_threads()) {
    const int64_t e = expert[a], s = slot[a];
    bool bad = false;
    if (e < 0 || e >= E) { raise_flag(flags, kBadExpert, e); bad = true; }
    if (s >= A) { raise_flag(flags, kBadSlot, s); bad = true; }
    keys[a] = (s < 0 || bad) ? LLONG_MAX : ((e << 32) | s);
  }
}

__global__ void check_unique_sorted_kernel(const int64_t* keys, int64_t n, int64_t* flags) {
  for (int64_t i = global_thread() + 1; i < n; i += grid_threads()) {
    if (keys[i] == keys[i - 1]) raise_flag(flags, kRepeatedSlot, keys[i]);
  }
}

__global__ void check_range_kernel(const int64_t* index, int64_t n, int64_t limit, int error, int64_t* flags) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    if (index[i] < 0 || index[i] >= limit) raise_flag(flags, error, index[i]);
  }
}

__global__ void check_plan_kernel(const int64_t* token, const int64_t* assign, int64_t N, int64_t S, int64_t k,
                                  int64_t* flags) {
  for (int64_t n = global_thread(); n < N; n += grid_threads()) {
    const int64_t t = token[n], a = assign[n];
    if (t < 0 || t >= S) raise_flag(flags, kBadIndex, t);
    if (a < 0 || a >= S * k || a / k != t) raise_flag(flags, kBadPlan, a);
  }
}

// One block per destination row; V is the widest vector that divides the row and both bases.
template <typename V>
__global__ void gather_rows_kernel(const V* src, const int64_t* index, int64_t n, int64_t group, int64_t stride,
                                   int64_t limit, int64_t row_vecs, V* dst, int64_t* flags) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t j = index[i];
    if (j < 0 || j >= limit) {
      if (threadIdx.x == 0) raise_flag(flags, kBadIndex, j);
      continue;
    }
    const V* s = src + ((i / group) * stride + j) * row_vecs;
    V* d = dst + i * row_vecs;
    for (int64_t c = threadIdx.x; c < row_vecs; c += blockDim.x) d[c] = s[c];
  }
}

template <typename V>
__global__ void scatter_rows_kernel(const V* src, const int64_t* index, int64_t n, int64_t group, int64_t stride,
                                    int64_t limit, int64_t row_vecs, V* dst, int32_t* marks, int64_t* flags) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t j = index[i];
    if (j < 0 || j >= limit) {
      if (threadIdx.x == 0) raise_flag(flags, kBadIndex, j);
      continue;
    }
    const int64_t row = (i / group) * stride + j;
    if (threadIdx.x == 0 && atomicAdd(marks + row, 1) != 0) raise_flag(flags, kRepeatedIndex, j);
    const V* s = src + i * row_vecs;
    V* d = dst + row * row_vecs;
    for (int64_t c = threadIdx.x; c < row_vecs; c += blockDim.x) d[c] = s[c];
  }
}

template <typename F>
void with_vector_width(const void* a, const void* b, int64_t row_bytes, F f) {
  int64_t width = 16;
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  while (width > 1 && (row_bytes % width != 0 || pa % width != 0 || pb % width != 0)) width /= 2;
  switch (width) {
    case 16: f(uint4{}, width); break;
    case 8: f(uint2{}, width); break;
    case 4: f(uint32_t{}, width); break;
    case 2: f(uint16_t{}, width); break;
    default: f(uint8_t{}, width); break;
  }
}

// One block per target row; each thread sums VEC consecutive columns in source order.
template <typename T, int VEC>
__global__ void segment_sum_kernel(const T* src, const int64_t* offsets, const int64_t* rows, int64_t num_targets,
                                   int64_t D, const T* weights, const int64_t* weight_index, T* out) {
  using Acc = typename Num<T>::acc;
  using P = Pack<T, VEC>;
  const int64_t packs = D / VEC;
  for (int64_t t = blockIdx.x; t < num_targets; t += gridDim.x) {
    const int64_t begin = offsets[t], end = offsets[t + 1];
    for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
      Acc acc[VEC];
#pragma unroll
      for (int u = 0; u < VEC; ++u) acc[u] = Acc(0);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = rows[r];
        const Acc w = weights != nullptr ? Num<T>::load(weights[weight_index[i]]) : Acc(1);
        const P v = reinterpret_cast<const P*>(src + i * D)[c];
#pragma unroll
        for (int u = 0; u < VEC; ++u) acc[u] += Num<T>::load(v.v[u]) * w;
      }
      P o;
#pragma unroll
      for (int u = 0; u < VEC; ++u) o.v[u] = Num<T>::store(acc[u]);
      reinterpret_cast<P*>(out + t * D)[c] = o;
    }
  }
}

template <typename T, typename W>
__global__ void unpermute_backward_kernel(const T* grad, const T* y, const T* w_y, const int64_t* token,
                                          const int64_t* assign, int64_t N, int64_t D, T* grad_y, W* grad_w) {
  using Acc = typename Num<T>::acc;
  __shared__ Acc partial[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* g = grad + token[n] * D;
    const T* yr = y + n * D;
    const Acc w = Num<T>::load(w_y[assign[n]]);
    Acc dot = Acc(0);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const Acc gd = Num<T>::load(g[d]);
      grad_y[n * D + d] = Num<T>::store(gd * w);
      dot += gd * Num<T>::load(yr[d]);
    }
    dot = warp_sum(dot);
    if (lane == 0) partial[warp] = dot;
    __syncthreads();
    if (warp == 0) {
      Acc v = lane < warps ? partial[lane] : Acc(0);
      v = warp_sum(v);
      if (lane == 0) grad_w[assign[n]] = Num<W>::store(static_cast<typename Num<W>::acc>(v));
    }
    __syncthreads();
  }
}

// Unique 64-bit rank key: score order (-0.0 as +0.0), then lower position first.
__device__ __forceinline__ uint64_t mod_key(float v, int64_t t) {
  uint32_t bits = __float_as_uint(v);
  if ((bits & 0x7FFFFFFFu) == 0) bits = 0;
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(ordered) << 32) | static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(t));
}

// One block per sequence: radix-select the k-th largest key (8 passes of 8 bits), then write the
// keys at or above it in position order with a block-wide scan.
template <int BLOCK>
__global__ void mod_select_kernel(const float* scores, int64_t B, int64_t T, int64_t k, int64_t* out,
                                  int64_t* flags) {
  using Scan = cub::BlockScan<int, BLOCK>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ unsigned int hist[256];
  __shared__ uint64_t chosen_prefix;
  __shared__ int64_t chosen_remaining;
  __shared__ int64_t written;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const float* row = scores + b * T;
    for (int64_t t = threadIdx.x; t < T; t += BLOCK)
      if (isnan(row[t])) raise_flag(flags, kNanScores, b);
    uint64_t prefix = 0, mask = 0;
    int64_t remaining = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int d = threadIdx.x; d < 256; d += BLOCK) hist[d] = 0;
      __syncthreads();
      for (int64_t t = threadIdx.x; t < T; t += BLOCK) {
        const uint64_t key = mod_key(row[t], t);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFF], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int64_t above = 0;
        int d = 255;
        for (; d > 0; --d) {
          if (above + hist[d] >= remaining) break;
          above += hist[d];
        }
        chosen_prefix = prefix | (static_cast<uint64_t>(d) << shift);
        chosen_remaining = remaining - above;
      }
      __syncthreads();
      prefix = chosen_prefix;
      remaining = chosen_remaining;
      mask |= static_cast<uint64_t>(0xFF) << shift;
    }
    const uint64_t kth = prefix;  // keys are unique, so exactly k are >= kth
    if (threadIdx.x == 0) written = 0;
    __syncthreads();
    for (int64_t start = 0; start < T; start += BLOCK) {
      const int64_t t = start + threadIdx.x;
      const int selected = (t < T && mod_key(row[t], t) >= kth) ? 1 : 0;
      int offset = 0, total = 0;
      Scan(scan_storage).ExclusiveSum(selected, offset, total);
      const int64_t base = written;
      if (selected && base + offset < k) out[b * k + base + offset] = t;
      __syncthreads();
      if (threadIdx.x == 0) written = base + total;
      __syncthreads();
    }
  }
}

}  // namespace

void launch_topk_select(const float* probs, int64_t S, int64_t E, int64_t k, int64_t* expert, float* weights,
                        int64_t* keys, int64_t* flags, cudaStream_t stream) {
  if (S == 0) return;
  topk_select_kernel<float><<<blocks_for(S), kThreads, 0, stream>>>(probs, S, E, k, expert, weights, keys, flags);
  check_launch("topk_select");
}

void launch_topk_select(const double* probs, int64_t S, int64_t E, int64_t k, int64_t* expert, double* weights,
                        int64_t* flags, cudaStream_t stream) {
  if (S == 0) return;
  topk_select_kernel<double><<<blocks_for(S), kThreads, 0, stream>>>(probs, S, E, k, expert, weights, nullptr,
                                                                     flags);
  check_launch("topk_select");
}

void launch_assign_slots(const int64_t* order, const int64_t* expert, const int64_t* starts, int64_t A,
                         int64_t capacity, int64_t* slot, cudaStream_t stream) {
  if (A == 0) return;
  assign_slots_kernel<<<blocks_for(A), kThreads, 0, stream>>>(order, expert, starts, A, capacity, slot);
  check_launch("assign_slots");
}

void launch_histogram(const int64_t* index, const int64_t* keep, int64_t n, int64_t E, int64_t* counts,
                      int64_t* flags, cudaStream_t stream) {
  if (n == 0) return;
  const bool block_local = E <= 8192;  // 32 KiB of shared counters at most
  const size_t shared = block_local ? static_cast<size_t>(E) * sizeof(unsigned int) : 0;
  const int blocks = blocks_for(n) < 1024 ? blocks_for(n) : 1024;
  histogram_kernel<<<blocks, kThreads, shared, stream>>>(index, keep, n, E, counts, flags, block_local);
  check_launch("histogram");
}

void launch_topk_backward(const float* grad_weights, const float* grad_probs, const float* probs,
                          const int64_t* expert, const float* weights, int64_t S, int64_t E, int64_t k, void* out,
                          DType out_dtype, cudaStream_t stream) {
  if (S == 0) return;
  dispatch_dtype(out_dtype, [&](auto tag) {
    using OutT = decltype(tag);
    topk_backward_kernel<float, OutT><<<blocks_for(S), kThreads, 0, stream>>>(
        grad_weights, grad_probs, probs, expert, weights, S, E, k, static_cast<OutT*>(out));
  });
  check_launch("topk_backward");
}

void launch_topk_backward(const double* grad_weights, const double* grad_probs, const double* probs,
                          const int64_t* expert, const double* weights, int64_t S, int64_t E, int64_t k, double* out,
                          cudaStream_t stream) {
  if (S == 0) return;
  topk_backward_kernel<double, double><<<blocks_for(S), kThreads, 0, stream>>>(grad_weights, grad_probs, probs,
                                                                               expert, weights, S, E, k, out);
  check_launch("topk_backward");
}

void launch_plan_keys(const int64_t* expert, const int64_t* slot, int64_t A, int64_t E, int64_t* keys,
                      int64_t* flags, cudaStream_t stream) {
  if (A == 0) return;
  plan_keys_kernel<<<blocks_for(A), kThreads, 0, stream>>>(expert, slot, A, E, keys, flags);
  check_launch("plan_keys");
}

void launch_check_unique_sorted(const int64_t* sorted_keys, int64_t n, int64_t* flags, cudaStream_t stream) {
  if (n < 2) return;
  check_unique_sorted_kernel<<<blocks_for(n), kThreads, 0, stream>>>(sorted_keys, n, flags);
  check_launch("check_unique_sorted");
}

void launch_check_range(const int64_t* index, int64_t n, int64_t limit, int error, int64_t* flags,
                        cudaStream_t stream) {
  if (n == 0) return;
  check_range_kernel<<<blocks_for(n), kThreads, 0, stream>>>(index, n, limit, error, flags);
  check_launch("check_range");
}

void launch_check_plan(const int64_t* token_index, const int64_t* assign_index, int64_t N, int64_t S, int64_t k,
                       int64_t* flags, cudaStream_t stream) {
  if (N == 0) return;
  check_plan_kernel<<<blocks_for(N), kThreads, 0, stream>>>(token_index, assign_index, N, S, k, flags);
  check_launch("check_plan");
}

void launch_gather_rows(const void* src, const int64_t* index, int64_t n, int64_t group, int64_t stride,
                        int64_t limit, int64_t row_bytes, void* dst, int64_t* flags, cudaStream_t stream) {
  if (n == 0 || row_bytes == 0) return;
  with_vector_width(src, dst, row_bytes, [&](auto tag, int64_t width) {
    using V = decltype(tag);
    const int64_t vecs = row_bytes / width;
    gather_rows_kernel<V><<<row_blocks(n), row_threads(vecs), 0, stream>>>(
        static_cast<const V*>(src), index, n, group, stride, limit, vecs, static_cast<V*>(dst), flags);
  });
  check_launch("gather_rows");
}

void launch_scatter_rows(const void* src, const int64_t* index, int64_t n, int64_t group, int64_t stride,
                         int64_t limit, int64_t row_bytes, void* dst, int32_t* marks, int64_t* flags,
                         cudaStream_t stream) {
  if (n == 0 || row_bytes == 0) return;
  with_vector_width(src, dst, row_bytes, [&](auto tag, int64_t width) {
    using V = decltype(tag);
    const int64_t vecs = row_bytes / width;
    scatter_rows_kernel<V><<<row_blocks(n), row_threads(vecs), 0, stream>>>(
        static_cast<const V*>(src), index, n, group, stride, limit, vecs, static_cast<V*>(dst), marks, flags);
  });
  check_launch("scatter_rows");
}

void launch_segment_sum(const void* src, const int64_t* offsets, const int64_t* rows, int64_t num_targets,
                        int64_t D, const void* weights, const int64_t* weight_index, DType dtype, void* out,
                        cudaStream_t stream) {
  if (num_targets == 0 || D == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const T* s = static_cast<const T*>(src);
    const T* w = static_cast<const T*>(weights);
    T* o = static_cast<T*>(out);
    if (D % kVec == 0 && aligned(src) && aligned(out)) {
      segment_sum_kernel<T, kVec><<<row_blocks(num_targets), row_threads(D / kVec), 0, stream>>>(
          s, offsets, rows, num_targets, D, w, weight_index, o);
    } else {
      segment_sum_kernel<T, 1><<<row_blocks(num_targets), row_threads(D), 0, stream>>>(
          s, offsets, rows, num_targets, D, w, weight_index, o);
    }
  });
  check_launch("segment_sum");
}

void launch_unpermute_backward(const void* grad, const void* y, const void* w_y, const int64_t* token,
                               const int64_t* assign, int64_t N, int64_t D, DType dtype, void* grad_y, void* grad_w,
                               DType w_dtype, cudaStream_t stream) {
  if (N == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_dtype(w_dtype, [&](auto wtag) {
      using W = decltype(wtag);
      unpermute_backward_kernel<T, W><<<row_blocks(N), kThreads, 0, stream>>>(
          static_cast<const T*>(grad), static_cast<const T*>(y), static_cast<const T*>(w_y), token, assign, N, D,
          static_cast<T*>(grad_y), static_cast<W*>(grad_w));
    });
  });
  check_launch("unpermute_backward");
}

void launch_mod_select(const float* scores, int64_t B, int64_t T, int64_t k, int64_t* out, int64_t* flags,
                       cudaStream_t stream) {
  if (B == 0) return;
  mod_select_kernel<kThreads><<<row_blocks(B), kThreads, 0, stream>>>(scores, B, T, k, out, flags);
  check_launch("mod_select");
}

}  // namespace cuda
}  // namespace lumina
