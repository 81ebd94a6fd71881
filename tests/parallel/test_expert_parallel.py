"""Expert parallel (all-to-all over DeepSpeed's expert groups) gives the single-process numbers.

Each rank routes its own micro-batch exactly as one process routes the same micro-batch, so with
the same grouping of samples into micro-batches (the loader gives DP rank r the r-th micro-batch
of the global batch) the losses agree to fp32 round-off: relative 1e-5.
"""

import pytest
import torch

from tests.parallel.conftest import assert_resume_is_exact, assert_same_losses
from tests.train.runs import train, train_losses

EP2 = ("--expert-model-parallel-size", "2")
ITERS = ("--train-iters", "5")


@pytest.mark.parametrize("mode,zero", [("moe", "0"), pytest.param("hybrid", "1", marks=pytest.mark.slow),
                                       pytest.param("moe", "2", marks=pytest.mark.slow)])
def test_ep2_equals_one_process(tmp_path, one_process, mode, zero):
    run = str(tmp_path / "ep2")
    assert train(run, "--mode", mode, *ITERS, "--global-batch-size", "8", "--zero-stage", zero, *EP2,
                 world_size=2) == 0
    assert_same_losses(train_losses(run), train_losses(one_process(mode)))


@pytest.mark.slow
def test_ep2_x_dp2_equals_one_process(tmp_path, one_process):
    """World 4: two expert groups of 2; expert gradients are reduced over expert-DP groups of 2."""
    run = str(tmp_path / "ep2dp2")
    assert train(run, "--mode", "moe", *ITERS, "--global-batch-size", "8", "--micro-batch-size", "2",
                 "--zero-stage", "1", *EP2, world_size=4, timeout=600) == 0
    assert_same_losses(train_losses(run), train_losses(one_process("moe", micro_batch=2)))


def test_ep2_resume_is_exact_and_checkpoint_merges_experts(tmp_path, capsys):
    ckpts = assert_resume_is_exact(tmp_path, "--mode", "moe", "--global-batch-size", "8", *EP2, world_size=2)

    # Each rank file holds its own block of experts; the merged state dict puts them in order.
    from lumina.train.checkpoint import load_model_weights, load_rank_state

    merged, _ = load_model_weights(ckpts)
    shards = [load_rank_state(ckpts, "iter_0000006", r)["experts"] for r in (0, 1)]
    key = "blocks.0.mlp.w_gate"
    assert [s[key]["offset"] for s in shards] == [0, 4]
    assert merged[key].shape[0] == 8
    assert torch.equal(merged[key], torch.cat([shards[0][key]["tensor"], shards[1][key]["tensor"]]))
    assert not torch.equal(shards[0][key]["tensor"], shards[1][key]["tensor"])

    from lumina.cli import main

    assert main(["eval", "--load", ckpts, "--eval-iters", "1", "--json"]) == 0
    assert '"checkpoint_iteration": 6' in capsys.readouterr().out
