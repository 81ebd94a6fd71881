"""`lumina doctor`: the versions Lumina runs on, the backend that serves each routing and fused op, and
which NVIDIA apex kernels are active."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a routing op (or a fused CPU op) on an available device runs the "
                             "PyTorch reference")


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        return "not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path} (failed to run: {exc})"
    release = next((line.split("release")[1].split(",")[0].strip() for line in out.splitlines() if "release" in line),
                   "unknown version")
    return f"{release} ({path})"


def report() -> dict:
    """Everything `lumina doctor` prints, as data."""
    import torch

    from lumina.ops import backend, nvidia_apex

    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    module = backend.load_extension()
    ops = {}
    for op in backend.OPS + backend.FUSED_OPS:
        cuda = backend.describe(op, "cuda")
        if cuda_devices == 0:
            cuda = f"no CUDA device; would use: {cuda}"
        ops[op] = {"cpu": backend.describe(op, "cpu"), "cuda": cuda}
    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "deepspeed": _version("deepspeed"),
            "megatron-core": _version("megatron-core"),
            "torch CUDA": torch.version.cuda or "none (CPU build)",
            "CUDA devices": ", ".join(torch.cuda.get_device_name(i) for i in range(cuda_devices)) or "none",
            "nvcc": _nvcc(),
        },
        "extension": {
            "loaded": module is not None,
            "path": getattr(module, "__file__", None),
            "error": backend.extension_error(),
            "openmp": bool(getattr(module, "OPENMP", False)),
            "cuda_kernels": bool(getattr(module, "HAS_CUDA", False)),
        },
        "apex": (nvidia_apex.describe() if cuda_devices else
                 f"irrelevant without a CUDA device (its kernels are CUDA-only); on CUDA: {nvidia_apex.describe()}"),
        "routing_ops": ops,
        "cuda_available": cuda_devices > 0,
    }


def run(args: argparse.Namespace) -> int:
    info = report()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(len(k) for k in info["versions"])
        for name, value in info["versions"].items():
            print(f"{name:<{width}}  {value}")
        ext = info["extension"]
        status = f"loaded from {ext['path']}" if ext["loaded"] else f"not loaded ({ext['error']})"
        print(f"{'lumina._C':<{width}}  {status}")
        print(f"{'NVIDIA apex':<{width}}  {info['apex']}")
        print()
        op_width = max(len(op) for op in info["routing_ops"])
        cpu_width = max(len(v["cpu"]) for v in info["routing_ops"].values())
        print(f"{'op':<{op_width}}  {'CPU tensors':<{cpu_width}}  CUDA tensors")
        for op, where in info["routing_ops"].items():
            print(f"{op:<{op_width}}  {where['cpu']:<{cpu_width}}  {where['cuda']}")
    if args.strict:
        devices = ["cpu"] + (["cuda"] if info["cuda_available"] else [])
        if any(info["routing_ops"][op][d].startswith(("reference", "no CUDA")) for op in info["routing_ops"]
               for d in devices):
            return 1
    return 0
