"""Chaos (slow): kill -9 the trainer at random moments of training and saving, resume each time.
`latest` must always name a complete, checksum-valid checkpoint, every iteration any attempt logs
must equal the uninterrupted run's loss bit for bit, and every finished run must end on the
uninterrupted run's exact weights. The default run covers the pieces: an atomic save
(tests/train/test_checkpoint_files.py), exact resume (tests/train/test_resilience.py).
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
import torch

from tests.train.runs import FAST

ITERS = 40
KILLS = 20
# A checkpoint every iteration, so that a kill lands in a save about as often as in a step.
ARGS = ("--mode", "dense", "--train-iters", str(ITERS), "--save-interval", "1", "--keep-last", "2")


def _start(run: str, save: str) -> subprocess.Popen:
    load = ["--load", save] if os.path.exists(os.path.join(save, "latest")) else []
    cmd = [sys.executable, "-m", "lumina.pretrain", *FAST, *ARGS, "--run-dir", run, "--save", save, *load]
    log = open(os.path.join(os.path.dirname(run), os.path.basename(run) + ".log"), "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.getcwd()})


def _losses(run: str) -> dict[int, float]:
    out = {}
    path = os.path.join(run, "metrics.jsonl")
    if os.path.exists(path):
        for line in open(path):
            try:
                r = json.loads(line)
            except ValueError:
                continue  # the last line may be cut by the kill
            if r.get("split") == "train" and "loss" in r:
                out[r["iteration"]] = r["loss"]
    return out


def _weights(save: str) -> dict[str, torch.Tensor]:
    from lumina.train.checkpoint import load_model_weights

    return load_model_weights(save)[0]  # complete and checksum-valid, or this raises


@pytest.mark.slow
def test_kill_minus_nine_anywhere_then_resume_is_exact(tmp_path):
    begin = time.monotonic()
    ref = _start(str(tmp_path / "reference"), str(tmp_path / "reference_ckpt"))
    assert ref.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    whole = time.monotonic() - begin
    want, final = _losses(str(tmp_path / "reference")), _weights(str(tmp_path / "reference_ckpt"))
    assert sorted(want) == list(range(1, ITERS + 1))

    # Campaigns: a fresh run killed at random moments until it finishes. A kill at a uniform
    # fraction of the whole run's time lands in start-up, steps and saves alike; one that comes
    # after a resumed attempt already finished is no kill, and the campaign ends there.
    rng = random.Random(20261203)
    kills = campaigns = 0
    while kills < KILLS:
        campaigns += 1
        assert campaigns <= 2 * KILLS, f"{kills} kills in {campaigns - 1} campaigns"
        save, seen, attempt = str(tmp_path / f"c{campaigns}_ckpt"), {}, 0
        while True:
            attempt += 1
            run = str(tmp_path / f"c{campaigns}_a{attempt}")
            proc = _start(run, save)
            killed = False
            if kills < KILLS:
                try:
                    proc.wait(timeout=rng.uniform(0.2, 0.95) * whole)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    kills += 1
            code = proc.wait(timeout=600)
            if not killed:
                assert code == 0, open(run + ".log").read()[-2000:]
            for it, loss in _losses(run).items():
                assert loss == want[it], (campaigns, attempt, it, loss, want[it])
                seen[it] = loss
            if os.path.exists(os.path.join(save, "latest")):
                _weights(save)  # `latest` is never partial, even right after a kill mid-save
            if not killed:
                break
        assert sorted(seen) == list(range(1, ITERS + 1)), (campaigns, sorted(seen))
        got = _weights(save)
        assert got.keys() == final.keys() and all(torch.equal(got[k], final[k]) for k in final), campaigns
    print(f"chaos: {kills} kills over {campaigns} campaigns; whole run {whole:.1f} s")
