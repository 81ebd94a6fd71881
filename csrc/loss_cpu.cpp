// Cross-entropy of logits against labels on CPU, forward and backward, each one pass over the
// logits (see fused.h). torch's F.cross_entropy is log_softmax then nll_loss: its forward writes a
// (N, V) log-probability tensor that the backward reads again, with a pass per op each way.
// Here the forward keeps one log-sum-exp per row and the backward writes the gradient directly.
#include "check.h"
#include "fused.h"
#include "vec_exp.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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

void check_inputs(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index) {
  require_dim(logits, 2, "logits", "(tokens, vocab)");
  require_dim(labels, 1, "labels", "(tokens,)");
  require_long(labels, "labels");
  require_device(labels, logits, "labels");
  if (logits.scalar_type() != at::kFloat && logits.scalar_type() != at::kDouble)
    fail("logits must be float32 or float64, got ", logits.scalar_type());
  if (!logits.device().is_cpu()) fail("logits must be on the CPU, got ", logits.device());
  if (labels.size(0) != logits.size(0))
    fail("labels must have one entry per row of logits (", logits.size(0), "), got ", labels.size(0));
  const int64_t V = logits.size(1);
  const at::Tensor l = labels.contiguous();
  const int64_t* p = l.data_ptr<int64_t>();
  for (int64_t i = 0; i < l.numel(); ++i) {
    if (p[i] != ignore_index && (p[i] < 0 || p[i] >= V))
      fail("labels holds ", p[i], " at position ", i, ": must be in [0, ", V, ") or the ignore_index ", ignore_index);
  }
}

struct CrossEntropyFunction : public torch::autograd::Function<CrossEntropyFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits_in, const at::Tensor& labels_in,
                            int64_t ignore_index) {
    RECORD_FUNCTION("lumina::cross_entropy_forward", std::vector<c10::IValue>());
    check_inputs(logits_in, labels_in, ignore_index);
    const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
    const int64_t N = logits.size(0), V = logits.size(1);
    at::Tensor lse = at::empty({N}, logits.options());
    at::Tensor row_loss = at::empty({N}, logits.options());
    int64_t valid = 0;
    const int64_t* lab = labels.data_ptr<int64_t>();
    for (int64_t i = 0; i < N; ++i) valid += lab[i] != ignore_index;
    at::Tensor loss;
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cross_entropy_forward", [&] {
      using T = scalar_t;
      const T* x = logits.data_ptr<T>();
      T *lp = lse.data_ptr<T>(), *rl = row_loss.data_ptr<T>();
      at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, V)), [&](int64_t first, int64_t last) {
        std::vector<T> scratch(V);
        for (int64_t r = first; r < last; ++r) {
          const T* row = x + r * V;
          T mx = -std::numeric_limits<T>::infinity(), raw = 0;
          for (int64_t c = 0; c < V; ++c) {
            mx = std::max(mx, row[c]);
            raw += row[c];
          }
          // A NaN or inf logit makes the loss NaN, as in torch, so that divergence stays visible.
          const T l = std::isfinite(raw) ? mx + std::log(exp_row<T>(row, scratch.data(), V, mx, T(1)))
                                         : std::numeric_limits<T>::quiet_NaN();
          lp[r] = l;
          rl[r] = lab[r] == ignore_index ? T(0) : l - row[lab[r]];
        }
      });
      double total = 0;  // in row order, so the loss does not depend on the thread count
      for (int64_t r = 0; r < N; ++r) total += rl[r];
      // No valid label: 0 / 0, NaN, as torch's mean reduction gives.
      loss = at::scalar_tensor(static_cast<T>(total / static_cast<double>(valid)), logits.options());
    });
    ctx->save_for_backward({logits, labels, lse});
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["valid"] = valid;
    return loss;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("lumina::cross_entropy_backward", std::vector<c10::IValue>());
    no_double_backward("cross_entropy");
    const auto s = ctx->get_saved_variables();
    const at::Tensor &logits = s[0], &labels = s[1], &lse = s[2];
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    const int64_t valid = ctx->saved_data["valid"].toInt();
    const int64_t N = logits.size(0), V = logits.size(1);
    at::Tensor grad = at::empty_like(logits);
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cross_entropy_backward", [&] {
      using T = scalar_t;
      // d loss / d logits[r] = (softmax(logits[r]) - onehot(label[r])) * grad / valid.
      const T scale = grads[0].item<T>() / static_cast<T>(valid);
      const T *x = logits.data_ptr<T>(), *lp = lse.data_ptr<T>();
      const int64_t* lab = labels.data_ptr<int64_t>();
      T* gp = grad.data_ptr<T>();
      at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, V)), [&](int64_t first, int64_t last) {
        for (int64_t r = first; r < last; ++r) {
          T* out = gp + r * V;
          if (lab[r] == ignore_index) {
            std::fill(out, out + V, T(0));
            continue;
          }
          exp_row<T>(x + r * V, out, V, lp[r], scale);
          out[lab[r]] -= scale;
        }
      });
    });
    return {grad, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor cross_entropy_autograd_cpu(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index) {
  return CrossEntropyFunction::apply(logits, labels, ignore_index);
}

}  // namespace lumina
