"""The CPU causal-attention, cross-entropy and MoE router-loss kernels agree with the torch
expressions they replace (scaled_dot_product_attention, cross_entropy, the Switch balance and
router z-losses), forward and backward, for the layouts the model feeds them; they keep a NaN
visible; what they do not take runs torch; bad input is named."""

import math

import pytest
import torch
import torch.nn.functional as F

from lumina.ops import fused, routing, routing_reference

TOL = {torch.float32: (2e-5, 2e-5), torch.float64: (1e-12, 1e-12)}


def _qkv(dtype, B, H, KV, T, hd, seed=0):
    """q and v as the model makes them: transposed views of (B, T, heads, hd) projections; k
    contiguous, as RoPE returns it."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, hd, generator=g, dtype=dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(B, KV, T, hd, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(B, T, KV, hd, generator=g, dtype=dtype).transpose(1, 2).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [
    (8, 4, 2, 128, 24),   # the debug preset: grouped-query, two blocks of query rows
    (2, 3, 3, 130, 16),   # multi-head, a last block of 2 rows
    (1, 4, 1, 67, 8),     # one kv head for all, one partial block
    (2, 2, 2, 1, 4),      # one token
])
def test_attention_matches_sdpa(ext, dtype, shape):
    q, k, v = _qkv(dtype, *shape)
    grad = torch.randn(shape[0], shape[1], shape[3], shape[4], dtype=dtype)
    out = fused.causal_attention(q, k, v)
    assert "CausalAttention" in out.grad_fn.name()
    # Laid out (B, T, H, hd), so the transpose back to tokens-major is a view.
    assert out.transpose(1, 2).is_contiguous()
    want = fused.causal_attention_reference(q, k, v)
    got_grads = torch.autograd.grad(out, (q, k, v), grad)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out, want, rtol=rtol, atol=atol)
    for name, a, b in zip("qkv", got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"grad of {name}")


def test_attention_gradcheck_and_threads(ext):
    q, k, v = _qkv(torch.float64, 2, 4, 2, 70, 4)
    assert torch.autograd.gradcheck(fused.causal_attention, (q, k, v))
    # Work is split over (sequence, head) tasks: one thread and several give the same numbers.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused.causal_attention(q, k, v)
        torch.set_num_threads(4)
        four = fused.causal_attention(q, k, v)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, four)


def test_attention_keeps_nan_visible_and_is_causal(ext):
    q, k, v = _qkv(torch.float32, 1, 2, 1, 9, 4)
    with torch.no_grad():
        q[0, 1, 5, 0] = float("nan")
        out = fused.causal_attention(q, k, v)
        assert out[0, 1, 5].isnan().all() and not out[0, 0].isnan().any()
        # Causal: changing the last token's key and value leaves every earlier output alone.
        k2, v2 = k.clone(), v.clone()
        k2[:, :, -1], v2[:, :, -1] = 5.0, -5.0
        again = fused.causal_attention(q.nan_to_num(), k2, v2)
        torch.testing.assert_close(again[:, :, :-1], fused.causal_attention(q.nan_to_num(), k, v)[:, :, :-1])


def test_attention_runs_torch_for_what_the_kernel_does_not_take(ext):
    q, k, v = (t.detach().bfloat16() for t in _qkv(torch.float32, 1, 2, 1, 5, 4))
    out = fused.causal_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


def test_attention_without_blas_falls_back_with_one_warning(ext, monkeypatch):
    import warnings

    from lumina.ops import backend

    monkeypatch.setattr(ext, "HAS_BLAS_GEMM", False)
    monkeypatch.setattr(backend, "_warned", set())
    q, k, v = _qkv(torch.float32, 1, 2, 1, 5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fused.causal_attention(q, k, v)
        fused.causal_attention(q, k, v)
    messages = [str(c.message) for c in caught if issubclass(c.category, backend.RoutingKernelWarning)]
    assert len(messages) == 1 and "runs torch's scaled_dot_product_attention" in messages[0]
    assert "CausalAttention" not in out.grad_fn.name()


def test_attention_bad_input_names_it(ext):
    q, k, v = (t.detach() for t in _qkv(torch.float32, 1, 4, 2, 5, 4))
    with pytest.raises(ValueError, match=r"kv_heads \(3\) must divide heads \(4\)"):
        ext.causal_attention_autograd_cpu(q, torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="v must have k's shape"):
        ext.causal_attention_autograd_cpu(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="must be float32 or float64, got BFloat16"):
        ext.causal_attention_autograd_cpu(q.bfloat16(), k.bfloat16(), v.bfloat16())
    with pytest.raises(ValueError, match="k and v must have q's dtype"):
        ext.causal_attention_autograd_cpu(q, k.double(), v)
    with pytest.raises(ValueError, match="q must be 4-D"):
        ext.causal_attention_autograd_cpu(q[0], k, v)


def test_cross_entropy_matches_torch(ext):
    for dtype, (N, V) in [(torch.float32, (1016, 2048)), (torch.float64, (37, 50)), (torch.float32, (5, 3))]:
        g = torch.Generator().manual_seed(N)
        logits = (3 * torch.randn(N, V, generator=g, dtype=dtype)).requires_grad_()
        labels = torch.randint(0, V, (N,), generator=g)
        labels[::7] = -100
        loss = fused.cross_entropy(logits, labels)
        assert "CrossEntropy" in loss.grad_fn.name() and loss.dtype == dtype and loss.dim() == 0
        want = F.cross_entropy(logits, labels, ignore_index=-100)
        (got_grad,) = torch.autograd.grad(2.5 * loss, logits)
        (want_grad,) = torch.autograd.grad(2.5 * want, logits)
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(loss, want, rtol=rtol, atol=atol)
        torch.testing.assert_close(got_grad, want_grad, rtol=rtol, atol=atol)
        assert not got_grad[::7].any()  # ignored rows get no gradient


def test_cross_entropy_edges(ext):
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, -100, 5, 0])
    assert torch.autograd.gradcheck(lambda x: fused.cross_entropy(x, labels), (logits,))
    # Every row ignored: 0 / 0, as torch's mean gives.
    assert fused.cross_entropy(logits, torch.full((4,), -100)).isnan()
    # A NaN logit anywhere in a counted row makes the loss NaN, even off the label.
    bad = logits.detach().clone()
    bad[2, 0] = float("nan")
    assert fused.cross_entropy(bad, labels).isnan()
    with pytest.raises(ValueError, match=r"labels holds 6 at position 2: must be in \[0, 6\) or the ignore_index -100"):
        ext.cross_entropy_autograd_cpu(logits, torch.tensor([1, 2, 6, 0]), -100)
    with pytest.raises(ValueError, match=r"labels must have one entry per row of logits \(4\), got 3"):
        ext.cross_entropy_autograd_cpu(logits, torch.tensor([1, 2, 3]), -100)
    with pytest.raises(ValueError, match="labels must be int64"):
        ext.cross_entropy_autograd_cpu(logits, labels.int(), -100)
    # bf16 logits run torch (in fp32, as the model's loss always has).
    loss = fused.cross_entropy(logits.detach().bfloat16(), labels)
    assert loss.dtype == torch.float32


def _router(dtype, S=300, R=10, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(S, R, generator=g, dtype=dtype)).requires_grad_()
    route = routing.topk_route(logits, k, None)
    return logits, route.probs, route.expert_index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_router_losses_match_the_expressions(ext, dtype):
    logits, probs, index = _router(dtype)
    balance, z = fused.router_losses(logits, probs, index)
    assert "RouterLosses" in balance.grad_fn.name()
    want_balance = routing_reference.switch_balance_loss(probs, index)
    want_z = routing_reference.router_z_loss(logits)
    got = torch.autograd.grad(0.01 * balance + 0.001 * z, logits, retain_graph=True)  # shares the route
    want = torch.autograd.grad(0.01 * want_balance + 0.001 * want_z, logits)
    torch.testing.assert_close(balance, want_balance.to(dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(z, want_z.to(dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-9)


def test_router_losses_gradcheck_and_edges(ext):
    logits, probs, index = _router(torch.float64, S=6, R=4)
    probs = probs.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fused.router_losses(a, b, index), (logits, probs))
    # Only one loss used: the other's gradient is simply absent.
    (g,) = torch.autograd.grad(fused.router_losses(logits, probs, index)[1], logits)
    assert g.shape == logits.shape
    # A uniform router balances perfectly: 1; a NaN logit makes the z-loss NaN.
    uniform = torch.zeros(8, 4, dtype=torch.float64)
    balance, z = fused.router_losses(uniform, uniform.softmax(-1), torch.arange(8).remainder(4).view(8, 1))
    assert float(balance) == pytest.approx(1.0) and float(z) == pytest.approx(math.log(4) ** 2)
    bad = logits.detach().clone()
    bad[3, 1] = float("nan")
    assert fused.router_losses(bad, probs.detach(), index)[1].isnan()
    with pytest.raises(ValueError, match=r"expert_index holds 4 at flat position 0: must be in \[0, 4\)"):
        ext.router_losses_autograd_cpu(logits, probs, torch.full((6, 2), 4))
    with pytest.raises(ValueError, match="probs must have logits' shape"):
        ext.router_losses_autograd_cpu(logits, probs[:5], index)


def test_double_backward_is_an_error(ext):
    q, k, v = _qkv(torch.float64, 1, 2, 1, 4, 4)
    with pytest.raises(RuntimeError, match="causal_attention: double backward"):
        torch.autograd.grad(fused.causal_attention(q, k, v).pow(2).sum(), q, create_graph=True)
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="cross_entropy: double backward"):
        torch.autograd.grad(fused.cross_entropy(logits, torch.tensor([0, 1, 2])), logits, create_graph=True)
    logits, probs, index = _router(torch.float64, S=5, R=4)
    with pytest.raises(RuntimeError, match="router_losses: double backward"):
        torch.autograd.grad(fused.router_losses(logits, probs, index)[1], logits, create_graph=True)
