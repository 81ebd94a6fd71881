"""The PNG figures of docs/benchmarks.md, drawn from the results file alone (matplotlib, Agg)."""

from __future__ import annotations

import os


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("lumina bench draws its plots with matplotlib, which is not installed: "
                         "pip install 'matplotlib>=3.7' (or the package's [dev] extra)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: dict) -> str:
    return f"{run['mode']} ({run['system']})"


def _save(fig, path: str) -> None:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def draw(results: dict, out_dir: str) -> list[str]:
    """Write the five figures into out_dir; their paths."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    runs = results["runs"]
    sizes = list(dict.fromkeys(r["size"] for r in runs))
    written = []

    for name, x_key, x_label in (("loss_vs_tokens.png", "tokens", "training tokens"),
                                 ("loss_vs_time.png", "seconds", "wall time of train steps (s)")):
        fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.2), squeeze=False)
        for ax, size in zip(axes[0], sizes):
            for r in (r for r in runs if r["size"] == size):
                ax.plot([p[x_key] for p in r["curve"]], [p["loss"] for p in r["curve"]], label=_label(r),
                        linestyle="-" if r["system"] == "lumina" else "--", linewidth=1.2)
            ax.set_title(size)
            ax.set_xlabel(x_label)
            ax.set_ylabel("training loss")
            ax.legend(fontsize=7)
        _save(fig, os.path.join(out_dir, name))
        plt.close(fig)
        written.append(os.path.join(out_dir, name))

    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        subset = [r for r in runs if r["size"] == size]
        ax.bar(range(len(subset)), [r["tokens_per_s"] for r in subset],
               color=["tab:blue" if r["system"] == "lumina" else "tab:gray" for r in subset])
        ax.set_xticks(range(len(subset)), [_label(r) for r in subset], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{size}: tokens/s (Lumina blue, baselines grey)")
        ax.set_ylabel("tokens/s")
    _save(fig, os.path.join(out_dir, "tokens_per_s.png"))
    plt.close(fig)
    written.append(os.path.join(out_dir, "tokens_per_s.png"))

    moe = [r for r in runs if r["system"] == "lumina" and r["expert_load"]]
    fig, axes = plt.subplots(1, max(1, len(moe)), figsize=(5.5 * max(1, len(moe)), 3.8), squeeze=False,
                             layout="constrained")
    for ax, r in zip(axes[0], moe):
        load = [[n / max(sum(layer), 1) for n in layer] for layer in r["expert_load"]]
        image = ax.imshow(load, aspect="auto", cmap="viridis")
        ax.set_title(f"{r['size']} {r['mode']}", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer")
        ax.set_xticks(range(len(load[0])))
        ax.set_yticks(range(len(load)))
        fig.colorbar(image, ax=ax, label="share of routed tokens")
    if not moe:
        axes[0][0].text(0.5, 0.5, "no MoE run in these results", ha="center", va="center")
    _save(fig, os.path.join(out_dir, "expert_load.png"))
    plt.close(fig)
    written.append(os.path.join(out_dir, "expert_load.png"))

    mod = [r for r in runs if r["system"] == "lumina" and r["mod_skip_per_layer"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(mod))
    for i, r in enumerate(mod):
        layers = range(len(r["mod_skip_per_layer"]))
        ax.bar([x + i * width for x in layers], r["mod_skip_per_layer"], width=width, label=f"{r['size']} {r['mode']}")
    if mod:
        ax.set_xticks(range(max(len(r["mod_skip_per_layer"]) for r in mod)))
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of tokens skipped")
    if mod:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no MoD run in these results", ha="center", va="center", transform=ax.transAxes)
    _save(fig, os.path.join(out_dir, "mod_skip.png"))
    plt.close(fig)
    written.append(os.path.join(out_dir, "mod_skip.png"))
    return written
