"""Helpers that run the real training entry point in spawned ranks and read what it wrote."""

from __future__ import annotations

import json
import os

from tests.spawn import spawn

# A tiny, fast run of the debug preset: 4 x 64 tokens per iteration.
FAST = ["--seq-length", "64", "--micro-batch-size", "4", "--lr", "3e-3", "--min-lr", "3e-4",
        "--eval-iters", "2", "--eval-interval", "1000", "--log-interval", "1", "--no-progress",
        "--save-interval", "1000"]


def pretrain(argv: list[str]) -> int:
    from lumina.pretrain import main

    return main(argv)


def train(run_dir: str, *extra: str, world_size: int = 1, timeout: float = 300.0) -> int:
    """Run lumina/pretrain.py on `world_size` ranks; returns rank 0's exit code."""
    argv = [*FAST, "--run-dir", run_dir, *extra]
    codes = spawn(pretrain, world_size, (argv,), timeout=timeout)
    assert len(set(codes)) == 1, f"ranks disagree on the exit code: {codes}"
    return codes[0]


def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(run_dir: str) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in metrics(run_dir) if r["split"] == "train" and "loss" in r}
