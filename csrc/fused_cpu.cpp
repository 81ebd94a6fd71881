// Fused CPU kernels: see fused.h. Each computes in fp32 (fp64 for fp64 tensors) and matches the
// PyTorch expression in lumina/ops/fused.py within the tolerances of tests/ops/test_fused.py
// (reductions add in another order, so not bit for bit). Parallel over rows with ATen's thread
// pool once there is enough work to pay for waking the threads.
#include "check.h"
#include "fused.h"
#include "vec_exp.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sigmoid.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lumina {
namespace {

constexpr int64_t kGrainElems = 1 << 14;  // elements per task: smaller tasks cost more to start than to run

int64_t grain_rows(int64_t row_elems) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, row_elems)); }

void require_same(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  if (a.sizes() != b.sizes()) fail(b_name, " must have the shape of ", a_name, " ", a.sizes(), ", got ", b.sizes());
  if (a.scalar_type() != b.scalar_type())
    fail(b_name, " must have the dtype of ", a_name, " (", a.scalar_type(), "), got ", b.scalar_type());
}

}  // namespace

// Each kernel names itself to torch's profiler (free when no profiler runs), so a step profile
// counts it as an op of its own rather than time between ops.
std::vector<at::Tensor> rms_norm_forward_cpu(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  RECORD_FUNCTION("lumina::rms_norm_forward", std::vector<c10::IValue>());
  require_float(x_in, "x");
  if (x_in.dim() < 1) fail("x must have at least 1 dimension, got a scalar");
  const int64_t D = x_in.size(-1);
  if (weight.dim() != 1 || weight.size(0) != D) fail("weight must have shape (", D, ",), got ", weight.sizes());
  if (weight.scalar_type() != x_in.scalar_type())
    fail("weight must have the dtype of x (", x_in.scalar_type(), "), got ", weight.scalar_type());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  at::Tensor y = at::empty_like(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor rstd = at::empty({rows}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t* rp = rstd.data_ptr<acc_t>();
    at::parallel_for(0, rows, grain_rows(D), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * D;
        acc_t sum = 0;
_Pragma("omp simd reduction(+ : sum)")
        for (int64_t i = 0; i < D; ++i) sum += acc_t(xr[i]) * acc_t(xr[i]);
        const acc_t inv = acc_t(1) / std::sqrt(sum / acc_t(D) + acc_t(eps));
        rp[r] = inv;
        scalar_t* yr = yp + r * D;
_Pragma("omp simd")
        for (int64_t i = 0; i < D; ++i) yr[i] = scalar_t(acc_t(xr[i]) * inv * acc_t(wp[i]));
      }
    });
  });
  return {y, rstd};
}

