"""Fused CPU RMSNorm, RoPE, SwiGLU and MoE experts: the kernels agree with the PyTorch expressions they replace, in the
forward and the backward, for every layout the model feeds them; anything the kernels do not take
runs the expression; a missing build falls back with the one routing warning."""

import warnings

import pytest
import torch

from lumina.model.layers import rope_tables
from lumina.ops import backend, fused

# fp32: the kernels sum in another order than torch, so a few ulps; bf16 rounds once per output.
TOL = {torch.float32: (2e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (2e-2, 2e-2)}


def _grads(fn, inputs, grad_out):
    out = fn(*inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return out, torch.autograd.grad(out, leaves, grad_out)


def _close(a, b, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 128, 96), (3, 7), (5, 1, 33), (0, 16)])
def test_rms_norm_matches_reference(ext, dtype, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1])).to(dtype).requires_grad_()
    g = torch.randn(shape).to(dtype)
    out, grads = _grads(lambda a, b: fused.rms_norm(a, b, 1e-5), (x, w), g)
    want, want_grads = _grads(lambda a, b: fused.rms_norm_reference(a, b, 1e-5), (x, w), g)
    assert out.grad_fn is not None and "RMSNorm" in out.grad_fn.name()  # the kernel ran
    assert out.dtype == dtype and out.shape == x.shape
    # The expression normalises in fp32 even for fp64 input; the kernel keeps fp64.
    tol = torch.float32 if dtype == torch.float64 else dtype
    _close(out, want, tol)
    for got, exp in zip(grads, want_grads):
        _close(got, exp, tol)


def test_rms_norm_gradcheck(ext):
    torch.manual_seed(1)
    x = torch.randn(4, 6, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fused.rms_norm(a, b, 1e-6), (x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 128, 320), (5, 3), (0, 4)])
def test_swiglu_matches_reference(ext, dtype, shape):
    torch.manual_seed(4)
    gate = (torch.randn(shape) * 4).to(dtype).requires_grad_()
    up = torch.randn(shape).to(dtype).requires_grad_()
    g = torch.randn(shape).to(dtype)
    out, grads = _grads(fused.swiglu, (gate, up), g)
    want, want_grads = _grads(fused.swiglu_reference, (gate, up), g)
    assert "SwiGLU" in out.grad_fn.name()
    _close(out, want, dtype)
    for got, exp in zip(grads, want_grads):
        _close(got, exp, dtype)
    if dtype == torch.float64:
        small = [torch.randn(3, 5, dtype=dtype, requires_grad=True) for _ in range(2)]
        assert torch.autograd.gradcheck(fused.swiglu, small)


def _rope_inputs(dtype, per_sequence: bool, B=3, H=4, T=10, hd=8):
    torch.manual_seed(2)
    cos, sin = rope_tables(64, hd, 10000.0)
    if per_sequence:  # MoD: each sequence's kept tokens at their own positions
        pos = torch.stack([torch.randperm(64)[:T].sort().values for _ in range(B)])
        cos, sin = cos[pos], sin[pos]
    else:
        cos, sin = cos[:T].unsqueeze(0), sin[:T].unsqueeze(0)
    # (B, T, H, hd) transposed to (B, H, T, hd), as the attention projections produce it
    x = torch.randn(B, T, H, hd).to(dtype).requires_grad_()
    return x, cos, sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("per_sequence", [False, True])
def test_rope_matches_reference(ext, dtype, per_sequence):
    x, cos, sin = _rope_inputs(dtype, per_sequence)
    g = torch.randn(x.shape[0], x.shape[2], x.shape[1], x.shape[3]).to(dtype)
    out, (gx,) = _grads(lambda a: fused.apply_rope(a.transpose(1, 2), cos, sin), (x,), g)
    want, (wx,) = _grads(lambda a: fused.rope_reference(a.transpose(1, 2), cos, sin), (x,), g)
    assert "RoPE" in out.grad_fn.name()
    _close(out, want, dtype)
    _close(gx, wx, dtype)


def test_rope_gradcheck_and_norm_preserving(ext):
    x, cos, sin = _rope_inputs(torch.float64, per_sequence=True, B=2, H=2, T=5, hd=6)
    assert torch.autograd.gradcheck(lambda a: fused.apply_rope(a.transpose(1, 2), cos, sin), (x,))
    # A rotation: every (i, i + hd/2) pair keeps its length.
    y = fused.apply_rope(x.detach().transpose(1, 2), cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.detach().transpose(1, 2).norm(dim=-1))


