"""bench/bench_checkpoint.py on the debug preset, one round: both formats are saved, loaded back
(the bench itself refuses a load that does not restore the saved weights and Adam state) and
measured, the ratios are the measured numbers', and Lumina's checkpoint holds the fp32 master
weight and both Adam moments of every parameter. No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_checkpoint")
    out = tmp / "report.json"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "bench/bench_checkpoint.py", "--preset", "debug", "--rounds", "1", "--iters", "1",
         "--seq-length", "32", "--dir", str(tmp), "--json", str(out)],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Lumina / DeepSpeed" in proc.stdout and "size on disk" in proc.stdout
    assert [p.name for p in tmp.iterdir()] == ["report.json"]  # the checkpoints are deleted
    return json.loads(out.read_text())


def test_both_formats_are_measured_and_the_ratios_are_the_measured_numbers(report):
    (row,) = report["rounds"]
    for side in ("lumina", "deepspeed"):
        assert row[side]["bytes"] > 0 and row[side]["bytes"] == sum(row[side]["files"].values())
        assert row[side]["save_s"] > 0 and row[side]["load_s"] > 0
        assert row[side]["restored"] is True
    for key in ("save_s", "load_s", "bytes"):
        ratio = row["lumina"][key] / row["deepspeed"][key]
        assert row[f"ratio_{key}"] == pytest.approx(ratio)
        assert report["summary"][key]["ratio_median"] == pytest.approx(ratio)
        assert report["summary"][key]["ratios"] == [pytest.approx(ratio)]


def test_lumina_stores_the_fp32_master_and_two_moments(report):
    (row,) = report["rounds"]
    assert report["params"] == 676_704 and report["fp32_param_bytes"] == 4 * report["params"]
    assert report["adam_step"] == 1 and report["layout"]["zero"] == 0 and report["layout"]["bf16"] is False
    assert row["lumina"]["bytes"] == pytest.approx(3 * report["fp32_param_bytes"], rel=0.10)
    parts = [f for f in row["lumina"]["files"] if f.endswith(".safetensors") and "/part-" in f]
    assert len(parts) == 1 and row["lumina"]["files"][parts[0]] >= 3 * report["fp32_param_bytes"]
    assert any(f.endswith("mp_rank_00_model_states.pt") for f in row["deepspeed"]["files"])


def test_provenance_is_recorded(report):
    p = report["provenance"]
    assert p["command"].startswith("python bench/bench_checkpoint.py --preset debug")
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if git.returncode == 0:
        assert p["commit"] == git.stdout.strip() and isinstance(p["dirty"], bool)
    assert p["machine"]["cores"] >= 1 and p["versions"]["torch"] and p["versions"]["deepspeed"]
    assert len(report["load_before"]) == 3 and len(report["load_after"]) == 3
