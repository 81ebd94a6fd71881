// CPU routing kernels. Each matches lumina/ops/routing_reference.py: integer outputs bit for bit,
// floats within the tolerances in docs/kernels.md. Parallel with OpenMP over rows (tokens,
// experts or sequences) once the work is large enough to pay for the thread start.
//
// Built with -ffp-contract=off so that a multiply-add rounds like the reference's separate
// multiply and add: fp32 sums then match the reference bit for bit when they add in its order.
#include "check.h"
#include "routing.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace lumina {
namespace {

constexpr int64_t kParallelRows = 256;      // fewer rows than this run on one thread
constexpr int64_t kParallelElems = 1 << 15;  // likewise for element-wise loops

// Order-preserving unsigned key of a probability: for p >= +0.0 the IEEE bits grow with p, so the
// complemented bits sort ascending in order of descending probability.
template <typename C>
struct DescKey;
template <>
struct DescKey<float> {
  using type = uint32_t;
  static type of(float p) { uint32_t b; std::memcpy(&b, &p, 4); return ~b; }
};
template <>
struct DescKey<double> {
  using type = uint64_t;
  static type of(double p) { uint64_t b; std::memcpy(&b, &p, 8); return ~b; }
};

// Stable LSD radix sort of (key, value) pairs, 8 bits a pass; a pass whose digit is the same for
// every key is skipped. Stability keeps equal keys in input order, which is token order here.
template <typename K>
void radix_sort_pairs(K* keys, int64_t* vals, K* key_tmp, int64_t* val_tmp, int64_t n) {
  if (n < 2) return;
  if (n <= 32) {  // insertion sort is stable and cheaper for tiny buckets
    for (int64_t i = 1; i < n; ++i) {
      K key = keys[i];
      int64_t val = vals[i], j = i;
      for (; j > 0 && keys[j - 1] > key; --j) { keys[j] = keys[j - 1]; vals[j] = vals[j - 1]; }
      keys[j] = key;
      vals[j] = val;
    }
    return;
  }
  K *src_k = keys, *dst_k = key_tmp;
  int64_t *src_v = vals, *dst_v = val_tmp;
  for (int shift = 0; shift < static_cast<int>(8 * sizeof(K)); shift += 8) {
    int64_t hist[256] = {0};
    for (int64_t i = 0; i < n; ++i) ++hist[(src_k[i] >> shift) & 0xFF];
    if (hist[(src_k[0] >> shift) & 0xFF] == n) continue;
    int64_t sum = 0;
    for (int d = 0; d < 256; ++d) { int64_t c = hist[d]; hist[d] = sum; sum += c; }
    for (int64_t i = 0; i < n; ++i) {
      int64_t at = hist[(src_k[i] >> shift) & 0xFF]++;
      dst_k[at] = src_k[i];
      dst_v[at] = src_v[i];
    }
    std::swap(src_k, dst_k);
    std::swap(src_v, dst_v);
  }
  if (src_k != keys) {
    std::memcpy(keys, src_k, n * sizeof(K));
    std::memcpy(vals, src_v, n * sizeof(int64_t));
  }
}

// Top-k of one probability row: higher first, equal probabilities by lower expert index.
template <typename C>
void select_topk(const C* row, int64_t E, int64_t k, int64_t* expert, C* top_p) {
  if (E <= 64) {
    uint64_t taken = 0;
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        if ((taken >> e) & 1) continue;
        if (best < 0 || row[e] > row[best]) best = e;  // strict: a tie keeps the lower index
      }
      taken |= uint64_t{1} << best;
      expert[j] = best;
      top_p[j] = row[best];
    }
    return;
  }
  std::vector<int64_t> idx(E);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [row](int64_t a, int64_t b) {
    return row[a] > row[b] || (row[a] == row[b] && a < b);
  });
  for (int64_t j = 0; j < k; ++j) { expert[j] = idx[j]; top_p[j] = row[idx[j]]; }
}

