// Autograd for the fused CPU kernels, in C++: the backward then runs in torch's autograd engine
// without entering Python. As torch.autograd.Function subclasses, RMSNorm and RoPE cost more in
// Python glue than the RMSNorm kernels themselves at the debug width (docs/kernels.md).
#include "check.h"
#include "fused.h"

#include <torch/csrc/autograd/custom_function.h>

namespace lumina {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

struct RMSNormFunction : public torch::autograd::Function<RMSNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    auto out = rms_norm_forward_cpu(x, weight, eps);
    ctx->save_for_backward({x, weight, out[1]});
    return out[0];
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("rms_norm");
    const auto saved = ctx->get_saved_variables();
    auto g = rms_norm_backward_cpu(grads[0], saved[0], saved[1], saved[2]);
    return {g[0], g[1], at::Tensor()};
  }
};

struct RoPEFunction : public torch::autograd::Function<RoPEFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rope_cpu(x, cos, sin, /*transpose=*/false);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("rope");
    const auto saved = ctx->get_saved_variables();
    return {rope_cpu(grads[0].contiguous(), saved[0], saved[1], /*transpose=*/true), at::Tensor(), at::Tensor()};
  }
};

struct SwiGLUFunction : public torch::autograd::Function<SwiGLUFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    auto out = swiglu_forward_cpu(gate, up);
    ctx->save_for_backward({gate, up, out[1]});
    return out[0];
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    no_double_backward("swiglu");
    const auto saved = ctx->get_saved_variables();
    auto g = swiglu_backward_cpu(grads[0], saved[0], saved[1], saved[2]);
    return {g[0], g[1]};
  }
};

}  // namespace

at::Tensor swiglu_autograd_cpu(const at::Tensor& gate, const at::Tensor& up) {
  return SwiGLUFunction::apply(gate, up);
}

at::Tensor rms_norm_autograd_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return RMSNormFunction::apply(x, weight, eps);
}

at::Tensor rope_autograd_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return RoPEFunction::apply(x, cos, sin);
}

}  // namespace lumina
