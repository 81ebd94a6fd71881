"""SLURM batch scripts for lumina/pretrain.py, rendered from a typed `SlurmSpec`.

`lumina slurm` writes one per preset and mode (`slurm/<preset>_<mode>.sh`). `render` is pure (no
timestamps, no host look-ups), so a test can compare checked-in scripts with what it writes, and
every interpolated value goes through `shlex.quote`, so no name, path or flag can inject shell.

A rendered script holds only what differs per job: the header comments, the #SBATCH directives,
a check for the repository root, the training flags as a bash array, and an `exec` of the
committed launcher `lumina/launch/slurm_job.sh` with the launcher, interpreter, checkpoint
directory and directive counts as its options. Everything every job shares lives in that one file
(a fix lands once, not in 32 generated copies); it is hand-written, not rendered.

- The repository root is `$LUMINA_ROOT` if set, else `$SLURM_SUBMIT_DIR` (sbatch runs a copy of the
  script from its spool directory, so `$0` says nothing about the repository): submit from the
  repository root. The script finds the launcher there, or exits 2 saying so; the launcher, which
  is not copied, works from the repository that holds it.
- `exec` keeps the batch shell's process: `--signal=B:USR1` signals that process, and the
  launcher's USR1 trap is set in it.
- Logs to `<log_dir>/%x-%j.log` (job name, job id), one file per job, appended to across
  requeues. sbatch opens it before the script starts and the job fails, with no log, if
  `<log_dir>` does not exist, so the caller creates it; the launcher creates the checkpoint dir.

What the launcher does:

- Sets MASTER_ADDR to the allocation's first host and MASTER_PORT to 20000 + job id % 20000 (one
  port per job, the same after a requeue); values already in the environment are kept.
- Passes `--save <save_dir>`, and `--load <save_dir>` when it holds a `latest` file, so a
  requeued job resumes from its last checkpoint.
- Time limit and preemption: `--signal=B:USR1@<signal_seconds>` sends SIGUSR1 to the batch shell
  only. Its trap forwards SIGUSR1 to the training step (`scancel --signal=USR1 <job>`, which
  reaches every process of the job's steps but not the batch shell), waits while the ranks save a
  checkpoint and exit (lumina/train/loop.py), then `scontrol requeue`s the job. A SIGTERM
  (`scancel`, preemption) reaches the ranks from SLURM itself; the shell just waits for them.

Launchers (`SlurmSpec.launcher`, the launcher's `--launcher`). Every rank is an srun task or a
child of one, so SLURM's signals reach the ranks and its accounting sees them:

- "deepspeed": `python -m deepspeed.launcher.runner --launcher slurm --force_multi` (the
  `deepspeed` command, run by the spec's interpreter) with a hostfile from
  `scontrol show hostnames`; DeepSpeed builds one `srun` over all ranks and adds its exports
  (NCCL_*, PYTHONPATH, ~/.deepspeed_env). Not the default pdsh launcher, which needs passwordless
  ssh between compute nodes and starts ranks outside the job's steps; not DeepSpeed's
  single-node local launch either (its ranks would be children of the batch shell, where a
  signal forwarded to the job's steps never arrives).
- "torchrun": one torchrun per node (`srun --ntasks-per-node=1`) with a c10d rendezvous at
  MASTER_ADDR:MASTER_PORT. torchrun starts with SIGUSR1 ignored, so the forwarded signal leaves
  the agent running while its workers (whose handler replaces the inherited "ignore") save.
- "srun": `srun python -m lumina.pretrain`, one task per rank, no launcher process in between;
  lumina/train/distributed.py maps SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID to RANK /
  WORLD_SIZE / LOCAL_RANK. The simplest path, and the one for CPU jobs.

Overriding a #SBATCH line without editing the script: sbatch reads these environment variables
(slurm 22.05, `man sbatch`, INPUT ENVIRONMENT VARIABLES; the same names are in the sbatch
binary), which override the script's directives; sbatch's command-line options override both.

    --job-name        SBATCH_JOB_NAME
    --time            SBATCH_TIMELIMIT
    --gpus-per-node   SBATCH_GPUS_PER_NODE
    --partition       SBATCH_PARTITION
    --account         SBATCH_ACCOUNT
    --output          SBATCH_OUTPUT
    --open-mode       SBATCH_OPEN_MODE
    --requeue         SBATCH_REQUEUE (SBATCH_NO_REQUEUE=1 turns requeueing off)
    --signal          SBATCH_SIGNAL

`--nodes` and `--ntasks-per-node` have no input variable (SLURM_NNODES and SLURM_NTASKS_PER_NODE
are sbatch's output, set for the job): use `sbatch --nodes=N --ntasks-per-node=M <script>`. The
launcher reads the node and rank counts from the job's environment (the directives' values only
as a fallback), so such overrides carry through (the parallel sizes in the training flags must
still divide the new world size).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

LAUNCHERS = ("deepspeed", "torchrun", "srun")
LAUNCHER_SCRIPT = "lumina/launch/slurm_job.sh"
"""What every rendered script execs, from the repository root: committed, not rendered."""

# (directive, sbatch input environment variable): the header comment of every script.
ENV_OVERRIDES = (
    ("--job-name", "SBATCH_JOB_NAME"),
    ("--time", "SBATCH_TIMELIMIT"),
    ("--gpus-per-node", "SBATCH_GPUS_PER_NODE"),
    ("--partition", "SBATCH_PARTITION"),
    ("--account", "SBATCH_ACCOUNT"),
    ("--output", "SBATCH_OUTPUT"),
    ("--open-mode", "SBATCH_OPEN_MODE"),
    ("--requeue", "SBATCH_REQUEUE (SBATCH_NO_REQUEUE=1 turns it off)"),
    ("--signal", "SBATCH_SIGNAL"),
)

_TIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<hours>\d+):(?P<minutes>\d\d):(?P<seconds>\d\d)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_SIGNAL_SECONDS = 0xFFFF  # sbatch --signal keeps the time in 16 bits and refuses more


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"SlurmSpec.{field_name}={value!r} is invalid: {allowed}")


def _check_text(field_name: str, value: Any) -> None:
    """A non-empty string on one line: newlines would end an #SBATCH directive early."""
    if not isinstance(value, str) or not value:
        _fail(field_name, value, "must be a non-empty string")
    if _CONTROL.search(value):
        _fail(field_name, value, "must not contain control characters (newline, tab, ...)")


