"""Rendered batch scripts on a real one-node SLURM cluster: train, resume, preempt-and-requeue,
a 3D layout (TP x PP x EP), hostile values through sbatch's own directive parser, and sbatch's
environment overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import pytest

from lumina.commands.slurm import cpu_script
from lumina.launch.slurm import SlurmSpec, render
from tests.train.runs import metrics

pytestmark = pytest.mark.slurm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBUG_ARGS = ("--preset", "debug", "--mode", "dense", "--seq-length", "64", "--micro-batch-size", "4",
              "--global-batch-size", "8", "--log-interval", "1", "--eval-iters", "1", "--save-interval", "3",
              "--no-progress")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


def debug_spec(tmp, train_iters: int, **kw) -> SlurmSpec:
    """The CPU variant of the debug preset's script: one node, two srun tasks, gloo."""
    return SlurmSpec(job_name="lumina-debug-dense", nodes=1, ntasks_per_node=2, gpus_per_node=0,
                     time="00:10:00", launcher="srun", python=sys.executable,
                     train_args=(*DEBUG_ARGS, "--train-iters", str(train_iters), "--run-dir", str(tmp / "run")),
                     save_dir=str(tmp / "ckpt"), log_dir=str(tmp / "logs"), **kw)


def job_env(cluster, tmp) -> dict:
    # sbatch exports the submitting environment to the job (--export=ALL is its default); the
    # jobs of a session share one data cache. `lumina` is imported from the repository, where the
    # script runs `python -m lumina.pretrain`.
    return {**cluster.env, "LUMINA_CACHE": str(tmp.parent / "lumina-cache"), "OMP_NUM_THREADS": "1"}


def submit(cluster, spec: SlurmSpec, env: dict, tmp, name: str = "job.sh") -> str:
    return submit_text(cluster, render(spec), spec.log_dir, env, tmp, name)


def submit_text(cluster, text: str, log_dir: str, env: dict, tmp, name: str = "job.sh") -> str:
    os.makedirs(log_dir, exist_ok=True)  # sbatch opens the log before the script runs
    script = tmp / name
    script.write_text(text)
    return cluster.run("sbatch", "--parsable", str(script), env=env, cwd=REPO).stdout.strip().split(";")[0]


def wait_for(cluster, job: str, done, timeout: float = 150.0) -> dict:
    """Poll `scontrol show job` until done(fields); faster than `sbatch --wait`'s back-off."""
    deadline = time.monotonic() + timeout
    while True:
        fields = cluster.job(job)
        if done(fields):
            return fields
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} still {fields.get('JobState')} after {timeout:.0f} s:\n"
                                 f"{log_of(fields)}\n{cluster.logs()}")
        time.sleep(0.5)


def log_of(fields: dict) -> str:
    path = fields.get("StdOut", "")
    if not os.path.isfile(path):
        return f"(no log at {path!r})"
    with open(path, errors="replace") as f:
        return f.read()


def finished(cluster, job: str, timeout: float = 150.0) -> dict:
    fields = wait_for(cluster, job, lambda f: f["JobState"] in ENDED, timeout)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log_of(fields)
    return fields


def train_records(run_dir) -> list[dict]:
    return [r for r in metrics(str(run_dir)) if r["split"] == "train" and "loss" in r]


def test_train_then_resume_from_the_checkpoint(slurm_cluster, tmp_path):
    env = job_env(slurm_cluster, tmp_path)
    first = finished(slurm_cluster, submit(slurm_cluster, debug_spec(tmp_path, 6), env, tmp_path))
    records = train_records(tmp_path / "run")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], f"the loss did not fall: {losses}"
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "iter_0000006"
    assert "(resuming)" not in log_of(first)

    # The same script with --train-iters 9: --load is added because the checkpoint exists.
    second = finished(slurm_cluster, submit(slurm_cluster, debug_spec(tmp_path, 9), env, tmp_path, "job2.sh"))
    assert "(resuming)" in log_of(second), log_of(second)
    resumed = train_records(tmp_path / "run")[len(records):]  # metrics.jsonl is appended to
    assert [r["iteration"] for r in resumed] == [7, 8, 9], log_of(second)
    assert all(math.isfinite(r["loss"]) for r in resumed)
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "iter_0000009"


