"""All routing math for MoE and MoD, in one place.

These are the pure-PyTorch reference implementations. The kernels issue puts C++/CUDA behind
the same function signatures; callers (the MoE and MoD layers, expert parallel dispatch) only
ever go through these functions.

Dispatch is index-based: a token is moved by gather/scatter through integer indices. Nothing here
builds the dense one-hot [tokens x experts x capacity] tensor of GShard-style einsum dispatch,
whose memory grows as O(S * E * C).
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


def _check_logits(logits: torch.Tensor, top_k: int) -> None:
    if logits.dim() != 2:
        raise ValueError(f"router logits must be 2-D (tokens, experts), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"router logits must be floating point, got dtype {logits.dtype}")
    num_experts = logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} is invalid: must be in [1, num_experts={num_experts}]")
    if torch.isnan(logits).any():
        raise ValueError("router logits contain NaN; check the inputs and learning rate")


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
    _check_logits(logits, top_k)
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, expert_index = torch.topk(probs, top_k, dim=-1)
    weights = top_p / top_p.sum(-1, keepdim=True)
    slot = assign_slots(expert_index, top_p, logits.shape[1], capacity)
    return Route(expert_index, weights, slot, probs)


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


def unpermute(y: torch.Tensor, plan: DispatchPlan, weights: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N, D) expert outputs -> (S, D) weighted sums per token; dropped assignments add nothing."""
    w = weights.reshape(-1).index_select(0, plan.assign_index).to(y.dtype)
    out = y.new_zeros(num_tokens, y.shape[1])
    return out.index_add(0, plan.token_index, y * w.unsqueeze(1))


def expert_histogram(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert, before capacity (int64, shape (E,))."""
    return torch.bincount(expert_index.reshape(-1), minlength=num_experts)


def mod_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sequence top-k of (B, T) router scores; returns (B, k) positions in ascending order."""
    if scores.dim() != 2:
        raise ValueError(f"MoD scores must be 2-D (batch, seq), got shape {tuple(scores.shape)}")
    T = scores.shape[1]
    if not 1 <= k <= T:
        raise ValueError(f"MoD k={k} is invalid: must be in [1, seq_len={T}]")
    # Ties resolve to the earlier position: topk on (score, -position) via a stable sort.
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) x (B, k) positions -> (B, k, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Out-of-place: x with rows `index` (B, k) replaced by values (B, k, D)."""
    return x.scatter(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]), values)