template <typename C>
void route_rows(const C* probs, int64_t S, int64_t E, int64_t k, int64_t capacity, int64_t* expert,
                C* weights, int64_t* slot) {
  const int64_t A = S * k;
  std::vector<C> top_p(A);
  int nan_rows = 0;
#pragma omp parallel for reduction(+ : nan_rows) if (S * E > kParallelElems)
  for (int64_t s = 0; s < S; ++s) {
    const C* row = probs + s * E;
    bool nan = false;
    for (int64_t e = 0; e < E; ++e) nan |= std::isnan(row[e]);
    if (nan) { ++nan_rows; continue; }
    select_topk(row, E, k, expert + s * k, top_p.data() + s * k);
    C sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += top_p[s * k + j];
    for (int64_t j = 0; j < k; ++j) weights[s * k + j] = top_p[s * k + j] / sum;
  }
  if (nan_rows > 0) {
    fail("router logits contain NaN or +Inf (or a row of only -Inf), so the router softmax is NaN in ",
         nan_rows, " of ", S, " rows; check the inputs and the learning rate");
  }

  // Counting sort by expert (stable, so token order within an expert), then each expert's bucket
  // by descending probability: the rank in the bucket is the slot.
  std::vector<int64_t> counts(E, 0), starts(E + 1, 0);
  for (int64_t a = 0; a < A; ++a) ++counts[expert[a]];
  for (int64_t e = 0; e < E; ++e) starts[e + 1] = starts[e] + counts[e];
  std::vector<int64_t> order(A), order_tmp(A), cursor(starts.begin(), starts.end() - 1);
  using K = typename DescKey<C>::type;
  std::vector<K> keys(A), keys_tmp(A);
  for (int64_t a = 0; a < A; ++a) {
    int64_t at = cursor[expert[a]]++;
    order[at] = a;
    keys[at] = DescKey<C>::of(top_p[a]);
  }
#pragma omp parallel for schedule(dynamic, 1) if (A > 4096)
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = starts[e], n = counts[e];
    radix_sort_pairs(keys.data() + b, order.data() + b, keys_tmp.data() + b, order_tmp.data() + b, n);
    for (int64_t r = 0; r < n; ++r) slot[order[b + r]] = (capacity < 0 || r < capacity) ? r : -1;
  }
}

template <typename C, typename G>
void route_backward_rows(const C* gw, const C* gp, const C* probs, const int64_t* expert, const C* weights,
                         int64_t S, int64_t E, int64_t k, G* out) {
#pragma omp parallel if (S * E > kParallelElems)
  {
    std::vector<C> grad_p(E);
#pragma omp for
    for (int64_t s = 0; s < S; ++s) {
      const C* p = probs + s * E;
      const int64_t* ex = expert + s * k;
      C total = 0, dot = 0;
      for (int64_t j = 0; j < k; ++j) { total += p[ex[j]]; dot += gw[s * k + j] * weights[s * k + j]; }
      for (int64_t e = 0; e < E; ++e) grad_p[e] = gp[s * E + e];
      for (int64_t j = 0; j < k; ++j) grad_p[ex[j]] += (gw[s * k + j] - dot) / total;
      C inner = 0;
      for (int64_t e = 0; e < E; ++e) inner += grad_p[e] * p[e];
      for (int64_t e = 0; e < E; ++e) out[s * E + e] = static_cast<G>(p[e] * (grad_p[e] - inner));
    }
  }
}

// Rows of `index` grouped by target: CSR offsets over [0, num_targets) and, for each target, the
// source rows in ascending order (the order index_add adds them in).
struct Csr {
  std::vector<int64_t> offsets, rows;
};

