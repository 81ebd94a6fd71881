"""Run-directory pre-flight and lock (lumina/train/rundir.py), and a resubmitted finished run:
refused or handled before any process group exists."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lumina.train import rundir


def test_an_output_path_that_is_a_file_is_refused_naming_the_flag(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"--run-dir='.*/f' is a file; give a directory"):
        rundir.check_output_dir("--run-dir", str(tmp_path / "f"))
    with pytest.raises(ValueError, match=r"--save='.*/f/checkpoints' is not writable \(Not a directory\)"):
        rundir.check_output_dir("--save", str(tmp_path / "f" / "checkpoints"))
    rundir.check_output_dir("--tensorboard-dir", str(tmp_path / "new" / "tb"))  # created
    assert (tmp_path / "new" / "tb").is_dir() and not list((tmp_path / "new" / "tb").iterdir())


def test_save_needs_room_for_one_checkpoint(tmp_path):
    rundir.check_room("--save", str(tmp_path), params=1000)
    with pytest.raises(ValueError, match=r"--save='.*' has .* GiB free, and one checkpoint of 10,000,000,000,000 "
                                         r"parameters needs about"):
        rundir.check_room("--save", str(tmp_path), params=10**13)


def _write_lock(run_dir, **holder):
    path = run_dir / rundir.LOCK
    path.write_text(json.dumps(holder))
    return path


def test_a_live_holder_is_named_and_refused(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, host=socket.gethostname(), pid=other.pid)
        with pytest.raises(ValueError, match=rf"is in use by another trainer \(host '{socket.gethostname()}', "
                                             rf"pid {other.pid}"):
            rundir.RunLock(str(tmp_path)).acquire()
    finally:
        other.kill()
        other.wait()


def test_stale_locks_are_taken_over(tmp_path, monkeypatch):
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid.pid)
    lock = rundir.RunLock(str(tmp_path))
    assert f"pid {dead_pid.pid} on this host has exited" in lock.acquire()
    assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / rundir.LOCK).exists()

    # Another host: alive as far as we can tell, until its heartbeat is an hour old.
    path = _write_lock(tmp_path, host="elsewhere", pid=1)
    with pytest.raises(ValueError, match="host 'elsewhere', pid 1"):
        rundir.RunLock(str(tmp_path)).acquire()
    old = time.time() - rundir.STALE_AFTER_S - 60
    os.utime(path, (old, old))
    assert "untouched for 61 min" in rundir.RunLock(str(tmp_path)).acquire()

    # A requeued SLURM job on other nodes finds its own earlier lock.
    (tmp_path / rundir.LOCK).unlink()
    _write_lock(tmp_path, host="elsewhere", pid=1, slurm_job_id="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert "earlier run of SLURM job 4242" in rundir.RunLock(str(tmp_path)).acquire()


def test_a_second_trainer_on_the_same_run_directory_is_refused(tmp_path):
    """End to end: the trainer takes the lock, and every rank of the second one refuses."""
    from tests.train.runs import train

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(run, host=socket.gethostname(), pid=holder.pid)
        assert train(str(run), "--mode", "dense", "--train-iters", "1", world_size=2) == 2
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "checkpoints").exists() or not os.listdir(run / "checkpoints")


def test_resubmitting_a_finished_run_exits_zero_and_says_so(tmp_path, capsys):
    from lumina.pretrain import build_parser, main
    from lumina.train import checkpoint
    from lumina.train.loop import plan_layout
    from lumina.model import LuminaLM

    args = build_parser().parse_args(["--mode", "dense", "--train-iters", "5"])
    _, cfg, _, _, tokenizer = plan_layout(args)
    ckpt = checkpoint.write_weights(str(tmp_path / "ck"), cfg, LuminaLM(cfg, init_seed=1).state_dict(),
                                    {"tokenizer_sha256": tokenizer.sha256})
    meta_path = os.path.join(ckpt, checkpoint.META)
    meta = json.loads(open(meta_path).read())
    meta["iteration"] = 5
    meta["sha256"] = checkpoint._meta_digest(meta)
    open(meta_path, "w").write(json.dumps(meta))
    code = main(["--mode", "dense", "--train-iters", "5", "--load", str(tmp_path / "ck"),
                 "--run-dir", str(tmp_path / "run")])
    assert code == 0
    assert "the run is complete" in capsys.readouterr().err


def test_a_run_that_cannot_fit_is_refused_before_allocating():
    """b7 dense on one CPU rank: the planner's estimate (weights, gradients, Adam, activations) is
    hundreds of GiB; the message gives both figures and the plan command. debug fits."""
    import torch

    from lumina.parallel.layout import ParallelLayout
    from lumina.presets import get_preset

    cpu = torch.device("cpu")
    for name, fits in (("b7", False), ("debug", True)):
        cfg = get_preset(name, "dense")
        layout = ParallelLayout.build(1, model_cfg=cfg)
        if fits:
            rundir.check_memory(cfg, layout, 8, 1, 0, False, False, cpu, 1)
            continue
        with pytest.raises(ValueError, match=r"--preset b7 --mode dense needs about \d+\.\d GiB per rank .* but this "
                                             r"machine has .* GiB of RAM available. Find a layout that fits with "
                                             r"`lumina plan --preset b7 --mode dense --gpus 1`"):
            rundir.check_memory(cfg, layout, 8, 1, 0, False, False, cpu, 1)


def test_the_memory_check_handles_pipelined_fp32_layouts():
    """fp32 ZeRO-0 with two stages (what the CPU SLURM test runs) once crashed the planner's
    estimate: a loop variable was reused for the first gradient's bytes."""
    import torch

    from lumina.parallel.layout import ParallelLayout
    from lumina.presets import get_preset

    cfg = get_preset("debug", "hybrid")
    layout = ParallelLayout.build(8, 2, 2, 2, model_cfg=cfg)
    rundir.check_memory(cfg, layout, 2, 2, 0, False, False, torch.device("cpu"), 8)
