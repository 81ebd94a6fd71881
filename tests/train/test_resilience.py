"""Resume, data parallel equivalence, non-finite losses and signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.runs import FAST, metrics, train, train_losses


def test_resume_is_bit_exact(tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert train(full, "--mode", "hybrid", "--train-iters", "10", "--save-interval", "5") == 0
    ckpts = os.path.join(full, "checkpoints")
    with open(os.path.join(ckpts, "latest"), "w") as f:  # resume from the middle checkpoint
        f.write("iter_0000005")
    assert train(part, "--mode", "hybrid", "--train-iters", "10", "--load", ckpts) == 0
    a, b = train_losses(full), train_losses(part)
    assert sorted(b) == list(range(6, 11))
    assert [b[i] for i in b] == [a[i] for i in b]  # bit-exact, not approximately equal


@pytest.mark.parametrize("mode, extra", [
    pytest.param("dense", [], marks=pytest.mark.slow), pytest.param("mod", [], marks=pytest.mark.slow),
    # Capacity and the balance loss depend on the local batch, so MoE matches exactly only
    # dropless with the balance coefficient at 0 (the z-loss is a per-token mean: it matches).
    ("moe", ["--moe-dropless", "--moe-aux-loss-coeff", "0"]),
])
def test_two_rank_data_parallel_equals_one_rank(tmp_path, mode, extra):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = ["--mode", mode, "--train-iters", "6", "--global-batch-size", "4", *extra]
    assert train(one, *common, "--micro-batch-size", "4") == 0
    assert train(two, *common, "--micro-batch-size", "2", world_size=2) == 0
    a, b = train_losses(one), train_losses(two)
    for i in a:  # fp32, 2-way all-reduce: relative 1e-5
        assert b[i] == pytest.approx(a[i], rel=1e-5), f"iteration {i}"


def test_gradient_accumulation_equals_one_big_micro_batch(tmp_path):
    big, acc = str(tmp_path / "big"), str(tmp_path / "acc")
    assert train(big, "--mode", "dense", "--train-iters", "4", "--global-batch-size", "4") == 0
    assert train(acc, "--mode", "dense", "--train-iters", "4", "--global-batch-size", "4",
                 "--micro-batch-size", "1") == 0
    a, b = train_losses(big), train_losses(acc)
    for i in a:
        assert b[i] == pytest.approx(a[i], rel=1e-5)


def test_nonfinite_loss_skips_the_step_and_training_continues(tmp_path):
    import torch

    run = str(tmp_path / "nan")
    assert train(run, "--mode", "dense", "--train-iters", "4", "--debug-nan-iters", "2",
                 "--save-interval", "1", "--keep-last", "10") == 0
    records = [r for r in metrics(run) if r["split"] == "train"]
    skipped = [r for r in records if r.get("skipped")]
    assert [r["iteration"] for r in skipped] == [2] and skipped[0]["reason"] == "non-finite loss or gradient norm"

    # The skip left the optimizer alone: 4 iterations, 3 AdamW steps, and no checkpoint was
    # written while the streak lasted.
    ckpts = os.path.join(run, "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["iter_0000001", "iter_0000003", "iter_0000004", "latest"]
    with open(os.path.join(ckpts, "iter_0000004", "lumina.json")) as f:
        assert json.load(f)["adam_step"] == 3
    assert max(train_losses(run)) == 4


@pytest.mark.parametrize("zero", ["0", "1"])
def test_finite_loss_with_an_infinite_gradient_skips_the_step(tmp_path, zero):
    """The loss alone is not enough: iteration 2's loss is finite and its gradient infinite. At
    ZeRO-0 Lumina's norm decides, at ZeRO-1 DeepSpeed's optimizer skips and Lumina counts it."""
    run = str(tmp_path / "inf")
    assert train(run, "--mode", "moe", "--train-iters", "3", "--debug-inf-grad-iters", "2", "--zero-stage", zero,
                 "--save-interval", "1", "--keep-last", "10") == 0
    records = [r for r in metrics(run) if r["split"] == "train"]
    assert [r["iteration"] for r in records if r.get("skipped")] == [2]
    ckpts = os.path.join(run, "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["iter_0000001", "iter_0000003", "latest"]
    with open(os.path.join(ckpts, "iter_0000003", "lumina.json")) as f:
        assert json.load(f)["adam_step"] == 2
    from lumina.train.checkpoint import load_model_weights

    weights, _ = load_model_weights(ckpts)
    assert all(bool(v.isfinite().all()) for v in weights.values())


def test_too_many_nonfinite_iterations_stop_with_the_last_good_checkpoint(tmp_path):
    run = str(tmp_path / "nan")
    code = train(run, "--mode", "dense", "--train-iters", "20", "--save-interval", "2",
                 "--debug-nan-iters", "4", "5", "6", "--max-nonfinite-iters", "3")
    assert code == 3
    ckpts = os.path.join(run, "checkpoints")
    assert open(os.path.join(ckpts, "latest")).read() == "iter_0000002"  # none saved while skipping
    log = open(os.path.join(run, "train.log")).read()
    assert "3 iterations in a row had a NaN/inf loss or gradient norm" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signal_saves_a_checkpoint_and_exits_zero(tmp_path, sig):
    """SIGTERM (SLURM's warning before a kill) and Ctrl-C both finish the iteration, save, exit 0."""
    run = str(tmp_path / "sig")
    cmd = [sys.executable, "-m", "lumina.pretrain", *FAST, "--run-dir", run, "--mode", "dense",
           "--train-iters", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    path = os.path.join(run, "metrics.jsonl")
    while time.time() < deadline and not (os.path.exists(path) and os.path.getsize(path) > 0):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    latest = open(os.path.join(run, "checkpoints", "latest")).read()
    assert os.path.isfile(os.path.join(run, "checkpoints", latest, "lumina.json"))
    assert "checkpoint saved at iteration" in out
    assert not os.path.exists(os.path.join(run, "lumina.lock"))  # released on the way out


def test_a_failed_save_stops_every_rank_with_the_path_and_keeps_latest(tmp_path):
    """A full disk at the second save: one line naming the file and the cause, exit 4, and `latest`
    still on the first checkpoint (no traceback from inside the writer, no rank left waiting)."""
    run = str(tmp_path / "full")
    script = (
        "import errno, sys\n"
        "import lumina.train.checkpoint as c\n"
        "write, calls = c._write_file, []\n"
        "def full_disk(path, tensors):\n"
        "    calls.append(path)\n"
        "    if len(calls) > 1:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', path)\n"
        "    return write(path, tensors)\n"
        "c._write_file = full_disk\n"
        "from lumina.pretrain import main\n"
        f"sys.exit(main({[*FAST, '--run-dir', run, '--mode', 'dense', '--train-iters', '4', '--save-interval', '2']!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "saving iteration 4 to" in proc.stdout and "No space left on device" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert open(os.path.join(run, "checkpoints", "latest")).read() == "iter_0000002"