Csr group_by_target(const int64_t* index, int64_t n, int64_t num_targets) {
  Csr csr;
  csr.offsets.assign(num_targets + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++csr.offsets[index[i] + 1];
  for (int64_t t = 0; t < num_targets; ++t) csr.offsets[t + 1] += csr.offsets[t];
  std::vector<int64_t> cursor(csr.offsets.begin(), csr.offsets.end() - 1);
  csr.rows.resize(n);
  for (int64_t i = 0; i < n; ++i) csr.rows[cursor[index[i]]++] = i;
  return csr;
}

// out[t] = sum over source rows i grouped at t of scale(i) * src[i]; rows with no source are zero.
template <typename T, typename Scale>
void sum_rows(const T* src, const Csr& csr, int64_t num_targets, int64_t D, T* out, Scale scale) {
  using acc_t = at::opmath_type<T>;
#pragma omp parallel if (num_targets * D > kParallelElems)
  {
    std::vector<acc_t> acc(D);
#pragma omp for
    for (int64_t t = 0; t < num_targets; ++t) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t r = csr.offsets[t]; r < csr.offsets[t + 1]; ++r) {
        const int64_t i = csr.rows[r];
        const T* row = src + i * D;
        const acc_t w = scale(i);
        for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<acc_t>(row[d]) * w;
      }
      T* dst = out + t * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(acc[d]);
    }
  }
}

void copy_rows(const char* src, const int64_t* index, int64_t n, int64_t row_bytes, char* dst) {
#pragma omp parallel for if (n * row_bytes > 4 * kParallelElems)
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * row_bytes, src + index[i] * row_bytes, row_bytes);
}

// grad_y[n] = grad_out[tok[n]] * w[asg[n]]; grad_w[asg[n]] = <grad_out[tok[n]], y[n]>.
template <typename T, typename W>
void unpermute_backward_rows(const T* g, const T* y, const T* w, const int64_t* tok, const int64_t* asg, int64_t N,
                             int64_t D, T* grad_y, W* grad_w) {
  using acc_t = at::opmath_type<T>;
#pragma omp parallel for if (N * D > kParallelElems)
  for (int64_t n = 0; n < N; ++n) {
    const T* grow = g + tok[n] * D;
    const T* yrow = y + n * D;
    const acc_t wn = static_cast<acc_t>(w[asg[n]]);
    acc_t dot = 0;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t gd = static_cast<acc_t>(grow[d]);
      grad_y[n * D + d] = static_cast<T>(gd * wn);
      dot += gd * static_cast<acc_t>(yrow[d]);
    }
    grad_w[asg[n]] = static_cast<W>(dot);  // assign_index is unique within a plan
  }
}

// out[b, index[b, i]] += grad[b, i]; a sequence's rows stay on one thread, so repeats add in order.
template <typename T>
void add_gathered_rows(const T* grad, const int64_t* index, int64_t B, int64_t k, int64_t T_len, int64_t D, T* out) {
  using acc_t = at::opmath_type<T>;
#pragma omp parallel for if (B > 1 && B * k * D > kParallelElems)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < k; ++i) {
      T* dst = out + (b * T_len + index[b * k + i]) * D;
      const T* src = grad + (b * k + i) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(static_cast<acc_t>(dst[d]) + static_cast<acc_t>(src[d]));
    }
  }
}

std::string bound(const char* what, int64_t n) { return "[0, " + std::string(what) + "=" + std::to_string(n) + ")"; }

}  // namespace

