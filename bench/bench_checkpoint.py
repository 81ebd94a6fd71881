"""Checkpoint save and load: Lumina's layout-free files against DeepSpeed's own save_checkpoint of
the same engine, time and size, as ratios measured in one run. Run:

    python bench/bench_checkpoint.py [--preset debug_200m] [--mode dense] [--rounds 3] [--json PATH]

(about 5 minutes at debug_200m on a 2-core machine; two checkpoints of 2.5 GB each on disk at once,
11 GB peak resident memory.)

One real Trainer (lumina/train/loop.py: DeepSpeed engine, gloo, 1 rank, fp32, ZeRO-0 unless
--zero-stage/--bf16 say otherwise) takes --iters training iterations so that Adam's moments
exist, then for --rounds rounds saves the same state twice, once with `lumina.train.checkpoint.save`
(what `Trainer.save` calls) and once with DeepSpeed's `engine.save_checkpoint(dir, tag=...)`,
each into its own fresh directory under --dir, and loads each back: `checkpoint.latest` +
`checkpoint.load` (what the Trainer's resume runs) against
`engine.load_checkpoint(dir, tag=..., load_lr_scheduler_states=False)`. Timed: the wall time of
each call alone. Size: the bytes of every file in each save directory (the checkpoint, its
`latest` file, and whatever else the format writes there). The two formats go first in turn, one
round Lumina first, the next DeepSpeed first, so neither always meets a warmer machine.

Before each load every parameter's master weight and Adam moments are overwritten (+1), and after
it their SHA-256 over all parameters must equal the one taken when the state was saved (and
Adam's step count must be restored), so each timed load is a working load. Timing is reported,
never asserted.

What the sides do differently (lumina/train/checkpoint.py): Lumina gathers each parameter's fp32
master weight and both moments whole (three tensors per parameter), streams them to a temporary
name with safetensors' save_file, fsyncs, takes the file's SHA-256 in chunks and renames; its load
checks each file's size and SHA-256 (in chunks) before reading it with safe_open.
DeepSpeed at ZeRO-0 torch.save's (pickle) the module state dict and the optimizer state dict into
one file, without fsync or checksum, and torch.load's it back. The column "DS fsync" is the time an
fsync of DeepSpeed's just-written files takes afterwards (not in DeepSpeed's time): the part of
Lumina's time that is crash safety rather than format. Loads read files the save just wrote, so
both come from the page cache when the machine has the memory.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Any


# -- the run's provenance ------------------------------------------------------------------------

def machine_extra() -> dict:
    """Beyond the provenance block's machine: what matters for files (memory, safetensors)."""
    import safetensors

    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "memory_bytes": memory, "safetensors": safetensors.__version__}


# -- measuring -----------------------------------------------------------------------------------

def dir_bytes(path: str) -> tuple[int, dict[str, int]]:
    """(total, {relative path: bytes}) of every file under path."""
    files = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            files[os.path.relpath(full, path)] = os.path.getsize(full)
    return sum(files.values()), dict(sorted(files.items()))


def fsync_tree(path: str) -> None:
    for dirpath, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def timed(fn) -> tuple[Any, float, float]:
    """(fn(), wall seconds, CPU seconds of this process) with the garbage collector run first."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def state_digest(trainer) -> str:
    """SHA-256 over every parameter's fp32 master weight and Adam moments, in model order, read
    through lumina.train.paramstate (the same accessors the checkpoint uses, any layout)."""
    from lumina.train import paramstate

    h = hashlib.sha256()
    for _, p in trainer.engine.module.named_parameters():
        for kind, value in paramstate.get(trainer.engine.optimizer, p).items():
            h.update(f"{p.init_name}/{kind}".encode())
            h.update(value.contiguous().numpy())
    return h.hexdigest()


def perturb(trainer) -> None:
    """Add 1 to every master weight and moment, and set Adam's step to 0: what a load must undo."""
    from lumina.train import paramstate

    opt = trainer.engine.optimizer
    for _, p in trainer.engine.module.named_parameters():
        paramstate.set_(opt, p, {k: v.add_(1.0) for k, v in paramstate.get(opt, p).items()})
    paramstate.set_adam_step(opt, 0)