def _check_count(field_name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(field_name, value, f"must be an integer >= {minimum}")


def time_limit_seconds(time: str) -> int:
    """Seconds in a SLURM time limit written "HH:MM:SS" or "D-HH:MM:SS"; ValueError otherwise."""
    m = _TIME.fullmatch(time)
    if m is None:
        raise ValueError(f"{time!r} is not HH:MM:SS or D-HH:MM:SS")
    days, hours = int(m["days"] or 0), int(m["hours"])
    minutes, seconds = int(m["minutes"]), int(m["seconds"])
    if minutes > 59 or seconds > 59 or (m["days"] is not None and hours > 23):
        raise ValueError(f"{time!r} has minutes or seconds above 59 (or hours above 23 after a day count)")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass(frozen=True)
class SlurmSpec:
    """One SLURM batch job running lumina/pretrain.py."""

    job_name: str
    """Job name, e.g. "lumina-b300-moe"; part of the log file name (`%x`), so no '/'."""
    nodes: int
    """Nodes to allocate (>= 1)."""
    ntasks_per_node: int
    """Ranks per node: the GPUs per node on GPU nodes, any count >= 1 on CPU."""
    gpus_per_node: int
    """GPUs per node; 0 for a CPU job (no --gpus-per-node line)."""
    time: str
    """Time limit, "HH:MM:SS" or "D-HH:MM:SS"; longer than `signal_seconds`."""
    train_args: tuple[str, ...]
    """Flags for lumina/pretrain.py, e.g. ("--preset", "b300", "--mode", "moe", ...); without
    --save / --load, which the script adds."""
    save_dir: str
    """Checkpoint directory (relative paths: from the repository root): --save always, --load
    when it holds a `latest` file."""
    log_dir: str = "logs"
    """Directory of the job logs, <log_dir>/%x-%j.log; must exist when sbatch runs."""
    launcher: str = "deepspeed"
    """"deepspeed" (DeepSpeed's runner over srun), "torchrun" (srun + one torchrun per node) or
    "srun" (one srun task per rank; the CPU path)."""
    partition: str | None = None
    """Partition (--partition), or None for the cluster's default."""
    account: str | None = None
    """Account to charge (--account), or None for the user's default."""
    python: str = "python3"
    """Interpreter that runs the launcher and the ranks on the compute nodes."""
    signal_seconds: int = 120
    """SIGUSR1 this many seconds before the time limit: the ranks checkpoint, the job requeues.
    SLURM may send it up to 60 s earlier than asked."""

    def __post_init__(self) -> None:
        _check_text("job_name", self.job_name)
        if "/" in self.job_name:
            _fail("job_name", self.job_name, "must not contain '/': the log file is <log_dir>/<job name>-<job id>.log")
        _check_count("nodes", self.nodes, 1)
        _check_count("ntasks_per_node", self.ntasks_per_node, 1)
        _check_count("gpus_per_node", self.gpus_per_node, 0)
        if self.gpus_per_node > 0 and self.ntasks_per_node != self.gpus_per_node:
            _fail("ntasks_per_node", self.ntasks_per_node,
                  f"must equal gpus_per_node={self.gpus_per_node} on GPU nodes (one rank per GPU)")
        if not isinstance(self.time, str):
            _fail("time", self.time, 'must be a string "HH:MM:SS" or "D-HH:MM:SS"')
        try:
            limit, problem = time_limit_seconds(self.time), None
        except ValueError as exc:
            limit, problem = 0, str(exc)
        if problem is not None:
            _fail("time", self.time, f'must be "HH:MM:SS" or "D-HH:MM:SS" ({problem})')
        if not isinstance(self.train_args, tuple) or not all(isinstance(a, str) for a in self.train_args):
            _fail("train_args", self.train_args, "must be a tuple of strings")
        for arg in self.train_args:
            if _CONTROL.search(arg):
                _fail("train_args", self.train_args,
                      f"{arg!r} contains a control character (newline, tab, ...)")
            if arg in ("--save", "--load") or arg.startswith(("--save=", "--load=")):
                _fail("train_args", self.train_args,
                      f"must not contain {arg.split('=')[0]}: the script passes --save save_dir, "
                      "and --load save_dir when it holds a checkpoint; set save_dir instead")
        _check_text("save_dir", self.save_dir)
        _check_text("log_dir", self.log_dir)
        if self.launcher not in LAUNCHERS:
            _fail("launcher", self.launcher, f"must be one of {', '.join(map(repr, LAUNCHERS))}")
        for name in ("partition", "account"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name))
        _check_text("python", self.python)
        _check_count("signal_seconds", self.signal_seconds, 1)
        if self.signal_seconds > _MAX_SIGNAL_SECONDS:
            _fail("signal_seconds", self.signal_seconds, f"must be at most {_MAX_SIGNAL_SECONDS} (sbatch --signal)")
        if self.signal_seconds >= limit:
            _fail("signal_seconds", self.signal_seconds,
                  f"must be shorter than the time limit {self.time!r} ({limit} s), or the "
                  "checkpoint signal comes at the start")


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


