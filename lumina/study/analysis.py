"""From the runs to the study's findings: points with standard errors, the isoFLOP frontier and a
verdict per variant against dense at equal FLOPs.

- A point is one (data set, budget, variant, size): the mean held-out loss over seeds and its
  standard error, stdev / sqrt(n).
- The frontier at a budget is, per variant, the size with the lowest mean held-out loss.
- The verdict compares a variant's frontier size with dense's at the same budget, paired by seed
  (the seed sets data order as well as init): "better" when a one-sided 95% t-interval of the mean
  paired difference lies below 0, "worse" when it lies above 0, otherwise "undecided" (issue 20's
  rule). The t-quantiles and the bounds are the benchmark's (`lumina.bench.verdict.bounds`).

Picking each variant's best size from noisy means favours the variant with more sizes near its
optimum a little (the minimum of noisy means is biased low); every variant here has the same sizes.
"""

from __future__ import annotations

from lumina.bench.verdict import bounds


def compare(diffs: list[float]) -> tuple[float, float | None, str]:
    """Mean and standard error of variant-minus-dense losses, and better / worse / undecided: the
    benchmark's one-sided 95% bounds (lumina.bench.verdict) against 0."""
    b = bounds(list(diffs))
    verdict = ("undecided" if b.se is None else "worse" if b.lower > 0 else "better" if b.upper < 0
               else "undecided")
    return b.mean, b.se, verdict


def mean_se(values: list[float]) -> tuple[float, float | None]:
    b = bounds(list(values))
    return b.mean, b.se


def _key(r: dict) -> tuple:
    return r["dataset"], r["budget"], r["variant"], r["size"]


def points(runs: list[dict]) -> list[dict]:
    """One row per (data set, budget, variant, size), in the runs' order."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (dataset, budget, variant, size), rs in groups.items():
        mean, se = mean_se([r["valid_loss"] for r in rs])
        out.append({"dataset": dataset, "budget": budget, "variant": variant, "size": size,
                    "params_non_embedding": rs[0]["params_non_embedding"], "flops": rs[0]["flops"],
                    "tokens": rs[0]["tokens"], "steps": rs[0]["steps"], "seeds": len(rs),
                    "valid_loss_mean": mean, "valid_loss_se": se,
                    "losses": {str(r["seed"]): r["valid_loss"] for r in rs}})
    return out


def frontier(pts: list[dict]) -> list[dict]:
    """Per (data set, budget, variant): the size with the lowest mean held-out loss."""
    best: dict[tuple, dict] = {}
    for p in pts:
        k = (p["dataset"], p["budget"], p["variant"])
        if k not in best or p["valid_loss_mean"] < best[k]["valid_loss_mean"]:
            best[k] = p
    return list(best.values())


def verdicts(front: list[dict]) -> list[dict]:
    """Each non-dense variant's frontier against dense's at the same data set and budget."""
    dense = {(p["dataset"], p["budget"]): p for p in front if p["variant"] == "dense"}
    out = []
    for p in front:
        ref = dense.get((p["dataset"], p["budget"]))
        if p["variant"] == "dense" or ref is None:
            continue
        seeds = [s for s in p["losses"] if s in ref["losses"]]
        diffs = [p["losses"][s] - ref["losses"][s] for s in seeds]
        mean, se, verdict = compare(diffs)
        out.append({"dataset": p["dataset"], "budget": p["budget"], "variant": p["variant"],
                    "size": p["size"], "dense_size": ref["size"], "flops": p["flops"], "dense_flops": ref["flops"],
                    "seeds": len(diffs), "difference_mean": mean, "difference_se": se, "verdict": verdict})
    return out


def analyse(runs: list[dict]) -> dict:
    pts = points(runs)
    front = frontier(pts)
    return {"points": pts, "frontier": front, "verdicts": verdicts(front)}
