"""The planner: memory terms worked by hand, layout validity, search optimality, bad input, claims."""

import json

import pytest

from lumina.accounting import account
from lumina.parallel.layout import ParallelLayout
from lumina.plan.hardware import GIB, GPUS, gpu, mfu_for
from lumina.plan.memory import CONTEXT_BYTES, FRAGMENTATION, estimate, layer_activation_bytes
from lumina.plan.search import best, candidates, parse_count
from lumina.presets import get_preset


def test_model_states_follow_the_zero_paper():
    """2 + 4 + 12 bytes a parameter, divided over DP by stage (ZeRO paper, section 3)."""
    cfg = get_preset("b1", "dense")
    P = account(cfg).params_total
    common = dict(tp=1, pp=1, ep=1, micro_batch=1, grad_accum=1, stage_layers=(cfg.num_layers,))
    z0 = estimate(cfg, dp=1, zero=0, **common)
    assert (z0.weights, z0.gradients, z0.optimizer) == pytest.approx((2 * P, 4 * P, 12 * P), rel=1e-6)
    z1 = estimate(cfg, dp=4, zero=1, **common)
    assert (z1.weights, z1.gradients, z1.optimizer) == pytest.approx((2 * P, 4 * P, 3 * P), rel=1e-6)
    z2 = estimate(cfg, dp=4, zero=2, **common)
    assert (z2.gradients, z2.optimizer) == pytest.approx((P, 3 * P), rel=1e-6)
    z3 = estimate(cfg, dp=4, zero=3, **common)
    assert z3.weights == pytest.approx(0.5 * P, rel=1e-6)
    assert z0.fragmentation == pytest.approx(FRAGMENTATION * (z0.total - z0.fragmentation))


def test_experts_are_divided_by_ep_and_by_expert_data_parallel():
    cfg = get_preset("b1", "moe")
    common = dict(tp=1, pp=1, micro_batch=1, grad_accum=1, stage_layers=(cfg.num_layers,), zero=1)
    one = estimate(cfg, ep=1, dp=8, **common)
    four = estimate(cfg, ep=4, dp=8, **common)
    assert four.expert_weights == pytest.approx(one.expert_weights / 4)
    # ZeRO-1 optimizer states of experts: over DP 8 without EP, over expert-DP 8 / 4 = 2 with EP 4
    expert_params = one.expert_weights / 2
    dense_opt = one.optimizer - 12 * expert_params / 8
    assert four.optimizer == pytest.approx(dense_opt + 12 * (expert_params / 4) / 2)


def test_activation_terms_worked_by_hand():
    """debug dense, s=128, b=2, t=1, SDPA, BF16 (a = 2 bytes): per token, two RMSNorms of
    (4 + 4 + a) h, Q/K/V a (h + 2g), SDPA output a h, log-sum-exp 4n, SwiGLU 4aF."""
    cfg = get_preset("debug", "dense")
    s, b, h, F, n = 128, 2, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_heads
    g = cfg.num_kv_heads * cfg.head_dim
    by_hand = s * b * (2 * 10 * h + 2 * (h + 2 * g) + 2 * h + 4 * n + 2 * 4 * F)
    assert layer_activation_bytes(cfg, s, b, 1, flash=True, routed=False) == by_hand
    # without flash the softmax output (a n s^2 b) is stored too
    assert layer_activation_bytes(cfg, s, b, 1, flash=False, routed=False) == by_hand + 2 * n * s * s * b
    # FP32 activations: the norms' FP32 tensors stay 8 bytes, everything else doubles
    fp32 = s * b * (2 * 12 * h + 4 * (h + 2 * g) + 4 * h + 4 * n + 4 * 4 * F)
    assert layer_activation_bytes(cfg, s, b, 1, flash=True, routed=False, act_bytes=4) == fp32


def test_moe_layer_keeps_k_copies_of_the_expert_activations():
    cfg = get_preset("debug", "moe")
    s, b, h, F, n, E, k = 128, 2, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_heads, cfg.moe.num_experts, cfg.moe.top_k
    g = cfg.num_kv_heads * cfg.head_dim
    attn = 10 * h + 2 * (h + 2 * g) + 2 * h + 4 * n
    mlp = 10 * h + 8 * E + k * (2 * 2 * h + 2 * 4 * F)
    assert layer_activation_bytes(cfg, s, b, 1, flash=True, routed=False) == s * b * (attn + mlp)