def _directive(option: str, value: str | int | None = None) -> str:
    """An #SBATCH line. sbatch's own parser takes shell-style quotes but reads a backslash as an
    escape even inside single quotes, so backslashes are doubled on top of shlex.quote."""
    if value is None:
        return f"#SBATCH {option}"
    return f"#SBATCH {option}={_q(value).replace(chr(92), chr(92) * 2)}"


def _directives(spec: SlurmSpec) -> list[str]:
    lines = [
        _directive("--job-name", spec.job_name),
        _directive("--nodes", spec.nodes),
        _directive("--ntasks-per-node", spec.ntasks_per_node),
    ]
    if spec.gpus_per_node:
        lines.append(_directive("--gpus-per-node", spec.gpus_per_node))
    lines.append(_directive("--time", spec.time))
    if spec.partition is not None:
        lines.append(_directive("--partition", spec.partition))
    if spec.account is not None:
        lines.append(_directive("--account", spec.account))
    # `%` starts a file-name pattern (%j, %x): a literal one in the directory is written `%%`.
    lines += [
        _directive("--output", spec.log_dir.replace("%", "%%") + "/%x-%j.log"),
        _directive("--open-mode", "append"),
        _directive("--requeue"),
        _directive("--signal", f"B:USR1@{spec.signal_seconds}"),
    ]
    return lines


