"""All routing math for MoE and MoD, in one place: the public front of the routing ops.

Each op is a `torch.library` custom op (namespace `lumina::`) with a fake implementation, so
`torch.compile` traces it and meta tensors get shapes, and with autograd where it is
differentiable. At run time `lumina.ops.backend` picks the implementation: the C++ kernels for CPU
tensors, the CUDA kernels for CUDA tensors, or the PyTorch reference (`routing_reference`, the
specification) when no kernel serves the tensor. The choice never changes a result's integers
(expert ids, slots, orderings); floats agree within the tolerances in docs/kernels.md.

For eager CPU tensors every op skips torch.library and calls `lumina._C` directly, the
differentiable ones with their autograd in C++ (`*_autograd_cpu`): with a custom op's Python
dispatch and autograd glue, an MoE layer's route, plan, permute and unpermute took 2.4 ms forward
plus backward at the debug width, against 1.5 ms direct, with the same kernels (docs/kernels.md). Results and gradients are the same either way; double backward through the C++
autograd raises.

Shapes, dtypes, devices and k are checked here, before any op runs; values (NaN logits, indices
out of range, repeated slots) are checked by whichever implementation runs. Both raise ValueError.

Dispatch is index-based: nothing here builds the dense one-hot [tokens x experts x capacity]
tensor of GShard-style einsum dispatch, whose memory grows as O(S * E * C).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lumina.ops import backend
from lumina.ops import routing_reference as ref
from lumina.ops.routing_reference import DispatchPlan, Route, assign_slots, expert_capacity

__all__ = ["DispatchPlan", "Route", "assign_slots", "dispatch_plan", "expert_capacity", "expert_histogram",
           "gather_tokens", "mod_select", "permute", "scatter_tokens", "topk_route", "unpermute"]


def _same_device(name: str, t: Tensor, other_name: str, other: Tensor) -> None:
    if t.device != other.device:
        raise ValueError(f"{name} is on {t.device} but {other_name} is on {other.device}: "
                         "all inputs of a routing op must be on one device")


def _index(name: str, t: Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {layout}, got shape {tuple(t.shape)}")
    if t.dtype != torch.int64:
        raise ValueError(f"{name} must be int64, got dtype {t.dtype}")


def _floating(name: str, t: Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")


def _eager_cpu(op: str, t: Tensor):
    """lumina._C's `op` with C++ autograd, for an eager (not traced) CPU tensor; else None."""
    return backend.eager_kernel(f"{op}_autograd", t)


