"""A run directory's pre-flight and its lock: checked before any process group or tensor exists.

- Every output path (`--run-dir`, `--tensorboard-dir`, `--save`) must be a directory Lumina can
  create and write; `--save` must also have room for one checkpoint (12 bytes per parameter: the
  fp32 master weight and Adam's two moments, see lumina/train/checkpoint.py). Discovering either at
  the first save would lose the work done until then.
- One trainer per run directory: rank 0 holds `<run dir>/lumina.lock` (host, pid, start time) for
  the run's life and touches it every iteration. A second trainer refuses, naming the holder. A
  lock is stale, and taken over with a warning, when its holder ran on this host and its pid is
  gone (or is this process), when it belongs to an earlier run of the same SLURM job (a requeued
  job lands on other nodes), or when it has not been touched for STALE_AFTER_S (a holder on
  another host that died).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import socket
import time

from lumina.util.files import check_output_dir  # noqa: F401  (the trainer's paths use it too)

LOCK = "lumina.lock"
STALE_AFTER_S = 3600.0
CHECKPOINT_BYTES_PER_PARAM = 12
_MARGIN = 1.1  # headers, the index, RNG files; and the filesystem's own rounding


def check_room(flag: str, path: str, params: int) -> None:
    need = int(params * CHECKPOINT_BYTES_PER_PARAM * _MARGIN)
    free = shutil.disk_usage(path).free
    if free < need:
        raise ValueError(f"{flag}={path!r} has {free / 2**30:.2f} GiB free, and one checkpoint of {params:,} "
                         f"parameters needs about {need / 2**30:.2f} GiB (12 bytes per parameter); "
                         "free space or point --save elsewhere")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


class RunLock:
    """The lock of one run directory (rank 0 only)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK)
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock or raise ValueError naming its holder. Returns a warning when a stale
        lock was taken over."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        warning = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                stale = self._stale(holder)
                if stale is None:
                    raise ValueError(
                        f"{os.path.dirname(self.path)!r} is in use by another trainer (host "
                        f"{holder.get('host')!r}, pid {holder.get('pid')}, lock {self.path}); give this run "
                        "its own --run-dir, or delete the lock if that trainer is gone") from None
                warning = f"lumina: taking over a stale lock {self.path} ({stale})"
                os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return warning
        raise ValueError(f"could not take the lock {self.path}: another trainer took it meanwhile")

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> str | None:
        """Why the lock is stale, or None while its holder may be alive."""
        try:
            age = time.time() - os.path.getmtime(self.path)
        except OSError:
            return "it vanished"
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid():
                return "left by an earlier run in this process"
            if not _alive(pid):
                return f"pid {pid} on this host has exited"
        job = os.environ.get("SLURM_JOB_ID")
        if job is not None and holder.get("slurm_job_id") == job:
            return f"left by an earlier run of SLURM job {job} (requeued)"
        if age > STALE_AFTER_S:
            return f"untouched for {age / 60:.0f} min, holder {holder.get('host')!r} pid {pid}"
        if not holder:
            return "unreadable" if age > 60 else None
        return None

    def touch(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except OSError:
                pass


def available_memory(device) -> tuple[float, str]:
    """(bytes this rank may use, what that figure is): free CUDA memory, or on CPU the node's
    available RAM shared by the ranks of this node."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"{torch.cuda.get_device_name(device)} has {free / 2**30:.1f} GiB free"
    available = None
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return float("inf"), "available RAM unknown"
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    return available / ranks, (f"this machine has {available / 2**30:.1f} GiB of RAM available"
                               + (f", {available / ranks / 2**30:.1f} GiB for each of its {ranks} ranks" if ranks > 1 else ""))


def check_memory(cfg, layout, micro_batch: int, grad_accum: int, zero: int, bf16: bool, recompute: bool,
                 device, gpus: int) -> None:
    """Refuse a run whose planner estimate per rank exceeds what the device has, before anything is
    allocated (the planner's estimate is validated within 10% of measured peaks,
    lumina/plan/validate.py). `--skip-memory-check` bypasses it."""
    from lumina.plan.memory import CONTEXT_BYTES, estimate

    est = estimate(cfg, tp=layout.tp, pp=layout.pp, ep=layout.ep, dp=layout.dp, zero=zero, micro_batch=micro_batch,
                   grad_accum=grad_accum, stage_layers=layout.stage_num_layers, seq=cfg.seq_length,
                   recompute="full" if recompute else "none", precision="bf16" if bf16 else "fp32",
                   context_bytes=CONTEXT_BYTES if device.type == "cuda" else 0)
    have, what = available_memory(device)
    if est.total > have:
        raise ValueError(
            f"--preset {cfg.name} --mode {cfg.mode} needs about {est.total / 2**30:.1f} GiB per rank on this layout "
            f"(planner estimate: weights, gradients, Adam, activations of micro-batch {micro_batch}), but {what}. "
            f"Find a layout that fits with `lumina plan --preset {cfg.name} --mode {cfg.mode} --gpus {gpus}` "
            "(or more GPUs), or pass --skip-memory-check")
