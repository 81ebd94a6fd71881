"""The planner's memory estimate against the peak of Lumina's real training step (CPU, FP32).

Each case trains the trainer for a few iterations in a child process under torch's profiler
(`lumina.plan.validate`); the goal from the ops-tooling issue is within 10%.
"""

import pytest

from lumina.plan.validate import MODES, Case, add_speed_estimates, markdown, moe_kept_fraction, run_case


@pytest.mark.parametrize("mode", MODES)
def test_memory_estimate_is_within_ten_percent_of_the_measured_peak(mode):
    row = run_case(Case("debug", mode, 8, 128))
    assert row["measured_peak_bytes"] > row["estimate"]["weights"] > 0
    assert 0.9 <= row["memory_ratio"] <= 1.1, row
    assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
    # Early routing drops assignments (about 30% in the second iteration): an estimate that
    # ignored that read 1.149 for moe.
    assert (row["moe_kept"] < 1.0) == (mode in ("moe", "hybrid")), row["moe_kept"]


def test_moe_kept_fraction_weighs_layers_by_their_assignments():
    # layer 0: 300 of 400 assignments kept; layer 1 (a MoD-routed one, fewer tokens): 50 of 100
    stats = {"moe_tokens_per_expert": [[100, 200], [25, 25]], "moe_dropped_fraction_per_layer": [0.25, 0.5]}
    assert moe_kept_fraction(stats) == pytest.approx(350 / 500)
    assert moe_kept_fraction({}) == 1.0


def test_moe_activations_scale_with_the_kept_assignments():
    from lumina.plan.memory import _block_bytes, estimate
    from lumina.presets import get_preset

    cfg = get_preset("debug", "moe")
    full, half = (_block_bytes(cfg, 1024, 128, 1, True, 4, kept) for kept in (1.0, 0.5))
    h, F, k = cfg.hidden_size, cfg.ffn_hidden_size, cfg.moe.top_k
    assert full - half == pytest.approx(1024 * k * 0.5 * (2 * 4 * h + 4 * 4 * F))  # permuted in/out + 4F per assignment
    with pytest.raises(ValueError, match="moe_kept"):
        estimate(cfg, tp=1, pp=1, ep=1, dp=1, zero=0, micro_batch=1, grad_accum=1, stage_layers=(4,), moe_kept=1.5)


def test_speed_estimates_anchor_on_dense_and_scale_by_the_mode_factor():
    rows = [{"preset": "debug", "mode": "dense", "mfu": 0.2, "peak_tflops": 1.0, "flops_per_token": 1e6,
             "tokens_per_s": 2e5},
            {"preset": "debug", "mode": "moe", "mfu": 0.1, "peak_tflops": 1.0, "flops_per_token": 2e6,
             "tokens_per_s": 4e4}]
    add_speed_estimates(rows)
    assert rows[0]["estimated_tokens_per_s"] == pytest.approx(2e5) and rows[0]["speed_ratio"] == pytest.approx(1)
    # 0.2 x 0.6 (the planner's MoE factor) x 1 TFLOP/s / 2 MFLOP per token
    assert rows[1]["estimated_tokens_per_s"] == pytest.approx(6e4)
    for row in rows:
        row.update(micro_batch=8, seq=128, vocab=2048, measured_peak_bytes=2**20, estimated_bytes=2**20,
                   memory_ratio=1.0)
    assert "| debug | moe | 8 x 128 | 2,048 | 1.0 MiB | 1.0 MiB | 1.000 | 40,000 | 60,000 | 1.50 |" in markdown(rows)