std::vector<at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x_in,
                                              const at::Tensor& weight, const at::Tensor& rstd) {
  RECORD_FUNCTION("lumina::rms_norm_backward", std::vector<c10::IValue>());
  require_same(x_in, "x", grad_y, "grad_y");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = grad_y.contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t D = x.size(-1);
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  if (rstd.numel() != rows) fail("rstd must have ", rows, " elements (one per row of x), got ", rstd.numel());
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (rstd.scalar_type() != acc_type) fail("rstd must be ", acc_type, " for ", x.scalar_type(), " x, got ", rstd.scalar_type());
  const at::Tensor r = rstd.contiguous();  // named: a temporary's buffer would be freed under the pointer
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const acc_t* rp = r.data_ptr<acc_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    // Each task sums its rows' weight gradient into its own row of `partial`; the rows are added
    // after, so no two threads write one address and the result does not depend on scheduling
    // beyond the order of that final sum.
    const int64_t grain = grain_rows(D);
    const int64_t tasks = rows == 0 ? 0 : (rows + grain - 1) / grain;
    std::vector<acc_t> partial(static_cast<size_t>(tasks * D), acc_t(0));
    acc_t* pp = partial.data();
    at::parallel_for(0, tasks, 1, [&](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        acc_t* pw = pp + t * D;
        const int64_t r_end = std::min(rows, (t + 1) * grain);
        for (int64_t r = t * grain; r < r_end; ++r) {
          const scalar_t* xr = xp + r * D;
          const scalar_t* gr = dyp + r * D;
          const acc_t inv = rp[r];
          acc_t dot = 0;  // sum_i dy_i w_i x_i
_Pragma("omp simd reduction(+ : dot)")
          for (int64_t i = 0; i < D; ++i) dot += acc_t(gr[i]) * acc_t(wp[i]) * acc_t(xr[i]);
          // d/dx_i of x_i * inv * w_i: inv * (w_i dy_i - x_i * inv^2 * dot / D)
          const acc_t c = inv * inv * dot / acc_t(D);
          scalar_t* dr = dxp + r * D;
_Pragma("omp simd")
          for (int64_t i = 0; i < D; ++i) {
            const acc_t g = acc_t(gr[i]);
            const acc_t xv = acc_t(xr[i]);
            dr[i] = scalar_t(inv * (g * acc_t(wp[i]) - xv * c));
            pw[i] += g * xv * inv;
          }
        }
      }
    });
    dw = at::empty({D}, weight.options());
    scalar_t* dwp = dw.data_ptr<scalar_t>();
    for (int64_t i = 0; i < D; ++i) {
      acc_t sum = 0;
      for (int64_t t = 0; t < tasks; ++t) sum += pp[t * D + i];
      dwp[i] = scalar_t(sum);
    }
  });
  return {dx, dw};
}

void swiglu_forward_out(const at::Tensor& a, const at::Tensor& b, at::Tensor& y, at::Tensor& sig) {
  if (a.scalar_type() == at::kFloat && has_avx2()) {  // FP32 with AVX2: sigmoid too in the one pass
    const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *sp = sig.data_ptr<float>();
    at::parallel_for(0, a.numel(), kGrainElems, [&](int64_t begin, int64_t end) {
      swiglu_avx2(ap + begin, bp + begin, yp + begin, sp + begin, end - begin);
    });
    return;
  }
  // Otherwise torch's sigmoid, vectorised with its own exp, and one pass for the rest.
  at::sigmoid_out(sig, a);
  const int64_t n = a.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "swiglu_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* sp = sig.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainElems, [&](int64_t begin, int64_t end) {
_Pragma("omp simd")
      for (int64_t i = begin; i < end; ++i) yp[i] = scalar_t(acc_t(ap[i]) * acc_t(sp[i]) * acc_t(bp[i]));
    });
  });
}

void swiglu_backward_out(const at::Tensor& dy, const at::Tensor& a, const at::Tensor& b, const at::Tensor& s,
                         at::Tensor& da, at::Tensor& db) {
  const int64_t n = a.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "swiglu_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    scalar_t* dap = da.data_ptr<scalar_t>();
    scalar_t* dbp = db.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainElems, [&](int64_t begin, int64_t end) {
_Pragma("omp simd")
      for (int64_t i = begin; i < end; ++i) {
        const acc_t av = acc_t(ap[i]), sv = acc_t(sp[i]), g = acc_t(gp[i]);
        dbp[i] = scalar_t(g * av * sv);                                                  // silu(a)
        dap[i] = scalar_t(g * acc_t(bp[i]) * sv * (acc_t(1) + av * (acc_t(1) - sv)));  // silu'(a)
      }
    });
  });
}

std::vector<at::Tensor> swiglu_forward_cpu(const at::Tensor& gate_in, const at::Tensor& up_in) {
  RECORD_FUNCTION("lumina::swiglu_forward", std::vector<c10::IValue>());
  require_float(gate_in, "gate");
  require_same(gate_in, "gate", up_in, "up");
  const at::Tensor a = gate_in.contiguous();
  const at::Tensor b = up_in.contiguous();
  at::Tensor sig = at::empty_like(a);
  at::Tensor y = at::empty_like(a);
  swiglu_forward_out(a, b, y, sig);
  return {y, sig};
}

