// CUDA entry points: tensor checks, allocation and ATen steps (softmax, stable sort, cumsum), and
// the kernels of routing_cuda_kernels.cu on the current stream. Value errors found on the device
// are read back once per op (one synchronisation) and raised as std::invalid_argument.
//
// The softmax is ATen's, as in the reference, so probabilities and every decision taken on them
// match the reference on the same device bit for bit. fp64 router logits route in fp64, as in the
// reference, so gradcheck runs the CUDA top-k backward itself.
#include "check.h"
#include "routing.h"
#include "routing_cuda_kernels.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <tuple>

namespace lumina {
namespace {

namespace kc = lumina::cuda;

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

kc::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kc::DType::kFloat32;
    case at::kDouble: return kc::DType::kFloat64;
    case at::kBFloat16: return kc::DType::kBFloat16;
    case at::kHalf: return kc::DType::kFloat16;
    default: fail("CUDA routing kernels take float32, float64, bfloat16 or float16 tensors, got ", t);
  }
}

void require_cuda(const at::Tensor& t, const char* name) {
  if (!t.is_cuda()) fail(name, " must be a CUDA tensor, got one on ", t.device());
}

at::Tensor new_flags(const at::Tensor& like) {
  return at::zeros({2 * kc::kNumErrors}, like.options().dtype(at::kLong));
}

int64_t* flag_ptr(at::Tensor& flags) { return flags.data_ptr<int64_t>(); }

// What the error codes mean for the op at hand.
struct Context {
  int64_t num_experts = 0, num_slots = 0;
  std::string index_name = "index", index_bound;
};

void raise_flags(const at::Tensor& flags, const Context& ctx) {
  const at::Tensor host = flags.cpu();  // waits for the queued kernels
  const int64_t* f = host.const_data_ptr<int64_t>();
  auto hit = [f](int c) { return f[2 * c] != 0; };
  auto value = [f](int c) { return f[2 * c + 1]; };
  if (hit(kc::kNanProbs)) {
    fail("router logits contain NaN or +Inf (or a row of only -Inf), so the router softmax is NaN (row ",
         value(kc::kNanProbs), " among others); check the inputs and the learning rate");
  }
  if (hit(kc::kBadExpert)) fail("expert_index holds ", value(kc::kBadExpert), ": must be in [0, num_experts=", ctx.num_experts, ")");
  if (hit(kc::kBadSlot)) fail("slot holds ", value(kc::kBadSlot), ": must be in [0, tokens * top_k=", ctx.num_slots, "), or < 0 for dropped");
  if (hit(kc::kRepeatedSlot)) {
    const int64_t key = value(kc::kRepeatedSlot);  // expert << 32 | slot
    fail("slot repeats the value ", key & 0xFFFFFFFFLL, " within expert ", key >> 32,
         ": each kept assignment of an expert needs its own slot");
  }
  if (hit(kc::kBadIndex)) fail(ctx.index_name, " holds ", value(kc::kBadIndex), ": must be in ", ctx.index_bound);
  if (hit(kc::kRepeatedIndex)) fail("index repeats the position ", value(kc::kRepeatedIndex), " within a row: scatter_tokens needs distinct positions per row");
  if (hit(kc::kNanScores)) fail("MoD scores contain NaN (row ", value(kc::kNanScores), " among others); check the inputs and the learning rate");
  if (hit(kc::kBadPlan)) fail("assign_index holds ", value(kc::kBadPlan), ", which is out of [0, tokens * top_k=", ctx.num_slots, ") or does not match token_index: the plan is inconsistent");
}

std::string bound(const char* what, int64_t n) { return "[0, " + std::string(what) + "=" + std::to_string(n) + ")"; }

// Source rows grouped by target, each group in ascending source order (a stable sort), as CSR.
std::tuple<at::Tensor, at::Tensor> group_by_target(const at::Tensor& targets, int64_t num_targets) {
  auto [sorted, rows] = at::sort(targets, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor offsets = at::searchsorted(sorted, at::arange(num_targets + 1, targets.options()));
  return {offsets.contiguous(), rows.contiguous()};
}

}  // namespace