def test_mod_saves_activations_and_recompute_saves_more():
    cfg = get_preset("debug_200m", "mod")
    common = dict(tp=1, pp=1, ep=1, dp=1, zero=0, micro_batch=4, grad_accum=1, stage_layers=(cfg.num_layers,))
    plain = estimate(cfg, **common)
    assert plain.mod_activation_saving > 0
    s, b, h, V, c, P = cfg.seq_length, 4, cfg.hidden_size, cfg.vocab_size, cfg.mod.capacity, cfg.mod.predictor_hidden
    one = layer_activation_bytes(cfg, s, b, 1, True, routed=False)
    # the block on c s b gathered tokens, the router's input, the predictor's hidden layer, the update
    routed_layer = layer_activation_bytes(cfg, s, b, 1, True, routed=True)
    assert routed_layer == pytest.approx(c * one + s * b * (2 * h + 2 * 2 * P + 2 * c * h))
    assert plain.mod_activation_saving == pytest.approx((one - routed_layer) * len(cfg.routed_layers()))
    full = estimate(cfg, recompute="full", **common)
    # full recompute: every layer's input, one layer's activations, and the logits ((a + 12) s b V)
    assert full.activations == pytest.approx(2 * s * b * h * cfg.num_layers + max(one, routed_layer) + 14 * s * b * V)


def test_fp32_without_persistent_gradients_peaks_at_the_larger_backward_phase():
    """Plain FP32 (Lumina's CPU path): 4 + 8 bytes of weights and Adam states; the gradients live at
    the peak are the output layer's when activations dominate, all minus the activations otherwise."""
    cfg = get_preset("debug", "dense")
    P = account(cfg).params_total
    common = dict(tp=1, pp=1, ep=1, dp=1, zero=0, grad_accum=1, stage_layers=(cfg.num_layers,),
                  precision="fp32", context_bytes=0)
    big = estimate(cfg, micro_batch=8, **common)
    assert (big.weights, big.optimizer) == pytest.approx((4 * P, 8 * P), rel=1e-6)
    assert big.gradients == pytest.approx(4 * cfg.vocab_size * cfg.hidden_size)
    assert big.buffers == 0
    # states dominate: all gradients, no activations; with DP, DeepSpeed's flat all-reduce copy too
    tiny = estimate(cfg.replace(seq_length=4), micro_batch=1, **common)
    assert tiny.activations + tiny.gradients == pytest.approx(4 * P, rel=1e-6)
    two = estimate(cfg.replace(seq_length=4), micro_batch=1, **{**common, "dp": 2})
    assert two.activations + two.gradients == pytest.approx(2 * 4 * P, rel=1e-6)
    with pytest.raises(ValueError, match="precision='fp16' is unknown: choose one of bf16, fp32"):
        estimate(cfg, micro_batch=1, **{**common, "precision": "fp16"})
    # The CPU loss kernel keeps the FP32 logits and makes their gradient (8 bytes an element), where
    # torch's loss adds the log-softmax and the gradients of both (4 + 12).
    kernel = estimate(cfg, micro_batch=8, loss_kernel=True, **common)
    elements = 8 * cfg.seq_length * cfg.vocab_size
    assert big.activations - kernel.activations == pytest.approx((16 - 8) * elements)


def test_pipeline_first_stage_holds_p_micro_batches():
    cfg = get_preset("b7", "dense")
    many = estimate(cfg, tp=1, pp=4, ep=1, dp=1, zero=0, micro_batch=1, grad_accum=16, stage_layers=(8, 8, 8, 8))
    layer = layer_activation_bytes(cfg, cfg.seq_length, 1, 1, True, routed=False)
    assert many.stage == 0 and many.activations == pytest.approx(4 * 8 * layer)