std::vector<at::Tensor> swiglu_backward_cpu(const at::Tensor& grad_y, const at::Tensor& gate_in,
                                            const at::Tensor& up_in, const at::Tensor& sig_in) {
  RECORD_FUNCTION("lumina::swiglu_backward", std::vector<c10::IValue>());
  require_same(gate_in, "gate", up_in, "up");
  require_same(gate_in, "gate", grad_y, "grad_y");
  require_same(gate_in, "gate", sig_in, "sigmoid(gate)");
  const at::Tensor a = gate_in.contiguous();
  const at::Tensor b = up_in.contiguous();
  const at::Tensor s = sig_in.contiguous();
  const at::Tensor dy = grad_y.contiguous();
  at::Tensor da = at::empty_like(a);
  at::Tensor db = at::empty_like(b);
  swiglu_backward_out(dy, a, b, s, da, db);
  return {da, db};
}

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in, bool transpose) {
  RECORD_FUNCTION(transpose ? "lumina::rope_backward" : "lumina::rope", std::vector<c10::IValue>());
  require_float(x, "x");
  require_dim(x, 4, "x", "(batch, heads, seq, head_dim)");
  require_dim(cos_in, 3, "cos", "(batch or 1, seq, head_dim)");
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), hd = x.size(3);
  if (hd % 2) fail("head_dim must be even for rotate-half RoPE, got ", hd);
  if (hd > 0 && x.stride(3) != 1) fail("x must be contiguous in its last dimension, got strides ", x.strides());
  if (cos_in.size(1) != T || cos_in.size(2) != hd || (cos_in.size(0) != 1 && cos_in.size(0) != B))
    fail("cos must have shape (", B, " or 1, ", T, ", ", hd, "), got ", cos_in.sizes());
  if (sin_in.sizes() != cos_in.sizes()) fail("sin must have the shape of cos ", cos_in.sizes(), ", got ", sin_in.sizes());
  if (cos_in.scalar_type() != at::kFloat || sin_in.scalar_type() != at::kFloat)
    fail("cos and sin must be float32, got ", cos_in.scalar_type(), " and ", sin_in.scalar_type());
  const at::Tensor cos = cos_in.contiguous();
  const at::Tensor sin = sin_in.contiguous();
  at::Tensor y = at::empty({B, H, T, hd}, x.options());
  const int64_t half = hd / 2;
  const int64_t sb = x.stride(0), sh = x.stride(1), st = x.stride(2);
  const int64_t cb = cos.size(0) == 1 ? 0 : T * hd;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rope_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const float* cp = cos.data_ptr<float>();
    const float* sp = sin.data_ptr<float>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, B * H * T, grain_rows(hd), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / (H * T), h = (r / T) % H, t = r % T;
        const scalar_t* xr = xp + b * sb + h * sh + t * st;
        const float* c = cp + b * cb + t * hd;
        const float* s = sp + b * cb + t * hd;
        scalar_t* yr = yp + r * hd;
        // The tables are cast to x's dtype first, as the PyTorch expression does.
        for (int64_t i = 0; i < half; ++i) {
          const acc_t x1 = acc_t(xr[i]), x2 = acc_t(xr[i + half]);
          const acc_t c1 = acc_t(scalar_t(c[i])), c2 = acc_t(scalar_t(c[i + half]));
          const acc_t s1 = acc_t(scalar_t(s[i])), s2 = acc_t(scalar_t(s[i + half]));
          if (!transpose) {  // y = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)
            yr[i] = scalar_t(x1 * c1 + (-x2) * s1);
            yr[i + half] = scalar_t(x2 * c2 + x1 * s2);
          } else {           // its transpose: x = y * cos + (y2 * s2, -y1 * s1)
            yr[i] = scalar_t(x1 * c1 + x2 * s2);
            yr[i + half] = scalar_t(x2 * c2 - x1 * s1);
          }
        }
      }
    });
  });
  return y;
}

}  // namespace lumina