std::vector<at::Tensor> topk_route_cuda(const at::Tensor& logits, int64_t top_k, int64_t capacity) {
  require_cuda(logits, "router logits");
  require_dim(logits, 2, "router logits", "(tokens, experts)");
  require_float(logits, "router logits");
  const int64_t S = logits.size(0), E = logits.size(1), A = S * top_k;
  if (top_k < 1 || top_k > E) fail("top_k=", top_k, " is invalid: must be in [1, num_experts=", E, "]");
  if (capacity == 0 || capacity < -1) fail("capacity=", capacity, " is invalid: must be >= 1, or -1 for dropless");
  c10::cuda::CUDAGuard guard(logits.device());
  const bool fp64 = logits.scalar_type() == at::kDouble;
  const auto cdtype = fp64 ? at::kDouble : at::kFloat;
  at::Tensor probs = at::softmax(logits.to(cdtype), -1).contiguous();
  auto opts = logits.options();
  at::Tensor expert = at::empty({S, top_k}, opts.dtype(at::kLong));
  at::Tensor weights = at::empty({S, top_k}, opts.dtype(cdtype));
  at::Tensor slot = at::empty({S, top_k}, opts.dtype(at::kLong));
  at::Tensor flags = new_flags(logits);
  cudaStream_t stream = current_stream();
  // The assignments in expert-major order, by probability (descending), then token, then choice.
  at::Tensor order;
  if (fp64) {
    kc::launch_topk_select(probs.const_data_ptr<double>(), S, E, top_k, expert.data_ptr<int64_t>(),
                           weights.data_ptr<double>(), flag_ptr(flags), stream);
    // Two stable sorts, as in the reference's assign_slots: by probability, then by expert.
    at::Tensor by_priority = std::get<1>(at::sort(probs.gather(1, expert).neg().reshape({-1}), true, 0, false));
    at::Tensor flat_expert = expert.reshape({-1});
    at::Tensor by_expert = std::get<1>(at::sort(flat_expert.index_select(0, by_priority), true, 0, false));
    order = by_priority.index_select(0, by_expert).contiguous();
  } else {
    at::Tensor keys = at::empty({A}, opts.dtype(at::kLong));
    kc::launch_topk_select(probs.const_data_ptr<float>(), S, E, top_k, expert.data_ptr<int64_t>(),
                           weights.data_ptr<float>(), keys.data_ptr<int64_t>(), flag_ptr(flags), stream);
    // Stable sort of (expert, -prob) keys from flat (token, choice) order: the rank inside an
    // expert's run is the batch-prioritised slot, ties by token then choice.
    order = std::get<1>(at::sort(keys, /*stable=*/true, 0, false)).contiguous();
  }
  at::Tensor counts = at::zeros({E}, opts.dtype(at::kLong));
  kc::launch_histogram(expert.const_data_ptr<int64_t>(), nullptr, A, E, counts.data_ptr<int64_t>(),
                       flag_ptr(flags), stream);
  at::Tensor starts = (at::cumsum(counts, 0) - counts).contiguous();
  kc::launch_assign_slots(order.const_data_ptr<int64_t>(), expert.const_data_ptr<int64_t>(),
                          starts.const_data_ptr<int64_t>(), A, capacity, slot.data_ptr<int64_t>(), stream);
  raise_flags(flags, Context{E, A});
  return {expert, weights, slot, probs};
}

at::Tensor topk_route_backward_cuda(const at::Tensor& grad_weights, const at::Tensor& grad_probs,
                                    const at::Tensor& probs, const at::Tensor& expert_index,
                                    const at::Tensor& weights, at::ScalarType logits_dtype) {
  require_cuda(probs, "probs");
  const bool fp64 = probs.scalar_type() == at::kDouble;
  if (!fp64 && probs.scalar_type() != at::kFloat) fail("probs must be float32 or float64, got ", probs.scalar_type());
  if (fp64 != (logits_dtype == at::kDouble)) {
    fail("probs are ", probs.scalar_type(), " but the logits were ", logits_dtype,
         ": fp64 logits route in fp64, all others in fp32");
  }
  c10::cuda::CUDAGuard guard(probs.device());
  const int64_t S = probs.size(0), E = probs.size(1), k = expert_index.size(1);
  const auto cdtype = probs.scalar_type();
  auto gw = grad_weights.to(cdtype).contiguous();
  auto gp = grad_probs.to(cdtype).contiguous();
  auto p = probs.contiguous();
  auto ex = expert_index.contiguous();
  auto w = weights.to(cdtype).contiguous();
  at::Tensor out = at::empty({S, E}, probs.options().dtype(logits_dtype));
  if (fp64) {
    kc::launch_topk_backward(gw.const_data_ptr<double>(), gp.const_data_ptr<double>(), p.const_data_ptr<double>(),
                             ex.const_data_ptr<int64_t>(), w.const_data_ptr<double>(), S, E, k,
                             out.data_ptr<double>(), current_stream());
  } else {
    kc::launch_topk_backward(gw.const_data_ptr<float>(), gp.const_data_ptr<float>(), p.const_data_ptr<float>(),
                             ex.const_data_ptr<int64_t>(), w.const_data_ptr<float>(), S, E, k, out.data_ptr(),
                             dtype_of(logits_dtype), current_stream());
  }
  return out;
}

