// The MoE router's two auxiliary losses in one C++ autograd node on CPU: the Switch balance loss
// R * sum_e f_e * mean_s(probs[s, e]) (Fedus et al. 2021, eq. 4, over all R router outputs) and
// the router z-loss mean_s(logsumexp(logits[s])^2) (Zoph et al. 2022, eq. 5). As torch ops they
// are about twenty small ops and their backwards per MoE layer and step; here each direction is
// one pass over the (S, R) router outputs. lumina/ops/routing_reference.py has the expressions.
#include "check.h"
#include "routing.h"
#include "vec_exp.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lumina {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

void check_inputs(const at::Tensor& logits, const at::Tensor& probs, const at::Tensor& expert_index) {
  require_dim(logits, 2, "logits", "(tokens, router outputs)");
  require_dim(probs, 2, "probs", "(tokens, router outputs)");
  require_dim(expert_index, 2, "expert_index", "(tokens, top_k)");
  require_long(expert_index, "expert_index");
  if (probs.sizes() != logits.sizes()) fail("probs must have logits' shape ", logits.sizes(), ", got ", probs.sizes());
  if (expert_index.size(0) != logits.size(0))
    fail("expert_index must have one row per token (", logits.size(0), "), got ", expert_index.size(0));
  for (const at::Tensor* t : {&logits, &probs}) {
    if (t->scalar_type() != at::kFloat && t->scalar_type() != at::kDouble)
      fail("logits and probs must be float32 or float64, got ", t->scalar_type());
    if (!t->device().is_cpu()) fail("logits and probs must be on the CPU, got ", t->device());
  }
  require_device(expert_index, logits, "expert_index");
}

struct RouterLossesFunction : public torch::autograd::Function<RouterLossesFunction> {
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& logits_in, const at::Tensor& probs_in,
                             const at::Tensor& index_in) {
    RECORD_FUNCTION("lumina::router_losses_forward", std::vector<c10::IValue>());
    check_inputs(logits_in, probs_in, index_in);
    const at::Tensor logits = logits_in.contiguous(), probs = probs_in.contiguous(), index = index_in.contiguous();
    const int64_t S = logits.size(0), R = logits.size(1), A = index.numel();
    require_range(index.data_ptr<int64_t>(), A, 0, R, "expert_index", "[0, " + std::to_string(R) + ")");
    // f_e: the share of the S * k assignments that chose e, before capacity. 0 / 0 (NaN) with no
    // tokens, as the expressions give.
    std::vector<double> f(R, 0.0);
    const int64_t* ip = index.data_ptr<int64_t>();
    for (int64_t i = 0; i < A; ++i) f[ip[i]] += 1.0;
    for (double& v : f) v /= static_cast<double>(A);
    at::Tensor lse = at::empty({S}, logits.options().dtype(at::kDouble));
    at::Tensor f_t = at::empty({R}, logits.options().dtype(at::kDouble));
    std::copy(f.begin(), f.end(), f_t.data_ptr<double>());
    double balance = 0.0, z = 0.0;
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "router_losses_forward", [&] {
      const scalar_t *lp = logits.data_ptr<scalar_t>(), *pp = probs.data_ptr<scalar_t>();
      double* lsep = lse.data_ptr<double>();
      std::vector<double> mean_p(R, 0.0);
      std::vector<scalar_t> scratch(R);
      for (int64_t s = 0; s < S; ++s) {
        const scalar_t* row = lp + s * R;
        scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t r = 0; r < R; ++r) mx = std::max(mx, row[r]);
        const double sum = exp_row<scalar_t>(row, scratch.data(), R, mx, scalar_t(1));
        // logsumexp as torch defines it: an all -inf row gives -inf; a NaN logit makes it NaN
        // (std::max skips a NaN, and exp_row may clamp one, so check the row for it).
        bool nan = false;
        for (int64_t r = 0; r < R; ++r) nan |= std::isnan(row[r]);
        const double l = nan ? std::numeric_limits<double>::quiet_NaN() : std::isinf(mx) ? mx : mx + std::log(sum);
        lsep[s] = l;
        z += l * l;
        for (int64_t r = 0; r < R; ++r) mean_p[r] += static_cast<double>(pp[s * R + r]);
      }
      for (int64_t r = 0; r < R; ++r) balance += f[r] * mean_p[r] / static_cast<double>(S);
    });
    balance *= static_cast<double>(R);
    z /= static_cast<double>(S);
    ctx->save_for_backward({logits, lse, f_t});
    const auto opts = logits.options();
    return {at::scalar_tensor(balance, opts), at::scalar_tensor(z, opts)};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("lumina::router_losses_backward", std::vector<c10::IValue>());
    no_double_backward("router_losses");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &lse = saved[1], &f = saved[2];
    const int64_t S = logits.size(0), R = logits.size(1);
    const double g_bal = grads[0].defined() ? grads[0].item<double>() : 0.0;
    const double g_z = grads[1].defined() ? grads[1].item<double>() : 0.0;
    at::Tensor d_logits = at::empty_like(logits), d_probs = at::empty_like(logits);
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "router_losses_backward", [&] {
      const scalar_t* lp = logits.data_ptr<scalar_t>();
      const double *lsep = lse.data_ptr<double>(), *fp = f.data_ptr<double>();
      scalar_t *dl = d_logits.data_ptr<scalar_t>(), *dp = d_probs.data_ptr<scalar_t>();
      // d balance / d probs[s, r] = R * f_r / S, the same for every row.
      std::vector<scalar_t> dp_row(R);
      for (int64_t r = 0; r < R; ++r) dp_row[r] = static_cast<scalar_t>(g_bal * R * fp[r] / S);
      for (int64_t s = 0; s < S; ++s) {
        // d z / d logits[s] = 2 lse_s / S * softmax(logits[s])
        const double c = g_z * 2.0 * lsep[s] / S;
        exp_row<scalar_t>(lp + s * R, dl + s * R, R, static_cast<scalar_t>(lsep[s]), static_cast<scalar_t>(c));
        std::copy(dp_row.begin(), dp_row.end(), dp + s * R);
      }
    });
    return {d_logits, d_probs, at::Tensor()};
  }
};

}  // namespace

std::vector<at::Tensor> router_losses_autograd_cpu(const at::Tensor& logits, const at::Tensor& probs,
                                                   const at::Tensor& expert_index) {
  return RouterLossesFunction::apply(logits, probs, expert_index);
}

}  // namespace lumina
