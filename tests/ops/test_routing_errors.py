"""Bad input gets a ValueError that names the problem, from the kernels and the reference alike."""

import pytest
import torch

from lumina.ops import routing
from lumina.ops.routing_reference import DispatchPlan


def _plan(S=6, E=3, k=2):
    route = routing.topk_route(torch.randn(S, E), k, None)
    return route, routing.dispatch_plan(route.expert_index, route.slot, E)


@pytest.mark.parametrize("logits,k,capacity,match", [
    (torch.randn(4, 3), 4, None, r"top_k=4 is invalid: must be in \[1, num_experts=3\]"),
    (torch.randn(4, 3), 0, None, r"top_k=0 is invalid"),
    (torch.randn(4, 3), 2, 0, r"capacity=0 is invalid: must be an int >= 1"),
    (torch.randn(4, 3), 2, -3, r"capacity=-3 is invalid"),
    (torch.randn(4, 3), 2, 2.5, r"capacity=2.5 is invalid"),
    (torch.randn(4, 3, 2), 2, None, r"must be 2-D \(tokens, experts\), got shape \(4, 3, 2\)"),
    (torch.ones(4, 3, dtype=torch.int64), 2, None, r"must be floating point, got dtype torch.int64"),
])
def test_router_arguments(any_backend, logits, k, capacity, match):
    with pytest.raises(ValueError, match=match):
        routing.topk_route(logits, k, capacity)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits(any_backend, bad):
    logits = torch.randn(5, 4)
    logits[3, 1] = bad
    with pytest.raises(ValueError, match="router logits contain NaN or \\+Inf"):
        routing.topk_route(logits, 2, None)


def test_a_row_of_only_minus_inf(any_backend):
    logits = torch.randn(5, 4)
    logits[2] = float("-inf")
    with pytest.raises(ValueError, match="row of only -Inf"):
        routing.topk_route(logits, 1, 3)


def test_dispatch_plan_inputs(any_backend):
    expert = torch.tensor([[0, 1], [2, 0]])
    slot = torch.tensor([[0, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"expert_index holds 2 .*must be in \[0, num_experts=2\)"):
        routing.dispatch_plan(expert, slot, 2)
    with pytest.raises(ValueError, match="slot repeats the value 0 within"):
        routing.dispatch_plan(torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 0], [0, 1]]), 2)
    with pytest.raises(ValueError, match=r"slot holds 9 .*tokens \* top_k=4"):
        routing.dispatch_plan(torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 9], [1, 0]]), 2)
    with pytest.raises(ValueError, match="slot has shape"):
        routing.dispatch_plan(expert, slot[:1], 3)
    with pytest.raises(ValueError, match="slot must be int64, got dtype torch.int32"):
        routing.dispatch_plan(expert, slot.int(), 3)
    with pytest.raises(ValueError, match="num_experts=0 is invalid"):
        routing.dispatch_plan(expert, slot, 0)


def test_histogram_inputs(any_backend):
    with pytest.raises(ValueError, match=r"expert_index holds 5 .*\[0, num_experts=4\)"):
        routing.expert_histogram(torch.tensor([[0, 5]]), 4)
    with pytest.raises(ValueError, match=r"expert_index holds -1"):
        routing.expert_histogram(torch.tensor([[-1, 0]]), 4)
    with pytest.raises(ValueError, match="must be an integer tensor"):
        routing.expert_histogram(torch.tensor([[0.0, 1.0]]), 4)


def test_permute_unpermute_inputs(any_backend):
    route, plan = _plan()
    with pytest.raises(ValueError, match=r"token_index holds 7 .*\[0, num_tokens=6\)"):
        routing.permute(torch.randn(6, 4), DispatchPlan(torch.tensor([0, 7]), torch.tensor([0, 14]), plan.counts))
    with pytest.raises(ValueError, match="x must be 2-D"):
        routing.permute(torch.randn(6, 4, 1), plan)
    y = torch.randn(plan.token_index.numel(), 4)
    with pytest.raises(ValueError, match="y has 3 rows"):
        routing.unpermute(y[:3], plan, route.weights, 6)
    with pytest.raises(ValueError, match="weights has 6 rows but num_tokens=5"):
        routing.unpermute(y, plan, route.weights, 5)
    bad = DispatchPlan(plan.token_index.flip(0), plan.assign_index, plan.counts)
    with pytest.raises(ValueError, match="inconsistent"):
        routing.unpermute(y, bad, route.weights, 6)
    with pytest.raises(ValueError, match="weights must be floating point"):
        routing.unpermute(y, plan, route.expert_index, 6)


def test_mod_inputs(any_backend):
    with pytest.raises(ValueError, match=r"MoD k=9 is invalid: must be in \[1, seq_len=8\]"):
        routing.mod_select(torch.randn(2, 8), 9)
    with pytest.raises(ValueError, match="MoD scores must be 2-D"):
        routing.mod_select(torch.randn(8), 2)
    scores = torch.randn(2, 8)
    scores[1, 3] = float("nan")
    with pytest.raises(ValueError, match="MoD scores contain NaN"):
        routing.mod_select(scores, 2)
    x = torch.randn(2, 8, 4)
    with pytest.raises(ValueError, match=r"index holds 8 .*\[0, seq_len=8\)"):
        routing.gather_tokens(x, torch.tensor([[0, 8], [1, 2]]))
    with pytest.raises(ValueError, match="index repeats"):
        routing.scatter_tokens(x, torch.tensor([[3, 3], [1, 2]]), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match=r"values has shape \(2, 3, 4\)"):
        routing.scatter_tokens(x, torch.tensor([[0, 1], [1, 2]]), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="values has dtype torch.float64 but x has torch.float32"):
        routing.scatter_tokens(x, torch.tensor([[0, 1], [1, 2]]), torch.randn(2, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="index has batch 1 but x has batch 2"):
        routing.gather_tokens(x, torch.tensor([[0, 1]]))


def test_tensors_on_different_devices(any_backend):
    # The meta device stands in for a second device on a CPU-only machine.
    route, plan = _plan()
    meta_plan = DispatchPlan(*(t.to("meta") for t in plan))
    with pytest.raises(ValueError, match="plan.token_index is on meta but x is on cpu"):
        routing.permute(torch.randn(6, 4), meta_plan)
    with pytest.raises(ValueError, match="weights is on meta but y is on cpu"):
        routing.unpermute(torch.randn(plan.token_index.numel(), 4), plan, route.weights.to("meta"), 6)
    with pytest.raises(ValueError, match="slot is on meta but expert_index is on cpu"):
        routing.dispatch_plan(route.expert_index, route.slot.to("meta"), 3)
    with pytest.raises(ValueError, match="index is on meta but x is on cpu"):
        routing.gather_tokens(torch.randn(1, 4, 2), torch.tensor([[0]], device="meta"))
