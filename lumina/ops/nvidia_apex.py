"""NVIDIA apex's fused CUDA kernels, where apex is installed (NGC's PyTorch containers ship it).

apex serves RMSNorm on CUDA: without it, `lumina.ops.fused.rms_norm` is torch's elementwise ops in
fp32 there (a pass over memory per op, each way, outside torch.compile), while apex's
`fused_rms_norm_affine` is one kernel each way that also computes in fp32. It is used when x and
the weight share a dtype (what DeepSpeed's bf16 and fp32 layouts give), outside torch.compile
(Inductor fuses the torch ops itself, and apex's autograd function would break the graph) and
unless LUMINA_ROUTING_BACKEND=reference.

The optimizer stays torch's fused AdamW (lumina/train/optim.py): that is already one multi-tensor
CUDA kernel per step, as apex's FusedAdam is. Which of apex's kernels measure faster than torch's
has not been measured (docs/kernels.md).

The package called `apex` on PyPI is unrelated. NVIDIA's is recognised by
`apex.normalization.FusedRMSNorm` and by its compiled extension `fused_layer_norm_cuda` (an apex
installed without its CUDA extensions has the Python classes but no kernels).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from lumina.ops import backend

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "rms_norm": None, "error": None}


def _load() -> None:
    with _lock:
        if _state["loaded"]:
            return
        _state["loaded"] = True
        try:
            importlib.import_module("apex")
            try:
                normalization = importlib.import_module("apex.normalization")
            except ImportError:
                normalization = None
            if not hasattr(normalization, "FusedRMSNorm"):
                raise ImportError("the installed `apex` has no apex.normalization.FusedRMSNorm: it is not NVIDIA "
                                  "apex (PyPI's `apex` is an unrelated package)")
            importlib.import_module("fused_layer_norm_cuda")
            _state["rms_norm"] = importlib.import_module("apex.normalization.fused_layer_norm").fused_rms_norm_affine
        except (ImportError, AttributeError) as exc:
            _state["error"] = f"{type(exc).__name__}: {exc}"


def reset() -> None:
    """Forget what was found (for tests)."""
    with _lock:
        _state.update(loaded=False, rms_norm=None, error=None)


def error() -> str | None:
    """Why apex's kernels are not available, or None when they are."""
    _load()
    return _state["error"]  # type: ignore[return-value]


def rms_norm_kernel(device_type: str) -> Callable | None:
    """apex's `fused_rms_norm_affine(x, weight, normalized_shape, eps)` for tensors on `device_type`,
    or None for torch's ops. On CUDA without apex, one warning per process says so; on other
    devices apex is irrelevant (its kernels are CUDA-only), so nothing is said."""
    if device_type != "cuda" or backend.forced_reference():
        return None
    _load()
    if _state["rms_norm"] is None:
        backend.warn_once("apex", f"NVIDIA apex is not available ({_state['error']}); RMSNorm on CUDA runs torch's "
                          "ops instead of apex's fused kernel. NGC's PyTorch containers ship apex; the PyPI "
                          "package named apex is unrelated")
    return _state["rms_norm"]  # type: ignore[return-value]


def describe() -> str:
    """What apex serves on CUDA, in words (for `lumina doctor`)."""
    if error() is not None:
        return f"none: NVIDIA apex not available ({error()})"
    return "FusedRMSNorm (apex fused_rms_norm_affine serves rms_norm on CUDA); FusedAdam not used (torch's fused AdamW)"
