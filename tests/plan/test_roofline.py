"""The planner's MFU: the published figure, capped by the roofline bound of the layout's micro-batch
(lumina.plan.roofline), checked against the MFUs Lumina measured on CPU and on an H200."""

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from lumina.plan.generate import header
from lumina.plan.hardware import GPUS, gpu, mfu_for
from lumina.plan.roofline import LAUNCH_S, bound, capped
from lumina.plan.search import best
from lumina.presets import get_preset

RESULTS = json.loads((Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "results.json").read_text())
EMBEDDED_VOCAB = 2048  # the trainer's tokenizer on the embedded corpus, which every measured row used


def test_debug_on_an_a100_is_launch_bound_far_below_the_published_mfu():
    """The fixed 45% projected debug at 30.2M tokens/s on one A100; its 155 kernels of microseconds
    each cannot run that fast."""
    plan = best(get_preset("debug", "dense"), gpu("a100-80gb"), 1)
    assert plan.mfu.mfu < 0.1 and "roofline bound" in plan.mfu.source
    assert plan.tokens_per_s < 30.2e6 / 4
    b = bound(plan.cfg, plan.seq, plan.micro_batch, 1, 312.0, 2039.0)
    assert b.seconds == pytest.approx(b.kernels * LAUNCH_S, rel=0.3)  # nearly every kernel at the launch floor


def test_large_models_keep_the_published_mfu():
    assumed = mfu_for("a100-80gb", "dense")
    assert capped(assumed, get_preset("b7", "dense"), gpu("a100-80gb"), 4096, 1, 1) == assumed


def test_script_headers_name_a_bound_as_a_bound():
    """The SLURM headers called debug's 3% roofline bound "an assumed 3% MFU"."""
    small = header(best(get_preset("debug", "dense"), gpu("a100-80gb"), 1))[-1]
    large = header(best(get_preset("b7", "dense"), gpu("a100-80gb"), 8))[-1]
    assert "at roofline-bound" in small and "assumed" not in small
    assert "at assumed 45% MFU" in large


@pytest.mark.parametrize("row", RESULTS["gpu_bench"]["rows"], ids=lambda r: r["mode"])
def test_h200_rows_are_below_the_bound_and_near_the_projection(row):
    """tests/gpu/bench.sh: b1 width, `layers` layers, micro-batch 8 x 2,048, BF16, on an H200."""
    cfg = dataclasses.replace(get_preset("b1", row["mode"]), num_layers=row["layers"], vocab_size=EMBEDDED_VOCAB)
    h200 = next(g for g in GPUS.values() if g.device_name and g.device_name in row["gpu"])
    b = bound(cfg, 2048, 8, 1, h200.peak_tflops, h200.hbm_gbs)
    assert row["mfu"] <= b.mfu
    projected = capped(mfu_for(h200.name, row["mode"]), cfg, h200, 2048, 8, 1).mfu
    assert 0.1 <= row["mfu"] / projected <= 10, (row["mfu"], projected)  # the same order of magnitude


def _copy_bandwidth_gbs() -> float:
    """This machine's memory bandwidth: the best of a few 64 MiB copies (read + write)."""
    x = torch.ones(16 * 2**20)
    y = torch.empty_like(x)
    best_s = float("inf")
    for _ in range(8):
        start = time.perf_counter()
        y.copy_(x)
        best_s = min(best_s, time.perf_counter() - start)
    return 2 * x.numel() * 4 / best_s / 1e9


def test_cpu_rows_have_the_order_of_magnitude_of_the_bound():
    """The bench's CPU runs (FP32, their own measured matmul peak, this kind of machine) against the
    bound at this machine's copy bandwidth. Only the order of magnitude: a run's measured peak
    varies twofold between runs (0.075-0.155 TFLOP/s in the same file), and MFU with it."""
    bandwidth = _copy_bandwidth_gbs()
    sizes = {s["preset"]: s for s in RESULTS["spec"]["sizes"]}
    rows = [r for r in RESULTS["runs"] if r["system"] == "lumina" and r.get("mfu")]
    assert len(rows) >= 4
    for r in rows:
        size = sizes[r["size"]]
        cfg = dataclasses.replace(get_preset(r["size"], r["mode"]), vocab_size=EMBEDDED_VOCAB)
        peak = r.get("peak_tflops") or RESULTS["peak"]["tflops"]  # results schema 5: one peak per bench run
        b = bound(cfg, size["seq"], size["micro_batch"], 1, peak, bandwidth, act_bytes=4)
        assert 0.1 <= r["mfu"] / b.mfu <= 1.5, (r["size"], r["mode"], r["mfu"], b.mfu, bandwidth)