std::vector<at::Tensor> topk_route_cpu(const at::Tensor& logits, int64_t top_k, int64_t capacity) {
  require_dim(logits, 2, "router logits", "(tokens, experts)");
  require_float(logits, "router logits");
  const int64_t S = logits.size(0), E = logits.size(1);
  if (top_k < 1 || top_k > E) fail("top_k=", top_k, " is invalid: must be in [1, num_experts=", E, "]");
  if (capacity == 0 || capacity < -1) fail("capacity=", capacity, " is invalid: must be >= 1, or -1 for dropless");
  const auto cdtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // The same ATen softmax call as the reference, so the probabilities (and every decision taken
  // on them) are bit-identical.
  at::Tensor probs = at::softmax(logits.to(cdtype), -1).contiguous();
  at::Tensor expert = at::empty({S, top_k}, logits.options().dtype(at::kLong));
  at::Tensor weights = at::empty({S, top_k}, logits.options().dtype(cdtype));
  at::Tensor slot = at::empty({S, top_k}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(cdtype, "topk_route_cpu", [&] {
    route_rows<scalar_t>(probs.const_data_ptr<scalar_t>(), S, E, top_k, capacity, expert.data_ptr<int64_t>(),
                         weights.data_ptr<scalar_t>(), slot.data_ptr<int64_t>());
  });
  return {expert, weights, slot, probs};
}

at::Tensor topk_route_backward_cpu(const at::Tensor& grad_weights, const at::Tensor& grad_probs,
                                   const at::Tensor& probs, const at::Tensor& expert_index,
                                   const at::Tensor& weights, at::ScalarType logits_dtype) {
  const int64_t S = probs.size(0), E = probs.size(1), k = expert_index.size(1);
  auto gw = grad_weights.to(probs.scalar_type()).contiguous();
  auto gp = grad_probs.to(probs.scalar_type()).contiguous();
  auto p = probs.contiguous();
  auto ex = expert_index.contiguous();
  auto w = weights.contiguous();
  at::Tensor out = at::empty({S, E}, probs.options().dtype(logits_dtype));
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "topk_route_backward_cpu", [&] {
    using C = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits_dtype, "topk_route_backward_cpu_out", [&] {
      route_backward_rows<C, scalar_t>(gw.const_data_ptr<C>(), gp.const_data_ptr<C>(), p.const_data_ptr<C>(),
                                       ex.const_data_ptr<int64_t>(), w.const_data_ptr<C>(), S, E, k,
                                       out.data_ptr<scalar_t>());
    });
  });
  return out;
}

std::vector<at::Tensor> dispatch_plan_cpu(const at::Tensor& expert_index_in, const at::Tensor& slot_in,
                                          int64_t num_experts) {
  require_dim(expert_index_in, 2, "expert_index", "(tokens, top_k)");
  require_long(expert_index_in, "expert_index");
  require_long(slot_in, "slot");
  if (slot_in.sizes() != expert_index_in.sizes()) {
    fail("slot has shape ", slot_in.sizes(), " but expert_index has shape ", expert_index_in.sizes(), ": they must match");
  }
  if (num_experts < 1) fail("num_experts=", num_experts, " is invalid: must be >= 1");
  auto ex_t = expert_index_in.contiguous();
  auto sl_t = slot_in.contiguous();
  const int64_t k = ex_t.size(1), A = ex_t.numel();
  const int64_t* ex = ex_t.const_data_ptr<int64_t>();
  const int64_t* sl = sl_t.const_data_ptr<int64_t>();
  require_range(ex, A, 0, num_experts, "expert_index", bound("num_experts", num_experts));
  std::vector<int64_t> counts(num_experts, 0), starts(num_experts + 1, 0);
  for (int64_t a = 0; a < A; ++a) {
    if (sl[a] >= A) fail("slot holds ", sl[a], " at flat position ", a, ": must be in [0, tokens * top_k=", A, "), or < 0 for dropped");
    if (sl[a] >= 0) ++counts[ex[a]];
  }
  for (int64_t e = 0; e < num_experts; ++e) starts[e + 1] = starts[e] + counts[e];
  const int64_t N = starts[num_experts];
  at::Tensor assign = at::empty({N}, ex_t.options());
  int64_t* out = assign.data_ptr<int64_t>();
  // Capacity slots are dense (0..n-1 per expert), so each kept assignment goes straight to
  // starts[e] + slot. Any other unique slots take the sorting path.
  std::vector<char> filled(N, 0);
  bool dense = true;
  for (int64_t a = 0; a < A && dense; ++a) {
    if (sl[a] < 0) continue;
    const int64_t e = ex[a];
    if (sl[a] >= counts[e]) { dense = false; break; }
    const int64_t at = starts[e] + sl[a];
    if (filled[at]) fail("slot repeats the value ", sl[a], " within expert ", e, ": each kept assignment of an expert needs its own slot");
    filled[at] = 1;
    out[at] = a;
  }
  if (!dense) {
    std::vector<int64_t> cursor(starts.begin(), starts.end() - 1);
    for (int64_t a = 0; a < A; ++a)
      if (sl[a] >= 0) out[cursor[ex[a]]++] = a;
    for (int64_t e = 0; e < num_experts; ++e) {
      int64_t* b = out + starts[e];
      std::sort(b, b + counts[e], [sl](int64_t x, int64_t y) { return sl[x] < sl[y]; });
      for (int64_t i = 1; i < counts[e]; ++i)
        if (sl[b[i]] == sl[b[i - 1]]) fail("slot repeats the value ", sl[b[i]], " within expert ", e, ": each kept assignment of an expert needs its own slot");
    }
  }
  at::Tensor token = at::empty({N}, ex_t.options());
  int64_t* tok = token.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) tok[i] = out[i] / k;
  at::Tensor counts_t = at::empty({num_experts}, ex_t.options());
  std::copy(counts.begin(), counts.end(), counts_t.data_ptr<int64_t>());
  return {token, assign, counts_t};
}

