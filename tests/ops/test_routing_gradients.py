"""Gradients: gradcheck in float64 through the C++ kernels, the kernels' gradients against autograd
through the reference in fp32 and bf16, and the reference's closed-form backward functions against
autograd through the reference forward. The kernel tests run both ways the CPU kernels are reached:
directly, with autograd in C++ (eager CPU tensors), and through the torch.library ops (what CUDA
tensors and torch.compile use)."""

import pytest
import torch
from torch.autograd import gradcheck

from lumina.ops import backend, routing
from lumina.ops import routing_reference as ref


@pytest.fixture(params=["c++ autograd", "torch.library"])
def path(request, monkeypatch):
    if request.param == "torch.library":
        monkeypatch.setattr(backend, "eager_kernel", lambda op, t: None)
    return request.param


def _route64(S=24, E=6, k=2, capacity=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(S, E, generator=g, dtype=torch.float64, requires_grad=True)
    route = routing.topk_route(logits, k, capacity)
    return logits, route, routing.dispatch_plan(route.expert_index, route.slot, E)


@pytest.mark.parametrize("k,capacity", [(1, None), (2, 6), (3, 4)])
def test_gradcheck_topk_route(ext, path, k, capacity):
    logits, _, _ = _route64(k=k)
    # Distinct random logits keep the selection fixed under gradcheck's perturbation.
    assert gradcheck(lambda l: routing.topk_route(l, k, capacity).weights, (logits,))
    assert gradcheck(lambda l: routing.topk_route(l, k, capacity).probs, (logits,))


def test_gradcheck_permute_unpermute(ext, path):
    _, route, plan = _route64()
    x = torch.randn(24, 5, dtype=torch.float64, requires_grad=True)
    assert ("PermuteFunction" in routing.permute(x, plan).grad_fn.name()) == (path == "c++ autograd")
    assert gradcheck(lambda x: routing.permute(x, plan), (x,))
    y = torch.randn(plan.token_index.numel(), 5, dtype=torch.float64, requires_grad=True)
    w = route.weights.detach().clone().requires_grad_()
    assert gradcheck(lambda y, w: routing.unpermute(y, plan, w, 24), (y, w))


def test_gradcheck_gather_scatter(ext, path):
    x = torch.randn(3, 12, 4, dtype=torch.float64, requires_grad=True)
    index = routing.mod_select(torch.randn(3, 12), 5)
    values = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: routing.gather_tokens(x, index), (x,))
    assert gradcheck(lambda x, v: routing.scatter_tokens(x, index, v), (x, values))


def test_gather_backward_adds_repeated_positions(ext, path):
    x = torch.randn(1, 4, 3, requires_grad=True)
    index = torch.tensor([[2, 2, 0]])
    (grad,) = torch.autograd.grad(routing.gather_tokens(x, index).sum(), x)
    assert grad[0, :, 0].tolist() == [1.0, 0.0, 2.0, 0.0]


def _moe_loss(r, logits, x, dtype):
    """A loss through every differentiable routing op, with fixed random upstream weights."""
    E = logits.shape[1]
    route = r.topk_route(logits, 2, 20)
    plan = r.dispatch_plan(route.expert_index, route.slot, E)
    xs = r.permute(x, plan)
    out = r.unpermute(xs * 1.5, plan, route.weights, x.shape[0])
    g = torch.Generator().manual_seed(7)
    return ((out.float() * torch.randn(out.shape, generator=g)).sum()
            + (route.probs * torch.randn(route.probs.shape, generator=g)).sum())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_kernel_gradients_match_reference_autograd(ext, path, dtype, tol):
    torch.manual_seed(0)
    logits0 = torch.randn(64, 8).to(dtype)
    x0 = torch.randn(64, 16).to(dtype)
    grads = {}
    for name, module in (("kernel", routing), ("reference", ref)):
        logits, x = logits0.clone().requires_grad_(), x0.clone().requires_grad_()
        grads[name] = torch.autograd.grad(_moe_loss(module, logits, x, dtype), (logits, x))
    for a, b in zip(grads["kernel"], grads["reference"]):
        scale = float(b.float().abs().max())
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * scale)


def test_mod_gradients_match_reference_autograd(ext, path):
    torch.manual_seed(1)
    x0 = torch.randn(2, 16, 8)
    index = routing.mod_select(torch.randn(2, 16), 6)
    grads = {}
    for name, module in (("kernel", routing), ("reference", ref)):
        x = x0.clone().requires_grad_()
        xs = module.gather_tokens(x, index)
        out = module.scatter_tokens(x, index, xs * 3.0)
        grads[name] = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out)).sum(), x)[0]
    assert torch.equal(grads["kernel"], grads["reference"])


def test_double_backward_through_the_cpp_autograd_is_an_error(ext):
    x = torch.randn(2, 8, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[1, 4], [0, 7]])
    with pytest.raises(RuntimeError, match="gather_tokens: double backward"):
        torch.autograd.grad(routing.gather_tokens(x, index).pow(2).sum(), x, create_graph=True)


