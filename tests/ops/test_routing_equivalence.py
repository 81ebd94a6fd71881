"""The C++ kernels against the reference: integer outputs bit for bit, floats within tolerance.

Property-based over S in [1, 16384], E in [1, 64], k in [1, 4], capacity factors from 0.5 to
unlimited, fp32 and bf16 logits, and logits drawn to stress the tie-breaks: exact ties, one
expert taking every token, repeated rows and -inf entries.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lumina.ops import routing
from lumina.ops import routing_reference as ref

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

LOGIT_KINDS = ("normal", "ties", "one_expert", "repeated_rows", "masked")
CAPACITY_FACTORS = (0.5, 1.0, 1.25, 2.0, None)


def make_logits(S: int, E: int, kind: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # small integers: equal probabilities within rows and across rows
        logits = torch.randint(-2, 3, (S, E), generator=g).float()
    elif kind == "one_expert":  # every token's first choice is the same expert
        logits = 0.1 * torch.randn(S, E, generator=g)
        logits[:, seed % E] += 20.0
    elif kind == "repeated_rows":  # identical tokens: slots must follow position
        logits = torch.randn(1, E, generator=g).expand(S, E).contiguous()
    elif kind == "masked":  # -inf entries, never a whole row
        logits = torch.randn(S, E, generator=g)
        mask = torch.rand(S, E, generator=g) < 0.3
        mask[:, 0] = False
        logits[mask] = float("-inf")
    else:
        logits = torch.randn(S, E, generator=g) * (0.1 + seed % 7)
    return logits.to(dtype)


def check_route_and_plan(S, E, k, factor, dtype, kind, seed, D=8):
    logits = make_logits(S, E, kind, dtype, seed)
    capacity = ref.expert_capacity(S, E, k, factor)
    want = ref.topk_route(logits, k, capacity)
    got = routing.topk_route(logits, k, capacity)
    assert torch.equal(got.expert_index, want.expert_index)
    assert torch.equal(got.slot, want.slot)
    assert torch.equal(got.probs, want.probs)  # the same ATen softmax
    torch.testing.assert_close(got.weights, want.weights, rtol=2e-7, atol=2e-7)

    plan_want = ref.dispatch_plan(want.expert_index, want.slot, E)
    plan = routing.dispatch_plan(got.expert_index, got.slot, E)
    for a, b in zip(plan, plan_want):
        assert torch.equal(a, b)
    assert torch.equal(routing.expert_histogram(got.expert_index, E), ref.expert_histogram(want.expert_index, E))
    if capacity is not None:
        assert int(plan.counts.max()) <= capacity

    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(S, D, generator=g).to(dtype)
    assert torch.equal(routing.permute(x, plan), ref.permute(x, plan_want))
    y = torch.randn(plan.token_index.numel(), D, generator=g).to(dtype)
    out, out_want = routing.unpermute(y, plan, got.weights, S), ref.unpermute(y, plan_want, want.weights, S)
    if dtype == torch.float32:
        # Same products, added in the same order as index_add: equal bit for bit.
        assert torch.equal(out, out_want)
    else:
        # The reference rounds every product to bf16 before adding; the kernel adds in fp32.
        scale = float(y.float().abs().max()) if y.numel() else 1.0
        torch.testing.assert_close(out.float(), out_want.float(), rtol=1.6e-2, atol=1.6e-2 * scale)


@PROPERTY
@given(S=st.integers(1, 16384), E=st.integers(1, 64), k=st.integers(1, 4),
       factor=st.sampled_from(CAPACITY_FACTORS), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       kind=st.sampled_from(LOGIT_KINDS), seed=st.integers(0, 2**16))
@example(S=16384, E=64, k=4, factor=1.25, dtype=torch.float32, kind="normal", seed=0)
@example(S=16384, E=8, k=2, factor=0.5, dtype=torch.bfloat16, kind="ties", seed=1)
@example(S=1, E=1, k=1, factor=None, dtype=torch.float32, kind="normal", seed=0)
def test_route_plan_permute_unpermute_match_reference(ext, S, E, k, factor, dtype, kind, seed):
    check_route_and_plan(S, E, min(k, E), factor, dtype, kind, seed)


@pytest.mark.parametrize("kind", LOGIT_KINDS)
def test_every_kind_at_16k_tokens(ext, kind):
    check_route_and_plan(16384, 16, 2, 1.0, torch.float32, kind, seed=3)


def test_fp64_logits_route_in_fp64(ext):
    logits = make_logits(300, 12, "normal", torch.float64, seed=5)
    got, want = routing.topk_route(logits, 3, 40), ref.topk_route(logits, 3, 40)
    assert got.weights.dtype == got.probs.dtype == torch.float64
    assert torch.equal(got.expert_index, want.expert_index) and torch.equal(got.slot, want.slot)
    torch.testing.assert_close(got.weights, want.weights, rtol=1e-15, atol=1e-15)


def test_tie_breaks_are_defined():
    # Equal probabilities: lower expert first; equal priorities in an expert: earlier token first.
    logits = torch.zeros(4, 4)
    route = routing.topk_route(logits, 2, capacity=2)
    assert route.expert_index.tolist() == [[0, 1]] * 4
    assert route.slot.tolist() == [[0, 0], [1, 1], [-1, -1], [-1, -1]]
    ref_route = ref.topk_route(logits, 2, capacity=2)
    assert torch.equal(route.expert_index, ref_route.expert_index) and torch.equal(route.slot, ref_route.slot)


def test_slots_rank_by_probability_before_position():
    logits = torch.tensor([[0.0, -5.0], [3.0, -5.0], [1.0, -5.0], [3.0, -5.0]])
    route = routing.topk_route(logits, 1, capacity=2)
    # Token probabilities for expert 0 rank 1 == 3 > 2 > 0: tokens 1 and 3 keep slots 0 and 1.
    assert route.slot[:, 0].tolist() == [-1, 0, -1, 1]


@PROPERTY
@given(B=st.integers(1, 4), T=st.integers(1, 4096), frac=st.floats(0.01, 1.0),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
       ties=st.booleans(), seed=st.integers(0, 2**16))
@example(B=2, T=16384, frac=0.125, dtype=torch.float32, ties=False, seed=0)
@example(B=3, T=64, frac=0.5, dtype=torch.float32, ties=True, seed=0)
def test_mod_select_gather_scatter_match_reference(ext, B, T, frac, dtype, ties, seed):
    g = torch.Generator().manual_seed(seed)
    k = max(1, math.ceil(frac * T))
    if ties:  # integers plus signed zeros: -0.0 must rank as +0.0
        scores = torch.randint(-2, 3, (B, T), generator=g).float()
        scores[:, ::3] = -0.0
    else:
        scores = torch.randn(B, T, generator=g)
    scores = scores.to(dtype)
    index = routing.mod_select(scores, k)
    assert torch.equal(index, ref.mod_select(scores, k))
    assert bool((index[:, 1:] > index[:, :-1]).all())

    D = 4
    x = torch.randn(B, T, D, generator=g).to(dtype)
    assert torch.equal(routing.gather_tokens(x, index), ref.gather_tokens(x, index))
    values = torch.randn(B, k, D, generator=g).to(dtype)
    assert torch.equal(routing.scatter_tokens(x, index, values), ref.scatter_tokens(x, index, values))


def test_unsorted_but_unique_slots_take_the_sorting_path(ext):
    expert = torch.tensor([[0, 1], [1, 0], [0, 1]])
    slot = torch.tensor([[5, -1], [2, 0], [3, 4]])  # unique per expert, not 0..n-1
    plan = routing.dispatch_plan(expert, slot, 2)
    for a, b in zip(plan, ref.dispatch_plan(expert, slot, 2)):
        assert torch.equal(a, b)
    assert plan.assign_index.tolist() == [3, 4, 0, 2, 5]


def test_meta_tensors_get_shapes_without_data():
    logits = torch.empty(32, 8, device="meta")
    route = routing.topk_route(logits, 2, 10)
    assert [tuple(t.shape) for t in route] == [(32, 2), (32, 2), (32, 2), (32, 8)]
    assert route.weights.device.type == "meta"
    plan = routing.dispatch_plan(route.expert_index, route.slot, 8)
    assert [tuple(t.shape) for t in plan] == [(64,), (64,), (8,)]  # N at its dropless bound
    y = routing.unpermute(routing.permute(torch.empty(32, 16, device="meta"), plan), plan, route.weights, 32)
    assert tuple(y.shape) == (32, 16)
    assert tuple(routing.mod_select(torch.empty(2, 10, device="meta"), 3).shape) == (2, 3)


def test_torch_compile_matches_eager(ext):
    torch._dynamo.reset()

    def moe_routing(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        route = routing.topk_route(logits, 2, 24)
        plan = routing.dispatch_plan(route.expert_index, route.slot, logits.shape[1])
        ys = routing.permute(x, plan) * 2.0
        return routing.unpermute(ys, plan, route.weights, x.shape[0])

    logits = torch.randn(40, 6, requires_grad=True)
    x = torch.randn(40, 8, requires_grad=True)
    compiled = torch.compile(moe_routing, backend="aot_eager", fullgraph=True)
    out = compiled(logits, x)
    out_eager = moe_routing(logits, x)
    assert torch.equal(out, out_eager)
    grads = torch.autograd.grad(out.square().sum(), (logits, x))
    grads_eager = torch.autograd.grad(out_eager.square().sum(), (logits, x))
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b)
