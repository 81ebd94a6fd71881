// Causal attention on CPU, forward and backward (see fused.h). Each (sequence, head) is a handful of
// BLAS calls on blocks of query rows, with the softmax between them while the block is in cache,
// and no intermediate tensors. At the debug shape (head dim 24, 128 tokens) torch's CPU flash
// attention took 3.6 ms forward and backward per layer and this 2.6 ms; at debug_200m's shape 11.5
// and 7.9 ms (docs/kernels.md).
//
// Per block of query rows [r0, r1), only key columns [0, r1) are computed (causal). The forward
// keeps each row's log-sum-exp, as flash attention does, and the backward recomputes the
// probabilities from it instead of storing the (T, T) matrix.
#include "check.h"
#include "fused.h"
#include "vec_exp.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <vector>

namespace lumina {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Query rows per block. At the debug shape, forward plus backward took 2.68, 2.58 and 3.06 ms with
// 32, 64 and 128 rows: smaller blocks skip more of the masked triangle, larger ones make larger gemms.
constexpr int64_t kBlockRows = 64;

// BLAS gemm, as torch's own build exports it (MKL on x86 wheels). Called directly because a block
// is too small to pay for at::mm's dispatch: 448 gemms per layer, forward and backward, at the
// debug shape (128 + 320).
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                          const int*, const float*, const int*, const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                          const int*, const double*, const int*, const double*, double*, const int*);

struct Blas {
  sgemm_fn sgemm = nullptr;
  dgemm_fn dgemm = nullptr;
};

const Blas& blas() {
  static const Blas found = [] {
    Blas b;
    void* lib = dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD);
    if (lib != nullptr) {
      b.sgemm = reinterpret_cast<sgemm_fn>(dlsym(lib, "sgemm_"));
      b.dgemm = reinterpret_cast<dgemm_fn>(dlsym(lib, "dgemm_"));
    }
    return b;
  }();
  return found;
}

// Row-major C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C, with leading dimensions.
// Fortran BLAS is column-major, and a row-major matrix is its transpose there, so the operands swap.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    blas().sgemm(&tb, &ta, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
  } else {
    blas().dgemm(&tb, &ta, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
  }
}

// A (B, heads, T, hd) operand, addressed by (batch, head) and row; hd is contiguous.
template <typename T>
struct Operand {
  T* base;
  int64_t sb, sh, row;
  T* at(int64_t b, int64_t h) const { return base + b * sb + h * sh; }
};

template <typename T>
Operand<T> operand(const at::Tensor& t) {
  return {const_cast<T*>(t.data_ptr<T>()), t.stride(0), t.stride(1), t.stride(2)};
}

// A (B, H, T, hd) tensor laid out as (B, T, H, hd): the layout the output projection reads, so the
// attention's "transpose back" costs nothing.
at::Tensor empty_bthd(int64_t B, int64_t H, int64_t T, int64_t hd, const at::TensorOptions& opts) {
  return at::empty({B, T, H, hd}, opts).permute({0, 2, 1, 3});
}

// BLAS needs unit stride along head_dim and a row stride of at least head_dim.
at::Tensor rows_contiguous(const at::Tensor& t) {
  return t.stride(3) == 1 && t.stride(2) >= t.size(3) ? t : t.contiguous();
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  require_dim(q, 4, "q", "(batch, heads, tokens, head_dim)");
  require_dim(k, 4, "k", "(batch, kv_heads, tokens, head_dim)");
  if (v.sizes() != k.sizes()) fail("v must have k's shape ", k.sizes(), ", got ", v.sizes());
  if (q.size(0) != k.size(0) || q.size(2) != k.size(2) || q.size(3) != k.size(3))
    fail("k must have q's batch, tokens and head_dim (", q.size(0), ", ", q.size(2), ", ", q.size(3), "), got shape ",
         k.sizes());
  if (k.size(1) == 0 || q.size(1) % k.size(1))
    fail("kv_heads (", k.size(1), ") must divide heads (", q.size(1), ")");
  for (const at::Tensor* t : {&k, &v}) {
    if (t->scalar_type() != q.scalar_type()) fail("k and v must have q's dtype ", q.scalar_type(), ", got ", t->scalar_type());
    require_device(*t, q, "k or v");
  }
  if (q.scalar_type() != at::kFloat && q.scalar_type() != at::kDouble)
    fail("q must be float32 or float64, got ", q.scalar_type());
  if (q.size(3) == 0) fail("head_dim must be positive, got shape ", q.sizes());
  if (!q.device().is_cpu()) fail("q must be on the CPU, got ", q.device());
  if (q.size(2) * q.size(1) * q.size(3) > INT_MAX) fail("tokens x heads x head_dim must fit BLAS's int, got shape ", q.sizes());
  if (blas().sgemm == nullptr || blas().dgemm == nullptr)
    fail("causal_attention: this torch build exports no BLAS sgemm_/dgemm_; use the PyTorch reference");
}

