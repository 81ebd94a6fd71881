// lumina._C: the routing kernels as plain functions. lumina/ops/routing.py registers the
// torch.library custom ops (schemas, fake implementations, autograd) and calls these from them, or,
// for eager CPU tensors, the *_autograd_cpu functions with their autograd in C++;
// lumina/ops/backend.py decides which of them serve a tensor.
//
// Every binding goes through def() below, which
// - counts the calls of each entry point (kernel_calls()), so a test can assert which kernel served
//   a call instead of trusting that no fallback happened;
// - releases the GIL while the kernel runs, and catches whatever the kernel throws before taking the
//   GIL back: pybind11 then sees the exception raised with the GIL held and no guard left to unwind.
//   std::invalid_argument (a bad value, check.h) becomes pybind11's own value_error, so it reaches
//   Python as ValueError without pybind11 having to match std::invalid_argument's type_info;
//   anything else is rethrown unchanged (torch's translators still see c10 errors).
#include "fused.h"
#include "routing.h"

// The tensor and dtype casters alone; torch/extension.h would pull in the whole C++ frontend.
#include <pybind11/pybind11.h>
#include <torch/csrc/utils/pybind.h>

#include <atomic>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

// Filled while the module initialises (under the GIL), read and incremented afterwards; map nodes
// never move, so each binding keeps a pointer to its counter.
std::map<std::string, std::atomic<int64_t>>& call_counters() {
  static std::map<std::string, std::atomic<int64_t>> counters;
  return counters;
}

py::dict kernel_calls() {
  py::dict out;
  for (const auto& [name, calls] : call_counters()) out[py::str(name)] = calls.load(std::memory_order_relaxed);
  return out;
}

