"""Pipeline parallel (DeepSpeed PipelineModule, 1F1B) gives the single-process numbers.

The pipeline runs the same micro-batches in the same order as one process with gradient
accumulation, so losses agree to fp32 round-off: relative 1e-5. Aux losses cross the stage
boundary as part of the activation, so MoE/MoD modes are covered as well as dense.
"""

import os

import pytest
import torch

from tests.parallel.conftest import assert_resume_is_exact, assert_same_losses, assert_same_valid_loss
from tests.train.runs import metrics, train, train_losses

PP2 = ("--pipeline-model-parallel-size", "2")
ITERS = ("--train-iters", "5")


# MoE across two stages is in the default run too, in the uneven-split test below
@pytest.mark.parametrize("mode", ["dense", pytest.param("hybrid", marks=pytest.mark.slow)])
def test_pp2_equals_one_process(tmp_path, one_process, mode):
    ref, run = one_process(mode), str(tmp_path / "pp2")
    assert train(run, "--mode", mode, *ITERS, "--global-batch-size", "8", *PP2, world_size=2) == 0
    assert_same_losses(train_losses(run), train_losses(ref))
    assert_same_valid_loss(run, ref)
    if mode == "hybrid":  # routing statistics gathered from both stages, per layer
        rec_ref = [r for r in metrics(ref) if r["split"] == "train"][-1]
        rec = [r for r in metrics(run) if r["split"] == "train"][-1]
        assert rec["moe_tokens_per_expert"] == rec_ref["moe_tokens_per_expert"]
        for key in ("mod_skip_fraction_per_layer", "moe_load_balance_per_layer"):
            assert rec[key] == pytest.approx(rec_ref[key], rel=1e-6), key


@pytest.mark.slow
def test_pp2_x_dp2_moe_zero1_equals_one_process(tmp_path, one_process):
    run = str(tmp_path / "pp2dp2")
    assert train(run, "--mode", "moe", *ITERS, "--global-batch-size", "8", "--micro-batch-size", "2",
                 "--zero-stage", "1", *PP2, world_size=4, timeout=600) == 0
    assert_same_losses(train_losses(run), train_losses(one_process("moe", micro_batch=2)))
    assert_same_valid_loss(run, one_process("moe", micro_batch=2))


def test_pp2_uneven_split_recompute_resume_and_eval(tmp_path, capsys):
    """--pipeline-layers 1,3 with activation checkpointing: resuming is exact, and the files the
    two stages write merge back into one model for `lumina eval`."""
    ckpts = assert_resume_is_exact(tmp_path, "--mode", "moe", "--global-batch-size", "8", "--pipeline-layers", "1,3",
                                   "--recompute-activations", *PP2, world_size=2)
    # Stage 0 (rank 0) holds the embedding and block 0, stage 1 blocks 1-3, the norm and the tied
    # head, whose weight stage 0 writes alone.
    from safetensors.torch import load_file

    from lumina.train.checkpoint import load_model_weights

    stage = [load_file(os.path.join(ckpts, "iter_0000006", f"part-0000{r}.safetensors")) for r in (0, 1)]
    assert "embed.weight" in stage[0] and "blocks.0.mlp.w_gate[7]" in stage[0] and "blocks.1.attn_norm.weight" not in stage[0]
    assert "embed.weight" not in stage[1] and "norm.weight" in stage[1] and "exp_avg/blocks.3.mlp.w_gate[0]" in stage[1]
    merged, _ = load_model_weights(ckpts)
    assert torch.equal(merged["blocks.3.mlp.w_gate"], torch.stack([stage[1][f"blocks.3.mlp.w_gate[{e}]"] for e in range(8)]))

    from lumina.cli import main

    assert main(["eval", "--load", ckpts, "--eval-iters", "1", "--json"]) == 0
    assert '"checkpoint_iteration": 6' in capsys.readouterr().out