template <typename T>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), hd = q.size(3), G = H / k.size(1);
  const T scale = T(1) / std::sqrt(T(hd));
  const auto Q = operand<T>(q), K = operand<T>(k), V = operand<T>(v), O = operand<T>(out);
  T* L = lse.data_ptr<T>();
  at::parallel_for(0, B * H, 1, [&](int64_t first, int64_t last) {
    std::vector<T> s(kBlockRows * T_);
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / H, h = task % H, g = h / G;
      const T *qp = Q.at(b, h), *kp = K.at(b, g), *vp = V.at(b, g);
      T* op = O.at(b, h);
      T* lp = L + task * T_;
      for (int64_t r0 = 0; r0 < T_; r0 += kBlockRows) {
        const int64_t r1 = std::min(T_, r0 + kBlockRows), rows = r1 - r0, cols = r1;
        gemm<T>(false, true, rows, cols, hd, scale, qp + r0 * Q.row, Q.row, kp, K.row, T(0), s.data(), cols);
        for (int64_t i = 0; i < rows; ++i) {
          T* row = s.data() + i * cols;
          const int64_t n = r0 + i + 1;  // keys 0..r0+i
          T mx = -std::numeric_limits<T>::infinity(), raw = 0;
          for (int64_t c = 0; c < n; ++c) {
            mx = std::max(mx, row[c]);
            raw += row[c];
          }
          if (!std::isfinite(raw)) {  // keep a NaN or inf input visible in the output and the loss
            std::fill(row, row + cols, std::numeric_limits<T>::quiet_NaN());
            lp[r0 + i] = std::numeric_limits<T>::quiet_NaN();
            continue;
          }
          const T sum = exp_row<T>(row, row, n, mx, T(1));
          const T inv = T(1) / sum;
          for (int64_t c = 0; c < n; ++c) row[c] *= inv;
          std::fill(row + n, row + cols, T(0));
          lp[r0 + i] = mx + std::log(sum);
        }
        gemm<T>(false, false, rows, hd, cols, T(1), s.data(), cols, vp, V.row, T(0), op + r0 * O.row, O.row);
      }
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                     const at::Tensor& lse, const at::Tensor& dout, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), hd = q.size(3), KV = k.size(1), G = H / KV;
  const T scale = T(1) / std::sqrt(T(hd));
  const auto Q = operand<T>(q), K = operand<T>(k), V = operand<T>(v), O = operand<T>(out), dO = operand<T>(dout);
  const auto dQ = operand<T>(dq), dK = operand<T>(dk), dV = operand<T>(dv);
  const T* L = lse.data_ptr<T>();
  // One task per (sequence, kv head): the query heads that share a kv head add into its dK and dV
  // one after another, so no two threads write the same rows.
  at::parallel_for(0, B * KV, 1, [&](int64_t first, int64_t last) {
    std::vector<T> p(kBlockRows * T_), dp(kBlockRows * T_), delta(T_);
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / KV, g = task % KV;
      const T *kp = K.at(b, g), *vp = V.at(b, g);
      T *dkp = dK.at(b, g), *dvp = dV.at(b, g);
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        const T *qp = Q.at(b, h), *op = O.at(b, h), *dop = dO.at(b, h);
        T* dqp = dQ.at(b, h);
        const T* lp = L + (b * H + h) * T_;
        for (int64_t t = 0; t < T_; ++t) {  // delta = rowsum(dO * O), the softmax backward's shift
          T acc = 0;
          for (int64_t j = 0; j < hd; ++j) acc += dop[t * dO.row + j] * op[t * O.row + j];
          delta[t] = acc;
        }
        for (int64_t r0 = 0; r0 < T_; r0 += kBlockRows) {
          const int64_t r1 = std::min(T_, r0 + kBlockRows), rows = r1 - r0, cols = r1;
          // P = exp(scale * Q K^T - lse), zero above the diagonal.
          gemm<T>(false, true, rows, cols, hd, scale, qp + r0 * Q.row, Q.row, kp, K.row, T(0), p.data(), cols);
          for (int64_t i = 0; i < rows; ++i) {
            T* row = p.data() + i * cols;
            const int64_t n = r0 + i + 1;
            exp_row<T>(row, row, n, lp[r0 + i], T(1));
            std::fill(row + n, row + cols, T(0));
          }
          // dV[0:cols] += P^T dO (dV starts at zero).
          const T* dob = dop + r0 * dO.row;
          gemm<T>(true, false, cols, hd, rows, T(1), p.data(), cols, dob, dO.row, T(1), dvp, dV.row);
          // dP = dO V^T, then dS = P * (dP - delta).
          gemm<T>(false, true, rows, cols, hd, T(1), dob, dO.row, vp, V.row, T(0), dp.data(), cols);
          for (int64_t i = 0; i < rows; ++i) {
            const T d = delta[r0 + i];
            T* ds = dp.data() + i * cols;
            const T* pr = p.data() + i * cols;
            const int64_t n = r0 + i + 1;
            for (int64_t c = 0; c < n; ++c) ds[c] = pr[c] * (ds[c] - d);
            std::fill(ds + n, ds + cols, T(0));
          }
          // dQ = scale * dS K; dK[0:cols] += scale * dS^T Q (dK starts at zero).
          gemm<T>(false, false, rows, hd, cols, scale, dp.data(), cols, kp, K.row, T(0), dqp + r0 * dQ.row, dQ.row);
          gemm<T>(true, false, cols, hd, rows, scale, dp.data(), cols, qp + r0 * Q.row, Q.row, T(1), dkp, dK.row);
        }
      }
    }
  });
}

