// Error helpers shared by the CPU and CUDA entry points. Errors are std::invalid_argument, which
// pybind11 turns into Python's ValueError; messages name the argument, the value and what is
// accepted, like the Python front's.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace lumina {

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream msg;
  (msg << ... << parts);
  throw std::invalid_argument(msg.str());
}

inline void require_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  if (t.dim() != dim) fail(name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

inline void require_long(const at::Tensor& t, const char* name) {
  if (t.scalar_type() != at::kLong) fail(name, " must be int64, got ", t.scalar_type());
}

inline void require_float(const at::Tensor& t, const char* name) {
  if (!t.is_floating_point()) fail(name, " must be floating point, got ", t.scalar_type());
}

inline void require_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  if (t.device() != ref.device()) fail(name, " is on ", t.device(), " but the other inputs are on ", ref.device());
}

// First flat position of a value outside [low, high), or -1.
inline int64_t first_out_of_range(const int64_t* p, int64_t n, int64_t low, int64_t high) {
  int64_t first = n;
#pragma omp parallel for reduction(min : first) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    if ((p[i] < low || p[i] >= high) && i < first) first = i;
  }
  return first == n ? -1 : first;
}

inline void require_range(const int64_t* p, int64_t n, int64_t low, int64_t high, const char* name,
                          const std::string& accepted) {
  int64_t bad = first_out_of_range(p, n, low, high);
  if (bad >= 0) fail(name, " holds ", p[bad], " at flat position ", bad, ": must be in ", accepted);
}

// For the backward of a C++ autograd function, which is not itself differentiable: with
// create_graph=True (grad mode on in the backward) its outputs would silently carry no graph, so
// that is an error instead.
inline void no_double_backward(const char* op) {
  if (c10::GradMode::is_enabled())
    fail(op, ": double backward (create_graph=True) is not supported by lumina._C's C++ autograd; "
         "set LUMINA_ROUTING_BACKEND=reference to differentiate twice");
}

}  // namespace lumina