def test_reference_backward_functions_equal_autograd():
    torch.manual_seed(2)
    logits = torch.randn(30, 7, dtype=torch.float64, requires_grad=True)
    route = ref.topk_route(logits, 3, 8)
    gw, gp = torch.randn_like(route.weights), torch.randn_like(route.probs)
    (want,) = torch.autograd.grad((route.weights * gw).sum() + (route.probs * gp).sum(), logits)
    got = ref.topk_route_backward(gw, gp, route.probs, route.expert_index, route.weights, torch.float64)
    torch.testing.assert_close(got, want)

    plan = ref.dispatch_plan(route.expert_index, route.slot, 7)
    weights = route.weights.detach().requires_grad_()
    y = torch.randn(plan.token_index.numel(), 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(30, 5, dtype=torch.float64)
    want_y, want_w = torch.autograd.grad((ref.unpermute(y, plan, weights, 30) * g).sum(), (y, weights))
    got_y, got_w = ref.unpermute_backward(g, y, plan.token_index, plan.assign_index, weights)
    torch.testing.assert_close(got_y, want_y)
    torch.testing.assert_close(got_w, want_w)

    x = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    gx = torch.randn(plan.token_index.numel(), 5, dtype=torch.float64)
    (want_x,) = torch.autograd.grad((ref.permute(x, plan) * gx).sum(), x)
    torch.testing.assert_close(ref.permute_backward(gx, plan.token_index, 30), want_x)

    xm = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[1, 4, 4], [0, 2, 8]])
    gm = torch.randn(2, 3, 3, dtype=torch.float64)
    (want_m,) = torch.autograd.grad((ref.gather_tokens(xm, index) * gm).sum(), xm)
    torch.testing.assert_close(ref.gather_tokens_backward(gm, index, 9), want_m)


# One bf16 ulp is 2^-7 of the value at most (fp16: 2^-10): kernel and reference each round one fp32
# dot product once, in different summation orders, so they differ by that much at most; a gradient
# off by 2% (or written to the wrong weight, or as fp32 bits into a bf16 buffer) fails.
LOW_PRECISION_WEIGHTS = [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)]


@pytest.mark.parametrize("weights_dtype,rtol", LOW_PRECISION_WEIGHTS)
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
def test_unpermute_low_precision_weights_match_reference(ext, path, weights_dtype, rtol, y_dtype):
    # Before: the CPU kernel refused bf16/fp16 weights in the backward (NotImplementedError), and the
    # CUDA one wrote fp32 gradients into a buffer of the weights' 2-byte dtype, past its end.
    served = ("unpermute_autograd_cpu",) if path == "c++ autograd" else ("unpermute_cpu", "unpermute_backward_cpu")
    check_low_precision_weights(torch.device("cpu"), weights_dtype, rtol, y_dtype, served)


def check_low_precision_weights(device: torch.device, weights_dtype: torch.dtype, rtol: float,
                                y_dtype: torch.dtype, served: tuple[str, ...]) -> None:
    """unpermute with `weights_dtype` weights and `y_dtype` outputs on `device`: output and both
    gradients against autograd through the reference, and the kernels in `served` called (also the
    CUDA case, tests/gpu)."""
    _, route, plan = _route64(S=40, E=5, k=2, capacity=None)
    plan = type(plan)(*(t.to(device) for t in plan))
    weights0 = route.weights.detach().to(device, weights_dtype)
    y0 = torch.randn(plan.token_index.numel(), 24, generator=torch.Generator().manual_seed(4)).to(device, y_dtype)
    g = torch.randn(40, 24, generator=torch.Generator().manual_seed(5)).to(device, y_dtype)
    grads = {}
    for name in ("kernel", "reference"):
        y, w = y0.clone().requires_grad_(), weights0.clone().requires_grad_()
        with backend.KernelCalls() as calls:
            out = (routing.unpermute(y, plan, w, 40) if name == "kernel"
                   else ref.unpermute(y, plan, w, 40))
            grads[name] = (out, *torch.autograd.grad((out * g).sum(), (y, w)))
        assert not calls.missing(*served) if name == "kernel" else calls.counts == {}, calls.counts
    (out, grad_y, grad_w), (out_ref, grad_y_ref, grad_w_ref) = grads["kernel"], grads["reference"]
    assert (out.dtype, grad_y.dtype, grad_w.dtype) == (y_dtype, y_dtype, weights_dtype)
    y_tol = 1e-6 if y_dtype == torch.float32 else 1.6e-2  # docs/kernels.md: unpermute
    out, out_ref = out.detach().float(), out_ref.detach().float()
    torch.testing.assert_close(out, out_ref, rtol=y_tol, atol=y_tol * float(out_ref.abs().max()))
    torch.testing.assert_close(grad_y, grad_y_ref, rtol=y_tol, atol=0.0)
    grad_w, grad_w_ref = grad_w.float(), grad_w_ref.float()
    if y_dtype == torch.float32:
        close = dict(rtol=rtol, atol=rtol * 1e-3)
        assert not torch.allclose(grad_w * 1.02, grad_w_ref, **close)
    else:
        # The reference rounds every product g * y to bf16 before it adds them, the kernel adds in
        # fp32: near-cancelling dot products differ by more than an ulp, so bf16's gradient tolerance.
        close = dict(rtol=3e-2, atol=3e-2 * float(grad_w_ref.abs().max()))
        assert not torch.allclose(grad_w.roll(1), grad_w_ref, **close)
    torch.testing.assert_close(grad_w, grad_w_ref, **close)