def build_trainer(args: argparse.Namespace, run_dir: str):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    from lumina.pretrain import build_parser
    from lumina.train.loop import Trainer

    argv = ["--preset", args.preset, "--mode", args.mode, "--seq-length", str(args.seq_length),
            "--micro-batch-size", "1", "--global-batch-size", "1", "--zero-stage", str(args.zero_stage),
            "--train-iters", "1000000", "--eval-iters", "0", "--eval-interval", "1000000",
            "--save-interval", "1000000", "--log-interval", "1000000", "--no-progress",
            "--peak-tflops", "1",  # else the Trainer measures a CPU matmul peak (MFU only)
            "--run-dir", run_dir, "--save", os.path.join(run_dir, "unused")]
    if args.bf16:
        argv.append("--bf16")
    return Trainer(build_parser().parse_args(argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="debug_200m")
    parser.add_argument("--mode", default="dense", help="dense, moe, mod or hybrid")
    parser.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3))
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (fp32 master); default fp32")
    parser.add_argument("--seq-length", type=int, default=64,
                        help="tokens per sample of the training iterations (checkpoint size does not depend on it)")
    parser.add_argument("--iters", type=int, default=2, help="training iterations before the first save")
    parser.add_argument("--rounds", type=int, default=3, help="save + load of each format per round")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoint directories go")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    os.environ.setdefault("LUMINA_CACHE", os.path.join(tempfile.gettempdir(), "lumina-bench-cache"))
    from lumina.train import checkpoint, paramstate

    from lumina.util.provenance import command_line, describe, provenance, write_json

    command = command_line()
    record = provenance(command)
    report: dict[str, Any] = {"machine_extra": machine_extra(), "load_before": list(os.getloadavg()),
                              "args": vars(args)}
    m, v, extra = record["machine"], record["versions"], report["machine_extra"]
    print(f"command: {command}")
    print(f"code:    {describe(record)}")
    print(f"machine: {extra['platform']}, {m['cpu']}, {m['cores']} CPUs, {(extra['memory_bytes'] or 0) / 2**30:.0f} GiB, "
          f"torch {v['torch']} ({m['threads']} threads), deepspeed {v['deepspeed']}; "
          f"load average before {' '.join(f'{x:.2f}' for x in report['load_before'])}")
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="bench_checkpoint_", dir=args.dir)
    try:
        trainer = build_trainer(args, os.path.join(work, "run"))
        engine, opt = trainer.engine, trainer.engine.optimizer
        for _ in range(args.iters):
            trainer.train_iteration()
            trainer.iteration += 1
        params = sum(p.numel() for p in engine.module.parameters())
        adam_step = paramstate.adam_step(opt)
        assert adam_step == args.iters, f"Adam took {adam_step} steps in {args.iters} iterations"
        reference = state_digest(trainer)
        tag = checkpoint.tag_for(trainer.iteration)
        layout = trainer._layout_record()
        print(f"model:   {trainer.cfg.name}/{trainer.cfg.mode}, {params:,} parameters "
              f"({4 * params:,} fp32 bytes), ZeRO-{layout['zero']}, {'bf16' if layout['bf16'] else 'fp32'}, "
              f"{args.iters} iterations taken (Adam step {adam_step}); {args.rounds} rounds in {work}")

        def lumina_save(d):  # what the Trainer's own save runs, into directory d
            trainer.save_dir = d
            return trainer.save()

        def lumina_load(d):
            t, meta = checkpoint.latest(d)
            checkpoint.load(engine, engine.module, d, t, meta, layout)

        def ds_save(d):
            engine.save_checkpoint(d, tag=tag)

        def ds_load(d):
            path, _ = engine.load_checkpoint(d, tag=tag, load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"DeepSpeed found no checkpoint {tag} in {d}")

        sides = {"lumina": (lumina_save, lumina_load), "deepspeed": (ds_save, ds_load)}
        rounds = []
        for r in range(args.rounds):
            order = ("lumina", "deepspeed") if r % 2 == 0 else ("deepspeed", "lumina")
            row: dict[str, Any] = {"order": list(order)}
            dirs = {side: os.path.join(work, f"r{r}_{side}") for side in order}
            for side in order:
                _, wall, cpu = timed(lambda: sides[side][0](dirs[side]))
                row[side] = {"save_s": wall, "save_cpu_s": cpu}
                if side == "deepspeed":
                    _, row[side]["fsync_s"], _ = timed(lambda: fsync_tree(dirs[side]))
                row[side]["bytes"], row[side]["files"] = dir_bytes(dirs[side])
            for side in order:
                perturb(trainer)
                if state_digest(trainer) == reference:
                    raise RuntimeError("perturbing the state did not change its digest")
                _, wall, cpu = timed(lambda: sides[side][1](dirs[side]))
                row[side].update(load_s=wall, load_cpu_s=cpu)
                # The timing is of a working load: every weight and moment as saved, and Adam's step.
                if state_digest(trainer) != reference or paramstate.adam_step(opt) != adam_step:
                    raise RuntimeError(f"{side}'s load did not restore the saved weights and Adam state")
                row[side]["restored"] = True
            for d in dirs.values():
                shutil.rmtree(d)
            for key in ("save_s", "load_s", "bytes"):
                row[f"ratio_{key}"] = row["lumina"][key] / row["deepspeed"][key]
            rounds.append(row)
            print(f"round {r + 1}/{args.rounds} ({order[0]} first): save {row['lumina']['save_s']:.2f} / "
                  f"{row['deepspeed']['save_s']:.2f} s, load {row['lumina']['load_s']:.2f} / "
                  f"{row['deepspeed']['load_s']:.2f} s (Lumina / DeepSpeed)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for key in ("save_s", "load_s", "bytes"):
        ratios = [row[f"ratio_{key}"] for row in rounds]
        summary[key] = {"lumina_median": statistics.median(row["lumina"][key] for row in rounds),
                        "deepspeed_median": statistics.median(row["deepspeed"][key] for row in rounds),
                        "ratios": ratios, "ratio_median": statistics.median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios)}
    report.update({"preset": trainer.cfg.name, "mode": trainer.cfg.mode, "params": params,
                   "fp32_param_bytes": 4 * params, "adam_step": adam_step, "layout": layout,
                   "rounds": rounds, "summary": summary,
                   "lumina_bytes_per_fp32_param_byte": summary["bytes"]["lumina_median"] / (4 * params),
                   "deepspeed_bytes_per_fp32_param_byte": summary["bytes"]["deepspeed_median"] / (4 * params)})

    print(f"\n{'round':<7}{'first':<11}{'save L s':>9}{'save DS s':>10}{'DS fsync':>9}{'L/DS':>7}"
          f"{'load L s':>10}{'load DS s':>10}{'L/DS':>7}{'size L B':>16}{'size DS B':>16}{'L/DS':>7}")
    for r, row in enumerate(rounds):
        lu, ds = row["lumina"], row["deepspeed"]
        print(f"{r + 1:<7}{row['order'][0]:<11}{lu['save_s']:>9.2f}{ds['save_s']:>10.2f}{ds['fsync_s']:>9.2f}"
              f"{row['ratio_save_s']:>7.2f}{lu['load_s']:>10.2f}{ds['load_s']:>10.2f}{row['ratio_load_s']:>7.2f}"
              f"{lu['bytes']:>16,}{ds['bytes']:>16,}{row['ratio_bytes']:>7.3f}")
    print(f"\n{'Lumina / DeepSpeed':<20}{'median':>8}{'min':>8}{'max':>8}   (over {len(rounds)} rounds)")
    for key, label in (("save_s", "save time"), ("load_s", "load time"), ("bytes", "size on disk")):
        s = summary[key]
        print(f"{label:<20}{s['ratio_median']:>8.3f}{s['ratio_min']:>8.3f}{s['ratio_max']:>8.3f}")
    print(f"size / fp32 parameter bytes: Lumina {report['lumina_bytes_per_fp32_param_byte']:.4f}, "
          f"DeepSpeed {report['deepspeed_bytes_per_fp32_param_byte']:.4f}")
    for side in ("lumina", "deepspeed"):
        print(f"{side} files: " + ", ".join(f"{k} {v:,}" for k, v in rounds[-1][side]["files"].items()))
    report["load_after"] = list(os.getloadavg())
    report["elapsed_s"] = time.perf_counter() - start
    print(f"\n{report['elapsed_s']:.0f} s; load average after: {' '.join(f'{x:.2f}' for x in report['load_after'])}")
    if args.json:
        write_json(args.json, report, record)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
