"""Where one training step's time goes, by kind of work, from torch's profiler.

A speed ratio between two implementations of the same model says who is faster, not why, nor how
much faster the slower one could get. Both run the same math, so both must run its large kernels:
the matrix multiplies, the attention kernel, the softmax cross-entropy over the vocabulary and the
optimizer update. What is left (element-wise ops, norms, RoPE, routing, autograd and Python) is
where implementations differ. The report divides each step into those parts, and from the
baseline's parts bounds the ratio any implementation built on the baseline's kernels could reach.

Times are each op's self time on the calling thread (with intra-op threads, the op's wall time),
per step, averaged over a few profiled steps after training.
"""

from __future__ import annotations

# Kernel categories: an op whose profiled name contains one of these is in that category (the
# attention entry catches torch's CPU and CUDA kernels, Lumina's CPU kernel (lumina._C), and their
# backwards; likewise the loss); the rest are other ops.
KERNELS = {
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_grouped_mm"),
    "attention": ("scaled_dot_product", "lumina::causal_attention"),  # forward and backward kernels
    "loss": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss", "lumina::cross_entropy"),
    "optimizer": ("aten::_fused_adamw", "aten::_fused_adam"),
}
PARTS = (*KERNELS, "other_ops", "outside_ops")


def category(name: str) -> str:
    for part, patterns in KERNELS.items():
        if any(p in name for p in patterns):
            return part
    return "other_ops"


def profile_step(step, steps: int = 4, warmup: int = 1) -> dict[str, float]:
    """Seconds per step in each part, for `step()` (one full training step), on CPU.

    outside_ops is the step's wall time under the profiler less every op's self time: Python,
    the autograd engine and the dispatcher between ops.
    """
    import time

    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    parts = dict.fromkeys(PARTS, 0.0)
    for event in prof.key_averages():
        parts[category(event.key)] += event.self_cpu_time_total / 1e6
    parts["outside_ops"] = max(0.0, wall - sum(parts.values()))
    return {k: v / steps for k, v in parts.items()}


def kernel_seconds(parts: dict[str, float]) -> float:
    return sum(parts[k] for k in KERNELS)


def ceiling(baseline: dict[str, float]) -> float:
    """The most any implementation that runs the baseline's kernels can gain over it: the
    baseline's step over its kernels' time, both from one profile. (Kernel times of one math
    measured in two processes differ by 10-20% on a shared 2-core machine, so the bound never
    mixes processes.)"""
    return sum(baseline.values()) / kernel_seconds(baseline)
