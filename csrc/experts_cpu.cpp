// The MoE experts' SwiGLU MLPs, all of them in one autograd node on CPU (see fused.h).
//
// Tokens arrive in expert-contiguous order, so expert e's input is one contiguous block of rows
// and each matmul writes straight into its block of a shared output (no split, no cat). The SwiGLU
// gate runs once over every expert's rows together. The backward writes each expert's weight
// gradient into its slice of one stacked gradient. Per expert and step this replaces about twenty
// torch ops and four autograd nodes, each a dispatch and, for the nodes, a trip through the engine,
// with three matmuls each way: at the debug width those costs were larger than the matmuls.
#include "check.h"
#include "fused.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>
#include <vector>

namespace lumina {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

struct Chunk {
  int64_t begin, rows, expert;
};

// The row blocks of xs: chunk i is counts[i] rows run by expert ids[i] (by i when ids is empty).
std::vector<Chunk> chunks_of(const at::Tensor& xs, const at::Tensor& w_gate, const at::Tensor& w_up,
                             const at::Tensor& w_down, const std::vector<int64_t>& counts,
                             const std::vector<int64_t>& ids) {
  require_dim(xs, 2, "xs", "(tokens, hidden)");
  require_dim(w_gate, 3, "w_gate", "(experts, hidden, ffn)");
  require_float(xs, "xs");
  const int64_t E = w_gate.size(0), D = w_gate.size(1), F = w_gate.size(2);
  if (xs.size(1) != D) fail("xs must have hidden size ", D, " (w_gate's dim 1), got shape ", xs.sizes());
  if (w_up.sizes() != w_gate.sizes()) fail("w_up must have w_gate's shape ", w_gate.sizes(), ", got ", w_up.sizes());
  if (w_down.dim() != 3 || w_down.size(0) != E || w_down.size(1) != F || w_down.size(2) != D)
    fail("w_down must have shape (", E, ", ", F, ", ", D, "), got ", w_down.sizes());
  for (const at::Tensor* w : {&w_gate, &w_up, &w_down}) {
    if (w->scalar_type() != xs.scalar_type())
      fail("the expert weights must have xs's dtype ", xs.scalar_type(), ", got ", w->scalar_type());
    require_device(*w, xs, "an expert weight");
  }
  if (!ids.empty() && ids.size() != counts.size())
    fail("ids must name one expert per chunk: ", counts.size(), " counts but ", ids.size(), " ids");
  std::vector<Chunk> out;
  out.reserve(counts.size());
  int64_t begin = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const int64_t e = ids.empty() ? static_cast<int64_t>(i) : ids[i];
    if (e < 0 || e >= E) fail("chunk ", i, " names expert ", e, ": must be in [0, ", E, ")");
    if (counts[i] < 0) fail("counts[", i, "] is ", counts[i], ": must be >= 0");
    if (counts[i] > 0) out.push_back({begin, counts[i], e});
    begin += counts[i];
  }
  if (begin != xs.size(0)) fail("counts sum to ", begin, " but xs has ", xs.size(0), " rows: they must be equal");
  return out;
}

struct ExpertMLPFunction : public torch::autograd::Function<ExpertMLPFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& xs_in, const at::Tensor& w_gate,
                            const at::Tensor& w_up, const at::Tensor& w_down, std::vector<int64_t> counts,
                            std::vector<int64_t> ids) {
    RECORD_FUNCTION("lumina::expert_mlp_forward", std::vector<c10::IValue>());
    const auto chunks = chunks_of(xs_in, w_gate, w_up, w_down, counts, ids);
    const at::Tensor xs = xs_in.contiguous();
    const int64_t N = xs.size(0), D = xs.size(1), F = w_gate.size(2);
    at::Tensor a = at::empty({N, F}, xs.options());
    at::Tensor b = at::empty({N, F}, xs.options());
    for (const Chunk& c : chunks) {
      const at::Tensor x = xs.narrow(0, c.begin, c.rows);
      auto a_c = a.narrow(0, c.begin, c.rows);
      auto b_c = b.narrow(0, c.begin, c.rows);
      at::mm_out(a_c, x, w_gate[c.expert]);
      at::mm_out(b_c, x, w_up[c.expert]);
    }
    auto hs = swiglu_forward_cpu(a, b);  // (h, sigmoid(a)) for every expert's rows at once
    at::Tensor ys = at::empty({N, D}, xs.options());
    for (const Chunk& c : chunks) {
      auto y_c = ys.narrow(0, c.begin, c.rows);
      at::mm_out(y_c, hs[0].narrow(0, c.begin, c.rows), w_down[c.expert]);
    }
    ctx->save_for_backward({xs, w_gate, w_up, w_down, a, b, hs[0], hs[1]});
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["ids"] = ids;
    return ys;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("lumina::expert_mlp_backward", std::vector<c10::IValue>());
    if (at::GradMode::is_enabled())
      fail("expert_mlp: double backward (create_graph=True) is not supported by the fused CPU kernel; "
           "set LUMINA_ROUTING_BACKEND=reference to differentiate twice");
    const auto s = ctx->get_saved_variables();
    const at::Tensor &xs = s[0], &w_gate = s[1], &w_up = s[2], &w_down = s[3], &a = s[4], &b = s[5], &h = s[6],
                     &sig = s[7];
    const auto chunks = chunks_of(xs, w_gate, w_up, w_down, ctx->saved_data["counts"].toIntVector(),
                                  ctx->saved_data["ids"].toIntVector());
    const at::Tensor dy = grads[0].contiguous();
    // Zeros, then accumulate: an expert with no rows gets a zero gradient, and under expert
    // parallel one expert runs several chunks (one per source rank).
    at::Tensor g_gate = at::zeros_like(w_gate), g_up = at::zeros_like(w_up), g_down = at::zeros_like(w_down);
    at::Tensor dh = at::empty_like(h);
    for (const Chunk& c : chunks) {
      const at::Tensor dy_c = dy.narrow(0, c.begin, c.rows);
      auto dh_c = dh.narrow(0, c.begin, c.rows);
      at::mm_out(dh_c, dy_c, w_down[c.expert].t());
      g_down[c.expert].addmm_(h.narrow(0, c.begin, c.rows).t(), dy_c);
    }
    auto dab = swiglu_backward_cpu(dh, a, b, sig);
    at::Tensor dx = at::empty_like(xs);
    for (const Chunk& c : chunks) {
      const at::Tensor x_c = xs.narrow(0, c.begin, c.rows);
      const at::Tensor da_c = dab[0].narrow(0, c.begin, c.rows);
      const at::Tensor db_c = dab[1].narrow(0, c.begin, c.rows);
      auto dx_c = dx.narrow(0, c.begin, c.rows);
      at::mm_out(dx_c, da_c, w_gate[c.expert].t());
      dx_c.addmm_(db_c, w_up[c.expert].t());
      g_gate[c.expert].addmm_(x_c.t(), da_c);
      g_up[c.expert].addmm_(x_c.t(), db_c);
    }
    return {dx, g_gate, g_up, g_down, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor expert_mlp_autograd_cpu(const at::Tensor& xs, const at::Tensor& w_gate, const at::Tensor& w_up,
                                   const at::Tensor& w_down, std::vector<int64_t> counts, std::vector<int64_t> ids) {
  return ExpertMLPFunction::apply(xs, w_gate, w_up, w_down, std::move(counts), std::move(ids));
}

}  // namespace lumina