std::vector<at::Tensor> dispatch_plan_cuda(const at::Tensor& expert_index_in, const at::Tensor& slot_in,
                                           int64_t num_experts) {
  require_cuda(expert_index_in, "expert_index");
  require_dim(expert_index_in, 2, "expert_index", "(tokens, top_k)");
  require_long(expert_index_in, "expert_index");
  require_long(slot_in, "slot");
  require_device(slot_in, expert_index_in, "slot");
  if (slot_in.sizes() != expert_index_in.sizes()) fail("slot has shape ", slot_in.sizes(), " but expert_index has shape ", expert_index_in.sizes(), ": they must match");
  if (num_experts < 1) fail("num_experts=", num_experts, " is invalid: must be >= 1");
  c10::cuda::CUDAGuard guard(expert_index_in.device());
  auto ex = expert_index_in.contiguous();
  auto sl = slot_in.contiguous();
  const int64_t k = ex.size(1), A = ex.numel();
  if (A >= (int64_t{1} << 32)) fail("tokens * top_k=", A, " is too large: must be below 2^32");
  at::Tensor flags = new_flags(ex);
  at::Tensor keys = at::empty({A}, ex.options());
  at::Tensor counts = at::zeros({num_experts}, ex.options());
  cudaStream_t stream = current_stream();
  kc::launch_plan_keys(ex.const_data_ptr<int64_t>(), sl.const_data_ptr<int64_t>(), A, num_experts,
                       keys.data_ptr<int64_t>(), flag_ptr(flags), stream);
  kc::launch_histogram(ex.const_data_ptr<int64_t>(), sl.const_data_ptr<int64_t>(), A, num_experts,
                       counts.data_ptr<int64_t>(), flag_ptr(flags), stream);
  auto [sorted, order] = at::sort(keys, /*stable=*/true, 0, false);
  const int64_t N = counts.sum().item<int64_t>();  // the output size depends on the values
  kc::launch_check_unique_sorted(sorted.const_data_ptr<int64_t>(), N, flag_ptr(flags), stream);
  raise_flags(flags, Context{num_experts, A});
  at::Tensor assign = order.slice(0, 0, N).contiguous();
  at::Tensor token = at::div(assign, k, "floor");
  return {token, assign, counts};
}

at::Tensor permute_cuda(const at::Tensor& x_in, const at::Tensor& token_index_in) {
  require_cuda(x_in, "x");
  require_device(token_index_in, x_in, "token_index");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto ti = token_index_in.contiguous();
  const int64_t S = x.size(0), D = x.size(1), N = ti.numel();
  at::Tensor out = at::empty({N, D}, x.options());
  at::Tensor flags = new_flags(ti);
  kc::launch_gather_rows(x.const_data_ptr(), ti.const_data_ptr<int64_t>(), N, std::max<int64_t>(N, 1), 0, S,
                         D * x.element_size(), out.data_ptr(), flag_ptr(flags), current_stream());
  raise_flags(flags, Context{0, 0, "token_index", bound("num_tokens", S)});
  return out;
}

