"""How close a bf16 run must stay to its fp32 twin: the rule shared by every bf16 test.

bf16 rounds weights and activations to an 8-bit mantissa but keeps fp32 master weights and Adam
state, so its loss curve follows fp32's up to round-off that does not build into a drift. The
distance is the mean absolute loss difference over BF16_ITERS iterations at the FAST schedule
(lr 3e-3, 2 warm-up iterations, cosine to 3e-4), where the loss falls ~1.2 and a change in step
size shows: fp32 at 0.8x the learning rate is 0.077 away (hybrid), every bf16 layout at most
0.0067. The tolerance sits between them (tests/parallel/test_bf16.py shows both sides).

At iteration 1 both runs take the gradient at the same weights, so the grad norms must agree to
bf16 round-off (0.2% measured): a gradient counted twice or missed (a stage, the experts) moves it
by far more, sqrt(2) for a whole group counted twice.
"""

from __future__ import annotations

import pytest

from tests.train.runs import metrics, train_losses

BF16_ITERS = 20
BF16_RUN = ("--train-iters", str(BF16_ITERS), "--global-batch-size", "8", "--micro-batch-size", "2")
"""The run every bf16 test and its fp32 reference share (with --mode and the layout's flags)."""
BF16_LOSS_TOLERANCE = 0.02
"""Mean |loss_bf16 - loss_fp32| over the BF16_ITERS iterations."""
BF16_GRAD_NORM_REL = 0.01
"""Relative difference of the iteration-1 grad norm."""


def loss_distance(losses: dict[int, float], reference: dict[int, float]) -> float:
    assert sorted(losses) == sorted(reference) == list(range(1, BF16_ITERS + 1))
    return sum(abs(losses[i] - reference[i]) for i in reference) / len(reference)


def assert_bf16_tracks_fp32(run: str, fp32_run: str) -> None:
    """`run` (bf16) against `fp32_run`, which trained the same data at the same micro-batch size."""
    distance = loss_distance(train_losses(run), train_losses(fp32_run))
    assert distance < BF16_LOSS_TOLERANCE, f"bf16 mean |loss difference| {distance:.4f}"
    norms = [next(r["grad_norm"] for r in metrics(d) if r["split"] == "train") for d in (run, fp32_run)]
    assert norms[0] == pytest.approx(norms[1], rel=BF16_GRAD_NORM_REL), f"iteration-1 grad norm {norms}"