def _header(spec: SlurmSpec) -> list[str]:
    width = max(len(d) for d, _ in ENV_OVERRIDES)
    return [
        "#!/bin/bash",
        "# Generated by `lumina slurm` (lumina/launch/slurm.py). Do not edit: change the generator's",
        "# inputs and regenerate. It sets this job's values and execs the committed launcher",
        f"# {LAUNCHER_SCRIPT}, which does what every job shares (rendezvous, resume, the",
        "# launchers, signals, requeue).",
        "#",
        "# Submit from the repository root (or set LUMINA_ROOT to it):  sbatch <this script>",
        f"# Logs go to {_q(spec.log_dir)}/<job name>-<job id>.log. Create that directory first: sbatch",
        "# opens the log before the script starts, and a missing directory fails the job silently.",
        "#",
        "# Override a directive below without editing: sbatch's input environment variables",
        "# (slurm 22.05) beat the #SBATCH lines, and its command-line options beat both.",
        *(f"#   {d.ljust(width)}  {env}" for d, env in ENV_OVERRIDES),
        "#   --nodes and --ntasks-per-node have no environment variable:",
        "#     sbatch --nodes=N --ntasks-per-node=M <this script>",
        "# MASTER_ADDR and MASTER_PORT are kept when set in the submitting environment.",
        "# SLURM may send the checkpoint signal (--signal) up to 60 s earlier than asked.",
    ]


def _array(name: str, args: tuple[str, ...]) -> list[str]:
    """A bash array, one flag per line with its value beside it."""
    if not args:
        return [f"{name}=()"]
    rows: list[list[str]] = []
    for arg in args:
        if rows and rows[-1][0].startswith("-") and len(rows[-1]) == 1 and not arg.startswith("-"):
            rows[-1].append(arg)
        else:
            rows.append([arg])
    return [f"{name}=(", *("  " + " ".join(_q(a) for a in row) for row in rows), ")"]


def _launch(spec: SlurmSpec) -> list[str]:
    """The root check, the training flags, and the exec of the committed launcher."""
    return [
        "set -euo pipefail",
        "",
        "# sbatch runs a copy of this script from its spool directory: the repository, and the launcher",
        "# in it, are where the job was submitted from.",
        "ROOT=${LUMINA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}",
        f"if [[ ! -f $ROOT/{LAUNCHER_SCRIPT} ]]; then",
        f'  echo "lumina-slurm: $ROOT has no {LAUNCHER_SCRIPT}: submit from the repository root or set'
        ' LUMINA_ROOT" >&2',
        "  exit 2",
        "fi",
        "",
        *_array("TRAIN_ARGS", spec.train_args),
        "# exec, not a child: --signal=B:USR1 signals this process, where the launcher sets its trap.",
        f'exec bash "$ROOT/{LAUNCHER_SCRIPT}" --launcher {_q(spec.launcher)} --python {_q(spec.python)} \\',
        f"  --save {_q(spec.save_dir)} --nodes {_q(spec.nodes)} --ntasks-per-node {_q(spec.ntasks_per_node)}"
        ' -- "${TRAIN_ARGS[@]}"',
    ]


def render(spec: SlurmSpec) -> str:
    """The whole batch script for `spec`: deterministic text ending in a newline."""
    return "\n".join(_header(spec) + _directives(spec) + _launch(spec)) + "\n"
