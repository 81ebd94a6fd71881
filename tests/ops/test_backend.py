"""Backend choice: the kernels serve CPU tensors when built; without them every op falls back to
the reference with exactly one warning and the same results."""

import warnings

import pytest
import torch

from lumina.ops import backend, routing
from lumina.ops import routing_reference as ref


@pytest.fixture
def no_extension(monkeypatch):
    def missing():
        raise ImportError("simulated: lumina._C not built")

    monkeypatch.setattr(backend, "_import_extension", missing)
    backend.reset()
    yield
    monkeypatch.undo()
    backend.reset()


def _all_ops():
    torch.manual_seed(0)
    logits = torch.randn(50, 6, requires_grad=True)
    route = routing.topk_route(logits, 2, 20)
    plan = routing.dispatch_plan(route.expert_index, route.slot, 6)
    x = torch.randn(50, 4, requires_grad=True)
    out = routing.unpermute(routing.permute(x, plan), plan, route.weights, 50)
    hist = routing.expert_histogram(route.expert_index, 6)
    xm = torch.randn(2, 10, 4, requires_grad=True)
    index = routing.mod_select(torch.randn(2, 10), 4)
    mod_out = routing.scatter_tokens(xm, index, routing.gather_tokens(xm, index) * 2.0)
    grads = torch.autograd.grad(out.sum() + mod_out.sum() + route.probs.square().sum(), (logits, x, xm))
    return route, plan, out, hist, mod_out, grads


def test_fallback_warns_once_and_matches_reference(no_extension):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        route, plan, out, hist, mod_out, grads = _all_ops()
        _all_ops()
    kernel_warnings = [w for w in caught if issubclass(w.category, backend.RoutingKernelWarning)]
    assert len(kernel_warnings) == 1
    assert "simulated: lumina._C not built" in str(kernel_warnings[0].message)
    assert "pip install --no-build-isolation -e ." in str(kernel_warnings[0].message)

    torch.manual_seed(0)  # the logits _all_ops drew first
    logits = torch.randn(50, 6)
    want = ref.topk_route(logits, 2, 20)
    assert torch.equal(route.expert_index, want.expert_index) and torch.equal(route.slot, want.slot)
    assert torch.equal(hist, ref.expert_histogram(want.expert_index, 6))
    assert backend.describe("topk_route", "cpu").startswith("reference (lumina._C not loaded")


def test_kernels_and_fallback_agree(ext, no_extension, monkeypatch):
    with pytest.warns(backend.RoutingKernelWarning):
        fallback = _all_ops()
    monkeypatch.setattr(backend, "_import_extension", lambda: ext)
    backend.reset()
    kernels = _all_ops()
    for a, b in zip(fallback[:5], kernels[:5]):
        for ta, tb in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(ta, tb)
    for a, b in zip(fallback[5], kernels[5]):
        torch.testing.assert_close(a, b)


def test_stale_build_is_refused(monkeypatch):
    class Stale:
        API_VERSION = backend.API_VERSION + 1

    monkeypatch.setattr(backend, "_import_extension", lambda: Stale)
    backend.reset()
    try:
        assert backend.load_extension() is None
        assert "rebuild it" in backend.extension_error()
    finally:
        monkeypatch.undo()
        backend.reset()


def test_forced_reference_and_cpu_kernel_choice(ext, monkeypatch):
    assert backend.kernel("topk_route", torch.device("cpu")) is ext.topk_route_cpu
    assert backend.describe("permute", "cpu").startswith("C++ kernel")
    assert backend.kernel("permute", torch.device("meta")) is None
    monkeypatch.setenv("LUMINA_ROUTING_BACKEND", "reference")
    assert backend.kernel("topk_route", torch.device("cpu")) is None
    assert backend.describe("permute", "cpu") == "reference (LUMINA_ROUTING_BACKEND=reference)"


def test_cuda_request_without_cuda_kernels_warns_once(ext, monkeypatch):
    if getattr(ext, "HAS_CUDA", False):
        pytest.skip("this build has CUDA kernels")
    backend.reset()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert backend.kernel("permute", torch.device("cuda")) is None
            assert backend.kernel("unpermute", torch.device("cuda")) is None
        assert len([w for w in caught if issubclass(w.category, backend.RoutingKernelWarning)]) == 1
        assert "built without CUDA" in backend.describe("permute", "cuda")
    finally:
        backend.reset()


def _route_and_combine(dtype=torch.float32):
    logits = torch.randn(12, 4, dtype=dtype, requires_grad=True)
    route = routing.topk_route(logits, 2, 5)
    plan = routing.dispatch_plan(route.expert_index, route.slot, 4)
    x = torch.randn(12, 3, dtype=dtype, requires_grad=True)
    out = routing.unpermute(routing.permute(x, plan), plan, route.weights, 12)
    (out.sum() + route.probs.square().sum()).backward()


def test_kernel_calls_name_the_kernel_that_served(ext, monkeypatch):
    # The served-by evidence the GPU tests rely on (tests/gpu), exercised on the C++ CPU kernels:
    # counted in lumina._C as each call enters, per entry point.
    with backend.KernelCalls() as calls:
        _route_and_combine()
    assert calls.counts == {"topk_route_autograd_cpu": 1, "dispatch_plan_cpu": 1, "permute_autograd_cpu": 1,
                            "unpermute_autograd_cpu": 1}
    monkeypatch.setattr(backend, "eager_kernel", lambda op, t: None)  # through torch.library, as CUDA tensors go
    with backend.KernelCalls() as calls:
        _route_and_combine(torch.float64)
    assert not calls.missing("topk_route_cpu", "topk_route_backward_cpu", "permute_backward_cpu",
                             "unpermute_backward_cpu"), calls.counts
    monkeypatch.setenv("LUMINA_ROUTING_BACKEND", "reference")
    with backend.KernelCalls() as calls:
        _route_and_combine()
    assert calls.counts == {}  # a fallback to the reference leaves no trace, so a served-by check fails


def test_errors_cross_the_binding_as_their_own_type(ext):
    # lumina._C catches a kernel's exception while the GIL is released and raises it once the GIL is
    # back: a bad value (std::invalid_argument) as ValueError, anything else (here c10's dtype
    # check) unchanged as RuntimeError; the process survives both.
    with pytest.raises(ValueError, match=r"expert_index holds 9 .*\[0, num_experts=4\)"):
        ext.expert_histogram_cpu(torch.tensor([[0, 9]]), 4)
    with pytest.raises(RuntimeError, match="Long"):
        ext.permute_cpu(torch.randn(4, 2), torch.tensor([0.0, 1.0]))
    assert ext.expert_histogram_cpu(torch.tensor([[0, 3]]), 4).tolist() == [1, 0, 0, 1]
