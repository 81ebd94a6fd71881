// Autograd for the differentiable routing ops on CPU, in C++ (see routing.h).
//
// lumina/ops/routing.py registers each op with torch.library, whose Python dispatch and autograd
// glue (context setup, the backward's Python function, a second custom op for the backward) made an
// MoE layer's route, plan, permute and unpermute, forward plus backward, take 2.4 ms against 1.5 ms
// with these at the debug width: the same kernels both ways (bench/bench_fused.py, docs/kernels.md).
// For eager CPU tensors the Python front calls these instead; torch.compile and
// other devices keep the torch.library ops.
#include "check.h"
#include "routing.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace lumina {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

struct TopkRouteFunction : public torch::autograd::Function<TopkRouteFunction> {
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& logits, int64_t top_k, int64_t capacity) {
    auto out = topk_route_cpu(logits, top_k, capacity);  // expert_index, weights, slot, probs
    ctx->mark_non_differentiable({out[0], out[2]});
    ctx->save_for_backward({out[3], out[0], out[1]});
    ctx->saved_data["logits_dtype"] = static_cast<int64_t>(logits.scalar_type());
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("topk_route");
    const auto s = ctx->get_saved_variables();  // probs, expert_index, weights
    const at::Tensor g_weights = grads[1].defined() ? grads[1].contiguous() : at::zeros_like(s[2]);
    const at::Tensor g_probs = grads[3].defined() ? grads[3].contiguous() : at::zeros_like(s[0]);
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["logits_dtype"].toInt());
    return {topk_route_backward_cpu(g_weights, g_probs, s[0], s[1], s[2], dtype), at::Tensor(), at::Tensor()};
  }
};

struct PermuteFunction : public torch::autograd::Function<PermuteFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& token_index) {
    ctx->save_for_backward({token_index});
    ctx->saved_data["num_tokens"] = x.size(0);
    return permute_cpu(x, token_index);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("permute");
    const auto s = ctx->get_saved_variables();
    return {permute_backward_cpu(grads[0], s[0], ctx->saved_data["num_tokens"].toInt()), at::Tensor()};
  }
};

struct UnpermuteFunction : public torch::autograd::Function<UnpermuteFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& token_index,
                            const at::Tensor& assign_index, const at::Tensor& weights, int64_t num_tokens) {
    ctx->save_for_backward({y, token_index, assign_index, weights});
    return unpermute_cpu(y, token_index, assign_index, weights, num_tokens);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("unpermute");
    const auto s = ctx->get_saved_variables();
    auto g = unpermute_backward_cpu(grads[0], s[0], s[1], s[2], s[3]);
    return {g[0], at::Tensor(), at::Tensor(), g[1], at::Tensor()};
  }
};

struct GatherTokensFunction : public torch::autograd::Function<GatherTokensFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index) {
    ctx->save_for_backward({index});
    ctx->saved_data["seq_len"] = x.size(1);
    return gather_tokens_cpu(x, index);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("gather_tokens");
    const auto s = ctx->get_saved_variables();
    return {gather_tokens_backward_cpu(grads[0], s[0], ctx->saved_data["seq_len"].toInt()), at::Tensor()};
  }
};

struct ScatterTokensFunction : public torch::autograd::Function<ScatterTokensFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index,
                            const at::Tensor& values) {
    ctx->save_for_backward({index});
    return scatter_tokens_cpu(x, index, values);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("scatter_tokens");
    const auto s = ctx->get_saved_variables();
    const at::Tensor g = grads[0].contiguous();
    const at::Tensor& index = s[0];
    // x's gradient is the output's with the replaced rows zeroed; values' is those rows.
    at::Tensor grad_x = scatter_tokens_cpu(g, index, at::zeros({g.size(0), index.size(1), g.size(2)}, g.options()));
    return {grad_x, at::Tensor(), gather_tokens_cpu(g, index)};
  }
};

}  // namespace

std::vector<at::Tensor> topk_route_autograd_cpu(const at::Tensor& logits, int64_t top_k, int64_t capacity) {
  return TopkRouteFunction::apply(logits, top_k, capacity);
}

at::Tensor permute_autograd_cpu(const at::Tensor& x, const at::Tensor& token_index) {
  return PermuteFunction::apply(x, token_index);
}

at::Tensor unpermute_autograd_cpu(const at::Tensor& y, const at::Tensor& token_index, const at::Tensor& assign_index,
                                  const at::Tensor& weights, int64_t num_tokens) {
  return UnpermuteFunction::apply(y, token_index, assign_index, weights, num_tokens);
}

at::Tensor gather_tokens_autograd_cpu(const at::Tensor& x, const at::Tensor& index) {
  return GatherTokensFunction::apply(x, index);
}

at::Tensor scatter_tokens_autograd_cpu(const at::Tensor& x, const at::Tensor& index, const at::Tensor& values) {
  return ScatterTokensFunction::apply(x, index, values);
}

}  // namespace lumina