at::Tensor permute_backward_cuda(const at::Tensor& grad_in, const at::Tensor& token_index_in, int64_t num_tokens) {
  require_cuda(grad_in, "grad");
  c10::cuda::CUDAGuard guard(grad_in.device());
  auto grad = grad_in.contiguous();
  auto ti = token_index_in.contiguous();
  const int64_t N = ti.numel(), D = grad.size(1);
  at::Tensor flags = new_flags(ti);
  kc::launch_check_range(ti.const_data_ptr<int64_t>(), N, num_tokens, kc::kBadIndex, flag_ptr(flags), current_stream());
  raise_flags(flags, Context{0, 0, "token_index", bound("num_tokens", num_tokens)});
  auto [offsets, rows] = group_by_target(ti, num_tokens);
  at::Tensor out = at::empty({num_tokens, D}, grad.options());
  kc::launch_segment_sum(grad.const_data_ptr(), offsets.const_data_ptr<int64_t>(), rows.const_data_ptr<int64_t>(),
                         num_tokens, D, nullptr, nullptr, dtype_of(grad.scalar_type()), out.data_ptr(), current_stream());
  return out;
}

at::Tensor unpermute_cuda(const at::Tensor& y_in, const at::Tensor& token_index_in, const at::Tensor& assign_index_in,
                          const at::Tensor& weights_in, int64_t num_tokens) {
  require_cuda(y_in, "y");
  require_device(token_index_in, y_in, "token_index");
  require_device(assign_index_in, y_in, "assign_index");
  require_device(weights_in, y_in, "weights");
  c10::cuda::CUDAGuard guard(y_in.device());
  auto y = y_in.contiguous();
  auto ti = token_index_in.contiguous();
  auto ai = assign_index_in.contiguous();
  const int64_t N = ti.numel(), D = y.size(1), k = weights_in.size(1);
  auto w_y = weights_in.to(y.scalar_type()).contiguous();  // as in the reference, weights in y's dtype
  at::Tensor flags = new_flags(ti);
  kc::launch_check_plan(ti.const_data_ptr<int64_t>(), ai.const_data_ptr<int64_t>(), N, num_tokens, k,
                        flag_ptr(flags), current_stream());
  raise_flags(flags, Context{0, num_tokens * k, "token_index", bound("num_tokens", num_tokens)});
  auto [offsets, rows] = group_by_target(ti, num_tokens);
  at::Tensor out = at::empty({num_tokens, D}, y.options());
  kc::launch_segment_sum(y.const_data_ptr(), offsets.const_data_ptr<int64_t>(), rows.const_data_ptr<int64_t>(),
                         num_tokens, D, w_y.const_data_ptr(), ai.const_data_ptr<int64_t>(),
                         dtype_of(y.scalar_type()), out.data_ptr(), current_stream());
  return out;
}

std::vector<at::Tensor> unpermute_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& y_in,
                                                const at::Tensor& token_index_in, const at::Tensor& assign_index_in,
                                                const at::Tensor& weights_in) {
  require_cuda(y_in, "y");
  c10::cuda::CUDAGuard guard(y_in.device());
  auto g = grad_out_in.to(y_in.scalar_type()).contiguous();
  auto y = y_in.contiguous();
  auto ti = token_index_in.contiguous();
  auto ai = assign_index_in.contiguous();
  const int64_t N = ti.numel(), D = y.size(1), S = g.size(0), k = weights_in.size(1);
  auto w_y = weights_in.to(y.scalar_type()).contiguous();
  at::Tensor flags = new_flags(ti);
  kc::launch_check_plan(ti.const_data_ptr<int64_t>(), ai.const_data_ptr<int64_t>(), N, S, k, flag_ptr(flags),
                        current_stream());
  raise_flags(flags, Context{0, S * k, "token_index", bound("num_tokens", S)});
  at::Tensor grad_y = at::empty({N, D}, y.options());
  at::Tensor grad_w = at::zeros({S * k}, weights_in.options());
  kc::launch_unpermute_backward(g.const_data_ptr(), y.const_data_ptr(), w_y.const_data_ptr(),
                                ti.const_data_ptr<int64_t>(), ai.const_data_ptr<int64_t>(), N, D,
                                dtype_of(y.scalar_type()), grad_y.data_ptr(), grad_w.data_ptr(),
                                dtype_of(weights_in.scalar_type()), current_stream());
  return {grad_y, grad_w.view_as(weights_in)};
}

at::Tensor expert_histogram_cuda(const at::Tensor& expert_index_in, int64_t num_experts) {
  require_cuda(expert_index_in, "expert_index");
  if (num_experts < 1) fail("num_experts=", num_experts, " is invalid: must be >= 1");
  c10::cuda::CUDAGuard guard(expert_index_in.device());
  auto ex = expert_index_in.to(at::kLong).contiguous();
  at::Tensor counts = at::zeros({num_experts}, ex.options());
  at::Tensor flags = new_flags(ex);
  kc::launch_histogram(ex.const_data_ptr<int64_t>(), nullptr, ex.numel(), num_experts, counts.data_ptr<int64_t>(),
                       flag_ptr(flags), current_stream());
  raise_flags(flags, Context{num_experts, 0});
  return counts;
}

