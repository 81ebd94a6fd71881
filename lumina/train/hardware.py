"""Device peaks for MFU and peak-memory readings.

GPU peaks are the datasheet dense BF16 figures of the planner's GPU table (`lumina.plan.hardware`,
where each names its source): one table for the trainer and the planner.
A CPU has no datasheet number we can trust across machines, so its peak is measured: the best
matmul rate (fp32 or bf16) this process reaches in a short loop. CPU MFU is therefore relative
to what torch's GEMM achieves on that machine, not to a theoretical peak.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from lumina.plan.hardware import gpu_for_device


def gpu_peak_tflops(name: str) -> float | None:
    entry = gpu_for_device(name)
    return entry.peak_tflops if entry is not None else None


def measure_cpu_peak_tflops(dtype: torch.dtype = torch.float32, seconds: float = 0.5) -> float:
    """Best achieved TFLOP/s of a square matmul on this process's threads."""
    n = 1024
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best / 1e12


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def peak_tflops(device: torch.device, override: float | None) -> tuple[float, str]:
    """(peak, where it came from)."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = gpu_peak_tflops(name)
        if value is not None:
            return value, f"datasheet bf16 peak of {name}"
        return measure_cpu_peak_tflops(), f"unknown GPU {name}: no peak (MFU vs CPU matmul)"
    # A CPU may run bf16 matmuls slower than fp32 (no native bf16 units) or faster (AMX), and a
    # bf16 model still runs some ops in fp32: take the better of the two as the peak.
    best = max(measure_cpu_peak_tflops(torch.float32), measure_cpu_peak_tflops(torch.bfloat16))
    return best, "measured CPU matmul peak, best of fp32 and bf16"


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