def test_every_candidate_is_a_layout_the_trainer_accepts_and_best_is_fastest_fitting():
    cfg, g = get_preset("b7", "hybrid"), gpu("a100-80gb")
    plans = candidates(cfg, g, 16, 8, 976, cfg.seq_length, 1e9, 4.0)
    assert plans
    for p in plans:
        ParallelLayout.build(16, p.tp, p.pp, p.ep, 8, model_cfg=cfg, zero_stage=p.zero,
                             pipeline_layers=list(p.stage_layers))
    chosen = best(cfg, g, 16, global_batch_tokens=976 * cfg.seq_length)
    assert chosen.fits and chosen.memory.total <= g.memory_gib * GIB
    assert all(p.tokens_per_s <= chosen.tokens_per_s * (1 + 1e-9) for p in plans if p.fits)
    assert chosen.hours == pytest.approx(chosen.tokens / chosen.tokens_per_s / 3600)
    assert chosen.cost == pytest.approx(chosen.hours * 16 * 4.0)
    # Chinchilla default: 20 tokens per active parameter
    assert chosen.tokens == 20 * account(cfg).params_active


def test_nothing_fits_names_what_would():
    plan = best(get_preset("b7", "dense"), gpu("a100-80gb"), 1)
    assert not plan.fits
    assert "needs at least 2 x A100-80GB" in plan.notes[0] and "optimizer offload" in plan.notes[0]


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "a200"], "--gpu='a200' is unknown: choose one of a100-40gb"),
    (["--gpus", "12"], "--gpus=12 is not a whole number of 8-GPU nodes"),
    (["--gpus", "16", "--tensor-model-parallel-size", "16"], "is larger than --gpus-per-node=8"),
    (["--tokens", "lots"], "argument --tokens: 'lots' is not a count"),
    (["--tokens=-1B"], "argument --tokens: '-1B' is not a count > 0"),
    (["--mfu", "1.5"], "argument --mfu: '1.5' is not a finite number > 0 and <= 1"),
    (["--price", "-2"], "argument --price: '-2' is not a finite number >= 0"),
    (["--price", "nan"], "argument --price: 'nan' is not a finite number >= 0"),
    (["--gpus-per-node", "0"], "argument --gpus-per-node: '0' is not an integer >= 1"),
])
def test_bad_input_gets_a_clear_message(capsys, argv, message):
    from lumina.cli import main

    assert main(["plan", "--preset", "b7", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_json_and_exit_code(capsys):
    from lumina.cli import main

    assert main(["plan", "--preset", "debug", "--mode", "hybrid", "--gpus", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["tp"] == 1 and plan["memory_gib"] < 80
    assert main(["plan", "--preset", "b300", "--mode", "dense", "--gpus", "8"]) == 1  # does not fit
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_claims_check_flags_the_quoted_7b_figure(capsys):
    from lumina.plan.claims import CLAIMS, check

    row = check(CLAIMS[0])
    flops = account(get_preset("b7", "dense")).flops_per_token
    assert row["implied_mfu"] == pytest.approx(42_500 * flops / 312e12)
    assert row["implied_mfu"] > 5 and "physically impossible" in row["verdict"]


def test_tables_cite_sources():
    for g in GPUS.values():
        assert g.source and g.network_source and g.peak_tflops > 0
        for mode in ("dense", "moe", "mod", "hybrid"):
            assert 0 < mfu_for(g.name, mode).mfu < 0.6 and mfu_for(g.name, mode).source
    assert parse_count("4M") == 4e6 and parse_count("1.5B") == 1.5e9
    assert CONTEXT_BYTES == 1 << 30


def test_the_trainer_reads_its_mfu_peaks_from_the_planners_table():
    import inspect

    import lumina.train.hardware as train_hardware

    for g in GPUS.values():
        assert train_hardware.gpu_peak_tflops(f"NVIDIA {g.device_name}") == g.peak_tflops
    assert train_hardware.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert train_hardware.gpu_peak_tflops("NVIDIA H200") == 989.0
    assert train_hardware.gpu_peak_tflops("Tesla T4") is None
    # one table: the datasheet figures are not typed in a second time
    source = inspect.getsource(train_hardware)
    assert not any(f"{g.peak_tflops:g}" in source for g in GPUS.values())
