"""Run every benchmark case, each in a fresh process, and assemble the results file.

Lumina runs through `python -m lumina.pretrain` (the trainer users run, DeepSpeed engine, one
process), logging every iteration; baselines through `python -m lumina.bench.baselines`. All get
the same flags for the model, batch, schedule, seed and data, so they see the same tokens. Then
`python -m lumina.bench.speed` times Lumina's trainer and the baselines side by side in one
process, interleaved, for the speed ratios the goals are judged on (that module says why).

tokens/s leaves out the first iteration (allocator and kernel warm-up) and the evaluation and
checkpoint at the end: it is train tokens over the summed time of iterations 2..N, for every
system alike. Peak memory is each process's peak resident set (CPU) or CUDA max allocated (GPU).
MFU is against one peak per run: measured PEAK_REPEATS times here before anything trains, its
median given to every trainer process (--peak-tflops) and used for every row, its range recorded;
a single short matmul loop per process scattered by 2x between the processes of one run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile

from lumina.bench.results import SCHEMA_VERSION
from lumina.bench.spec import BenchSpec, SizeRun
from lumina.bench.speed import round_ratios
from lumina.bench.verdict import LOSS_TOLERANCE, Bounds, bounds, loss_verdict, speed_verdict

# Goals from the benchmark issue: Lumina's tokens/s over the baseline's, on CPU.
GOALS = {"hf-llama": 1.2, "hf-mixtral": 1.5}
# How often the MFU peak is measured at the start of a run (the median is used, the range shown).
PEAK_REPEATS = 5
# The modes transformers has a model of (Llama, Mixtral).
HF_MODES = ("dense", "moe")


def trainer_args(spec: BenchSpec, size: SizeRun, mode: str, run_dir: str | None = None,
                 peak_tflops: float | None = None) -> list[str]:
    args = ["--preset", size.preset, "--mode", mode, "--seq-length", str(size.seq),
            "--micro-batch-size", str(size.micro_batch), "--global-batch-size", str(size.micro_batch),
            "--train-iters", str(size.iters), "--lr", str(spec.lr), "--min-lr", str(spec.lr / 10),
            "--lr-warmup-iters", str(max(1, size.iters // 10)), "--seed", str(spec.seed),
            "--eval-interval", str(size.iters), "--eval-iters", str(size.eval_iters),
            "--save-interval", str(10 ** 9), "--log-interval", "1", "--no-progress"]
    if run_dir is not None:
        args += ["--run-dir", run_dir, "--save", os.path.join(run_dir, "checkpoints")]
    if peak_tflops is not None:  # the bench's one measurement, not each process's own
        args += ["--peak-tflops", repr(peak_tflops)]
    return args


def _run(cmd: list[str], what: str, timeout: float) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"lumina bench: {what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def run_lumina(spec: BenchSpec, size: SizeRun, mode: str, timeout: float, peak: float | None = None) -> dict:
    from lumina.accounting import account
    from lumina.pretrain import build_parser
    from lumina.train.loop import plan_layout

    with tempfile.TemporaryDirectory(prefix="lumina-bench-") as run_dir:
        _run([sys.executable, "-m", "lumina.pretrain", *trainer_args(spec, size, mode, run_dir, peak)],
             f"lumina {size.preset}/{mode}", timeout)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    train = [r for r in records if r.get("split") == "train" and not r.get("skipped")]
    valid = [r for r in records if r.get("split") == "valid"]
    tokens_per_iter = size.micro_batch * size.seq
    curve, elapsed = [], 0.0
    for r in train:
        seconds = tokens_per_iter / r["tokens_per_s"]
        elapsed += seconds
        curve.append({"iteration": r["iteration"], "tokens": r["iteration"] * tokens_per_iter,
                      "loss": r["loss"], "seconds": elapsed, "step_seconds": seconds})
    last = train[-1]
    _, cfg, _, _, _ = plan_layout(build_parser().parse_args(trainer_args(spec, size, mode)))
    acc = account(cfg)
    return {"system": "lumina", "params_total": acc.params_total, "params_active": acc.params_active,
            "flops_per_token": acc.flops_per_token, "curve": curve,
            "valid_loss": valid[-1]["loss"] if valid else None, "peak_mem_gb": summary["peak_mem_gb"],
            "expert_load": last.get("moe_tokens_per_expert"),
            "mod_skip_per_layer": last.get("mod_skip_fraction_per_layer"),
            "skip_rate": summary.get("mod_skip_fraction"), "flops_reduction": summary.get("flops_reduction"),
            "expert_utilisation": summary.get("moe_utilisation"), "load_balance": summary.get("moe_load_balance")}


def run_baseline(spec: BenchSpec, size: SizeRun, mode: str, kind: str, timeout: float,
                 breakdown: bool = False) -> dict:
    job = {"kind": kind, "trainer_args": trainer_args(spec, size, mode), "breakdown": breakdown}
    out = _run([sys.executable, "-m", "lumina.bench.baselines", json.dumps(job)],
               f"baseline {kind} {size.preset}/{mode}", timeout)
    return json.loads(out.strip().splitlines()[-1])


def run_speed(spec: BenchSpec, size: SizeRun, mode: str, kinds: list[str], timeout: float,
              peak: float | None = None) -> list[dict]:
    """The side-by-side speed trial of Lumina's trainer against `kinds`: one row per system."""
    job = {"trainer_args": trainer_args(spec, size, mode, peak_tflops=peak), "kinds": kinds, "rounds": size.speed_rounds,
           "steps": size.speed_steps, "warmup": size.speed_warmup}
    out = _run([sys.executable, "-m", "lumina.bench.speed", json.dumps(job)],
               f"speed trial {size.preset}/{mode}", timeout)
    trial = json.loads(out.strip().splitlines()[-1])
    return [{"size": size.preset, "mode": mode, "system": name, "rounds": trial["rounds"], "steps": trial["steps"],
             "warmup": trial["warmup"], "step_seconds": row["step_seconds"], "tokens_per_s": row["tokens_per_s"],
             "ratio": row.get("ratio"), "ratio_min": row.get("ratio_min"), "ratio_max": row.get("ratio_max")}
            for name, row in trial["systems"].items()]