at::Tensor permute_cpu(const at::Tensor& x_in, const at::Tensor& token_index_in) {
  auto x = x_in.contiguous();
  auto ti = token_index_in.contiguous();
  const int64_t S = x.size(0), D = x.size(1), N = ti.numel();
  const int64_t* tok = ti.const_data_ptr<int64_t>();
  require_range(tok, N, 0, S, "token_index", bound("num_tokens", S));
  at::Tensor out = at::empty({N, D}, x.options());
  copy_rows(static_cast<const char*>(x.const_data_ptr()), tok, N, D * x.element_size(),
            static_cast<char*>(out.data_ptr()));
  return out;
}

at::Tensor permute_backward_cpu(const at::Tensor& grad_in, const at::Tensor& token_index_in, int64_t num_tokens) {
  auto grad = grad_in.contiguous();
  auto ti = token_index_in.contiguous();
  const int64_t N = ti.numel(), D = grad.size(1);
  const int64_t* tok = ti.const_data_ptr<int64_t>();
  require_range(tok, N, 0, num_tokens, "token_index", bound("num_tokens", num_tokens));
  Csr csr = group_by_target(tok, N, num_tokens);
  at::Tensor out = at::empty({num_tokens, D}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "permute_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sum_rows(grad.const_data_ptr<scalar_t>(), csr, num_tokens, D, out.data_ptr<scalar_t>(),
             [](int64_t) { return acc_t(1); });
  });
  return out;
}

namespace {
void check_plan_rows(const int64_t* tok, const int64_t* asg, int64_t N, int64_t S, int64_t k) {
  require_range(tok, N, 0, S, "token_index", bound("num_tokens", S));
  require_range(asg, N, 0, S * k, "assign_index", bound("tokens * top_k", S * k));
  for (int64_t n = 0; n < N; ++n)
    if (asg[n] / k != tok[n]) fail("token_index[", n, "]=", tok[n], " does not match assign_index[", n, "]=", asg[n], " // top_k=", k, ": the plan is inconsistent");
}
}  // namespace

