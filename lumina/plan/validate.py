"""Check the planner's memory and speed model against Lumina's own training step, measured.

Each case trains a few iterations of the real `Trainer` (DeepSpeed engine, ZeRO-0, one process,
FP32 on CPU) in a child process, so one case's allocations cannot leak into the next:

- **Memory.** torch's profiler records every allocation and free of the CPU allocator (the CPU
  counterpart of `torch.cuda.max_memory_allocated`). The measured peak is the highest live total
  while training, minus what was live before the first iteration other than the weights (the
  token arrays of the data loader, RoPE tables): weights + gradients + optimizer states +
  activations + temporaries. The estimate is `lumina.plan.memory.estimate` for the same model
  and batch at FP32 without the CUDA context, buckets (one process has none) or the
  fragmentation margin, which the allocator's bytes do not include. For MoE it is given the
  fraction of assignments the experts ran in the iteration that reached the peak (the routing
  statistics of that iteration): early routing drops a varying share, which the planner, at
  balanced routing, does not (see `lumina.plan.memory`).
- **Speed.** Unprofiled iterations after the profiled ones (at least 3 and 5 s) give tokens/s
  from the median iteration. The planner projects
  tokens/s as MFU x peak / FLOPs-per-token, with a dense MFU and a factor per mode
  (`lumina.plan.hardware`). On CPU there is no published dense MFU to take, so the dense case is
  the anchor: its measured MFU (against the measured CPU matmul peak) times the mode factor is the
  estimate for the other modes. What this checks is the mode factors.

    python -m lumina.plan.validate [--cases debug:dense,debug:moe,...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

MODES = ("dense", "moe", "mod", "hybrid")
_MARK = "lumina.validate.train"


@dataclass(frozen=True)
class Case:
    preset: str
    mode: str
    micro_batch: int
    seq: int

    @property
    def label(self) -> str:
        return f"{self.preset}:{self.mode}"


def default_cases() -> list[Case]:
    """debug at its own batch; debug_200m at one short sequence (CPU time). debug_200m moe and
    hybrid hold 1.2B parameters: 18 GiB of FP32 weights, gradients and Adam states before any
    activation, too close to this 24 GiB VM's memory to run, so they are measured at debug only."""
    return ([Case("debug", m, 8, 128) for m in MODES]
            + [Case("debug_200m", m, 1, 256) for m in ("dense", "mod")])


def _trainer_args(case: Case, run_dir: str, iters: int) -> argparse.Namespace:
    from lumina.pretrain import build_parser

    return build_parser().parse_args([
        "--preset", case.preset, "--mode", case.mode, "--seq-length", str(case.seq),
        "--micro-batch-size", str(case.micro_batch), "--global-batch-size", str(case.micro_batch),
        "--train-iters", str(iters), "--run-dir", run_dir, "--no-progress", "--lr-warmup-iters", "1"])


