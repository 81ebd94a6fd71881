"""End to end: the real entry point, in spawned ranks, on the embedded corpus."""

import json
import math
import os
import pathlib

import pytest

from lumina.cli import main as cli
from lumina.config import MODES
from tests.train.runs import metrics, train, train_losses

GOLDEN = pathlib.Path(__file__).parent / "golden"
ITERS = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 30-iteration run per mode, shared by the tests below."""
    out = {}
    for mode in MODES:
        run_dir = str(tmp_path_factory.mktemp(f"run-{mode}"))
        assert train(run_dir, "--mode", mode, "--train-iters", str(ITERS)) == 0
        out[mode] = run_dir
    return out


@pytest.mark.parametrize("mode", MODES)
def test_loss_falls_in_every_mode(runs, mode):
    losses = train_losses(runs[mode])
    assert sorted(losses) == list(range(1, ITERS + 1))
    first, last = sum(losses[i] for i in (1, 2, 3)) / 3, sum(losses[i] for i in (28, 29, 30)) / 3
    assert last < first - 0.8, f"{mode}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("mode", MODES)
def test_loss_curve_matches_golden(runs, mode):
    """A change that moves these curves must say why in its commit (regenerate with
    `python -m tests.train.golden`)."""
    golden = json.loads((GOLDEN / f"debug_{mode}.json").read_text())
    losses = train_losses(runs[mode])
    assert len(golden["losses"]) == ITERS
    for i, expected in enumerate(golden["losses"], start=1):
        assert math.isclose(losses[i], expected, rel_tol=2e-3), f"iteration {i}: {losses[i]} vs golden {expected}"


@pytest.mark.parametrize("mode", MODES)
def test_metrics_cover_the_mode(runs, mode):
    record = [r for r in metrics(runs[mode]) if r["split"] == "train"][-1]
    for key in ("loss", "ppl", "lr", "grad_norm", "tokens_per_s", "tflops", "mfu", "peak_mem_gb"):
        assert isinstance(record[key], float) and math.isfinite(record[key]), key
    if mode in ("moe", "hybrid"):
        assert len(record["moe_tokens_per_expert"]) == 4 and len(record["moe_tokens_per_expert"][0]) == 8
        for key in ("moe_dropped_fraction", "moe_utilisation", "moe_load_balance"):
            assert 0.0 <= record[key] <= 1.0
    if mode in ("mod", "hybrid"):
        assert record["mod_skip_fraction_per_layer"] == [0.0, 0.5, 0.0, 0.5]
        assert 0.0 <= record["mod_predictor_accuracy"] <= 1.0
        assert 0.0 < record["mod_flops_ratio"] < 1.0
    valid = [r for r in metrics(runs[mode]) if r["split"] == "valid"]
    assert valid and valid[-1]["iteration"] == ITERS
    summary = json.loads(pathlib.Path(runs[mode], "summary.json").read_text())
    assert summary["final_loss"] == record["loss"]
    assert os.path.isdir(os.path.join(runs[mode], "tensorboard"))


def test_eval_and_generate_use_the_checkpoint(runs, capsys):
    ckpt = os.path.join(runs["hybrid"], "checkpoints")
    assert cli(["eval", "--load", ckpt, "--eval-iters", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint_iteration"] == ITERS and math.isfinite(result["loss"])
    assert abs(result["ppl"] - math.exp(result["loss"])) < 1e-6 * result["ppl"]
    assert cli(["generate", "--load", ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.strip()) > len("ROMEO:")


def test_checkpoint_of_another_mode_is_refused_before_training(runs, tmp_path, capsys):
    from lumina.pretrain import main

    code = main(["--mode", "dense", "--run-dir", str(tmp_path), "--load", os.path.join(runs["moe"], "checkpoints")])
    assert code == 2
    assert "is a debug/moe checkpoint but this run is --preset debug --mode dense" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()
