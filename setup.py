"""Builds the optional routing-kernel extension `lumina._C`; all other metadata is in pyproject.toml.

    pip install --no-build-isolation -e .

`--no-build-isolation` matters: the extension compiles against the installed torch, and an isolated
build would download a fresh torch (and link against the wrong one).

- The C++ CPU kernels build whenever torch and a C++ compiler are there.
- The CUDA kernels build too when LUMINA_BUILD_CUDA=1 or torch is a CUDA build (LUMINA_BUILD_CUDA=0
  turns them off), for TORCH_CUDA_ARCH_LIST, by default "8.0;9.0" (sm_80, sm_90). A CPU-only torch
  cannot link CUDA kernels; scripts/check_cuda_compile.sh compile-checks them without a GPU.
- A failed or skipped build does not fail the install: Lumina then runs the PyTorch reference and
  warns once. LUMINA_REQUIRE_EXT=1 makes a failed build an error.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

CPU_SOURCES = ["csrc/routing_cpu.cpp", "csrc/routing_autograd.cpp", "csrc/fused_cpu.cpp", "csrc/fused_autograd.cpp", "csrc/experts_cpu.cpp",
               "csrc/attention_cpu.cpp", "csrc/loss_cpu.cpp", "csrc/router_losses_cpu.cpp",
               "csrc/bindings.cpp"]
CUDA_SOURCES = ["csrc/routing_cuda.cpp", "csrc/routing_cuda_kernels.cu"]
# -g0 drops the debug info that Python's own CFLAGS ask for (slow to compile, unused); -ffp-contract=off:
# no fused multiply-add, so sums round like the reference's separate multiply and add.
# -fvisibility=hidden: the module exports PyInit__C only, so none of its inline and template
# instantiations (libstdc++, c10, pybind11) can be bound to, or bind to, another library's copy
# built with another compiler or pybind11 version; pybind11's documentation asks for it ("Frequently
# asked questions"); torch's cpp_extension does not add it. One of the candidates for the crash on the
# GPU machine (docs/kernels.md).
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden"]
NVCC_FLAGS = ["-O3", "-DLUMINA_WITH_CUDA", "-Xcompiler=-fvisibility=hidden"]


def _flag(name: str) -> str | None:
    return os.environ.get(name)


def _note(message: str) -> None:
    print(f"lumina setup: {message}", file=sys.stderr)


def _want_cuda(torch, cpp_extension) -> bool:
    requested = _flag("LUMINA_BUILD_CUDA")
    if requested == "0":
        return False
    if requested != "1" and torch.version.cuda is None:
        return False
    if torch.version.cuda is None:
        _note("LUMINA_BUILD_CUDA=1 but torch is CPU-only and cannot link CUDA kernels; building the CPU "
              "kernels only (scripts/check_cuda_compile.sh compile-checks the CUDA sources)")
        return False
    if cpp_extension.CUDA_HOME is None:
        _note("no CUDA toolkit found (set CUDA_HOME); building the CPU kernels only")
        return False
    return True


def _extensions() -> tuple[list, dict]:
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if _flag("LUMINA_REQUIRE_EXT") == "1":
            raise
        _note("torch is not importable at build time (use pip install --no-build-isolation); "
              "skipping lumina._C, the PyTorch reference will run")
        return [], {}

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """A failed compile skips the extension (one message) unless LUMINA_REQUIRE_EXT=1."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure means "no extension"
                if _flag("LUMINA_REQUIRE_EXT") == "1":
                    raise
                _note(f"building lumina._C failed ({type(exc).__name__}: {exc}); installing without it, "
                      "the PyTorch reference will run. LUMINA_REQUIRE_EXT=1 makes this an error")

    root = os.path.dirname(os.path.abspath(__file__))
    include = [os.path.join(root, "csrc")]
    if _want_cuda(torch, cpp_extension):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            "lumina._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=include,
            extra_compile_args={"cxx": CXX_FLAGS + ["-DLUMINA_WITH_CUDA"], "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension(
            "lumina._C", CPU_SOURCES, include_dirs=include,
            extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