at::Tensor mod_select_cuda(const at::Tensor& scores_in, int64_t k) {
  require_cuda(scores_in, "MoD scores");
  require_dim(scores_in, 2, "MoD scores", "(batch, seq)");
  require_float(scores_in, "MoD scores");
  const int64_t B = scores_in.size(0), T = scores_in.size(1);
  if (k < 1 || k > T) fail("MoD k=", k, " is invalid: must be in [1, seq_len=", T, "]");
  if (T >= (int64_t{1} << 31)) fail("seq_len=", T, " is too large: must be below 2^31");
  c10::cuda::CUDAGuard guard(scores_in.device());
  auto scores = scores_in.to(at::kFloat).contiguous();  // the reference ranks scores.float()
  at::Tensor out = at::empty({B, k}, scores.options().dtype(at::kLong));
  at::Tensor flags = new_flags(out);
  kc::launch_mod_select(scores.const_data_ptr<float>(), B, T, k, out.data_ptr<int64_t>(), flag_ptr(flags),
                        current_stream());
  raise_flags(flags, Context{});
  return out;
}

at::Tensor gather_tokens_cuda(const at::Tensor& x_in, const at::Tensor& index_in) {
  require_cuda(x_in, "x");
  require_device(index_in, x_in, "index");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto index = index_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), k = index.size(1);
  at::Tensor out = at::empty({B, k, D}, x.options());
  at::Tensor flags = new_flags(index);
  kc::launch_gather_rows(x.const_data_ptr(), index.const_data_ptr<int64_t>(), B * k, k, T, T, D * x.element_size(),
                         out.data_ptr(), flag_ptr(flags), current_stream());
  raise_flags(flags, Context{0, 0, "index", bound("seq_len", T)});
  return out;
}

at::Tensor gather_tokens_backward_cuda(const at::Tensor& grad_in, const at::Tensor& index_in, int64_t seq_len) {
  require_cuda(grad_in, "grad");
  c10::cuda::CUDAGuard guard(grad_in.device());
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  const int64_t B = grad.size(0), k = grad.size(1), D = grad.size(2);
  at::Tensor flags = new_flags(index);
  kc::launch_check_range(index.const_data_ptr<int64_t>(), B * k, seq_len, kc::kBadIndex, flag_ptr(flags),
                         current_stream());
  raise_flags(flags, Context{0, 0, "index", bound("seq_len", seq_len)});
  at::Tensor targets = (index + at::arange(B, index.options()).unsqueeze(1) * seq_len).reshape({-1});
  auto [offsets, rows] = group_by_target(targets, B * seq_len);
  at::Tensor out = at::empty({B, seq_len, D}, grad.options());
  kc::launch_segment_sum(grad.const_data_ptr(), offsets.const_data_ptr<int64_t>(), rows.const_data_ptr<int64_t>(),
                         B * seq_len, D, nullptr, nullptr, dtype_of(grad.scalar_type()), out.data_ptr(),
                         current_stream());
  return out;
}

at::Tensor scatter_tokens_cuda(const at::Tensor& x_in, const at::Tensor& index_in, const at::Tensor& values_in) {
  require_cuda(x_in, "x");
  require_device(index_in, x_in, "index");
  require_device(values_in, x_in, "values");
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = x_in.contiguous().clone();
  auto index = index_in.contiguous();
  auto values = values_in.contiguous();
  const int64_t B = out.size(0), T = out.size(1), D = out.size(2), k = index.size(1);
  at::Tensor marks = at::zeros({B * T}, index.options().dtype(at::kInt));
  at::Tensor flags = new_flags(index);
  kc::launch_scatter_rows(values.const_data_ptr(), index.const_data_ptr<int64_t>(), B * k, k, T, T,
                          D * out.element_size(), out.data_ptr(), marks.data_ptr<int32_t>(), flag_ptr(flags),
                          current_stream());
  raise_flags(flags, Context{0, 0, "index", bound("seq_len", T)});
  return out;
}

}  // namespace lumina
