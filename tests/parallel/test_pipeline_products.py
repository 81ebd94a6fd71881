"""Pipeline parallel combined with tensor and expert parallel gives the single-process numbers.

megatron-core's TP layers run inside DeepSpeed PipelineModule stages (the grid built from
PipeModelDataParallelTopology, checked against megatron and the layout on every rank), and the
experts are split over expert groups inside each stage. The micro-batches are the same as one
process with gradient accumulation at the same micro-batch size, so the losses and the global
gradient norms agree to fp32 round-off (relative 1e-5), and MoE capacity and drops are those of
one process (each rank routes exactly the micro-batch one process routes).
"""

import os

import pytest
import torch

from tests.parallel.conftest import assert_resume_is_exact, assert_same_run
from tests.train.runs import metrics, train

TP2, PP2, EP2 = (("--tensor-model-parallel-size", "2"), ("--pipeline-model-parallel-size", "2"),
                 ("--expert-model-parallel-size", "2"))
ITERS = ("--train-iters", "5", "--global-batch-size", "8")


def _last_train_record(run: str) -> dict:
    return [r for r in metrics(run) if r["split"] == "train"][-1]


# dense under TP2 x PP2 is a strict subset of hybrid's code paths; hybrid runs by default
@pytest.mark.parametrize("mode", [pytest.param("dense", marks=pytest.mark.slow), "hybrid"])
def test_tp2_x_pp2_equals_one_process(tmp_path, one_process, mode):
    """World 4, DP 1: the capacity-limited MoE layers route the one-process micro-batches, so the
    drops per expert and layer are the one-process drops."""
    ref, run = one_process(mode), str(tmp_path / "tp2pp2")
    assert train(run, "--mode", mode, *ITERS, *TP2, *PP2, world_size=4, timeout=600) == 0
    assert_same_run(run, ref)
    if mode == "hybrid":
        rec, rec_ref = _last_train_record(run), _last_train_record(ref)
        assert rec["moe_tokens_per_expert"] == rec_ref["moe_tokens_per_expert"]
        assert rec["moe_dropped_fraction"] > 0  # capacity did drop tokens
        for key in ("moe_dropped_fraction_per_layer", "mod_skip_fraction_per_layer"):
            assert rec[key] == pytest.approx(rec_ref[key], rel=1e-6), key


def test_pp2_x_ep2_moe_equals_one_process(tmp_path, one_process):
    """World 4: each stage's two DP ranks form its expert group and split the 8 experts."""
    run = str(tmp_path / "pp2ep2")
    assert train(run, "--mode", "moe", *ITERS, "--micro-batch-size", "2", *PP2, *EP2, world_size=4, timeout=600) == 0
    assert_same_run(run, one_process("moe", micro_batch=2))


def test_tp2_x_pp2_x_ep2_equals_one_process_resumes_exactly_and_evaluates(tmp_path, one_process):
    """World 8: TP 2 x PP 2 x DP 2 with EP 2. The uninterrupted run equals one process; a run
    resumed from its iteration-3 checkpoint repeats iterations 4-5 bit for bit; the checkpoint
    (DeepSpeed's MoE files per grid rank, expert blocks and TP slices in the rank files) merges
    into one LuminaLM state dict that `lumina eval` loads and that holds the one-process weights."""
    ckpts = assert_resume_is_exact(tmp_path, "--mode", "hybrid", "--global-batch-size", "8", "--micro-batch-size", "2",
                                   *TP2, *PP2, *EP2, world_size=8, iters=5, resume_at=3, timeout=600)
    ref = one_process("hybrid", micro_batch=2)
    assert_same_run(str(tmp_path / "full"), ref)

    from lumina.train.checkpoint import load_model_weights

    merged, meta = load_model_weights(ckpts)
    expected, _ = load_model_weights(os.path.join(ref, "checkpoints"))
    assert meta["layout"] == {"tp": 2, "pp": 2, "ep": 2, "dp": 2, "zero": 0, "bf16": False}
    assert sorted(merged) == sorted(expected)
    for key, value in expected.items():
        # Five Adam steps amplify fp32 round-off to ~3e-4 of a tensor's largest entry; a shard
        # merged in the wrong order or an expert block from the wrong rank is off by O(1).
        scale = float(value.abs().max())
        assert merged[key].shape == value.shape and float((merged[key] - value).abs().max()) < 1e-2 * scale, key

    from lumina.cli import main

    assert main(["eval", "--load", ckpts, "--eval-iters", "1", "--json"]) == 0


@pytest.mark.slow  # the default run evaluates a TP x PP x EP checkpoint in the test above
def test_tp2_x_pp2_dense_checkpoint_merges_stage_files(tmp_path):
    """TP rank 0 of each stage writes that stage's tensors whole: ranks 0 and 2."""
    run = str(tmp_path / "tp2pp2")
    assert train(run, "--mode", "dense", "--train-iters", "2", *TP2, *PP2, world_size=4, timeout=600) == 0
    ckpt = os.path.join(run, "checkpoints")
    files = os.listdir(os.path.join(ckpt, "iter_0000002"))
    assert sorted(f for f in files if f.startswith("part-")) == ["part-00000.safetensors", "part-00002.safetensors"]
    from lumina.train.checkpoint import load_model_weights

    merged, _ = load_model_weights(ckpt)
    assert merged["blocks.0.attn.wq.weight"].shape == torch.Size([96, 96])