struct CausalAttentionFunction : public torch::autograd::Function<CausalAttentionFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& v_in) {
    RECORD_FUNCTION("lumina::causal_attention_forward", std::vector<c10::IValue>());
    check_inputs(q_in, k_in, v_in);
    const at::Tensor q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), hd = q.size(3);
    at::Tensor out = empty_bthd(B, H, T_, hd, q.options());
    at::Tensor lse = at::empty({B, H, T_}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "causal_attention_forward", [&] {
      forward_kernel<scalar_t>(q, k, v, out, lse);
    });
    ctx->save_for_backward({q, k, v, out, lse});
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("lumina::causal_attention_backward", std::vector<c10::IValue>());
    no_double_backward("causal_attention");
    const auto s = ctx->get_saved_variables();
    const at::Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4];
    const at::Tensor dout = rows_contiguous(grads[0]);
    // Each gradient in the layout its consumer reads without a copy: dq and dk go back through
    // RoPE, which takes (B, H, T, hd) rows; dv goes back through the transpose of the v projection.
    at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::zeros(k.sizes(), k.options());
    at::Tensor dv = empty_bthd(v.size(0), v.size(1), v.size(2), v.size(3), v.options()).zero_();
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "causal_attention_backward", [&] {
      backward_kernel<scalar_t>(q, k, v, out, lse, dout, dq, dk, dv);
    });
    return {dq, dk, dv};
  }
};

}  // namespace

bool blas_gemm_available() { return blas().sgemm != nullptr && blas().dgemm != nullptr; }

at::Tensor causal_attention_autograd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return CausalAttentionFunction::apply(q, k, v);
}

}  // namespace lumina
