"""docs/benchmarks.md, rendered from the results file alone: every figure in it comes from there."""

from __future__ import annotations

import statistics

from lumina.bench.breakdown import PARTS, ceiling, kernel_seconds
from lumina.plan.claims import table as claims_table
from lumina.plan.hardware import GPUS
from lumina.util.provenance import describe

PLOTS = (("loss_vs_tokens.png", "Training loss against tokens"),
         ("loss_vs_time.png", "Training loss against wall time (train steps only)"),
         ("tokens_per_s.png", "Tokens/s per mode and system"),
         ("expert_load.png", "Expert load per layer (share of routed tokens, last logged iteration)"),
         ("mod_skip.png", "MoD skip rate per layer (last logged iteration)"))


def _f(value, fmt: str, none: str = "-") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else none


def _hours(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _cost(run: dict) -> str:
    """The table's price per GPU-hour times the run's time, on a GPU of the price table; CPU: none."""
    name = (run["hardware"] or "").lower()
    price = next((g.price_per_hour for key, g in GPUS.items() if key.split("-")[0] in name), None)
    return f"${price * run['train_seconds'] / 3600:.4f}" if price is not None and "cpu" not in name else "-"


def measured_table(runs: list[dict]) -> str:
    out = ["| size | mode | system | hardware | tokens | held-out loss | ppl | final train loss | time | peak memory "
           "| tokens/s | MFU | cost | skip rate | FLOPs reduction | expert utilisation | load balance |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        out.append(
            f"| {r['size']} | {r['mode']} | {r['system']} | {r['hardware']} | {r['tokens']:,} | {r['valid_loss']:.4f} "
            f"| {r['ppl']:.1f} "
            f"| {r['final_loss']:.4f} | {_hours(r['train_seconds'])} | {r['peak_mem_gb']:.2f} GiB "
            f"| {r['tokens_per_s']:,.0f} | {_f(r['mfu'], '{:.1%}')} | {_cost(r)} | {_f(r['skip_rate'], '{:.1%}')} "
            f"| {_f(r['flops_reduction'], '{:.1%}')} | {_f(r['expert_utilisation'], '{:.1%}')} "
            f"| {_f(r['load_balance'], '{:.3f}')} |")
    return "\n".join(out)


_VERDICT = {"yes": "yes", "no": "**no**", "undecided": "undecided", "met": "met", "not met": "**not met**"}


def _bounds(b: list[float] | None, fmt: str) -> str:
    return "" if b is None else f"; 95% bounds {fmt.format(b[0])} to {fmt.format(b[1])}"


def ratio_table(ratios: list[dict], tolerance: float) -> str:
    out = ["| size | mode | baseline | Lumina tokens/s | baseline tokens/s | ratio (full runs) "
           "| ratio side by side: median (range over rounds); mean, one-sided 95% bounds | goal | goal met "
           "| Lumina held-out loss | baseline held-out loss | difference | seeds "
           "| mean difference ± standard error (range); one-sided 95% bounds "
           f"| no worse (upper bound within {tolerance:g}) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in ratios:
        met = "-" if r["goal_verdict"] is None else _VERDICT[r["goal_verdict"]]
        diffs = r["loss_differences"]
        spread = (f" ± {r['loss_difference_se']:.4f} ({min(diffs):+.4f} to {max(diffs):+.4f})"
                  if len(diffs) > 1 else "")
        side = "-" if r["side_by_side_ratio"] is None else (
            f"{r['side_by_side_ratio']:.2f}x ({r['side_by_side_range'][0]:.2f} to {r['side_by_side_range'][1]:.2f}); "
            f"{r['side_by_side_mean']:.2f}x{_bounds(r['side_by_side_bounds'], '{:.2f}')}")
        out.append(f"| {r['size']} | {r['mode']} | {r['baseline']} | {r['lumina_tokens_per_s']:,.0f} "
                   f"| {r['baseline_tokens_per_s']:,.0f} | {r['ratio']:.2f}x | {side} | {_f(r['goal'], '{:.1f}x')} "
                   f"| {met} "
                   f"| {r['lumina_valid_loss']:.4f} | {r['baseline_valid_loss']:.4f} | {r['loss_difference']:+.4f} "
                   f"| {len(diffs)} | {r['loss_difference_mean']:+.4f}{spread}"
                   f"{_bounds(r['loss_difference_bounds'], '{:+.4f}')} "
                   f"| {_VERDICT[r['loss_verdict']]} |")
    return "\n".join(out)


def speed_table(speed: list[dict]) -> str:
    """Each trial's systems: median step time, tokens/s and every round's step time."""
    out = ["| size | mode | system | rounds x steps | median step | tokens/s | step time per round (ms) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in speed:
        rounds = ", ".join(f"{s * 1e3:.0f}" for s in t["step_seconds"])
        out.append(f"| {t['size']} | {t['mode']} | {t['system']} | {t['rounds']} x {t['steps']} "
                   f"| {_ms(statistics.median(t['step_seconds']))} ms | {t['tokens_per_s']:,.0f} "
                   f"| {rounds} |")
    return "\n".join(out)


def projected_table(rows: list[dict]) -> str:
    out = ["| size | mode | hardware | layout | params (active) | tokens/s | MFU (assumed) | memory / GPU "
           "| tokens (20 x active) | time | cost | FLOPs reduction |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['size']} | {r['mode']} | {r['gpus']} x {r['gpu']} (projected) | {r['layout']} "
                   f"| {r['params_total'] / 1e9:.2f}B ({r['params_active'] / 1e9:.2f}B) | {r['tokens_per_s']:,.0f} "
                   f"| {r['mfu']:.1%} | {r['memory_gib']:.1f} GiB | {r['tokens']:.3g} | {r['hours']:,.1f} h "
                   f"| ${r['cost_usd']:,.0f} | {r['flops_reduction']:.1%} |")
    return "\n".join(out)


def gpu_section(gpu: dict | None) -> list[str]:
    head = ["## GPU (`tests/gpu/bench.sh`)", "",
            "Dense, MoE, MoD and hybrid at b1 width with 4 of its 16 layers, BF16, micro-batch 8 x 2,048 "
            "tokens, on the embedded corpus (2,048-token vocabulary), through Lumina's trainer: tokens/s and "
            "MFU (against the datasheet BF16 peak) averaged over the logged windows after the first, which "
            "holds the warm-up; peak memory is CUDA max allocated. A few tens of iterations from a fresh "
            "model: the losses say the runs trained, not how well.", ""]
    if not gpu:
        return head + ["Not run yet. A run's `gpu_bench.json` goes in with "
                       "`lumina bench --add-gpu gpu_bench.json`.", ""]
    out = ["| mode | GPU | layers | iterations | tokens/s | MFU | peak memory | final loss |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['mode']} | {r['gpu']} | {r['layers']} | {_f(r['iters'], '{:d}', 'not recorded')} "
            f"| {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_mem_gb']:.1f} GiB | {r['final_loss']:.3f} |"
            for r in gpu["rows"]]
    p = gpu["provenance"]
    facts = [describe(p)] + [f"`{p['command']}`"] * bool(p["command"]) + [p["date"]] * bool(p["date"])
    if p["versions"]:
        facts.append(f"torch {p['versions']['torch']}")
    if p["note"] and p["commit"]:
        facts.append(p["note"])
    out += ["", f"Provenance: {'; '.join(facts)}. A GPU run is added when a GPU is available, so its code may "
            "be older than the CPU run's."]
    return head + out + [""]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def breakdown_section(results: dict) -> list[str]:
    """Where the step's time goes in Lumina's model (the plain loop) and in the HF model, and the
    ratio the shared kernels leave room for."""
    profiled = [r for r in results["runs"] if r.get("breakdown")]
    pairs = []
    for goal in (g for g in results["ratios"] if g["goal"] is not None):
        found = {r["system"]: r for r in profiled if r["size"] == goal["size"] and r["mode"] == goal["mode"]}
        if "plain" in found and goal["baseline"] in found:
            pairs.append((goal, found["plain"], found[goal["baseline"]]))
    if not pairs:
        return []
    out = ["## Where a step's time goes", "",
           "Milliseconds per training step, from torch's profiler over 4 steps after training (each op's "
           "self time; the profiler itself adds a little). Lumina's model is measured in the plain loop, "
           "which runs it without the DeepSpeed engine, so both rows are a model and a torch AdamW step. "
           "The first four parts are the kernels any implementation of this math runs: matrix multiplies, "
           "the attention kernel, the softmax cross-entropy over the vocabulary and the fused AdamW update. "
           "Other ops are the rest of torch's ops (element-wise, norms, RoPE, routing, copies); outside ops "
           "is the step's time between ops (Python, autograd, dispatch). On CPU Lumina's attention and loss "
           "are its own kernels (lumina._C), counted in those columns; the bound below is for an "
           "implementation on the baseline's kernels. The two rows come from two "
           "processes, and on this shared machine the same kernels' times differ by up to about 20% "
           "between processes: compare each row's shares, not one row's milliseconds with the other's.", "",
           "| size | mode | model | " + " | ".join(PARTS).replace("_", " ") + " | kernels | step |",
           "| --- | --- | --- | " + " | ".join("---" for _ in PARTS) + " | --- | --- |"]
    for goal, ours, base in pairs:
        for label, run in (("Lumina", ours), (base["system"], base)):
            b = run["breakdown"]
            out.append(f"| {goal['size']} | {goal['mode']} | {label} | " + " | ".join(_ms(b[p]) for p in PARTS)
                       + f" | {_ms(kernel_seconds(b))} | {_ms(sum(b.values()))} |")
    out.append("")
    # The bound uses the baseline's profile alone. Lumina's profile is not rescaled onto it: its
    # matmuls are not the baseline's work (at MoE, capacity and dispatch differ from Mixtral's
    # dropless loop), so their time ratio is no measure of the two processes' speed.
    for goal, _, base in pairs:
        b = base["breakdown"]
        line = (f"- {goal['size']} {goal['mode']} against {goal['baseline']}: the kernels take "
                f"{_ms(kernel_seconds(b))} ms of the baseline's {_ms(sum(b.values()))} ms step, so an implementation "
                f"on the same kernels can be at most {ceiling(b):.2f}x as fast")
        line += (f"; the {goal['goal']:.1f}x goal is beyond that bound." if ceiling(b) < goal["goal"]
                 else f", which leaves room for the {goal['goal']:.1f}x goal.")
        out.append(line)
    return out + [""]


def _pair(r: dict) -> str:
    return f"{r['size']} {r['mode']} vs {r['baseline']}"


def verdicts(results: dict) -> list[str]:
    """What the run shows, computed from it: goals met or not, losses, and what did not run."""
    out = []

    def listed(key: str, verdict: str, show) -> str:
        return ", ".join(f"{_pair(r)} {show(r)}" for r in results["ratios"] if r[key] == verdict)

    def speed(r: dict) -> str:
        b = r["side_by_side_bounds"]
        return (f"at {r['side_by_side_mean']:.2f}x ({b[0]:.2f} to {b[1]:.2f})" if b
                else f"at {r['ratio']:.2f}x from the full runs alone")

    goals = [r for r in results["ratios"] if r["goal"] is not None]
    if goals:
        met = sum(r["goal_verdict"] == "met" for r in goals)
        missed, undecided = listed("goal_verdict", "not met", speed), listed("goal_verdict", "undecided", speed)
        out.append(f"- Speed goals met (lower bound of the mean per-round ratio at least the goal): {met} of "
                   f"{len(goals)}" + (f"; not met (upper bound below the goal): {missed}" if missed else "")
                   + (f"; undecided (the goal within the bounds, or no side-by-side trial): {undecided}"
                      if undecided else "") + ".")

    def loss(r: dict) -> str:
        b = r["loss_difference_bounds"]
        return (f"by {r['loss_difference_mean']:+.4f} ({b[0]:+.4f} to {b[1]:+.4f})" if b
                else f"by {r['loss_difference_mean']:+.4f} at one seed")

    ok = sum(r["loss_verdict"] == "yes" for r in results["ratios"])
    worse, undecided = listed("loss_verdict", "no", loss), listed("loss_verdict", "undecided", loss)
    tol = results["loss_tolerance"]
    out.append(f"- Held-out loss no worse than the baseline's (upper bound of the mean paired difference at most "
               f"{tol:g}): {ok} of {len(results['ratios'])} comparisons"
               + (f"; worse (lower bound above {tol:g}): {worse}" if worse else "")
               + (f"; undecided ({tol:g} within the bounds, or one seed): {undecided}" if undecided else "") + ".")
    plain = [r for r in results["ratios"] if r["baseline"] == "plain"]
    if plain:
        noise = max(plain, key=lambda r: abs(r["loss_difference"]))
        out.append(f"- Noise: Lumina's trainer and the plain loop train the same model on the same batches and "
                   f"differ only in floating-point rounding (how the gradient norm is summed), yet their held-out "
                   f"losses differ by up to {abs(noise['loss_difference']):.4f} ({noise['size']} {noise['mode']}): "
                   "a loss difference smaller than that is not evidence either way.")
    all_modes = ("dense", "moe", "mod", "hybrid")
    skipped = [f"{s['preset']} {m}" for s in results["spec"]["sizes"] for m in all_modes if m not in s["modes"]]
    if skipped:
        out.append(f"- Not run: {', '.join(skipped)}. Their FP32 weights, gradients and Adam states leave too "
                   "little of this machine's memory for activations and the baselines "
                   "(`lumina.bench.spec.default_spec`).")
    return out


def _peak(peak: dict) -> str:
    how = (f"the median of {peak['repeats']} measurements at the start of the run, {peak['min']:.3f} to "
           f"{peak['max']:.3f}" if peak["repeats"] > 1 else "one measurement")
    return (f"MFU is against {peak['tflops']:.3f} TFLOP/s ({peak['source']}; {how}"
            + (f"; {peak['note']}" if peak["note"] else "") + "), the same peak for every row.")


def render(results: dict, plots_dir: str = "benchmarks") -> str:
    p, spec = results["provenance"], results["spec"]
    m, v = p["machine"], p["versions"]
    budgets = "; ".join(f"{s['preset']}: {s['tokens']:,} tokens ({s['tokens'] // (s['micro_batch'] * s['seq'])} "
                        f"iterations of {s['micro_batch']} x {s['seq']}), held-out loss over "
                        f"{s['eval_iters'] * s['micro_batch'] * s['seq']:,} tokens ({s['eval_iters']} batch"
                        f"{'es' if s['eval_iters'] > 1 else ''} of {s['micro_batch']} x {s['seq']}), "
                        f"modes {', '.join(s['modes'])}" for s in spec["sizes"])
    gpu = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `lumina bench` from the results file beside this page; do not edit. "
        "`lumina bench --report-only` re-renders it; tests/bench checks that it matches. -->",
        "",
        f"Measured on {p['date']} with `{p['command']}`, {describe(p)}: {m['cpu']}, {m['cores']} cores "
        f"({m['threads']} torch threads), {gpu}; Python {v['python']}, torch {v['torch']}, DeepSpeed "
        f"{v['deepspeed']}, transformers {v['transformers']}. {_peak(results['peak'])}",
        "",
        f"Token budgets{' (smoke run: too short to compare anything)' if spec['smoke'] else ''}: {budgets}. "
        f"Seed {spec['seed']}, peak learning rate {spec['lr']:g}, the embedded corpus; every system trains on the "
        "same batches in the same order.",
        "",
        "Does MoE, MoD or the hybrid beat dense at equal training compute? [The isoFLOP study](study.md) "
        "(generated by `lumina study isoflop`) trains every mode at equal FLOPs over several sizes and "
        "seeds, with a verdict per mode by the rule used on this page.",
        "",
        "## Measured",
        "",
        "The original table's columns, plus the hardware and MFU. The loss is the held-out loss after the "
        "budget; the final train loss is the mean of the last 10% of iterations. tokens/s counts iterations "
        "2 to N (the first warms up) and leaves out evaluation and checkpointing; time is the sum of all "
        "train steps. Peak memory is the process's peak resident set on CPU (Python and libraries included) "
        "or CUDA max allocated on a GPU. The benchmark table priced GPUs only, so a CPU run has no cost.",
        "",
        measured_table(results["runs"]),
        "",
        "## Lumina against the baselines",
        "",
        "Baselines train in the same run, on the same batches, schedule and optimizer settings (torch's "
        "fused AdamW everywhere, the Hugging Face Trainer's default too): Hugging "
        "Face `LlamaForCausalLM` (dense) and `MixtralForCausalLM` (moe) built at Lumina's shapes and init "
        "(normal, std 0.02, every matrix), and "
        "`plain`, Lumina's model in a bare PyTorch loop without the DeepSpeed engine (nanoGPT-style). "
        "Mixtral is dropless and has no router z-loss; Lumina's MoE drops tokens past a capacity factor "
        "of 1.25 and adds a z-loss. A ratio is Lumina's speed over the baseline's, measured twice: from "
        "the full runs' tokens/s (each system in its own process, one after another) and side by side "
        "(all systems in one process, their timed steps interleaved; next section). The goals are the "
        "benchmark issue's CPU goals. The difference is Lumina's held-out loss minus the baseline's at "
        f"seed {results['spec']['seed']}. Against the Hugging Face models both also train at the extra "
        "seeds of the size's `loss_seeds` (another init and data order; Lumina's model in the plain loop, "
        "whose loss matches the trainer's), because one seed's difference is mostly the draw at these "
        "budgets; the mean is over the paired differences of all seeds, with its standard error.",
        "",
        "Every verdict follows one rule (`lumina.bench.verdict`): a claim holds only when the one-sided "
        "95% bound of the mean (mean -/+ Student's t times the standard error) on the side the claim "
        "needs clears the threshold, and fails only when the other bound does not reach it; otherwise, "
        "and always for a single sample, it is undecided. \"No worse\" is yes when the upper bound of the "
        f"mean paired difference is at most +{results['loss_tolerance']:g} and no when the lower bound is "
        "above it. A speed goal is met when the lower bound of the mean per-round side-by-side ratio is "
        "at least the goal and not met when the upper bound is below it; without a side-by-side trial "
        "(one ratio) it is undecided.",
        "",
        ratio_table(results["ratios"], results["loss_tolerance"]),
        "",
        *verdicts(results),
        "",
        "### Speed, side by side",
        "",
        "The full runs above run one after another, and this machine's own speed drifts between "
        "processes by more than the distance to the goals. So `lumina bench` also builds Lumina's trainer "
        "and the baselines in one process and times them in turns (`lumina.bench.speed`): after warm-up "
        "steps, each round times a few steps of every system, in an order that rotates from round to "
        "round. Lumina here is `Trainer.train_iteration` (DeepSpeed engine forward, backward, gradient "
        "norm and step; the per-iteration logging of the full run is left out). A round's ratio compares "
        "Lumina's steps with the baseline's in that round; the median over rounds is the side-by-side "
        "ratio, and the range shows how far single rounds scatter.",
        "",
        speed_table(results["speed"]),
        "",
        *breakdown_section(results),
        "## Projected (not measured)",
        "",
        "The sizes that do not train on this machine, from `lumina plan` on the benchmark table's "
        "hardware: the smallest count of A100-80GB (1 to 48, then doubling) where a layout fits, and "
        "the fastest layout there. tokens/s is the planner's projection at the MFU shown, which is an "
        "assumption with its sources in `lumina/plan/hardware.py` (times pipeline bubble and recompute "
        "efficiency), not a measurement. Loss, skip rate, expert utilisation and load balance need a run, "
        "so they are not projected.",
        "",
        projected_table(results["projected"]),
        "",
        *gpu_section(results.get("gpu_bench")),
        "## The original table's claims beside physics",
        "",
        "The figures of the benchmark table that inspired Lumina, as far as this repository holds them "
        "(`lumina/plan/claims.py` lists each with its source), with the verdict of `lumina plan --check-claims`.",
        "",
        claims_table(results["claims"]),
        "",
        "## Plots",
        "",
    ]
    for name, title in PLOTS:
        lines += [f"### {title}", "", f"![{title}]({plots_dir}/{name})", ""]
    return "\n".join(lines)
