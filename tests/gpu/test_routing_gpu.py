"""CUDA kernels against the reference run on the same GPU (marked gpu; tests/gpu/run.sh runs them).

Integer outputs must match bit for bit: both sides take their probabilities from the same ATen
softmax on the device. Floats match within the tolerances of docs/kernels.md. Every test asserts,
through lumina._C's call counters (backend.KernelCalls), that the CUDA kernels served the calls:
a silent fallback to the reference would otherwise compare the reference with itself.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lumina.ops import backend, fused, nvidia_apex, routing
from lumina.ops import routing_reference as ref
from tests.ops.test_routing_gradients import LOW_PRECISION_WEIGHTS, check_low_precision_weights

pytestmark = pytest.mark.gpu

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KINDS = ("normal", "ties", "one_expert", "repeated_rows", "masked")


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    module = backend.load_extension()
    assert module is not None, f"lumina._C is not built: {backend.extension_error()}"
    assert module.HAS_CUDA, "lumina._C was built without CUDA kernels (LUMINA_BUILD_CUDA=1)"
    return torch.device("cuda")


def make_logits(S, E, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        logits = torch.randint(-2, 3, (S, E), generator=g).float()
    elif kind == "one_expert":
        logits = 0.1 * torch.randn(S, E, generator=g)
        logits[:, seed % E] += 20.0
    elif kind == "repeated_rows":
        logits = torch.randn(1, E, generator=g).expand(S, E).contiguous()
    elif kind == "masked":
        logits = torch.randn(S, E, generator=g)
        mask = torch.rand(S, E, generator=g) < 0.3
        mask[:, 0] = False
        logits[mask] = float("-inf")
    else:
        logits = torch.randn(S, E, generator=g) * (0.1 + seed % 7)
    return logits


@PROPERTY
@given(S=st.integers(1, 65536), E=st.integers(1, 64), k=st.integers(1, 4),
       factor=st.sampled_from([0.5, 1.0, 1.25, 2.0, None]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       kind=st.sampled_from(KINDS), D=st.sampled_from([1, 7, 64, 1024]), seed=st.integers(0, 2**16))
@example(S=16384, E=64, k=4, factor=1.25, dtype=torch.bfloat16, kind="ties", D=64, seed=0)
@example(S=1, E=1, k=1, factor=None, dtype=torch.float32, kind="normal", D=1, seed=0)
def test_route_plan_permute_unpermute(cuda, S, E, k, factor, dtype, kind, D, seed):
    with backend.KernelCalls() as calls:
        _route_plan_permute_unpermute(cuda, S, E, k, factor, dtype, kind, D, seed)
    assert not calls.missing("topk_route_cuda", "dispatch_plan_cuda", "expert_histogram_cuda", "permute_cuda",
                             "unpermute_cuda"), calls.counts


def _route_plan_permute_unpermute(cuda, S, E, k, factor, dtype, kind, D, seed):
    k = min(k, E)
    logits = make_logits(S, E, kind, seed).to(cuda).to(dtype)
    capacity = ref.expert_capacity(S, E, k, factor)
    want, got = ref.topk_route(logits, k, capacity), routing.topk_route(logits, k, capacity)
    assert torch.equal(got.expert_index, want.expert_index)
    assert torch.equal(got.slot, want.slot)
    assert torch.equal(got.probs, want.probs)
    torch.testing.assert_close(got.weights, want.weights, rtol=2e-7, atol=2e-7)
    plan, plan_want = (routing.dispatch_plan(got.expert_index, got.slot, E),
                       ref.dispatch_plan(want.expert_index, want.slot, E))
    for a, b in zip(plan, plan_want):
        assert torch.equal(a, b)
    assert torch.equal(routing.expert_histogram(got.expert_index, E), ref.expert_histogram(want.expert_index, E))
    x = torch.randn(S, D, device=cuda).to(dtype)
    assert torch.equal(routing.permute(x, plan), ref.permute(x, plan_want))
    y = torch.randn(plan.token_index.numel(), D, device=cuda).to(dtype)
    out, out_want = routing.unpermute(y, plan, got.weights, S), ref.unpermute(y, plan_want, want.weights, S)
    scale = float(y.float().abs().max()) if y.numel() else 1.0
    tol = 1e-6 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(out.float(), out_want.float(), rtol=tol, atol=tol * scale)


@PROPERTY
@given(B=st.integers(1, 8), T=st.integers(1, 32768), frac=st.floats(0.01, 1.0),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), ties=st.booleans(),
       D=st.sampled_from([3, 64, 2048]), seed=st.integers(0, 2**16))
@example(B=2, T=16384, frac=0.125, dtype=torch.bfloat16, ties=True, D=64, seed=0)
def test_mod_select_gather_scatter(cuda, B, T, frac, dtype, ties, D, seed):
    with backend.KernelCalls() as calls:
        _mod_select_gather_scatter(cuda, B, T, frac, dtype, ties, D, seed)
    assert not calls.missing("mod_select_cuda", "gather_tokens_cuda", "scatter_tokens_cuda"), calls.counts


def _mod_select_gather_scatter(cuda, B, T, frac, dtype, ties, D, seed):
    g = torch.Generator().manual_seed(seed)
    k = max(1, math.ceil(frac * T))
    if ties:
        scores = torch.randint(-2, 3, (B, T), generator=g).float()
        scores[:, ::3] = -0.0
    else:
        scores = torch.randn(B, T, generator=g)
    scores = scores.to(cuda).to(dtype)
    index = routing.mod_select(scores, k)
    assert torch.equal(index, ref.mod_select(scores, k))
    x = torch.randn(B, T, D, device=cuda).to(dtype)
    assert torch.equal(routing.gather_tokens(x, index), ref.gather_tokens(x, index))
    values = torch.randn(B, k, D, device=cuda).to(dtype)
    assert torch.equal(routing.scatter_tokens(x, index, values), ref.scatter_tokens(x, index, values))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_gradients_match_reference(cuda, dtype, tol):
    torch.manual_seed(0)
    logits0 = torch.randn(4096, 16, device=cuda).to(dtype)
    x0 = torch.randn(4096, 256, device=cuda).to(dtype)
    grads = {}
    for name, module in (("kernel", routing), ("reference", ref)):
        logits, x = logits0.clone().requires_grad_(), x0.clone().requires_grad_()
        with backend.KernelCalls() as calls:
            route = module.topk_route(logits, 2, 600)
            plan = module.dispatch_plan(route.expert_index, route.slot, 16)
            out = module.unpermute(module.permute(x, plan) * 1.5, plan, route.weights, 4096)
            g = torch.Generator(device=cuda).manual_seed(3)
            loss = (out.float() * torch.randn(out.shape, device=cuda, generator=g)).sum() + route.probs.square().sum()
            grads[name] = torch.autograd.grad(loss, (logits, x))
        if name == "kernel":
            assert not calls.missing("topk_route_backward_cuda", "permute_backward_cuda", "unpermute_backward_cuda"), \
                calls.counts
    for a, b in zip(grads["kernel"], grads["reference"]):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * float(b.float().abs().max()))


# Every CUDA backward pass, each gradchecked below through the CUDA kernels themselves.
BACKWARD_KERNELS = ("topk_route_backward_cuda", "permute_backward_cuda", "unpermute_backward_cuda",
                    "gather_tokens_backward_cuda", "scatter_tokens_cuda", "gather_tokens_cuda")


def test_gradcheck_float64(cuda):
    logits = torch.randn(20, 6, device=cuda, dtype=torch.float64, requires_grad=True)
    with backend.KernelCalls() as calls:
        # Distinct random logits keep the selection fixed under gradcheck's perturbation.
        assert torch.autograd.gradcheck(lambda l: routing.topk_route(l, 2, 5).weights, (logits,))
        assert torch.autograd.gradcheck(lambda l: routing.topk_route(l, 2, 5).probs, (logits,))
        route = routing.topk_route(logits.detach(), 2, 5)
        want = ref.topk_route(logits.detach(), 2, 5)
        assert torch.equal(route.expert_index, want.expert_index) and torch.equal(route.slot, want.slot)
        plan = routing.dispatch_plan(route.expert_index, route.slot, 6)
        x = torch.randn(20, 5, device=cuda, dtype=torch.float64, requires_grad=True)
        y = torch.randn(plan.token_index.numel(), 5, device=cuda, dtype=torch.float64, requires_grad=True)
        w = route.weights.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda x: routing.permute(x, plan), (x,))
        assert torch.autograd.gradcheck(lambda y, w: routing.unpermute(y, plan, w, 20), (y, w))
        xm = torch.randn(2, 12, 4, device=cuda, dtype=torch.float64, requires_grad=True)
        index = routing.mod_select(torch.randn(2, 12, device=cuda), 5)
        values = torch.randn(2, 5, 4, device=cuda, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: routing.gather_tokens(x, index), (xm,))
        assert torch.autograd.gradcheck(lambda x, v: routing.scatter_tokens(x, index, v), (xm, values))
    assert not calls.missing("topk_route_cuda", *BACKWARD_KERNELS), calls.counts


@pytest.mark.parametrize("weights_dtype,rtol", LOW_PRECISION_WEIGHTS)
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
def test_unpermute_low_precision_weights(cuda, weights_dtype, rtol, y_dtype):
    # The CUDA backward used to write fp32 gradients into the 2-byte weights' buffer, past its end.
    check_low_precision_weights(cuda, weights_dtype, rtol, y_dtype, ("unpermute_cuda", "unpermute_backward_cuda"))


def test_bad_values_raise(cuda):
    with backend.KernelCalls() as calls:
        _bad_values_raise(cuda)
    assert not calls.missing("topk_route_cuda", "expert_histogram_cuda", "dispatch_plan_cuda", "gather_tokens_cuda",
                             "scatter_tokens_cuda", "mod_select_cuda"), calls.counts


def _bad_values_raise(cuda):
    logits = torch.randn(8, 4, device=cuda)
    logits[5, 2] = float("nan")
    with pytest.raises(ValueError, match="router logits contain NaN"):
        routing.topk_route(logits, 2, None)
    with pytest.raises(ValueError, match="expert_index holds 7"):
        routing.expert_histogram(torch.tensor([[0, 7]], device=cuda), 4)
    with pytest.raises(ValueError, match="slot repeats the value 0 within expert 1"):
        routing.dispatch_plan(torch.tensor([[1, 0], [1, 0]], device=cuda), torch.tensor([[0, 0], [0, 1]], device=cuda), 2)
    x = torch.randn(2, 8, 4, device=cuda)
    with pytest.raises(ValueError, match="index holds 8"):
        routing.gather_tokens(x, torch.tensor([[0, 8], [1, 2]], device=cuda))
    with pytest.raises(ValueError, match="index repeats the position 3"):
        routing.scatter_tokens(x, torch.tensor([[3, 3], [1, 2]], device=cuda), torch.randn(2, 2, 4, device=cuda))
    scores = torch.randn(2, 8, device=cuda)
    scores[0, 0] = float("nan")
    with pytest.raises(ValueError, match="MoD scores contain NaN"):
        routing.mod_select(scores, 3)
    with pytest.raises(ValueError, match="is on cpu but x is on cuda"):
        routing.gather_tokens(x, torch.tensor([[0, 1], [1, 2]]))
    torch.cuda.synchronize()  # nothing above left the device in an error state


def test_rms_norm_on_cuda_runs_apex_when_present(cuda, monkeypatch):
    # lumina.ops.nvidia_apex: apex's fused RMSNorm where NVIDIA apex imports, torch's ops otherwise.
    kernel = nvidia_apex.rms_norm_kernel("cuda")
    calls = []
    if kernel is not None:
        monkeypatch.setitem(nvidia_apex._state, "rms_norm", lambda *args: calls.append(1) or kernel(*args))
    x = torch.randn(64, 512, device=cuda, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.rand(512, device=cuda) + 0.5).to(torch.bfloat16).requires_grad_()
    g = torch.randn(64, 512, device=cuda, dtype=torch.bfloat16)
    got = torch.autograd.grad((fused.rms_norm(x, w, 1e-5) * g).sum(), (x, w))
    want = torch.autograd.grad((fused.rms_norm_reference(x, w, 1e-5) * g).sum(), (x, w))
    assert len(calls) == (kernel is not None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2 * float(b.float().abs().max()))
