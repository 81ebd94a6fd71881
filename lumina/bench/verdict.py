"""One rule for every verdict of the benchmark (and of the isoFLOP study): a claim holds only when
the one-sided 95% bound of its mean, on the side the claim needs, clears the threshold.

- A loss is "no worse" (yes) only when the upper bound of the mean paired difference is at most
  the tolerance; "worse" (no) only when the lower bound exceeds it.
- A speed goal is "met" only when the lower bound of the mean per-round ratio is at least the
  goal; "not met" only when the upper bound is below it.
- Otherwise, and always for a single sample (no scatter to judge by), "undecided".

The bounds are mean -/+ t * standard error, t the one-sided 95% quantile of Student's t at n - 1
degrees of freedom. The rule is symmetric: a mean exactly on the threshold with wide scatter is
undecided whichever side the claim is on. Pure functions of lists of floats; no torch here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# One-sided 95% quantiles of Student's t by degrees of freedom (standard tables, e.g. the NIST/
# SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2). Past 10 degrees of freedom the
# last one is kept: larger than the true quantile, so it widens the bounds and decides nothing
# that more degrees of freedom would not.
T95_ONE_SIDED = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812)
# Lumina's held-out loss counts as "no worse" than a baseline's when the mean paired difference is
# at most this beyond doubt (the rule above).
LOSS_TOLERANCE = 0.02


@dataclass(frozen=True)
class Bounds:
    """The mean of samples, its standard error and its one-sided 95% bounds (None for one sample)."""
    mean: float
    se: float | None
    lower: float | None
    upper: float | None


def bounds(samples: list[float]) -> Bounds:
    if not samples:
        raise ValueError("a verdict needs at least one sample")
    mean = sum(samples) / len(samples)
    if len(samples) == 1:
        return Bounds(mean, None, None, None)
    se = statistics.stdev(samples) / math.sqrt(len(samples))
    t = T95_ONE_SIDED[min(len(samples) - 1, len(T95_ONE_SIDED)) - 1]
    return Bounds(mean, se, mean - t * se, mean + t * se)


def judge(samples: list[float], threshold: float, want: str) -> tuple[Bounds, bool | None]:
    """Whether the mean of `samples` is on the `want` side of `threshold` ("at_most" or
    "at_least") beyond doubt: True when the bound towards the threshold clears it, False when the
    bound away from it does not reach it, None (undecided) otherwise."""
    if want not in ("at_most", "at_least"):
        raise ValueError(f"judge: want={want!r}; choose at_most or at_least")
    b = bounds(samples)
    if b.se is None:
        return b, None
    if want == "at_most":
        return b, True if b.upper <= threshold else False if b.lower > threshold else None
    return b, True if b.lower >= threshold else False if b.upper < threshold else None


def loss_verdict(diffs: list[float], tolerance: float = LOSS_TOLERANCE) -> tuple[float, float | None, str]:
    """The mean paired difference (Lumina minus baseline), its standard error (None for one seed)
    and the verdict: "yes" (no worse), "no" (worse) or "undecided", by the rule above."""
    b, ok = judge(diffs, tolerance, "at_most")
    return b.mean, b.se, {True: "yes", False: "no", None: "undecided"}[ok]


def speed_verdict(ratios: list[float], goal: float) -> tuple[Bounds, str]:
    """The per-round speed ratios' mean and bounds, and "met", "not met" or "undecided"."""
    b, ok = judge(ratios, goal, "at_least")
    return b, {True: "met", False: "not met", None: "undecided"}[ok]
