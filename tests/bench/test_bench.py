"""`lumina bench`: the smoke run produces every output; the results schema; the committed page is
exactly what the committed results file renders to."""

import copy
import json
import os
import subprocess
import sys

import pytest

from lumina.bench import report, results
from lumina.bench.spec import SizeRun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "lumina.cli", "bench", "--smoke", "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_smoke_writes_every_output(smoke):
    names = {"results.json", "benchmarks.md"} | {name for name, _ in report.PLOTS}
    assert names <= set(os.listdir(smoke))
    for name, _ in report.PLOTS:
        with open(smoke / name, "rb") as f:
            assert f.read(8) == PNG, name
    data = results.load(str(smoke / "results.json"))  # schema-checked
    systems = {(r["mode"], r["system"]) for r in data["runs"]}
    assert {("dense", "lumina"), ("dense", "hf-llama"), ("moe", "hf-mixtral"), ("mod", "lumina"),
            ("hybrid", "plain")} <= systems
    assert len(data["projected"]) == 6 * 4 and data["claims"]
    # the page is the results rendered, and names the plots beside it
    page = (smoke / "benchmarks.md").read_text()
    assert page == report.render(data, plots_dir=".")
    assert "![Expert load per layer" in page


def test_smoke_lumina_and_the_plain_loop_train_the_same_model_on_the_same_batches(smoke):
    """Same init, batches, schedule and optimizer: the DeepSpeed trainer and the bare loop agree."""
    data = results.load(str(smoke / "results.json"))
    for mode in ("dense", "moe", "mod", "hybrid"):
        ours, plain = (next(r for r in data["runs"] if r["mode"] == mode and r["system"] == s)
                       for s in ("lumina", "plain"))
        assert [p["loss"] for p in ours["curve"]] == pytest.approx([p["loss"] for p in plain["curve"]], rel=1e-4)
        assert ours["valid_loss"] == pytest.approx(plain["valid_loss"], rel=1e-4)
    moe = next(r for r in data["runs"] if r["mode"] == "moe" and r["system"] == "lumina")
    assert len(moe["expert_load"]) == 4 and all(len(layer) == 8 for layer in moe["expert_load"])
    mod = next(r for r in data["runs"] if r["mode"] == "mod" and r["system"] == "lumina")
    assert len(mod["mod_skip_per_layer"]) == 4 and max(mod["mod_skip_per_layer"]) > 0


def test_committed_page_is_rendered_from_the_committed_results():
    data = results.load(os.path.join(ROOT, "docs", "benchmarks", "results.json"))
    with open(os.path.join(ROOT, "docs", "benchmarks.md")) as f:
        assert f.read() == report.render(data, plots_dir="benchmarks"), \
            "docs/benchmarks.md drifted from docs/benchmarks/results.json: run `lumina bench --report-only`"


def test_schema_names_the_bad_key():
    data = results.load(os.path.join(ROOT, "docs", "benchmarks", "results.json"))
    broken = copy.deepcopy(data)
    del broken["runs"][0]["tokens_per_s"]
    with pytest.raises(ValueError, match=r"results.runs\[0\]: missing tokens_per_s"):
        results.check(broken)
    broken = copy.deepcopy(data)
    broken["ratios"][0]["ratio"] = "fast"
    with pytest.raises(ValueError, match=r"results.ratios\[0\].ratio: expected int/float, got str"):
        results.check(broken)
    broken = copy.deepcopy(data)
    broken["runs"][0]["iters"] = True
    with pytest.raises(ValueError, match="iters: expected int, got bool"):
        results.check(broken)


def test_results_are_written_atomically_and_checked_first(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ValueError, match="missing"):
        results.save({"schema": 1}, str(path))
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="does not exist: run `lumina bench`"):
        results.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        results.load(str(tmp_path / "bad.json"))


def test_bad_bench_specs_are_refused_with_the_value():
    with pytest.raises(ValueError, match="bench preset 'b9' is unknown"):
        SizeRun("b9", 4096, 1, 64)
    with pytest.raises(ValueError, match="--tokens 100 is 1 iteration"):
        SizeRun("debug", 100, 1, 64)
    with pytest.raises(ValueError, match=r"bench modes \['sparse'\] are unknown"):
        SizeRun("debug", 4096, 1, 64, modes=("sparse",))


def test_cli_refuses_an_unmeasured_size():
    proc = subprocess.run([sys.executable, "-m", "lumina.cli", "bench", "--sizes", "b7"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "--sizes 'b7': b7 is not measured by the bench; choose from debug, debug_200m" in proc.stderr


def test_gpu_rows_are_added_checked_and_rendered(tmp_path):
    import shutil

    from lumina.cli import main

    shutil.copy(os.path.join(ROOT, "docs", "benchmarks", "results.json"), tmp_path / "results.json")
    row = {"mode": "dense", "gpu": "NVIDIA H200", "layers": 4, "tokens_per_s": 1.0, "mfu": 0.5,
           "peak_mem_gb": 2.0, "final_loss": 3.0}
    (tmp_path / "gpu.json").write_text(json.dumps([row]))
    assert main(["bench", "--out-dir", str(tmp_path), "--add-gpu", str(tmp_path / "gpu.json")]) == 0
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| dense | NVIDIA H200 | 4 | 1 | 50.0% | 2.0 GB | 3.000 |" in page
    (tmp_path / "gpu.json").write_text(json.dumps([{**row, "mfu": "high"}]))
    assert main(["bench", "--out-dir", str(tmp_path), "--add-gpu", str(tmp_path / "gpu.json")]) == 2
    assert results.load(str(tmp_path / "results.json"))["gpu_bench"][0]["mfu"] == 0.5  # not overwritten
