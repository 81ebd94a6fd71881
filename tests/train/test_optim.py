"""Lumina's AdamW: fused where torch has the kernel, the same update as torch's foreach step,
and a warned fallback elsewhere."""

import warnings

import pytest
import torch

from lumina.train import optim


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(8, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


def test_cpu_parameters_get_the_fused_step_with_the_foreach_update():
    fused_params, ref_params = _params(), _params()
    fused = optim.make_optimizer([{"params": fused_params, "weight_decay": 0.1}], 1e-2, (0.9, 0.95), 1e-8, False)
    assert fused.defaults["fused"] is True
    ref = torch.optim.AdamW([{"params": ref_params, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                            foreach=True)
    for _ in range(3):
        fused.step()
        ref.step()
    for a, b in zip(fused_params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_skipped_step_leaves_the_fused_optimizer_untouched():
    params = _params()
    opt = optim.make_optimizer([{"params": params}], 1e-2, (0.9, 0.95), 1e-8, False)
    before = [p.detach().clone() for p in params]
    opt.skip_next = True
    opt.step()
    assert opt.skipped_last and not opt.state
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    opt.step()
    assert not opt.skipped_last and not torch.equal(params[0], before[0])


def test_parameters_without_a_fused_kernel_fall_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(optim, "_warned_unfused", set())
    meta = [torch.nn.Parameter(torch.empty(4, 4, device="meta"))]
    with pytest.warns(UserWarning, match=r"some are torch.float32 on meta; falling back to torch's foreach AdamW"):
        opt = optim.make_optimizer([{"params": meta}], 1e-3, (0.9, 0.95), 1e-8, False)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optim.make_optimizer([{"params": meta}], 1e-3, (0.9, 0.95), 1e-8, False)  # warned once only
