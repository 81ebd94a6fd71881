"""Which implementation serves a routing op (or a fused CPU op of `lumina.ops.fused`): the compiled
kernels of `lumina._C`, or the reference.

A CPU tensor goes to the C++ kernels and a CUDA tensor to the CUDA kernels when the extension has
them; anything else (no extension, a build without CUDA, another device, an unsupported dtype)
runs the PyTorch reference in `lumina.ops.routing_reference`. A missing kernel is reported by one
warning per process and reason, never an error.

LUMINA_ROUTING_BACKEND=reference forces the reference everywhere (for debugging and benchmarks).
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from types import ModuleType

import torch
from torch._subclasses.fake_tensor import FakeTensor

# Must equal lumina::kApiVersion in csrc/routing.h; a stale build is refused, not misused.
API_VERSION = 5

OPS = ("topk_route", "dispatch_plan", "permute", "unpermute", "expert_histogram", "mod_select",
       "gather_tokens", "scatter_tokens")
# lumina.ops.fused: CPU kernels only; other devices run the PyTorch expressions by design.
FUSED_OPS = ("rms_norm", "rope", "swiglu", "expert_mlp", "causal_attention", "cross_entropy", "router_losses")

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "module": None, "error": None}
_warned: set[str] = set()


class RoutingKernelWarning(UserWarning):
    """A routing op runs the PyTorch reference because its compiled kernel is unavailable."""


def _import_extension() -> ModuleType:
    """Import `lumina._C`; tests replace this to simulate a missing build."""
    return importlib.import_module("lumina._C")


def load_extension() -> ModuleType | None:
    """The compiled extension, or None (the reason is in `extension_error()`)."""
    with _lock:
        if not _state["loaded"]:
            _state["loaded"] = True
            try:
                module = _import_extension()
                version = getattr(module, "API_VERSION", None)
                if version != API_VERSION:
                    raise ImportError(f"lumina._C has API version {version}, this checkout expects "
                                      f"{API_VERSION}: rebuild it")
                _state["module"] = module
            except Exception as exc:  # noqa: BLE001 - any load failure means "use the reference"
                _state["error"] = f"{type(exc).__name__}: {exc}"
        return _state["module"]  # type: ignore[return-value]


def extension_error() -> str | None:
    load_extension()
    return _state["error"]  # type: ignore[return-value]


def reset() -> None:
    """Forget the loaded extension and the warnings given (for tests)."""
    with _lock:
        _state.update(loaded=False, module=None, error=None)
        _warned.clear()


def forced_reference() -> bool:
    return os.environ.get("LUMINA_ROUTING_BACKEND", "auto").lower() == "reference"


def warn_once(key: str, message: str) -> None:
    """One RoutingKernelWarning per key and process: a fallback says once what it fell back to."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RoutingKernelWarning, stacklevel=4)


def describe(op: str, device_type: str) -> str:
    """The backend that serves `op` for tensors on `device_type`, in words (for `lumina doctor`)."""
    if op == "rms_norm" and device_type == "cuda" and not forced_reference():
        from lumina.ops import nvidia_apex  # imports this module

        if nvidia_apex.error() is None:
            return "NVIDIA apex fused_rms_norm_affine (x and weight of one dtype; else PyTorch ops)"
    if op in FUSED_OPS and device_type != "cpu":
        return "PyTorch ops (the fused kernels are CPU-only)"
    if forced_reference():
        return "reference (LUMINA_ROUTING_BACKEND=reference)"
    module = load_extension()
    if module is None:
        return f"reference (lumina._C not loaded: {extension_error()})"
    if device_type == "cpu":
        omp = "OpenMP" if getattr(module, "OPENMP", False) else "no OpenMP"
        return f"C++ kernel ({omp}, {torch.get_num_threads()} threads)"
    if device_type == "cuda":
        if not getattr(module, "HAS_CUDA", False):
            return "reference (lumina._C was built without CUDA)"
        return "CUDA kernel"
    return "reference"


def eager_kernel(op: str, t: torch.Tensor) -> Callable | None:
    """`kernel(op)` for a CPU tensor that nothing traces (torch.compile, fake tensors); else None.
    For the C++-autograd entry points, which run real kernels and bypass torch.library."""
    if t.device.type != "cpu" or torch.compiler.is_compiling() or isinstance(t, FakeTensor):
        return None
    return kernel(op, t.device)


def kernel(op: str, device: torch.device) -> Callable | None:
    """The compiled function for `op` on this device, or None for the reference."""
    if device.type not in ("cpu", "cuda") or forced_reference():
        return None
    module = load_extension()
    if module is None:
        warn_once("extension", f"lumina._C is not available ({extension_error()}); routing ops and "
                   "the fused ops (RMSNorm/RoPE/SwiGLU/experts/attention/loss) run the PyTorch reference. Build the kernels with: "
                   "pip install --no-build-isolation -e .")
        return None
    if device.type == "cuda" and not getattr(module, "HAS_CUDA", False):
        warn_once("cuda", "lumina._C was built without CUDA kernels; routing ops on CUDA tensors run the "
                   "PyTorch reference. Rebuild on a machine with a CUDA torch (or LUMINA_BUILD_CUDA=1).")
        return None
    return getattr(module, f"{op}_{device.type}")


def kernel_calls() -> dict[str, int]:
    """Calls of each entry point of lumina._C since it was loaded, counted in C++ as each call
    enters (e.g. {"unpermute_backward_cuda": 2, ...}); empty without the extension."""
    module = load_extension()
    return dict(module.kernel_calls()) if module is not None else {}


class KernelCalls:
    """The lumina._C entry points called inside a `with` block, and how often: the evidence of which
    kernel served a call, so that a test fails when an op silently runs the reference instead.

        with backend.KernelCalls() as calls:
            routing.unpermute(y, plan, weights, S).sum().backward()
        assert not calls.missing("unpermute_cuda", "unpermute_backward_cuda"), calls.counts
    """

    def __enter__(self) -> KernelCalls:
        self._before = kernel_calls()
        self.counts: dict[str, int] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        after = kernel_calls()
        self.counts = {name: n - self._before.get(name, 0) for name, n in after.items()
                       if n != self._before.get(name, 0)}

    def missing(self, *names: str) -> list[str]:
        """The entry points among `names` that the block did not call."""
        return [name for name in names if self.counts.get(name, 0) == 0]
