"""The figures of docs/study.md, drawn from the results file alone (matplotlib, Agg, through the
benchmark's helpers)."""

from __future__ import annotations

import os

from lumina.bench.plots import _pyplot, _save

FIGURES = ("study_loss_vs_flops.png", "study_frontier.png")


def _errorbar(ax, rows: list[dict], label: str, **style) -> None:
    ax.errorbar([r["flops"] for r in rows], [r["valid_loss_mean"] for r in rows],
                yerr=[r["valid_loss_se"] or 0.0 for r in rows], label=label, capsize=2, marker="o",
                markersize=3, linewidth=1.0, **style)


def _label(ax, title: str) -> None:
    ax.set_xscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=7)


def draw(results: dict, out_dir: str) -> list[str]:
    """Held-out loss against training FLOPs, one panel per data set and mode (a line per size);
    and the isoFLOP frontier, one panel per data set (a line per variant). Error bars: one
    standard error over seeds."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    datasets = [d["name"] for d in results["datasets"]]
    modes = list(dict.fromkeys(p["variant"] for p in results["points"]))
    main = [m for m in modes if m in ("dense", "moe", "mod", "hybrid")]
    sizes = [s["name"] for s in results["sizes"]]

    fig, axes = plt.subplots(len(datasets), len(main), figsize=(3.6 * len(main), 3.2 * len(datasets)),
                             squeeze=False, sharey="row")
    for row, dataset in zip(axes, datasets):
        for ax, mode in zip(row, main):
            for size in sizes:
                rows = [p for p in results["points"] if p["dataset"] == dataset and p["variant"] == mode
                        and p["size"] == size]
                if rows:
                    _errorbar(ax, rows, size)
            _label(ax, f"{dataset}: {mode}")
    _save(fig, os.path.join(out_dir, FIGURES[0]))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for variant in modes:
            rows = sorted((p for p in results["frontier"] if p["dataset"] == dataset and p["variant"] == variant),
                          key=lambda p: p["budget"])
            if rows:
                _errorbar(ax, rows, variant, linestyle="-" if variant in main else ":")
        _label(ax, f"{dataset}: isoFLOP frontier (best size per budget)")
    _save(fig, os.path.join(out_dir, FIGURES[1]))
    plt.close(fig)
    return [os.path.join(out_dir, name) for name in FIGURES]