THREE_D_ARGS = ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                "--expert-model-parallel-size", "2", "--seq-length", "64", "--micro-batch-size", "2",
                "--global-batch-size", "8", "--log-interval", "1", "--eval-iters", "1", "--save-interval", "2",
                "--no-progress")


def test_3d_layout_on_one_node_completes_and_resumes(slurm_cluster, tmp_path):
    """World 8 as TP2 x PP2 x DP2 with EP2, hybrid: the script `lumina slurm --cpu-tasks 8 --preset
    debug --mode hybrid -- <flags>` writes (8 srun ranks on one node), with its checkpoints and logs
    here. The node declares 8 CPUs or more (conftest), however few cores the machine has."""
    env = job_env(slurm_cluster, tmp_path)
    logs = str(tmp_path / "logs")

    def script(train_iters: int) -> str:
        return cpu_script("debug", "hybrid", 8, [*THREE_D_ARGS, "--train-iters", str(train_iters),
                                                 "--run-dir", str(tmp_path / "run")],
                          sys.executable, "00:15:00", save_dir=str(tmp_path / "ckpt"), log_dir=logs)

    first = finished(slurm_cluster, submit_text(slurm_cluster, script(4), logs, env, tmp_path), timeout=600)
    assert "(resuming)" not in log_of(first)
    records = train_records(tmp_path / "run")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4], log_of(first)
    assert all(math.isfinite(r["loss"]) for r in records), records
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "iter_0000004"

    second = finished(slurm_cluster, submit_text(slurm_cluster, script(6), logs, env, tmp_path, "job2.sh"),
                      timeout=600)
    assert "(resuming)" in log_of(second), log_of(second)
    resumed = train_records(tmp_path / "run")[len(records):]
    assert [r["iteration"] for r in resumed] == [5, 6], log_of(second)
    assert all(math.isfinite(r["loss"]) for r in resumed)
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "iter_0000006"


def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes(slurm_cluster, tmp_path):
    """`--signal=B:USR1@N` near the time limit, simulated with `scancel --batch --signal=USR1`:
    the ranks save and exit, the script requeues the job, and the second start resumes."""
    env = job_env(slurm_cluster, tmp_path)
    spec = debug_spec(tmp_path, 100_000)
    job = submit(slurm_cluster, spec, env, tmp_path)
    run = tmp_path / "run"

    def trained(n):
        return lambda f: (f["JobState"] in ENDED or (os.path.exists(run / "metrics.jsonl")
                                                      and len(train_records(run)) >= n))

    fields = wait_for(slurm_cluster, job, trained(2))
    assert fields["JobState"] == "RUNNING", log_of(fields)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    fields = wait_for(slurm_cluster, job, lambda f: f["Restarts"] != "0" or f["JobState"] in ENDED)
    assert fields["Restarts"] == "1", log_of(fields)
    log = log_of(fields)
    assert "lumina-slurm: requeueing job" in log and "launcher exit status 0" in log, log
    saved = int((tmp_path / "ckpt" / "latest").read_text().strip().split("_")[1])
    assert "checkpoint saved at iteration" in log and saved >= 2, log
    before = len(train_records(run))
    assert train_records(run)[-1]["iteration"] == saved

    # The requeued job starts again by itself, finds the checkpoint and continues after it.
    # SLURM holds a requeued job back for cred_expire seconds (10 here, see conftest), until
    # slurmd no longer treats the first start's credential as revoked; lifting the hold early
    # failed the restart in CI, so the test waits it out.
    fields = wait_for(slurm_cluster, job, trained(before + 1))
    assert fields["JobState"] == "RUNNING", f"{log_of(fields)}\n{fields}\n{slurm_cluster.logs()}"
    assert train_records(run)[before]["iteration"] == saved + 1
    slurm_cluster.run("scancel", job)
    wait_for(slurm_cluster, job, lambda f: f["JobState"] in ENDED)
    assert "(resuming)" in log_of(fields)