def finish(run: dict, size: SizeRun, mode: str, peak_tflops: float | None, hardware: str) -> dict:
    """Derived columns: tokens/s (iterations 2..N), MFU, final and held-out loss, perplexity."""
    import math

    curve = run["curve"]
    timed = curve[1:]
    tokens = len(timed) * size.micro_batch * size.seq
    seconds = sum(p["step_seconds"] for p in timed)
    tail = curve[-max(1, len(curve) // 10):]
    run.update({
        "size": size.preset, "mode": mode, "tokens": curve[-1]["tokens"], "iters": len(curve),
        "train_seconds": curve[-1]["seconds"], "tokens_per_s": tokens / seconds,
        "final_loss": sum(p["loss"] for p in tail) / len(tail),
        "ppl": math.exp(min(run["valid_loss"], 50.0)) if run.get("valid_loss") is not None else None,
        "hardware": hardware,
    })
    run["mfu"] = (run["flops_per_token"] * run["tokens_per_s"] / (peak_tflops * 1e12)) if peak_tflops else None
    for key in ("expert_load", "mod_skip_per_layer", "skip_rate", "flops_reduction", "expert_utilisation",
                "load_balance", "breakdown"):
        run.setdefault(key, None)
    return run


def seed_runs(spec: BenchSpec, size: SizeRun, mode: str, timeout: float, log=print) -> list[dict]:
    """Held-out losses of Lumina's model (plain loop) and the HF model at each extra seed."""
    out = []
    for seed in size.loss_seeds:
        alone = dataclasses.replace(size, loss_seeds=())
        at_seed = dataclasses.replace(spec, seed=seed, sizes=(alone,))
        for kind in ("plain", "hf"):
            log(f"lumina bench: {size.preset}/{mode}: {kind} at seed {seed} (held-out loss only)")
            run = run_baseline(at_seed, alone, mode, kind, timeout)
            out.append({"size": size.preset, "mode": mode, "system": run["system"], "seed": seed,
                        "valid_loss": run["valid_loss"]})
    return out


def _paired_differences(ours: dict, base: dict, seeds: list[dict]) -> list[float]:
    """Lumina minus baseline held-out loss: at the main seed (the trainer), then at each extra
    seed (Lumina's model in the plain loop against the baseline at the same seed)."""
    diffs = [ours["valid_loss"] - base["valid_loss"]]
    if base["system"] == "plain":  # the extra seeds pair Lumina's model with the HF one only
        return diffs
    mine = {s["seed"]: s["valid_loss"] for s in seeds if s["size"] == base["size"] and s["mode"] == base["mode"]
            and s["system"] == "plain"}
    theirs = {s["seed"]: s["valid_loss"] for s in seeds if s["size"] == base["size"] and s["mode"] == base["mode"]
              and s["system"] == base["system"]}
    return diffs + [mine[s] - theirs[s] for s in sorted(mine) if s in theirs]


def ratios(runs: list[dict], seeds: list[dict] | None = None, speed: list[dict] | None = None) -> list[dict]:
    """Lumina against each baseline of the same size and mode. A speed goal is judged on the
    side-by-side trial's per-round ratios (undecided without a trial: the full runs give one
    ratio); the loss on the paired differences over the seeds the baseline ran at (one, unless
    loss_seeds add more). Both by the one rule of lumina.bench.verdict."""
    out = []
    for base in (r for r in runs if r["system"] != "lumina"):
        ours = next((r for r in runs if r["system"] == "lumina" and r["size"] == base["size"]
                     and r["mode"] == base["mode"]), None)
        if ours is None:
            continue
        goal = GOALS.get(base["system"])

        def trial_of(system: str) -> dict | None:
            return next((t for t in speed or [] if t["size"] == base["size"] and t["mode"] == base["mode"]
                         and t["system"] == system), None)

        trial, mine = trial_of(base["system"]), trial_of("lumina")
        per_round = round_ratios(mine["step_seconds"], trial["step_seconds"]) if trial and mine else None
        ratio = ours["tokens_per_s"] / base["tokens_per_s"]
        speed_bounds = bounds(per_round) if per_round else None
        # Without a trial the full runs give one ratio: no scatter to judge it by, so undecided.
        goal_verdict = speed_verdict(per_round or [ratio], goal)[1] if goal else None
        diffs = _paired_differences(ours, base, seeds or [])
        mean, se, verdict = loss_verdict(diffs)
        loss_bounds = bounds(diffs)
        out.append({"size": base["size"], "mode": base["mode"], "baseline": base["system"],
                    "lumina_tokens_per_s": ours["tokens_per_s"], "baseline_tokens_per_s": base["tokens_per_s"],
                    "ratio": ratio, "side_by_side_ratio": trial["ratio"] if trial else None,
                    "side_by_side_range": [trial["ratio_min"], trial["ratio_max"]] if trial else None,
                    "side_by_side_mean": speed_bounds.mean if speed_bounds else None,
                    "side_by_side_bounds": _pair_or_none(speed_bounds) if speed_bounds else None,
                    "goal": goal, "goal_verdict": goal_verdict,
                    "lumina_valid_loss": ours["valid_loss"], "baseline_valid_loss": base["valid_loss"],
                    "loss_difference": diffs[0], "loss_differences": diffs, "loss_difference_mean": mean,
                    "loss_difference_se": se, "loss_difference_bounds": _pair_or_none(loss_bounds),
                    "loss_verdict": verdict})
    return out


def _pair_or_none(b: Bounds) -> list[float] | None:
    return None if b.se is None else [b.lower, b.upper]


def projections(sizes: tuple[str, ...]) -> list[dict]:
    """Planner rows for the sizes not measured: the table's hardware (smallest A100-80GB fit)."""
    from lumina.accounting import account
    from lumina.plan.generate import MODES, table_plan

    rows = []
    for size in sizes:
        for mode in MODES:
            plan = table_plan(size, mode)
            acc = account(plan.cfg)
            rows.append({"size": size, "mode": mode, "gpu": plan.gpu.name, "gpus": plan.gpus,
                         "layout": f"TP{plan.tp} PP{plan.pp} EP{plan.ep} DP{plan.dp} ZeRO-{plan.zero}",
                         "tokens_per_s": plan.tokens_per_s, "mfu": plan.mfu.mfu * plan.efficiency,
                         "memory_gib": plan.memory.total / 2 ** 30, "tokens": plan.tokens, "hours": plan.hours,
                         "cost_usd": plan.cost, "flops_reduction": 1.0 - acc.mod_flops_ratio,
                         "params_total": acc.params_total, "params_active": acc.params_active})
    return rows


def hardware_label(m: dict) -> str:
    return m["gpu"] or f"CPU: {m['cpu']}, {m['cores']} cores"


def measure_peak(device, repeats: int = PEAK_REPEATS) -> dict:
    """The MFU peak for every row of a run: lumina.train.hardware's measurement (a datasheet
    figure on a known GPU), taken `repeats` times in this process before anything trains; the
    median is used and the range says how much one measurement can be trusted."""
    from lumina.train.hardware import peak_tflops

    values, source = [], None
    for _ in range(repeats):
        value, source = peak_tflops(device, None)
        values.append(value)
    return {"tflops": statistics.median(values), "min": min(values), "max": max(values), "repeats": repeats,
            "source": source, "note": None}


def run(spec: BenchSpec, command: str, timeout: float = 3600.0, log=print) -> dict:
    from lumina.plan.claims import CLAIMS, check
    from lumina.util.provenance import provenance

    import torch

    record = provenance(command)
    hardware = hardware_label(record["machine"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measured = measure_peak(device)
    peak = measured["tflops"]
    log(f"lumina bench: MFU peak {peak:.3f} TFLOP/s, median of {measured['repeats']} "
        f"({measured['min']:.3f} to {measured['max']:.3f}; {measured['source']})")
    runs: list[dict] = []
    seeds: list[dict] = []
    speed: list[dict] = []
    for size in spec.sizes:
        for mode in size.modes:
            log(f"lumina bench: {size.preset}/{mode}: Lumina, {size.iters} iterations of {size.micro_batch} x {size.seq}")
            runs.append(finish(run_lumina(spec, size, mode, timeout, peak), size, mode, peak, hardware))
            # Where a goal compares Lumina's model (run by `plain`) with Hugging Face's: profile
            # where the step's time goes, and repeat both at the extra loss seeds.
            against_hf = mode in HF_MODES and "hf" in size.baselines
            for kind in size.baselines:
                if kind == "hf" and mode not in HF_MODES:
                    continue  # transformers has no MoD model
                log(f"lumina bench: {size.preset}/{mode}: baseline {kind}")
                runs.append(finish(run_baseline(spec, size, mode, kind, timeout, breakdown=against_hf),
                                   size, mode, peak, hardware))
            if against_hf and "plain" in size.baselines:
                seeds += seed_runs(spec, size, mode, timeout, log)
            kinds = [k for k in size.baselines if k != "hf" or mode in HF_MODES]
            if kinds:
                log(f"lumina bench: {size.preset}/{mode}: speed trial against {', '.join(kinds)}, "
                    f"{size.speed_rounds} rounds of {size.speed_steps} step(s) each")
                speed += run_speed(spec, size, mode, kinds, timeout, peak)
    return {
        "schema": SCHEMA_VERSION,
        "provenance": record,
        "peak": measured,
        "spec": spec.to_dict(),
        "runs": runs,
        "seed_runs": seeds,
        "speed": speed,
        "ratios": ratios(runs, seeds, speed),
        "loss_tolerance": LOSS_TOLERANCE,
        "projected": projections(spec.projected_sizes),
        "claims": [check(c) for c in CLAIMS],
    }
