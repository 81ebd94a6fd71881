"""bench/bench_parallel.py, its cheapest pieces: the TP2 bytes of one step of the real Trainer equal
the computed figure, and a plausible slip in the formula would not; the PP2 synthetic bubble is
reported with its theory. No timing is asserted beyond a bound that load cannot break."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_parallel") / "report.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench_parallel.py", "--parts", "bytes", "bubble", "--cases", "TP2",
         "--micro-batch-size", "2", "--micro-batches", "2", "--warmup", "1", "--iters", "1",
         "--bubble-stages", "2", "--bubble-micro-batches", "4", "--sleep", "0.005", "--timeout", "240",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "meas/comp" in proc.stdout and "theory" in proc.stdout
    return json.loads(out.read_text())


def test_tp2_bytes_per_step_equal_the_computed_figure_on_every_rank(report):
    (case,) = report["bytes"]
    assert "error" not in case, case.get("error")
    tp = [r for r in case["rows"] if r["kind"] == "TP"]
    assert [r["rank"] for r in tp] == [0, 1]
    for row in tp:
        assert row["measured"] == pytest.approx(row["computed"], rel=0.05)
        # Only scalars (loss mean, non-finite flags, gradient norm) are left out of the formula.
        assert 0 <= row["measured"] - row["computed"] < 1024
        # Plausible slips fall outside 5%: counting forward only, or one layer of the debug model's 4.
        terms = row["terms"]
        forward_only = sum(b for _, direction, b in terms if direction == "fwd")
        per_layer = {"attention out projection", "q, k, v input gradients", "MLP down projection",
                     "gate, up input gradients"}
        assert per_layer <= {what for what, _, _ in terms}
        one_layer = sum(b / 4 if what in per_layer else b for what, _, b in terms)
        for wrong in (forward_only, one_layer):
            assert abs(row["measured"] / wrong - 1) > 0.05


def test_pp2_bubble_is_reported_against_its_formula(report):
    stages = report["bubble"]["2"]["4"]
    assert len(stages) == 2
    for stage in stages:
        # Every stage sleeps 3 x 5 ms per micro-batch: its step can be no shorter than
        # (m + p - 1) of those, so it idles at least (p - 1) / (m + p - 1) = 0.2; load only adds.
        assert 0.2 - 0.03 <= stage["idle"] < 1
        assert stage["step_s"] > 0 and 0 <= stage["p2p_fraction"] < 1