def measure(case: Case, profiled_iters: int = 2, timed_iters: int = 3, min_seconds: float = 5.0) -> dict:
    """Train `case` in this process: the measured peak and tokens/s, and the planner's estimate."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from lumina.accounting import account
    from lumina.plan.memory import estimate
    from lumina.train.loop import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        args = _trainer_args(case, run_dir, 10**6)
        kept: list[float] = []  # per profiled iteration: the share of MoE assignments the experts ran
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer = Trainer(args)
            weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
            with record_function(_MARK):
                for i in range(profiled_iters):
                    with record_function(f"{_MARK}.{i}"):
                        trainer.train_iteration()
                    trainer.iteration += 1
                    kept.append(moe_kept_fraction(trainer.step.routing_stats()))
        times: list[float] = []
        while len(times) < timed_iters or sum(times) < min_seconds:
            start = time.perf_counter()
            trainer.train_iteration()
            trainer.iteration += 1
            times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]  # the median iteration: robust to a stray slow one
        cfg, seq = trainer.cfg, trainer.seq
        peak_tflops, peak_source = trainer.peak, trainer.peak_source
    recorded = list(prof.profiler.kineto_results.events())
    t0 = next(e.start_ns() for e in recorded if e.name() == _MARK)
    events = sorted((e for e in recorded if e.name() == "[memory]"), key=lambda e: e.start_ns())
    before = sum(e.nbytes() for e in events if e.start_ns() < t0)
    live = peak = before
    peak_ns = t0
    for e in events:
        if e.start_ns() >= t0:
            live += e.nbytes()
            if live > peak:
                peak, peak_ns = live, e.start_ns()
    measured = peak - (before - weights)
    at_peak = next(i for i in range(profiled_iters)
                   if any(e.name() == f"{_MARK}.{i}" and e.start_ns() <= peak_ns <= e.end_ns() for e in recorded))
    # Whether the loss ran lumina._C's CPU kernel (it keeps less than torch's), as the profile shows.
    loss_kernel = any(e.name() == "lumina::cross_entropy_forward" for e in recorded)
    est = estimate(cfg, tp=1, pp=1, ep=1, dp=1, zero=0, micro_batch=case.micro_batch, grad_accum=1,
                   stage_layers=(cfg.num_layers,), seq=seq, precision="fp32", context_bytes=0,
                   loss_kernel=loss_kernel, moe_kept=kept[at_peak])
    estimated = est.total - est.fragmentation
    acc = account(cfg)
    tokens_per_s = case.micro_batch * seq / seconds
    return {**asdict(case), "vocab": cfg.vocab_size, "params": acc.params_total,
            "measured_peak_bytes": measured, "estimated_bytes": estimated,
            "estimate": {k: v for k, v in est.to_dict().items()
                         if k in ("weights", "gradients", "optimizer", "activations")},
            "memory_ratio": estimated / measured, "loss_kernel": loss_kernel, "moe_kept": kept[at_peak],
            "tokens_per_s": tokens_per_s, "flops_per_token": acc.flops_per_token,
            "mfu": acc.flops_per_token * tokens_per_s / (peak_tflops * 1e12), "peak_tflops": peak_tflops,
            "peak_source": peak_source}


def moe_kept_fraction(stats: dict) -> float:
    """The share of all MoE layers' top-k assignments that reached an expert (1.0 without MoE):
    kept over kept / (1 - dropped), layer by layer, so layers that see fewer tokens (MoD-routed)
    weigh less."""
    kept = [sum(t) for t in stats.get("moe_tokens_per_expert", [])]
    if not kept:
        return 1.0
    made = [k / (1.0 - d) for k, d in zip(kept, stats["moe_dropped_fraction_per_layer"]) if d < 1.0]
    return sum(kept) / sum(made) if made else 0.0


def run_case(case: Case, timeout: float = 1800.0) -> dict:
    """`measure` in a child process (a fresh allocator and process group per case)."""
    cmd = [sys.executable, "-m", "lumina.plan.validate", "--one",
           f"{case.preset}:{case.mode}:{case.micro_batch}:{case.seq}"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {case.label} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_speed_estimates(rows: list[dict]) -> list[dict]:
    """Estimated tokens/s per mode from the dense row of the same preset (see the module doc)."""
    from lumina.plan.hardware import mfu_for

    dense = {r["preset"]: r for r in rows if r["mode"] == "dense"}
    for r in rows:
        anchor = dense.get(r["preset"])
        if anchor is None:
            r["estimated_tokens_per_s"] = None
            continue
        # The planner's mode factor: its assumed MFU for the mode over dense (any GPU family).
        factor = round(mfu_for("a100-80gb", r["mode"]).mfu / mfu_for("a100-80gb", "dense").mfu, 4)
        r["mode_factor"] = factor
        # MFU x peak / FLOPs with the dense MFU: the peak cancels (each child measures its own, noisily)
        r["estimated_tokens_per_s"] = anchor["tokens_per_s"] * anchor["flops_per_token"] * factor / r["flops_per_token"]
        r["speed_ratio"] = r["estimated_tokens_per_s"] / r["tokens_per_s"]
    return rows


def markdown(rows: list[dict]) -> str:
    mib = 2 ** 20
    lines = ["| preset | mode | batch x seq | vocab | measured peak | estimate | estimate / measured "
             "| tokens/s measured | tokens/s estimated | estimated / measured |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        est = r.get("estimated_tokens_per_s")
        speed = (f"{est:,.0f} | {r['speed_ratio']:.2f}" + (" (anchor)" if r["mode"] == "dense" else "")
                 if est is not None else "- | -")
        lines.append(f"| {r['preset']} | {r['mode']} | {r['micro_batch']} x {r['seq']} | {r['vocab']:,} "
                     f"| {r['measured_peak_bytes'] / mib:,.1f} MiB | {r['estimated_bytes'] / mib:,.1f} MiB "
                     f"| {r['memory_ratio']:.3f} | {r['tokens_per_s']:,.0f} | {speed} |")
    return "\n".join(lines)


def _parse_case(text: str) -> Case:
    parts = text.split(":")
    if len(parts) != 4:
        raise SystemExit(f"--one {text!r}: expected preset:mode:micro_batch:seq")
    return Case(parts[0], parts[1], int(parts[2]), int(parts[3]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumina.plan.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None,
                        help="comma-separated preset:mode[:micro_batch:seq] (default: debug x 4 modes, "
                             "debug_200m dense and mod)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one case
    args = parser.parse_args(argv)
    if args.one:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(measure(_parse_case(args.one))))
        return 0
    cases = default_cases()
    if args.cases:
        cases = []
        for item in args.cases.split(","):
            parts = item.split(":")
            base = next((c for c in default_cases() if c.preset == parts[0]), Case(parts[0], "", 1, 128))
            cases.append(_parse_case(item) if len(parts) == 4 else
                         Case(parts[0], parts[1], base.micro_batch, base.seq))
    rows = add_speed_estimates([run_case(c) for c in cases])
    print(markdown(rows))
    if args.out:  # under its provenance (commit, machine, versions, command), written atomically
        from lumina.util.provenance import write_json

        write_json(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