at::Tensor unpermute_cpu(const at::Tensor& y_in, const at::Tensor& token_index_in, const at::Tensor& assign_index_in,
                         const at::Tensor& weights_in, int64_t num_tokens) {
  auto y = y_in.contiguous();
  auto ti = token_index_in.contiguous();
  auto ai = assign_index_in.contiguous();
  auto w = weights_in.contiguous();
  const int64_t N = ti.numel(), D = y.size(1), k = w.size(1);
  const int64_t* tok = ti.const_data_ptr<int64_t>();
  const int64_t* asg = ai.const_data_ptr<int64_t>();
  check_plan_rows(tok, asg, N, num_tokens, k);
  Csr csr = group_by_target(tok, N, num_tokens);
  at::Tensor out = at::empty({num_tokens, D}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_cpu", [&] {
    using T = scalar_t;
    using acc_t = at::opmath_type<T>;
    // As in the reference, a weight is first rounded to y's dtype.
    auto w_t = w.to(y.scalar_type()).contiguous();
    const T* wp = w_t.const_data_ptr<T>();
    sum_rows(y.const_data_ptr<T>(), csr, num_tokens, D, out.data_ptr<T>(),
             [wp, asg](int64_t n) { return static_cast<acc_t>(wp[asg[n]]); });
  });
  return out;
}

std::vector<at::Tensor> unpermute_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& y_in,
                                               const at::Tensor& token_index_in, const at::Tensor& assign_index_in,
                                               const at::Tensor& weights_in) {
  auto g = grad_out_in.to(y_in.scalar_type()).contiguous();
  auto y = y_in.contiguous();
  auto ti = token_index_in.contiguous();
  auto ai = assign_index_in.contiguous();
  auto w = weights_in.contiguous();
  const int64_t N = ti.numel(), D = y.size(1), S = g.size(0), k = w.size(1);
  const int64_t* tok = ti.const_data_ptr<int64_t>();
  const int64_t* asg = ai.const_data_ptr<int64_t>();
  check_plan_rows(tok, asg, N, S, k);
  at::Tensor grad_y = at::empty({N, D}, y.options());
  at::Tensor grad_w = at::zeros({S * k}, w.options());
  auto w_y = w.to(y.scalar_type()).contiguous();  // as in the reference, weights in y's dtype
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "unpermute_backward_cpu", [&] {
    using T = scalar_t;
    // grad_w in the weights' dtype, each entry rounded once from the acc_t dot product.
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "unpermute_backward_cpu_w", [&] {
      unpermute_backward_rows(g.const_data_ptr<T>(), y.const_data_ptr<T>(), w_y.const_data_ptr<T>(), tok, asg, N, D,
                              grad_y.data_ptr<T>(), grad_w.data_ptr<scalar_t>());
    });
  });
  return {grad_y, grad_w.view_as(w)};
}

at::Tensor expert_histogram_cpu(const at::Tensor& expert_index_in, int64_t num_experts) {
  if (num_experts < 1) fail("num_experts=", num_experts, " is invalid: must be >= 1");
  auto ex_t = expert_index_in.to(at::kLong).contiguous();
  const int64_t A = ex_t.numel();
  const int64_t* ex = ex_t.const_data_ptr<int64_t>();
  require_range(ex, A, 0, num_experts, "expert_index", bound("num_experts", num_experts));
  at::Tensor counts = at::zeros({num_experts}, ex_t.options());
  int64_t* c = counts.data_ptr<int64_t>();
#pragma omp parallel if (A > kParallelElems)
  {
    std::vector<int64_t> local(num_experts, 0);
#pragma omp for nowait
    for (int64_t a = 0; a < A; ++a) ++local[ex[a]];
#pragma omp critical
    for (int64_t e = 0; e < num_experts; ++e) c[e] += local[e];
  }
  return counts;
}

