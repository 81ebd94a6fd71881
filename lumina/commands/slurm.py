"""`lumina slurm`: write slurm/<preset>_<mode>.sh for all 32 combinations from their plans, or one
CPU variant for a test cluster (`--cpu-tasks N`, training flags after `--`)."""

from __future__ import annotations

import argparse
import os
import re

from lumina.util.argtypes import POSITIVE_INT


def slurm_time(text: str) -> str:
    """An argparse `type`: a SLURM time limit, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS."""
    if not re.fullmatch(r"(\d+-\d{1,2}(:\d{2}(:\d{2})?)?|\d+:\d{2}(:\d{2})?)", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SLURM time limit: use HH:MM:SS or D-HH:MM:SS")
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="slurm", help="directory to write into (default: slurm)")
    parser.add_argument("--preset", default=None, help="only this preset (with --mode)")
    parser.add_argument("--mode", default=None, help="only this mode (with --preset)")
    parser.add_argument("--cpu-tasks", type=POSITIVE_INT, default=None,
                        help="write a CPU variant with this many ranks on one node (srun launcher, no GPUs)")
    parser.add_argument("--python", default="python3", help="interpreter on the compute nodes")
    parser.add_argument("--time", type=slurm_time, default=None,
                        help="time limit, HH:MM:SS or D-HH:MM:SS (default: the plan's for GPU scripts, 00:30:00 for CPU)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="with --cpu-tasks: extra lumina/pretrain.py flags after `--`")


def planned_script(size: str, mode: str, python: str = "python3", time: str | None = None) -> str:
    """The GPU script of one combination: its plan's flags, DeepSpeed JSON and hardware."""
    from lumina.launch.slurm import SlurmSpec, render
    from lumina.plan.generate import SLURM_TIME, header, table_plan, train_iters

    plan = table_plan(size, mode)
    name = f"{size}_{mode}"
    spec = SlurmSpec(job_name=f"lumina-{size}-{mode}", nodes=plan.nodes, ntasks_per_node=plan.gpus_per_node,
                     gpus_per_node=plan.gpus_per_node, time=time or SLURM_TIME,
                     train_args=(*plan.train_flags(), "--ds_config", f"ds_configs/{name}.json",
                                 "--train-iters", str(train_iters(plan)), "--run-dir", f"runs/{name}"),
                     save_dir=f"checkpoints/{name}", log_dir="logs", launcher="deepspeed", python=python)
    return _with_header(render(spec), header(plan))


def cpu_script(size: str, mode: str, tasks: int, extra: list[str], python: str, time: str,
               save_dir: str | None = None, log_dir: str = "logs") -> str:
    """The CPU variant: `tasks` srun ranks on one node; checkpoints in checkpoints/<size>_<mode>_cpu
    unless `save_dir` says otherwise (the SLURM tests keep theirs in a temporary directory)."""
    from lumina.launch.slurm import SlurmSpec, render

    spec = SlurmSpec(job_name=f"lumina-{size}-{mode}-cpu", nodes=1, ntasks_per_node=tasks, gpus_per_node=0,
                     time=time, train_args=("--preset", size, "--mode", mode, *extra),
                     save_dir=save_dir or f"checkpoints/{size}_{mode}_cpu", log_dir=log_dir, launcher="srun",
                     python=python)
    return _with_header(render(spec), [f"CPU variant of {size}/{mode}: {tasks} ranks on one node, gloo"])


def _with_header(script: str, lines: list[str]) -> str:
    first, rest = script.split("\n", 1)
    return "\n".join([first, *(f"# {line}" for line in lines), rest])


def expected_files(python: str = "python3", time: str | None = None) -> dict[str, str]:
    from lumina.plan.generate import combos

    return {f"{size}_{mode}.sh": planned_script(size, mode, python, time) for size, mode in combos()}


def check_train_flags(size: str, mode: str, tasks: int, extra: list[str]) -> None:
    """The trainer's own pre-flight on the script's flags and world size (no process group), so a
    flag the trainer would refuse fails here, not on the cluster."""
    import contextlib
    import io

    from lumina.pretrain import build_parser
    from lumina.train.loop import plan_layout

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["--preset", size, "--mode", mode, *extra])
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise ValueError(f"the training flags after `--` are refused by the trainer: "
                         f"{lines[-1] if lines else ' '.join(extra)}") from None
    args.dry_run = tasks
    try:
        plan_layout(args)
    except ValueError as exc:
        raise ValueError(f"the training flags after `--` are refused by the trainer on {tasks} ranks: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from lumina.util.files import atomic_write_text, check_output_dir

    extra = [a for a in args.train_args if a != "--"]
    if (args.preset is None) != (args.mode is None):
        raise ValueError("--preset and --mode go together: give both for one script, or neither for all 32")
    if args.cpu_tasks is not None:
        if args.preset is None:
            raise ValueError("--cpu-tasks writes one CPU variant: give --preset and --mode too")
        check_train_flags(args.preset, args.mode, args.cpu_tasks, extra)
        files = {f"{args.preset}_{args.mode}_cpu.sh": cpu_script(args.preset, args.mode, args.cpu_tasks, extra,
                                                                  args.python, args.time or "00:30:00")}
    elif extra:
        raise ValueError(f"training flags {' '.join(extra)!r} only go with --cpu-tasks: planned scripts take "
                         "theirs from the plan")
    elif args.preset is not None:
        from lumina.presets import get_preset

        get_preset(args.preset, args.mode)  # a clear error for an unknown name
        files = {f"{args.preset}_{args.mode}.sh": planned_script(args.preset, args.mode, args.python, args.time)}
    else:
        files = expected_files(args.python, args.time)
    check_output_dir("--out", args.out)
    for name, text in files.items():
        path = os.path.join(args.out, name)
        atomic_write_text(path, text)
        os.chmod(path, 0o755)
    print(f"wrote {len(files)} SLURM script(s) to {args.out}" +
          ("; submit from the repository root, after `mkdir -p logs`" if args.cpu_tasks is None else ""))
    return 0
