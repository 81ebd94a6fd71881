"""Expert parallel (all-to-all over DeepSpeed's expert groups) gives the single-process numbers.

Each rank routes its own micro-batch exactly as one process routes the same micro-batch, so with
the same grouping of samples into micro-batches (the loader gives DP rank r the r-th micro-batch
of the global batch) the losses agree to fp32 round-off: relative 1e-5.
"""

import os

import pytest
import torch

from tests.parallel.conftest import assert_resume_is_exact, assert_same_losses, assert_same_valid_loss
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
    assert_same_valid_loss(run, one_process(mode))


@pytest.mark.slow
def test_ep2_x_dp2_equals_one_process(tmp_path, one_process):
    """World 4: two expert groups of 2; expert gradients are reduced over expert-DP groups of 2."""
    run = str(tmp_path / "ep2dp2")
    assert train(run, "--mode", "moe", *ITERS, "--global-batch-size", "8", "--micro-batch-size", "2",
                 "--zero-stage", "1", *EP2, world_size=4, timeout=600) == 0
    assert_same_losses(train_losses(run), train_losses(one_process("moe", micro_batch=2)))
    assert_same_valid_loss(run, one_process("moe", micro_batch=2))


def test_ep2_resume_is_exact_and_checkpoint_merges_experts(tmp_path, capsys):
    ckpts = assert_resume_is_exact(tmp_path, "--mode", "moe", "--global-batch-size", "8", *EP2, world_size=2)

    # Each EP rank writes its own experts under their global index; the merged state dict stacks
    # them in order.
    from safetensors.torch import load_file

    from lumina.train.checkpoint import load_model_weights

    merged, _ = load_model_weights(ckpts)
    parts = [load_file(os.path.join(ckpts, "iter_0000006", f"part-0000{r}.safetensors")) for r in (0, 1)]
    key = "blocks.0.mlp.w_gate"
    assert sorted(k for k in parts[1] if k.startswith(key + "[")) == [f"{key}[{e}]" for e in range(4, 8)]
    assert "embed.weight" in parts[0] and "embed.weight" not in parts[1]  # dense weights: DP rank 0 only
    assert merged[key].shape[0] == 8
    assert torch.equal(merged[key][5], parts[1][f"{key}[5]"])
    assert not torch.equal(merged[key][0], merged[key][4])

    from lumina.cli import main

    assert main(["eval", "--load", ckpts, "--eval-iters", "1", "--json"]) == 0
    assert '"checkpoint_iteration": 6' in capsys.readouterr().out