at::Tensor mod_select_cpu(const at::Tensor& scores_in, int64_t k) {
  require_dim(scores_in, 2, "MoD scores", "(batch, seq)");
  require_float(scores_in, "MoD scores");
  const int64_t B = scores_in.size(0), T = scores_in.size(1);
  if (k < 1 || k > T) fail("MoD k=", k, " is invalid: must be in [1, seq_len=", T, "]");
  // The reference ranks scores.float(): fp64 scores are rounded to fp32 first, as here.
  auto scores = scores_in.to(at::kFloat).contiguous();
  const float* sp = scores.const_data_ptr<float>();
  at::Tensor out = at::empty({B, k}, scores.options().dtype(at::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  int nan_rows = 0;
#pragma omp parallel reduction(+ : nan_rows) if (B * T > kParallelElems && B > 1)
  {
    std::vector<int64_t> idx(T);
#pragma omp for
    for (int64_t b = 0; b < B; ++b) {
      const float* v = sp + b * T;
      bool nan = false;
      for (int64_t t = 0; t < T; ++t) nan |= std::isnan(v[t]);
      if (nan) { ++nan_rows; continue; }
      std::iota(idx.begin(), idx.end(), 0);
      // (score desc, position asc) is a strict total order, so the k selected are unique.
      auto before = [v](int64_t a, int64_t c) { return v[a] > v[c] || (v[a] == v[c] && a < c); };
      if (k < T) std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
      std::sort(idx.begin(), idx.begin() + k);
      std::copy(idx.begin(), idx.begin() + k, op + b * k);
    }
  }
  if (nan_rows > 0) fail("MoD scores contain NaN in ", nan_rows, " of ", B, " rows; check the inputs and the learning rate");
  return out;
}

at::Tensor gather_tokens_cpu(const at::Tensor& x_in, const at::Tensor& index_in) {
  auto x = x_in.contiguous();
  auto index = index_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), k = index.size(1);
  const int64_t* ip = index.const_data_ptr<int64_t>();
  require_range(ip, B * k, 0, T, "index", bound("seq_len", T));
  std::vector<int64_t> rows(B * k);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < k; ++i) rows[b * k + i] = b * T + ip[b * k + i];
  at::Tensor out = at::empty({B, k, D}, x.options());
  copy_rows(static_cast<const char*>(x.const_data_ptr()), rows.data(), B * k, D * x.element_size(),
            static_cast<char*>(out.data_ptr()));
  return out;
}

at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad_in, const at::Tensor& index_in, int64_t seq_len) {
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  const int64_t B = grad.size(0), k = grad.size(1), D = grad.size(2);
  const int64_t* ip = index.const_data_ptr<int64_t>();
  require_range(ip, B * k, 0, seq_len, "index", bound("seq_len", seq_len));
  at::Tensor out = at::zeros({B, seq_len, D}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "gather_tokens_backward_cpu", [&] {
    add_gathered_rows(grad.const_data_ptr<scalar_t>(), ip, B, k, seq_len, D, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor scatter_tokens_cpu(const at::Tensor& x_in, const at::Tensor& index_in, const at::Tensor& values_in) {
  auto index = index_in.contiguous();
  auto values = values_in.contiguous();
  at::Tensor out = x_in.contiguous().clone();
  const int64_t B = out.size(0), T = out.size(1), D = out.size(2), k = index.size(1);
  const int64_t* ip = index.const_data_ptr<int64_t>();
  require_range(ip, B * k, 0, T, "index", bound("seq_len", T));
  int64_t dup_row = -1;
#pragma omp parallel if (B > 1 && B * k * D > kParallelElems)
  {
    std::vector<char> seen(T);
#pragma omp for reduction(max : dup_row)
    for (int64_t b = 0; b < B; ++b) {
      std::fill(seen.begin(), seen.end(), 0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t t = ip[b * k + i];
        if (seen[t]) dup_row = std::max(dup_row, b);
        seen[t] = 1;
      }
    }
  }
  if (dup_row >= 0) fail("index repeats a position in row ", dup_row, ": scatter_tokens needs distinct positions per row");
  std::vector<int64_t> rows(B * k);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < k; ++i) rows[b * k + i] = b * T + ip[b * k + i];
  const int64_t row_bytes = D * out.element_size();
  const char* src = static_cast<const char*>(values.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
#pragma omp parallel for if (B * k * row_bytes > 4 * kParallelElems)
  for (int64_t r = 0; r < B * k; ++r) std::memcpy(dst + rows[r] * row_bytes, src + r * row_bytes, row_bytes);
  return out;
}

}  // namespace lumina
