// The MoE experts' SwiGLU MLPs, all of them in one autograd node on CPU (see fused.h).
//
// Tokens arrive in expert-contiguous order, so expert e's input is one contiguous block of rows
// and each matmul writes straight into its block of a shared output (no split, no cat). The
// backward writes each expert's weight gradient into its slice of one stacked gradient. Per expert
// and step this replaces about twenty torch ops and four autograd nodes, each a dispatch and, for
// the nodes, a trip through the engine (docs/kernels.md has the measurements).
#include "check.h"
#include "fused.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
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

// Runs fn(i) for every item i (an expert, or a chunk of one) with rows[i] rows. With at least as
// many items as there are threads, each thread takes whole items and their matmuls run
// single-threaded: at the debug width one expert's matmul is too small to split well. Against the
// per-expert torch ops, forward plus backward (2 threads, 8 experts), this took 14.6 against
// 16.8 ms, and experts one after another with every matmul split over the threads 21.3 against
// 23.2 ms, in separate runs (docs/kernels.md). With fewer items than threads, they go one after
// another and each matmul uses every thread.
//
// Items go to threads by rows, largest first, each to the least loaded thread (the LPT rule), not
// in index order: routed loads are uneven (in a debug MoE run, the first four experts of a layer
// had 770 rows and the last four 1,216), and the threads wait for the slowest.
template <typename Fn>
void over_experts(const std::vector<int64_t>& rows, const Fn& fn) {
  const int64_t n = static_cast<int64_t>(rows.size()), threads = at::get_num_threads();
  if (n < threads || at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows[a] > rows[b]; });
  std::vector<std::vector<int64_t>> plan(threads);
  std::vector<int64_t> load(threads, 0);
  for (int64_t i : order) {
    const int64_t t = std::min_element(load.begin(), load.end()) - load.begin();
    plan[t].push_back(i);
    load[t] += rows[i];
  }
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    at::NoGradGuard no_grad;  // grad mode is per thread, and on in the pool's threads
    for (int64_t t = first; t < last; ++t)
      for (int64_t i : plan[t]) fn(i);
  });
}

