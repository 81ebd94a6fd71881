"""Chaos (slow): kill -9 the trainer at random moments of training and saving, resume each time.
`latest` must always name a complete, checksum-valid checkpoint, and every iteration any attempt
logs must equal the uninterrupted run's loss bit for bit. The default run covers the pieces: an
atomic save (tests/train/test_checkpoint_files.py), exact resume (tests/train/test_resilience.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.train.runs import FAST, train, train_losses

ITERS = 12
KILLS = 20
ARGS = ("--mode", "dense", "--train-iters", str(ITERS), "--save-interval", "1", "--keep-last", "2")


@pytest.mark.slow
def test_kill_minus_nine_anywhere_then_resume_is_exact(tmp_path):
    reference = str(tmp_path / "reference")
    assert train(reference, *ARGS) == 0
    want = train_losses(reference)
    save = str(tmp_path / "checkpoints")
    rng = random.Random(20261203)
    seen: dict[int, float] = {}
    kills = attempt = 0
    while True:
        attempt += 1
        run = str(tmp_path / f"attempt{attempt}")
        load = ["--load", save] if os.path.exists(os.path.join(save, "latest")) else []
        cmd = [sys.executable, "-m", "lumina.pretrain", *FAST, *ARGS, "--run-dir", run, "--save", save, *load]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": os.getcwd()})
        if kills < KILLS:
            time.sleep(rng.uniform(2.0, 9.0))  # start-up takes ~3 s: kills land in start-up, steps and saves
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        code = proc.wait(timeout=300)
        metrics = os.path.join(run, "metrics.jsonl")
        if os.path.exists(metrics):
            for line in open(metrics):
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # the last line may be cut by the kill
                if r.get("split") == "train" and "loss" in r:
                    assert r["loss"] == want[r["iteration"]], (attempt, r["iteration"])
                    seen[r["iteration"]] = r["loss"]
        if os.path.exists(os.path.join(save, "latest")):
            from lumina.train.checkpoint import load_model_weights

            load_model_weights(save)  # complete and checksum-valid, or this raises
        if code == 0 and kills >= KILLS:
            break
        assert attempt < KILLS + 10, "the run did not finish"
    assert sorted(seen) == list(range(1, ITERS + 1))