def test_hostile_values_survive_sbatch_and_bash(slurm_cluster, tmp_path):
    """Quotes, `#`, `$(...)`, `;`, backslashes and `%` in the job name, paths and flags reach
    sbatch and the job verbatim, and run nothing."""
    pwned = tmp_path / "pwned"
    name = """x"; touch pwned # it's $(touch pwned) `touch pwned` \\ 100% {a,b}"""  # no '/': %x is a file name
    spec = SlurmSpec(job_name=name, nodes=1, ntasks_per_node=1, gpus_per_node=0, time="00:05:00",
                     train_args=("--flag", f"$(touch {pwned})", f"`touch {pwned}`"), launcher="srun",
                     save_dir=str(tmp_path / f'ckpt "; touch {pwned} #'), log_dir=str(tmp_path / "logs 100% $(x)"),
                     python="/bin/echo")  # the "trainer" prints its arguments
    job = submit(slurm_cluster, spec, slurm_cluster.env, tmp_path)
    fields = wait_for(slurm_cluster, job, lambda f: f["JobState"] in ENDED)
    log_path = os.path.join(spec.log_dir, f"{name}-{job}.log")  # the directory's `%` was written `%%`
    assert os.path.isfile(log_path), (fields, os.listdir(tmp_path))
    with open(log_path) as f:
        log = f.read()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert fields["JobName"] == name
    assert os.path.isdir(spec.save_dir)
    echoed = f"-u -m lumina.pretrain --flag $(touch {pwned}) `touch {pwned}` --save {spec.save_dir}"
    assert echoed in log, log
    assert not pwned.exists() and not os.path.exists(os.path.join(REPO, "pwned"))


def test_sbatch_environment_variables_override_the_directives(slurm_cluster, tmp_path):
    """The SBATCH_* names in the header are the ones sbatch 22.05 reads, and they win over the
    script's #SBATCH lines; --nodes has none, so the command line overrides it."""
    spec = dataclasses.replace(debug_spec(tmp_path, 1), partition="debug", account="acct-a")
    script = tmp_path / "held.sh"
    script.write_text(render(spec))
    overrides = {"SBATCH_JOB_NAME": "renamed", "SBATCH_TIMELIMIT": "00:07:00", "SBATCH_PARTITION": "other",
                 "SBATCH_ACCOUNT": "acct-b", "SBATCH_OUTPUT": str(tmp_path / "elsewhere.log"),
                 "SBATCH_NO_REQUEUE": "1"}
    job = slurm_cluster.run("sbatch", "--parsable", "--hold", str(script), env={**slurm_cluster.env, **overrides},
                            cwd=REPO).stdout.strip()
    plain = slurm_cluster.run("sbatch", "--parsable", "--hold", "--nodes=1", "--ntasks-per-node=1", str(script),
                              cwd=REPO).stdout.strip()
    try:
        f = slurm_cluster.job(job)
        assert (f["JobName"], f["TimeLimit"], f["Partition"], f["Account"], f["StdOut"], f["Requeue"]) == \
            ("renamed", "00:07:00", "other", "acct-b", str(tmp_path / "elsewhere.log"), "0")
        g = slurm_cluster.job(plain)
        assert (g["JobName"], g["TimeLimit"], g["Partition"], g["Account"], g["Requeue"]) == \
            ("lumina-debug-dense", "00:10:00", "debug", "acct-a", "1")
        assert g["StdOut"] == f"{tmp_path}/logs/lumina-debug-dense-{plain}.log"
        assert g["NumTasks"] == "1"  # --ntasks-per-node=1 from the command line beat the script's 2
        # A GPU request on this cluster without GPU gres is refused at submission (the same script
        # without the variable was accepted above), so sbatch read the variable.
        refused = slurm_cluster.run("sbatch", "--parsable", "--hold", str(script),
                                    env={**slurm_cluster.env, "SBATCH_GPUS_PER_NODE": "1"}, cwd=REPO, check=False)
        assert refused.returncode != 0 and "generic resource (gres)" in refused.stderr, refused.stderr
    finally:
        slurm_cluster.run("scancel", job, plain, check=False)