struct ExpertMLPFunction : public torch::autograd::Function<ExpertMLPFunction> {
  // Expert by expert, the whole MLP at once: its (rows, F) intermediates are still in cache when
  // the next matmul reads them. (Running each matmul for all experts before the next, with SwiGLU
  // once over all rows, was 4% slower forward and 18% slower forward plus backward at the debug
  // width than the per-expert torch ops.) Chunks write disjoint rows, so they can run in parallel.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& xs_in, const at::Tensor& w_gate,
                            const at::Tensor& w_up, const at::Tensor& w_down, std::vector<int64_t> counts,
                            std::vector<int64_t> ids) {
    RECORD_FUNCTION("lumina::expert_mlp_forward", std::vector<c10::IValue>());
    const auto chunks = chunks_of(xs_in, w_gate, w_up, w_down, counts, ids);
    const at::Tensor xs = xs_in.contiguous();
    const int64_t N = xs.size(0), D = xs.size(1), F = w_gate.size(2);
    // Kept for the backward: the gate and up projections, sigmoid(gate) and the SwiGLU output,
    // as the per-expert torch ops would keep them.
    at::Tensor a = at::empty({N, F}, xs.options()), b = at::empty({N, F}, xs.options());
    at::Tensor h = at::empty({N, F}, xs.options()), sig = at::empty({N, F}, xs.options());
    at::Tensor ys = at::empty({N, D}, xs.options());
    std::vector<int64_t> rows;
    for (const Chunk& c : chunks) rows.push_back(c.rows);
    over_experts(rows, [&](int64_t i) {
      const Chunk& c = chunks[i];
      const at::Tensor x = xs.narrow(0, c.begin, c.rows);
      at::Tensor a_c = a.narrow(0, c.begin, c.rows), b_c = b.narrow(0, c.begin, c.rows);
      at::Tensor h_c = h.narrow(0, c.begin, c.rows), s_c = sig.narrow(0, c.begin, c.rows);
      at::Tensor y_c = ys.narrow(0, c.begin, c.rows);
      at::mm_out(a_c, x, w_gate[c.expert]);
      at::mm_out(b_c, x, w_up[c.expert]);
      swiglu_forward_out(a_c, b_c, h_c, s_c);
      at::mm_out(y_c, h_c, w_down[c.expert]);
    });
    ctx->save_for_backward({xs, w_gate, w_up, w_down, a, b, h, sig});
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["ids"] = ids;
    return ys;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("lumina::expert_mlp_backward", std::vector<c10::IValue>());
    no_double_backward("expert_mlp");
    const auto s = ctx->get_saved_variables();
    const at::Tensor &xs = s[0], &w_gate = s[1], &w_up = s[2], &w_down = s[3], &a = s[4], &b = s[5], &h = s[6],
                     &sig = s[7];
    const auto chunks = chunks_of(xs, w_gate, w_up, w_down, ctx->saved_data["counts"].toIntVector(),
                                  ctx->saved_data["ids"].toIntVector());
    const at::Tensor dy = grads[0].contiguous();
    const int64_t E = w_gate.size(0), F = w_gate.size(2);
    at::Tensor g_gate = at::empty_like(w_gate), g_up = at::empty_like(w_up), g_down = at::empty_like(w_down);
    at::Tensor dx = at::empty_like(xs);
    // Grouped by expert, so that one thread owns each expert's weight gradients.
    std::vector<std::vector<Chunk>> by_expert(E);
    std::vector<int64_t> rows(E, 0);
    for (const Chunk& c : chunks) {
      by_expert[c.expert].push_back(c);
      rows[c.expert] += c.rows;
    }
    // Each expert's (rows, F) temporaries are views of one scratch buffer of its thread, reused
    // from expert to expert while it is in cache, rather than fresh allocations per chunk.
    int64_t most = 0;
    for (const Chunk& c : chunks) most = std::max(most, c.rows);
    std::vector<at::Tensor> scratch(at::get_num_threads());
    over_experts(rows, [&](int64_t e) {
      // (over_experts runs one thread per index in parallel, or everything on the calling thread.)
      at::Tensor gg = g_gate[e], gu = g_up[e], gd = g_down[e];
      if (by_expert[e].empty()) {
        gg.zero_();
        gu.zero_();
        gd.zero_();
        return;
      }
      at::Tensor& buffer = scratch[std::min<size_t>(at::get_thread_num(), scratch.size() - 1)];
      if (!buffer.defined()) buffer = at::empty({3, most, F}, xs.options());
      double beta = 0.0;
      for (const Chunk& c : by_expert[e]) {
        const at::Tensor x_c = xs.narrow(0, c.begin, c.rows), dy_c = dy.narrow(0, c.begin, c.rows);
        const at::Tensor h_c = h.narrow(0, c.begin, c.rows);
        at::Tensor dh_c = buffer[0].narrow(0, 0, c.rows), da_c = buffer[1].narrow(0, 0, c.rows),
                   db_c = buffer[2].narrow(0, 0, c.rows);
        at::Tensor dx_c = dx.narrow(0, c.begin, c.rows);
        at::mm_out(dh_c, dy_c, w_down[e].t());
        at::addmm_out(gd, gd, h_c.t(), dy_c, beta);
        swiglu_backward_out(dh_c, a.narrow(0, c.begin, c.rows), b.narrow(0, c.begin, c.rows),
                            sig.narrow(0, c.begin, c.rows), da_c, db_c);
        at::mm_out(dx_c, da_c, w_gate[e].t());
        dx_c.addmm_(db_c, w_up[e].t());
        at::addmm_out(gg, gg, x_c.t(), da_c, beta);
        at::addmm_out(gu, gu, x_c.t(), db_c, beta);
        beta = 1.0;
      }
    });
    return {dx, g_gate, g_up, g_down, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor expert_mlp_autograd_cpu(const at::Tensor& xs, const at::Tensor& w_gate, const at::Tensor& w_up,
                                   const at::Tensor& w_down, std::vector<int64_t> counts, std::vector<int64_t> ids) {
  return ExpertMLPFunction::apply(xs, w_gate, w_up, w_down, std::move(counts), std::move(ids));
}

}  // namespace lumina