template <typename R, typename... Args>
void def(py::module_& m, const char* name, R (*f)(Args...), const char* doc) {
  std::atomic<int64_t>* calls = &call_counters().try_emplace(name, 0).first->second;
  m.def(
      name,
      [f, calls](Args... args) -> R {
        calls->fetch_add(1, std::memory_order_relaxed);
        std::exception_ptr error;
        std::string invalid;
        bool is_invalid = false;
        {
          py::gil_scoped_release no_gil;
          try {
            return f(args...);
          } catch (const std::invalid_argument& e) {
            is_invalid = true;
            invalid = e.what();
          } catch (...) {
            error = std::current_exception();
          }
        }
        if (is_invalid) throw py::value_error(invalid);
        std::rethrow_exception(error);
      },
      doc);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Lumina routing kernels (C++ CPU, and CUDA when built with it) and fused CPU kernels";
  m.attr("API_VERSION") = lumina::kApiVersion;
#ifdef _OPENMP
  m.attr("OPENMP") = true;
#else
  m.attr("OPENMP") = false;
#endif
  // The pybind11 this module was compiled with: tests/gpu/crash_probe.py compares it with torch's own
  // headers (a different pybind11 on the include path is one of the crash's candidate causes).
  m.attr("PYBIND11_VERSION") = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) +
                               "." + std::to_string(PYBIND11_VERSION_MICRO);
  m.attr("PYBIND11_INTERNALS_ID") = PYBIND11_INTERNALS_ID;
  m.def("kernel_calls", &kernel_calls,
        "calls per entry point of this module since it was loaded, e.g. {'unpermute_backward_cuda': 3, ...}");

  def(m, "topk_route_cpu", &lumina::topk_route_cpu, "top-k routing with capacity slots");
  def(m, "topk_route_backward_cpu", &lumina::topk_route_backward_cpu, "gradient of topk_route w.r.t. logits");
  def(m, "dispatch_plan_cpu", &lumina::dispatch_plan_cpu, "expert-contiguous order of kept assignments");
  def(m, "permute_cpu", &lumina::permute_cpu, "tokens to expert order");
  def(m, "permute_backward_cpu", &lumina::permute_backward_cpu, "gradient of permute");
  def(m, "unpermute_cpu", &lumina::unpermute_cpu, "weighted combine back to token order");
  def(m, "unpermute_backward_cpu", &lumina::unpermute_backward_cpu, "gradients of unpermute");
  def(m, "expert_histogram_cpu", &lumina::expert_histogram_cpu, "assignments per expert");
  def(m, "mod_select_cpu", &lumina::mod_select_cpu, "per-sequence top-k positions, ascending");
  def(m, "gather_tokens_cpu", &lumina::gather_tokens_cpu, "gather selected rows");
  def(m, "gather_tokens_backward_cpu", &lumina::gather_tokens_backward_cpu, "gradient of gather_tokens");
  def(m, "scatter_tokens_cpu", &lumina::scatter_tokens_cpu, "replace selected rows, out of place");
  def(m, "topk_route_autograd_cpu", &lumina::topk_route_autograd_cpu, "topk_route, differentiable");
  def(m, "permute_autograd_cpu", &lumina::permute_autograd_cpu, "permute, differentiable");
  def(m, "unpermute_autograd_cpu", &lumina::unpermute_autograd_cpu, "unpermute, differentiable");
  def(m, "gather_tokens_autograd_cpu", &lumina::gather_tokens_autograd_cpu, "gather_tokens, differentiable");
  def(m, "scatter_tokens_autograd_cpu", &lumina::scatter_tokens_autograd_cpu, "scatter_tokens, differentiable");
  def(m, "router_losses_autograd_cpu", &lumina::router_losses_autograd_cpu,
      "the MoE balance and z-losses, differentiable");
  def(m, "rms_norm_forward_cpu", &lumina::rms_norm_forward_cpu, "RMSNorm and its per-row rstd");
  def(m, "rms_norm_backward_cpu", &lumina::rms_norm_backward_cpu, "gradients of RMSNorm");
  def(m, "rope_cpu", &lumina::rope_cpu, "rotate-half RoPE, or its transpose");
  def(m, "rms_norm_autograd_cpu", &lumina::rms_norm_autograd_cpu, "RMSNorm, differentiable");
  def(m, "rope_autograd_cpu", &lumina::rope_autograd_cpu, "rotate-half RoPE, differentiable");
  def(m, "swiglu_forward_cpu", &lumina::swiglu_forward_cpu, "silu(gate) * up, and sigmoid(gate)");
  def(m, "swiglu_backward_cpu", &lumina::swiglu_backward_cpu, "gradients of silu(gate) * up");
  def(m, "swiglu_autograd_cpu", &lumina::swiglu_autograd_cpu, "silu(gate) * up, differentiable");
  def(m, "expert_mlp_autograd_cpu", &lumina::expert_mlp_autograd_cpu,
      "every MoE expert's SwiGLU MLP on its chunk of expert-ordered tokens, differentiable");
  m.attr("HAS_BLAS_GEMM") = lumina::blas_gemm_available();
  def(m, "causal_attention_autograd_cpu", &lumina::causal_attention_autograd_cpu,
      "causal grouped-query attention, differentiable");
  def(m, "cross_entropy_autograd_cpu", &lumina::cross_entropy_autograd_cpu,
      "mean cross-entropy of logits against labels, differentiable");

#ifdef LUMINA_WITH_CUDA
  m.attr("HAS_CUDA") = true;
  def(m, "topk_route_cuda", &lumina::topk_route_cuda, "top-k routing with capacity slots");
  def(m, "topk_route_backward_cuda", &lumina::topk_route_backward_cuda, "gradient of topk_route w.r.t. logits");
  def(m, "dispatch_plan_cuda", &lumina::dispatch_plan_cuda, "expert-contiguous order of kept assignments");
  def(m, "permute_cuda", &lumina::permute_cuda, "tokens to expert order");
  def(m, "permute_backward_cuda", &lumina::permute_backward_cuda, "gradient of permute");
  def(m, "unpermute_cuda", &lumina::unpermute_cuda, "weighted combine back to token order");
  def(m, "unpermute_backward_cuda", &lumina::unpermute_backward_cuda, "gradients of unpermute");
  def(m, "expert_histogram_cuda", &lumina::expert_histogram_cuda, "assignments per expert");
  def(m, "mod_select_cuda", &lumina::mod_select_cuda, "per-sequence top-k positions, ascending");
  def(m, "gather_tokens_cuda", &lumina::gather_tokens_cuda, "gather selected rows");
  def(m, "gather_tokens_backward_cuda", &lumina::gather_tokens_backward_cuda, "gradient of gather_tokens");
  def(m, "scatter_tokens_cuda", &lumina::scatter_tokens_cuda, "replace selected rows, out of place");
#else
  m.attr("HAS_CUDA") = false;
#endif
}