def _is_meta(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return t.device.type == "meta" and not isinstance(t, FakeTensor)


# Top-k router.

@torch.library.custom_op("lumina::topk_route", mutates_args=())
def _topk_route_op(logits: Tensor, top_k: int, capacity: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    fn = backend.kernel("topk_route", logits.device)
    if fn is None:
        return tuple(ref.topk_route(logits, top_k, None if capacity < 0 else capacity))
    return tuple(fn(logits, top_k, capacity))


@_topk_route_op.register_fake
def _(logits, top_k, capacity):
    S, E = logits.shape
    cdtype = ref.router_dtype(logits.dtype)
    return (logits.new_empty((S, top_k), dtype=torch.int64), logits.new_empty((S, top_k), dtype=cdtype),
            logits.new_empty((S, top_k), dtype=torch.int64), logits.new_empty((S, E), dtype=cdtype))


@torch.library.custom_op("lumina::topk_route_backward", mutates_args=())
def _topk_route_backward_op(grad_weights: Tensor, grad_probs: Tensor, probs: Tensor, expert_index: Tensor,
                            weights: Tensor, logits_dtype: torch.dtype) -> Tensor:
    fn = backend.kernel("topk_route_backward", probs.device)
    if fn is None:
        return ref.topk_route_backward(grad_weights, grad_probs, probs, expert_index, weights, logits_dtype)
    return fn(grad_weights, grad_probs, probs, expert_index, weights, logits_dtype)


@_topk_route_backward_op.register_fake
def _(grad_weights, grad_probs, probs, expert_index, weights, logits_dtype):
    return probs.new_empty(probs.shape, dtype=logits_dtype)


def _topk_route_setup(ctx, inputs, output):
    logits = inputs[0]
    expert_index, weights, _, probs = output
    ctx.save_for_backward(probs, expert_index, weights)
    ctx.logits_dtype = logits.dtype


def _topk_route_backward(ctx, _g_expert, g_weights, _g_slot, g_probs):
    probs, expert_index, weights = ctx.saved_tensors
    g_weights = torch.zeros_like(weights) if g_weights is None else g_weights
    g_probs = torch.zeros_like(probs) if g_probs is None else g_probs
    grad = torch.ops.lumina.topk_route_backward(g_weights, g_probs, probs, expert_index, weights, ctx.logits_dtype)
    return grad, None, None


_topk_route_op.register_autograd(_topk_route_backward, setup_context=_topk_route_setup)


def topk_route(logits: Tensor, top_k: int, capacity: int | None) -> Route:
    """Top-k token-choice routing of (S, E) logits with a softmax router computed in fp32.

    Returns expert ids best first (equal probabilities: lower expert first), weights renormalised
    over the k chosen, and each assignment's slot in its expert's buffer: ranked by probability,
    then token position, then choice rank; -1 beyond `capacity` (None: unlimited). Differentiable
    w.r.t. `logits` through `weights` and `probs`.
    """
    ref.check_logits(logits, top_k)
    ref.check_capacity(capacity)
    fn = _eager_cpu("topk_route", logits)
    op = torch.ops.lumina.topk_route if fn is None else fn
    expert_index, weights, slot, probs = op(logits, top_k, -1 if capacity is None else capacity)
    return Route(expert_index, weights, slot, probs)


# Dispatch plan and expert histogram.

@torch.library.custom_op("lumina::dispatch_plan", mutates_args=())
def _dispatch_plan_op(expert_index: Tensor, slot: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    fn = backend.kernel("dispatch_plan", expert_index.device)
    if fn is None:
        ref.check_plan_values(expert_index, slot, num_experts)
        return tuple(ref.dispatch_plan(expert_index, slot, num_experts))
    return tuple(fn(expert_index, slot, num_experts))


@_dispatch_plan_op.register_fake
def _(expert_index, slot, num_experts):
    # N, the number of kept assignments, depends on the values. Plain meta tensors carry no
    # symbolic sizes, so they get the dropless upper bound S * k.
    n = expert_index.numel() if _is_meta(expert_index) else torch.library.get_ctx().new_dynamic_size()
    return (expert_index.new_empty(n), expert_index.new_empty(n), expert_index.new_empty(num_experts))


def dispatch_plan(expert_index: Tensor, slot: Tensor, num_experts: int) -> DispatchPlan:
    """Kept assignments (slot >= 0) in expert-contiguous order: expert ascending, slot ascending.

    Slots must be distinct within an expert and below S * k. On meta tensors N is its upper bound.
    """
    _index("expert_index", expert_index, 2, "(tokens, top_k)")
    _index("slot", slot, 2, "(tokens, top_k)")
    if slot.shape != expert_index.shape:
        raise ValueError(f"slot has shape {tuple(slot.shape)} but expert_index has shape "
                         f"{tuple(expert_index.shape)}: they must match")
    _same_device("slot", slot, "expert_index", expert_index)
    if num_experts < 1:
        raise ValueError(f"num_experts={num_experts} is invalid: must be >= 1")
    fn = backend.eager_kernel("dispatch_plan", expert_index) or torch.ops.lumina.dispatch_plan
    token_index, assign_index, counts = fn(expert_index, slot, num_experts)
    return DispatchPlan(token_index, assign_index, counts)


@torch.library.custom_op("lumina::expert_histogram", mutates_args=())
def _expert_histogram_op(expert_index: Tensor, num_experts: int) -> Tensor:
    fn = backend.kernel("expert_histogram", expert_index.device)
    if fn is None:
        ref.check_rows(expert_index, num_experts, "expert_index", f"[0, num_experts={num_experts})")
        return ref.expert_histogram(expert_index, num_experts)
    return fn(expert_index, num_experts)


@_expert_histogram_op.register_fake
def _(expert_index, num_experts):
    return expert_index.new_empty(num_experts, dtype=torch.int64)


def expert_histogram(expert_index: Tensor, num_experts: int) -> Tensor:
    """Assignments per expert, before capacity (int64, shape (E,))."""
    if expert_index.is_floating_point() or expert_index.is_complex() or expert_index.dtype == torch.bool:
        raise ValueError(f"expert_index must be an integer tensor, got dtype {expert_index.dtype}")
    if num_experts < 1:
        raise ValueError(f"num_experts={num_experts} is invalid: must be >= 1")
    fn = backend.eager_kernel("expert_histogram", expert_index) or torch.ops.lumina.expert_histogram
    return fn(expert_index, num_experts)


# Permute and unpermute.

@torch.library.custom_op("lumina::permute", mutates_args=())
def _permute_op(x: Tensor, token_index: Tensor) -> Tensor:
    fn = backend.kernel("permute", x.device)
    if fn is None:
        ref.check_rows(token_index, x.shape[0], "token_index", f"[0, num_tokens={x.shape[0]})")
        return x.index_select(0, token_index)
    return fn(x, token_index)


@_permute_op.register_fake
def _(x, token_index):
    return x.new_empty((token_index.shape[0], x.shape[1]))


@torch.library.custom_op("lumina::permute_backward", mutates_args=())
def _permute_backward_op(grad: Tensor, token_index: Tensor, num_tokens: int) -> Tensor:
    fn = backend.kernel("permute_backward", grad.device)
    if fn is None:
        return ref.permute_backward(grad, token_index, num_tokens)
    return fn(grad, token_index, num_tokens)


@_permute_backward_op.register_fake
def _(grad, token_index, num_tokens):
    return grad.new_empty((num_tokens, grad.shape[1]))


def _permute_setup(ctx, inputs, output):
    x, token_index = inputs
    ctx.save_for_backward(token_index)
    ctx.num_tokens = x.shape[0]


def _permute_backward(ctx, grad):
    (token_index,) = ctx.saved_tensors
    return torch.ops.lumina.permute_backward(grad.contiguous(), token_index, ctx.num_tokens), None


_permute_op.register_autograd(_permute_backward, setup_context=_permute_setup)


def permute(x: Tensor, plan: DispatchPlan) -> Tensor:
    """(S, D) tokens -> (N, D) copies in expert-contiguous order."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, hidden), got shape {tuple(x.shape)}")
    _index("plan.token_index", plan.token_index, 1, "(N,)")
    _same_device("plan.token_index", plan.token_index, "x", x)
    fn = _eager_cpu("permute", x)
    return (torch.ops.lumina.permute if fn is None else fn)(x, plan.token_index)


def _check_plan_rows(token_index: Tensor, assign_index: Tensor, num_tokens: int, top_k: int) -> None:
    ref.check_rows(token_index, num_tokens, "token_index", f"[0, num_tokens={num_tokens})")
    ref.check_rows(assign_index, num_tokens * top_k, "assign_index", f"[0, tokens * top_k={num_tokens * top_k})")
    if not torch.equal(torch.div(assign_index, top_k, rounding_mode="floor"), token_index):
        raise ValueError(f"token_index does not equal assign_index // top_k={top_k}: the plan is inconsistent")


@torch.library.custom_op("lumina::unpermute", mutates_args=())
def _unpermute_op(y: Tensor, token_index: Tensor, assign_index: Tensor, weights: Tensor, num_tokens: int) -> Tensor:
    fn = backend.kernel("unpermute", y.device)
    if fn is None:
        _check_plan_rows(token_index, assign_index, num_tokens, weights.shape[1])
        plan = DispatchPlan(token_index, assign_index, counts=token_index.new_empty(0))  # counts unused
        return ref.unpermute(y, plan, weights, num_tokens)
    return fn(y, token_index, assign_index, weights, num_tokens)


@_unpermute_op.register_fake
def _(y, token_index, assign_index, weights, num_tokens):
    return y.new_empty((num_tokens, y.shape[1]))


@torch.library.custom_op("lumina::unpermute_backward", mutates_args=())
def _unpermute_backward_op(grad: Tensor, y: Tensor, token_index: Tensor, assign_index: Tensor,
                           weights: Tensor) -> tuple[Tensor, Tensor]:
    fn = backend.kernel("unpermute_backward", y.device)
    if fn is None:
        return ref.unpermute_backward(grad, y, token_index, assign_index, weights)
    return tuple(fn(grad, y, token_index, assign_index, weights))


@_unpermute_backward_op.register_fake
def _(grad, y, token_index, assign_index, weights):
    return y.new_empty(y.shape), weights.new_empty(weights.shape)


def _unpermute_setup(ctx, inputs, output):
    y, token_index, assign_index, weights, _ = inputs
    ctx.save_for_backward(y, token_index, assign_index, weights)


def _unpermute_backward(ctx, grad):
    y, token_index, assign_index, weights = ctx.saved_tensors
    grad_y, grad_w = torch.ops.lumina.unpermute_backward(grad.contiguous(), y, token_index, assign_index, weights)
    return grad_y, None, None, grad_w, None


_unpermute_op.register_autograd(_unpermute_backward, setup_context=_unpermute_setup)


def unpermute(y: Tensor, plan: DispatchPlan, weights: Tensor, num_tokens: int) -> Tensor:
    """(N, D) expert outputs -> (S, D) weighted sums per token; dropped assignments add nothing.

    Each weight is rounded to y's dtype first, as in the reference. Differentiable w.r.t. `y` and
    `weights` (S, k).
    """
    if y.dim() != 2:
        raise ValueError(f"y must be 2-D (assignments, hidden), got shape {tuple(y.shape)}")
    _floating("weights", weights, 2, "(tokens, top_k)")
    _index("plan.token_index", plan.token_index, 1, "(N,)")
    _index("plan.assign_index", plan.assign_index, 1, "(N,)")
    if not (y.shape[0] == plan.token_index.shape[0] == plan.assign_index.shape[0]):
        raise ValueError(f"y has {y.shape[0]} rows, plan.token_index {plan.token_index.shape[0]} and "
                         f"plan.assign_index {plan.assign_index.shape[0]}: they must be equal")
    if weights.shape[0] != num_tokens:
        raise ValueError(f"weights has {weights.shape[0]} rows but num_tokens={num_tokens}: they must be equal")
    for name, t in (("plan.token_index", plan.token_index), ("plan.assign_index", plan.assign_index),
                    ("weights", weights)):
        _same_device(name, t, "y", y)
    fn = _eager_cpu("unpermute", y)
    return (torch.ops.lumina.unpermute if fn is None else fn)(y, plan.token_index, plan.assign_index, weights,
                                                               num_tokens)


# Mixture-of-Depths selection, gather and scatter.

@torch.library.custom_op("lumina::mod_select", mutates_args=())
def _mod_select_op(scores: Tensor, k: int) -> Tensor:
    fn = backend.kernel("mod_select", scores.device)
    if fn is None:
        return ref.mod_select(scores, k)
    return fn(scores, k)


@_mod_select_op.register_fake
def _(scores, k):
    return scores.new_empty((scores.shape[0], k), dtype=torch.int64)


def mod_select(scores: Tensor, k: int) -> Tensor:
    """Per-sequence top-k of (B, T) router scores; returns (B, k) positions in ascending order.

    Equal scores go to the earlier position. Not differentiable (MoD routes on detached scores).
    """
    _floating("MoD scores", scores, 2, "(batch, seq)")
    T = scores.shape[1]
    if not 1 <= k <= T:
        raise ValueError(f"MoD k={k} is invalid: must be in [1, seq_len={T}]")
    fn = backend.eager_kernel("mod_select", scores) or torch.ops.lumina.mod_select
    return fn(scores, k)


@torch.library.custom_op("lumina::gather_tokens", mutates_args=())
def _gather_tokens_op(x: Tensor, index: Tensor) -> Tensor:
    fn = backend.kernel("gather_tokens", x.device)
    if fn is None:
        ref.check_positions(index, x.shape[1], unique=False)
        return ref.gather_tokens(x, index)
    return fn(x, index)


@_gather_tokens_op.register_fake
def _(x, index):
    return x.new_empty((x.shape[0], index.shape[1], x.shape[2]))


@torch.library.custom_op("lumina::gather_tokens_backward", mutates_args=())
def _gather_tokens_backward_op(grad: Tensor, index: Tensor, seq_len: int) -> Tensor:
    fn = backend.kernel("gather_tokens_backward", grad.device)
    if fn is None:
        return ref.gather_tokens_backward(grad, index, seq_len)
    return fn(grad, index, seq_len)


@_gather_tokens_backward_op.register_fake
def _(grad, index, seq_len):
    return grad.new_empty((grad.shape[0], seq_len, grad.shape[2]))


def _gather_setup(ctx, inputs, output):
    x, index = inputs
    ctx.save_for_backward(index)
    ctx.seq_len = x.shape[1]


def _gather_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return torch.ops.lumina.gather_tokens_backward(grad.contiguous(), index, ctx.seq_len), None


_gather_tokens_op.register_autograd(_gather_backward, setup_context=_gather_setup)


def _check_mod_index(x: Tensor, index: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (batch, seq, hidden), got shape {tuple(x.shape)}")
    _index("index", index, 2, "(batch, k)")
    if index.shape[0] != x.shape[0]:
        raise ValueError(f"index has batch {index.shape[0]} but x has batch {x.shape[0]}: they must match")
    _same_device("index", index, "x", x)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """(B, T, D) x (B, k) positions -> (B, k, D). Differentiable w.r.t. `x`."""
    _check_mod_index(x, index)
    fn = _eager_cpu("gather_tokens", x)
    return (torch.ops.lumina.gather_tokens if fn is None else fn)(x, index)


@torch.library.custom_op("lumina::scatter_tokens", mutates_args=())
def _scatter_tokens_op(x: Tensor, index: Tensor, values: Tensor) -> Tensor:
    fn = backend.kernel("scatter_tokens", x.device)
    if fn is None:
        ref.check_positions(index, x.shape[1], unique=True)
        return ref.scatter_tokens(x, index, values)
    return fn(x, index, values)


@_scatter_tokens_op.register_fake
def _(x, index, values):
    return x.new_empty(x.shape)


def _scatter_setup(ctx, inputs, output):
    _, index, values = inputs
    ctx.save_for_backward(index)
    ctx.values_shape = values.shape


def _scatter_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = torch.ops.lumina.scatter_tokens(grad, index, grad.new_zeros(ctx.values_shape))
    grad_values = torch.ops.lumina.gather_tokens(grad, index)
    return grad_x, None, grad_values


_scatter_tokens_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)


def scatter_tokens(x: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """Out-of-place: x with rows `index` (B, k) replaced by values (B, k, D).

    Positions must be distinct within a row. Differentiable w.r.t. `x` and `values`.
    """
    _check_mod_index(x, index)
    expected = (index.shape[0], index.shape[1], x.shape[2])
    if tuple(values.shape) != expected:
        raise ValueError(f"values has shape {tuple(values.shape)}, expected (batch, k, hidden)={expected}")
    if values.dtype != x.dtype:
        raise ValueError(f"values has dtype {values.dtype} but x has {x.dtype}: they must match")
    _same_device("values", values, "x", x)
    fn = _eager_cpu("scatter_tokens", x)
    return (torch.ops.lumina.scatter_tokens if fn is None else fn)(x, index, values)
