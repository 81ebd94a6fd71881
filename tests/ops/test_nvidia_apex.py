"""Which RMSNorm serves CUDA tensors: NVIDIA apex's fused kernel when apex imports, else torch's ops
with one warning. A test of the selection only, with fake apex modules put in sys.modules (this
machine has no GPU and no apex); whether apex is faster is not measured here (docs/kernels.md)."""

import sys
import types
import warnings

import pytest

from lumina import cli
from lumina.ops import backend, nvidia_apex


def _fake_apex_rms_norm(x, weight, normalized_shape, eps):
    raise AssertionError("selection only: never called on CPU")


@pytest.fixture
def modules(monkeypatch):
    """install(nvidia=True): a fake NVIDIA apex (with its compiled extension); nvidia=False: a
    stand-in for PyPI's unrelated `apex`; not calling it: no apex at all."""
    for name in ("apex", "apex.normalization", "apex.normalization.fused_layer_norm", "fused_layer_norm_cuda"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError on import

    def install(nvidia: bool) -> None:
        monkeypatch.setitem(sys.modules, "apex", types.ModuleType("apex"))
        if nvidia:
            normalization = types.ModuleType("apex.normalization")
            normalization.FusedRMSNorm = type("FusedRMSNorm", (), {})
            fused_layer_norm = types.ModuleType("apex.normalization.fused_layer_norm")
            fused_layer_norm.fused_rms_norm_affine = _fake_apex_rms_norm
            monkeypatch.setitem(sys.modules, "apex.normalization", normalization)
            monkeypatch.setitem(sys.modules, "apex.normalization.fused_layer_norm", fused_layer_norm)
            monkeypatch.setitem(sys.modules, "fused_layer_norm_cuda", types.ModuleType("fused_layer_norm_cuda"))

    nvidia_apex.reset()
    backend.reset()
    yield install
    nvidia_apex.reset()
    backend.reset()


def _apex_warnings(caught):
    return [w for w in caught if issubclass(w.category, backend.RoutingKernelWarning) and "apex" in str(w.message)]


def test_nvidia_apex_serves_rms_norm_on_cuda_only(modules, monkeypatch):
    modules(nvidia=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert nvidia_apex.rms_norm_kernel("cuda") is _fake_apex_rms_norm
        assert nvidia_apex.rms_norm_kernel("cpu") is None
    assert _apex_warnings(caught) == []
    assert backend.describe("rms_norm", "cuda").startswith("NVIDIA apex fused_rms_norm_affine")
    assert nvidia_apex.describe().startswith("FusedRMSNorm")
    monkeypatch.setenv("LUMINA_ROUTING_BACKEND", "reference")
    assert nvidia_apex.rms_norm_kernel("cuda") is None


@pytest.mark.parametrize("pypi_apex", [False, True])
def test_without_nvidia_apex_cuda_warns_once_and_cpu_never(modules, pypi_apex):
    if pypi_apex:
        modules(nvidia=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert nvidia_apex.rms_norm_kernel("cpu") is None
        assert _apex_warnings(caught) == []  # apex is irrelevant on CPU
        assert nvidia_apex.rms_norm_kernel("cuda") is None
        assert nvidia_apex.rms_norm_kernel("cuda") is None
    (warning,) = _apex_warnings(caught)
    assert "RMSNorm on CUDA runs torch's ops" in str(warning.message)
    if pypi_apex:
        assert "not NVIDIA apex (PyPI's `apex` is an unrelated package)" in str(warning.message)
    assert backend.describe("rms_norm", "cuda") == "PyTorch ops (the fused kernels are CPU-only)"


def test_doctor_says_which_apex_kernels_are_active(modules, capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA apex" in out and "none: NVIDIA apex not available" in out
    modules(nvidia=True)
    nvidia_apex.reset()
    assert cli.main(["doctor"]) == 0
    assert "FusedRMSNorm (apex fused_rms_norm_affine serves rms_norm on CUDA)" in capsys.readouterr().out