def _experts(dtype, counts, E=4, D=12, F=20):
    torch.manual_seed(0)
    xs = torch.randn(sum(counts), D).to(dtype).requires_grad_()
    ws = [(torch.randn(*shape) * 0.3).to(dtype).requires_grad_() for shape in ((E, D, F), (E, D, F), (E, F, D))]
    return xs, ws


# Chunk layouts the model produces: every expert busy, idle experts (first, middle, last) and,
# under expert parallel, one expert running several chunks (one per source rank).
EXPERT_LAYOUTS = [([5, 3, 7, 2], None), ([0, 4, 0, 6], None), ([3, 0, 2, 0, 4, 1], [0, 1, 2, 0, 1, 2]),
                  ([2, 5, 1, 3], [3, 3, 0, 3]), ([7], None)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("counts,ids", EXPERT_LAYOUTS)
def test_expert_mlp_matches_reference(ext, dtype, counts, ids):
    xs, ws = _experts(dtype, counts)
    g = torch.randn(xs.shape).to(dtype)
    out, grads = _grads(lambda *a: fused.expert_mlp(*a, counts, ids), (xs, *ws), g)
    want, want_grads = _grads(lambda *a: fused.expert_mlp_reference(*a, counts, ids), (xs, *ws), g)
    assert "ExpertMLP" in out.grad_fn.name()  # the kernel ran
    tol = {torch.bfloat16: (3e-2, 3e-2)}.get(dtype, TOL[dtype])
    torch.testing.assert_close(out, want, rtol=tol[0], atol=tol[1])
    for got, exp in zip(grads, want_grads):
        torch.testing.assert_close(got, exp, rtol=tol[0], atol=tol[1])
    used = {e for e, n in zip(ids or range(len(counts)), counts) if n > 0}
    for e in set(range(ws[0].shape[0])) - used:  # an expert with no rows gets a zero gradient
        assert all(not grad[e].any() for grad in grads[1:])


@pytest.mark.parametrize("threads", [1, 16])
def test_expert_mlp_with_more_or_fewer_threads_than_experts(ext, threads):
    """The kernel runs experts on separate threads when there are at least as many experts as
    threads, and one after another otherwise: both give the expression's results."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        test_expert_mlp_matches_reference(ext, torch.float64, [5, 0, 7, 2, 6], [0, 1, 2, 3, 0])
    finally:
        torch.set_num_threads(before)


def test_expert_mlp_gradcheck_and_no_tokens(ext):
    xs, ws = _experts(torch.float64, [2, 0, 3], E=3, D=4, F=6)
    assert torch.autograd.gradcheck(lambda *a: fused.expert_mlp(*a, [2, 0, 3]), (xs, *ws))
    # No tokens at all (every token dropped or sent to another rank): an empty output that is still
    # part of the graph, so the backward (and expert parallel's all-to-all in it) runs.
    empty = xs[:0].detach().requires_grad_()
    out = fused.expert_mlp(empty, *ws, [0, 0, 0])
    assert out.shape == (0, 4) and out.grad_fn is not None
    grads = torch.autograd.grad(out.sum(), [empty, *ws])
    assert grads[0].shape == (0, 4) and all(not g.any() for g in grads[1:])


def test_what_the_kernels_do_not_take_runs_the_expression(ext):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)  # odd head_dim: no rotate-half kernel
    cos, sin = torch.randn(1, 4, 5), torch.randn(1, 4, 5)
    out = fused.apply_rope(x, cos, sin)
    assert "RoPE" not in out.grad_fn.name()
    torch.testing.assert_close(out, fused.rope_reference(x, cos, sin))
    w64 = torch.ones(5, dtype=torch.float64)  # mixed dtypes
    out = fused.rms_norm(torch.randn(3, 5, requires_grad=True), w64, 1e-5)
    assert "RMSNorm" not in out.grad_fn.name()


def test_double_backward_is_an_error_not_a_silent_zero(ext):
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.ones(8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(fused.rms_norm(x, w, 1e-5).pow(2).sum(), x, create_graph=True)
    q, cos, sin = _rope_inputs(torch.float32, per_sequence=False)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(fused.apply_rope(q.transpose(1, 2), cos, sin).pow(2).sum(), q, create_graph=True)
    xs, ws = _experts(torch.float64, [2, 1, 1, 3])
    with pytest.raises(RuntimeError, match="expert_mlp: double backward"):
        torch.autograd.grad(fused.expert_mlp(xs, *ws, [2, 1, 1, 3]).pow(2).sum(), xs, create_graph=True)


def test_forced_reference_is_the_expression_exactly(ext, monkeypatch):
    monkeypatch.setenv("LUMINA_ROUTING_BACKEND", "reference")
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(8)
    out = fused.rms_norm(x, w, 1e-5)
    assert "RMSNorm" not in out.grad_fn.name()
    assert torch.equal(out, fused.rms_norm_reference(x, w, 1e-5))


def test_bad_input_to_the_kernels_names_it(ext):
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        ext.rms_norm_forward_cpu(torch.randn(4, 8), torch.ones(7), 1e-5)
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="rstd must be Float"):
        ext.rms_norm_backward_cpu(x, x, torch.ones(8), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="rstd must have 4 elements"):
        ext.rms_norm_backward_cpu(x, x, torch.ones(8), torch.ones(3))
    with pytest.raises(ValueError, match="head_dim must be even"):
        ext.rope_cpu(torch.randn(1, 1, 2, 3), torch.ones(1, 2, 3), torch.ones(1, 2, 3), False)
    with pytest.raises(ValueError, match="cos must have shape"):
        ext.rope_cpu(torch.randn(2, 1, 3, 4), torch.ones(3, 3, 4), torch.ones(3, 3, 4), False)
    xs, (wg, wu, wd) = _experts(torch.float32, [2, 1, 1, 3])
    with pytest.raises(ValueError, match="counts sum to 6 but xs has 7 rows"):
        ext.expert_mlp_autograd_cpu(xs, wg, wu, wd, [2, 1, 1, 2], [])
    with pytest.raises(ValueError, match=r"chunk 1 names expert 4: must be in \[0, 4\)"):
        ext.expert_mlp_autograd_cpu(xs, wg, wu, wd, [2, 1, 1, 3], [0, 4, 1, 2])
    with pytest.raises(ValueError, match="ids must name one expert per chunk"):
        ext.expert_mlp_autograd_cpu(xs, wg, wu, wd, [2, 1, 1, 3], [0, 1])
    with pytest.raises(ValueError, match=r"w_down must have shape \(4, 20, 12\)"):
        ext.expert_mlp_autograd_cpu(xs, wg, wu, wu, [2, 1, 1, 3], [])
    with pytest.raises(ValueError, match="expert weights must have xs's dtype"):
        ext.expert_mlp_autograd_cpu(xs, wg.double(), wu, wd, [2, 1, 1, 3], [])


def test_missing_build_falls_back_with_one_warning(monkeypatch):
    def missing():
        raise ImportError("simulated: lumina._C not built")

    monkeypatch.setattr(backend, "_import_extension", missing)
    backend.reset()
    try:
        x, w = torch.randn(4, 8, requires_grad=True), torch.randn(8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fused.rms_norm(x, w, 1e-5)
            fused.rms_norm(x, w, 1e-5)
        messages = [str(c.message) for c in caught if issubclass(c.category, backend.RoutingKernelWarning)]
        assert len(messages) == 1 and "(RMSNorm/RoPE/SwiGLU/experts/attention/loss) run the PyTorch reference" in messages[0]
        assert torch.equal(out, fused.rms_norm_reference(x, w, 1e-5))
    finally:
        monkeypatch.undo()
        backend.reset()


def test_model_trains_the_same_with_and_without_the_kernels(ext, monkeypatch):
    """One debug MoD+MoE step: loss and every gradient agree between the kernels and the expressions."""
    from lumina.config import ModelConfig
    from lumina.model.transformer import LuminaLM
    from lumina.presets import get_preset

    cfg: ModelConfig = get_preset("debug", "hybrid")
    ids = torch.randint(0, cfg.vocab_size, (2, 33))

    def run(mode):
        monkeypatch.setenv("LUMINA_ROUTING_BACKEND", mode)
        model = LuminaLM(cfg, init_seed=3)
        out = model(ids[:, :-1], labels=ids[:, 1:])
        (out.loss + out.aux_loss).backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = run("auto")
    want_loss, want_grads = run("reference")
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-3, atol=1e-5, msg=name)
