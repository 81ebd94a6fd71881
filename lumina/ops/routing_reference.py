"""Pure-PyTorch reference for the routing ops: the specification the C++ and CUDA kernels match.

Everything here is plain tensor code that runs on any device. `lumina.ops.routing` is the public
front; it calls these functions when no kernel serves a tensor, and the tests compare every kernel
with them (integer outputs bit for bit, floats within a stated tolerance).

Dispatch is index-based: a token is moved by gather/scatter through integer indices. Nothing here
builds the dense one-hot [tokens x experts x capacity] tensor of GShard-style einsum dispatch,
whose memory grows as O(S * E * C).

Tie-breaking, which the kernels reproduce exactly:
- top-k experts of a token: higher probability first, equal probabilities by lower expert index
  (a stable descending sort; `torch.topk` leaves ties unspecified and on CPU picks higher indices);
- capacity slots within an expert: higher probability first, then lower token position, then lower
  choice rank (batch-prioritised routing);
- MoD selection: higher score first, equal scores by lower position; -0.0 equals +0.0.

The `*_backward` functions are the closed-form gradients of the forward functions above them; a
test checks them against autograd through the forward, and the front uses them when the reference
serves an op inside its custom-op autograd.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Route(NamedTuple):
    """Result of top-k routing for S tokens over E experts."""

    expert_index: torch.Tensor  # (S, k) int64: chosen experts, best first
    weights: torch.Tensor       # (S, k) fp32: router probabilities renormalised over the k chosen
    slot: torch.Tensor          # (S, k) int64: position in the expert's buffer, -1 if dropped
    probs: torch.Tensor         # (S, E) fp32: full softmax, for the balance loss


class DispatchPlan(NamedTuple):
    """Kept assignments in expert-contiguous order (expert asc, slot asc)."""

    token_index: torch.Tensor   # (N,) int64: source token of each kept assignment
    assign_index: torch.Tensor  # (N,) int64: flat index s * k + j into the (S, k) route tensors
    counts: torch.Tensor        # (E,) int64: kept assignments per expert


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float | None) -> int | None:
    """Slots per expert: ceil(factor * S * k / E), at least 1; None means unlimited (dropless)."""
    if capacity_factor is None:
        return None
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor={capacity_factor!r} is invalid: must be > 0, or None for dropless")
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def router_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """The router's softmax runs in fp32, or in fp64 for fp64 logits (so gradcheck can run)."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def check_logits(logits: torch.Tensor, top_k: int) -> None:
    """Shape, dtype and k checks that need no look at the values."""
    if logits.dim() != 2:
        raise ValueError(f"router logits must be 2-D (tokens, experts), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"router logits must be floating point, got dtype {logits.dtype}")
    num_experts = logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} is invalid: must be in [1, num_experts={num_experts}]")


def check_capacity(capacity: int | None) -> None:
    if capacity is None:
        return
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
        raise ValueError(f"capacity={capacity!r} is invalid: must be an int >= 1, or None for dropless")


NAN_PROBS_MESSAGE = ("router logits contain NaN or +Inf (or a row of only -Inf), so the router "
                     "softmax is NaN; check the inputs and the learning rate")


