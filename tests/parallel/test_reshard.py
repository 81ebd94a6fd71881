"""A checkpoint saved at one layout resumes at another (issue 18's reshard matrix).

Each case trains 20 iterations at layout A, saving at iteration 10, and resumes that checkpoint at
layout B for iterations 11-20. Those must equal the uninterrupted run's losses at relative 1e-5
(fp32), the same bar as every parallel-equality test: a weight, moment or Adam step restored
wrongly (an expert from the wrong index, a TP shard swapped, the moments zeroed, Adam's bias
correction restarted) moves the loss by far more (test_a_lost_adam_state_is_caught shows one).
"""

import os

import pytest

from tests.parallel.conftest import assert_same_losses
from tests.train.runs import train, train_losses

ITERS, AT = 20, 10
RUN = ("--train-iters", str(ITERS), "--save-interval", str(AT), "--global-batch-size", "8", "--keep-last", "5")
TP2 = ("--tensor-model-parallel-size", "2")
PP2 = ("--pipeline-model-parallel-size", "2")
EP2 = ("--expert-model-parallel-size", "2")


def _saved_at(tmp_path, name: str, mode: str, flags: tuple, world: int) -> tuple[str, dict]:
    """Run A: the uninterrupted run's losses, and its checkpoint directory with `latest` at AT."""
    run = str(tmp_path / name)
    assert train(run, "--mode", mode, *RUN, *flags, world_size=world, timeout=600) == 0
    ckpts = os.path.join(run, "checkpoints")
    with open(os.path.join(ckpts, "latest"), "w") as f:
        f.write(f"iter_{AT:07d}")
    return ckpts, train_losses(run)


def _resumed(tmp_path, name: str, ckpts: str, mode: str, flags: tuple, world: int) -> dict:
    run = str(tmp_path / name)
    assert train(run, "--mode", mode, *RUN, *flags, "--load", ckpts, world_size=world, timeout=600) == 0
    losses = train_losses(run)
    assert sorted(losses) == list(range(AT + 1, ITERS + 1))
    return losses


def _later(losses: dict) -> dict:
    return {i: v for i, v in losses.items() if i > AT}


def assert_resumed_equal(resumed: dict, full: dict) -> None:
    worst = max(abs(resumed[i] - full[i]) / abs(full[i]) for i in resumed)
    print(f"largest relative loss difference over iterations {AT + 1}-{ITERS}: {worst:.2e}")
    assert_same_losses(resumed, _later(full))


def test_ep2_zero1_resumes_on_one_rank_and_on_two_pipeline_stages(tmp_path):
    """DP2 ZeRO-1 with EP2 (moe): experts by global index, ZeRO-1 partitions assembled; resumed on
    1 rank (EP2 to EP1, ZeRO-1 to ZeRO-0) and on PP2 (stage files by LuminaLM name)."""
    ckpts, full = _saved_at(tmp_path, "a", "moe", ("--zero-stage", "1", *EP2), 2)
    assert_resumed_equal(_resumed(tmp_path, "one", ckpts, "moe", (), 1), full)
    assert_resumed_equal(_resumed(tmp_path, "pp2", ckpts, "moe", PP2, 2), full)


def test_a_lost_adam_state_is_caught(tmp_path, monkeypatch):
    """The tolerance catches a plausible bug: loading the weights but not Adam's moments and step
    (what a weights-only loader would do) moves iterations 11-20 by far more than 1e-5."""
    ckpts, full = _saved_at(tmp_path, "a", "dense", (), 1)
    import json

    meta_path = os.path.join(ckpts, f"iter_{AT:07d}", "lumina.json")
    with open(meta_path) as f:
        meta = json.load(f)
    from lumina.train import checkpoint

    meta["adam_step"] = None  # the loader then keeps fresh moments, as for an imported model
    meta["sha256"] = checkpoint._meta_digest(meta)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    resumed = _resumed(tmp_path, "b", ckpts, "dense", (), 1)
    worst = max(abs(resumed[i] - full[i]) / abs(full[i]) for i in resumed)
    assert worst > 1e-3, worst


# Further pairs of the matrix. The default run covers resharding in the test above (ZeRO-1 to 0,
# EP2 to EP1, DP2 to PP2) and same-layout resumes in every parallel test file.
@pytest.mark.slow
@pytest.mark.parametrize("mode, a, wa, b, wb", [
    ("hybrid", ("--zero-stage", "1"), 2, (), 1),
    ("hybrid", (), 1, ("--zero-stage", "3"), 2),
    ("hybrid", TP2, 2, (), 1),
    ("hybrid", (), 1, TP2, 2),
    ("hybrid", PP2, 2, (), 1),
    ("moe", EP2, 2, (), 1),
    ("moe", (), 1, EP2, 2),
    ("hybrid", ("--micro-batch-size", "2", *TP2, *PP2), 4, ("--micro-batch-size", "2"), 4),
], ids=["dp2-zero1-to-1", "1-to-dp2-zero3", "tp2-to-tp1", "tp1-to-tp2", "pp2-to-pp1", "ep2-to-ep1",
        "ep1-to-ep2", "tp2-pp2-to-dp4"])
def test_reshard(tmp_path, mode, a, wa, b, wb):
    ckpts, full = _saved_at(tmp_path, "a", mode, a, wa)
    assert_resumed_equal(_resumed(tmp_path, "b", ckpts, mode, b, wb), full)


@pytest.mark.slow  # bf16 tolerance rule: tests/train/bf16.py; the default run reshards in fp32 above
def test_bf16_zero1_resumes_at_bf16_zero0(tmp_path):
    """bf16 ZeRO-1 (DeepSpeed's BF16_Optimizer) to bf16 ZeRO-0 (FP16_UnfusedOptimizer): within the
    bf16 tolerance of the uninterrupted bf16 run."""
    from tests.train.bf16 import BF16_LOSS_TOLERANCE

    ckpts, full = _saved_at(tmp_path, "a", "hybrid", ("--bf16", "--zero-stage", "1"), 2)
    resumed = _resumed(tmp_path, "b", ckpts, "hybrid", ("--bf16", "--zero-stage", "0"), 2)
    distance = sum(abs(resumed[i] - full[i]) for i in resumed) / len(resumed)
    assert distance < BF16_LOSS_TOLERANCE, distance