def assign_slots(expert_index: torch.Tensor, priority: torch.Tensor, num_experts: int,
                 capacity: int | None) -> torch.Tensor:
    """Capacity-aware slot of each assignment, -1 when it overflows.

    Within an expert, assignments are ranked by router probability (descending), ties by token
    position, then by choice rank: the drop policy of Batch Prioritized Routing
    (Riquelme et al. 2021) with a deterministic tie-break.
    """
    S, k = expert_index.shape
    flat_expert = expert_index.reshape(-1)
    # Flat order is already (token asc, choice asc); two stable sorts layer probability and
    # expert on top of it, so ties keep position order.
    by_priority = torch.sort(-priority.reshape(-1), stable=True).indices
    by_expert = torch.sort(flat_expert[by_priority], stable=True).indices
    order = by_priority[by_expert]                      # (S*k,) expert-major, priority within
    counts = torch.bincount(flat_expert, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(S * k, device=expert_index.device) - starts[flat_expert[order]]
    slot = torch.empty_like(flat_expert)
    slot[order] = rank
    if capacity is not None:
        slot = torch.where(slot < capacity, slot, torch.full_like(slot, -1))
    return slot.view(S, k)


def topk_route(logits: torch.Tensor, top_k: int, capacity: int | None) -> Route:
    """Top-k token-choice routing with a softmax router computed in fp32."""
    check_logits(logits, top_k)
    check_capacity(capacity)
    probs = torch.softmax(logits.to(router_dtype(logits.dtype)), dim=-1)   # (S, E)
    if torch.isnan(probs).any():
        raise ValueError(NAN_PROBS_MESSAGE)
    # A stable descending sort instead of torch.topk: equal probabilities go to the lower expert.
    top_p, expert_index = torch.sort(probs, dim=-1, descending=True, stable=True)
    top_p, expert_index = top_p[:, :top_k], expert_index[:, :top_k]
    weights = top_p / top_p.sum(-1, keepdim=True)
    slot = assign_slots(expert_index, top_p, logits.shape[1], capacity)
    return Route(expert_index, weights, slot, probs)


def topk_route_backward(grad_weights: torch.Tensor, grad_probs: torch.Tensor, probs: torch.Tensor,
                        expert_index: torch.Tensor, weights: torch.Tensor,
                        logits_dtype: torch.dtype) -> torch.Tensor:
    """d(loss)/d(logits) from the gradients of `weights` (S, k) and `probs` (S, E)."""
    top_p = probs.gather(1, expert_index)
    # w_j = p_j / P with P = sum_j p_j, so dL/dp_j = (g_j - sum_i g_i w_i) / P.
    grad_top = (grad_weights - (grad_weights * weights).sum(-1, keepdim=True)) / top_p.sum(-1, keepdim=True)
    grad_p = grad_probs.scatter_add(1, expert_index, grad_top)
    grad_logits = probs * (grad_p - (grad_p * probs).sum(-1, keepdim=True))   # softmax backward
    return grad_logits.to(logits_dtype)


def dispatch_plan(expert_index: torch.Tensor, slot: torch.Tensor, num_experts: int) -> DispatchPlan:
    """Expert-contiguous order of the kept assignments (slot >= 0)."""
    S, k = expert_index.shape
    flat_slot = slot.reshape(-1)
    kept = torch.nonzero(flat_slot >= 0).squeeze(1)
    experts = expert_index.reshape(-1)[kept]
    # Key is unique per kept assignment because slots are unique within an expert.
    bound = max(S * k, 1)
    order = torch.argsort(experts * bound + flat_slot[kept])
    assign_index = kept[order]
    return DispatchPlan(
        token_index=torch.div(assign_index, k, rounding_mode="floor"),
        assign_index=assign_index,
        counts=torch.bincount(experts, minlength=num_experts),
    )


def permute(x: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """(S, D) tokens -> (N, D) copies in expert-contiguous order."""
    return x.index_select(0, plan.token_index)


def permute_backward(grad: torch.Tensor, token_index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N, D) gradient of the permuted copies -> (S, D), summed over each token's copies."""
    return grad.new_zeros(num_tokens, grad.shape[1]).index_add(0, token_index, grad)


def unpermute(y: torch.Tensor, plan: DispatchPlan, weights: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N, D) expert outputs -> (S, D) weighted sums per token; dropped assignments add nothing."""
    w = weights.reshape(-1).index_select(0, plan.assign_index).to(y.dtype)
    out = y.new_zeros(num_tokens, y.shape[1])
    return out.index_add(0, plan.token_index, y * w.unsqueeze(1))


def unpermute_backward(grad_out: torch.Tensor, y: torch.Tensor, token_index: torch.Tensor,
                       assign_index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_y (N, D), grad_weights (S, k)) from grad_out (S, D); unkept weights get zero."""
    w = weights.reshape(-1).index_select(0, assign_index).to(y.dtype)
    g = grad_out.index_select(0, token_index)                              # (N, D)
    grad_y = g * w.unsqueeze(1)
    grad_w = (g * y).sum(1).to(weights.dtype)
    grad_weights = weights.new_zeros(weights.numel()).index_add(0, assign_index, grad_w)
    return grad_y, grad_weights.view_as(weights)


def expert_histogram(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert, before capacity (int64, shape (E,))."""
    return torch.bincount(expert_index.reshape(-1), minlength=num_experts)


# The MoE router's auxiliary losses (summed over layers with their coefficients by the model).

def switch_balance_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * P_e (Fedus et al. 2021, eq. 4), generalised to top-k.

    f_e is the fraction of the S*k assignments that chose expert e (before capacity) and P_e the
    mean router probability of e. It equals 1 whenever the router is uniform and reaches E when
    every token puts all its mass on one expert.
    """
    num_experts = probs.shape[1]
    f = expert_histogram(expert_index, num_experts).float() / expert_index.numel()
    return num_experts * torch.sum(f * probs.mean(0))


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean(logsumexp(logits)^2) (Zoph et al. 2022, ST-MoE eq. 5): keeps router logits small."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def mod_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sequence top-k of (B, T) router scores; returns (B, k) positions in ascending order."""
    if scores.dim() != 2:
        raise ValueError(f"MoD scores must be 2-D (batch, seq), got shape {tuple(scores.shape)}")
    T = scores.shape[1]
    if not 1 <= k <= T:
        raise ValueError(f"MoD k={k} is invalid: must be in [1, seq_len={T}]")
    if torch.isnan(scores).any():
        raise ValueError("MoD scores contain NaN; check the inputs and the learning rate")
    # Ties resolve to the earlier position: topk on (score, -position) via a stable sort.
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) x (B, k) positions -> (B, k, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_tokens_backward(grad: torch.Tensor, index: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, k, D) gradient of the gathered rows -> (B, T, D), summed where positions repeat."""
    B, _, D = grad.shape
    return grad.new_zeros(B, seq_len, D).scatter_add(1, index.unsqueeze(-1).expand(-1, -1, D), grad)


def scatter_tokens(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Out-of-place: x with rows `index` (B, k) replaced by values (B, k, D)."""
    return x.scatter(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]), values)


def check_plan_values(expert_index: torch.Tensor, slot: torch.Tensor, num_experts: int) -> None:
    """Value checks for `dispatch_plan` inputs (the kernels make the same checks as they run)."""
    _check_range(expert_index, 0, num_experts, "expert_index", f"[0, num_experts={num_experts})")
    bound = max(slot.numel(), 1)
    _check_range(slot.clamp_min(-1), -1, bound, "slot", f"[0, tokens * top_k={bound}), or < 0 for dropped")
    flat_slot, flat_expert = slot.reshape(-1), expert_index.reshape(-1)
    kept = flat_slot >= 0
    key = torch.sort(flat_expert[kept] * bound + flat_slot[kept]).values
    repeats = torch.nonzero(key[1:] == key[:-1]).squeeze(1)
    if repeats.numel() > 0:
        value = int(key[int(repeats[0]) + 1])
        raise ValueError(f"slot repeats the value {value % bound} within expert {value // bound}: each kept "
                         "assignment of an expert needs its own slot")


def check_positions(index: torch.Tensor, seq_len: int, unique: bool) -> None:
    """Value checks for MoD positions: in [0, seq_len), and no repeats in a row when `unique`."""
    _check_range(index, 0, seq_len, "index", f"[0, seq_len={seq_len})")
    if unique and index.shape[1] > 1:
        ordered = torch.sort(index, dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError("index repeats a position within a row: scatter_tokens needs distinct "
                             "positions per row")


def check_rows(index: torch.Tensor, num_rows: int, name: str, bound: str) -> None:
    _check_range(index, 0, num_rows, name, bound)


def _check_range(index: torch.Tensor, low: int, high: int, name: str, bound: str) -> None:
    if index.numel() == 0:
        return
    bad = (index < low) | (index >= high)
    if bool(bad.any()):
        where = int(torch.nonzero(bad.reshape(-1))[0])
        value = int(index.reshape(-1)[where])
        raise ValueError(f"{name} holds {value} at flat position {where}: must be in {bound}")
