"""A real one-node SLURM cluster on this machine, for the tests marked `slurm`.

munged (as user munge), slurmctld and slurmd run as root with all their state, sockets, logs and
configuration in a fresh directory and on free ports, so two sessions never share a cluster.
No slurmdbd: `scontrol show job` reports a finished job's state and exit code for MinJobAge
(300 s) after it ends, which is all these tests read. proctrack/linuxproc and task/none: there
is no cgroup hierarchy SLURM can use inside the sandbox these tests run in. The node declares at
least 8 CPUs, whatever the machine has, so that an 8-rank job is scheduled (see _node_line).

Teardown cancels whatever is still queued, then stops the daemons by the PIDs it recorded.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

INSTALL_HINT = "install it with `bash scripts/install_slurm.sh` (Debian: slurm-wlm and munge)"
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel", "srun")
MUNGE_KEY = "/etc/munge/munge.key"  # created by the Debian munge package
MIN_CPUS = 8  # the node's CPUs, at least: ranks in the largest test job (see _node_line)


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")  # daemons live in sbin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(host: str) -> str:
    """This host's memory, and its CPUs as slurmd itself detects them (`slurmd -C`) but at least
    MIN_CPUS: the 3D-layout test runs 8 ranks on this one node, and on a smaller machine they share
    its cores (slurmd takes the declared count, SlurmdParameters=config_overrides; task/none binds
    no task to a core)."""
    try:
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=False).stdout
        fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
        cpus, mem_mb = int(fields["CPUs"]), int(fields["RealMemory"])
    except (KeyError, ValueError, OSError, subprocess.SubprocessError):
        with open("/proc/meminfo") as f:
            mem_mb = int(next(row for row in f if row.startswith("MemTotal:")).split()[1]) // 1024
        cpus = os.cpu_count() or 1
    return f"NodeName={host} CPUs={max(cpus, MIN_CPUS)} RealMemory={mem_mb} NodeAddr=127.0.0.1 State=UNKNOWN"


def _slurm_conf(root: str, host: str) -> str:
    return f"""\
ClusterName=lumina-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long SLURM holds a requeued job back (default 120 s). Starting it
# sooner (scontrol update StartTime=now) races slurmd's revocation of the first start's
# credential: "Job N already killed, do not launch batch job" and the job FAILs without a log.
AuthInfo=socket={root}/munge/munge.socket.2,cred_expire=10
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root}/state/ctld
SlurmdSpoolDir={root}/state/d
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SwitchType=switch/none
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
{_node_line(host)}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=ALL MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    root: str
    env: dict
    """os.environ plus SLURM_CONF: pass it to every SLURM command (sbatch exports it to the job)."""

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=60, check=check, **kw)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, JobName, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout.strip()
        # -o: one line of Key=Value; a value may hold spaces (JobName, StdOut), a key never does.
        items = re.split(r" (?=[\w/:.()-]+=)", out)
        fields: dict[str, str] = {}
        for item in items:
            key, _, value = item.partition("=")
            fields.setdefault(key, value)
        return fields

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = os.path.join(self.root, "log", name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    parts.append(f"--- {name} (tail)\n" + "".join(f.readlines()[-30:]))
        return "\n".join(parts)


def _stop(pid: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """SIGTERM one daemon by PID, SIGKILL it if it outlives `timeout`. `proc` when it is our
    child, to reap it (a zombie would still answer signal 0)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(timeout=10)


def _read_pid(path: str, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no PID in {path} after {timeout:.0f} s")


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = [name for name in COMMANDS if _which(name) is None]
    if missing:
        pytest.skip(f"SLURM is not installed (no {', '.join(missing)} on PATH): {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs slurmd, which launches jobs, as root: run as root")
    if not os.path.exists(MUNGE_KEY):
        pytest.skip(f"no munge key at {MUNGE_KEY}: {INSTALL_HINT}")
    munge = pwd.getpwnam("munge")

    # Not under pytest's tmp_path: munged runs as user munge and must reach its socket directory,
    # and pytest's base directory is private to root.
    root = tempfile.mkdtemp(prefix="lumina-slurm-")
    os.chmod(root, 0o755)
    for sub in ("munge", "state/ctld", "state/d", "log"):
        os.makedirs(os.path.join(root, sub))
    os.chown(os.path.join(root, "munge"), munge.pw_uid, munge.pw_gid)
    os.chmod(os.path.join(root, "munge"), 0o755)  # munged insists that all may traverse its socket dir
    host = socket.gethostname().split(".")[0]  # SlurmctldHost and NodeName take the short name
    conf = os.path.join(root, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_slurm_conf(root, host))
    env = {**os.environ, "SLURM_CONF": conf}
    for key in [k for k in env if k.startswith(("SBATCH_", "SLURM_")) and k != "SLURM_CONF"]:
        del env[key]  # the submitting shell's own job, if any, must not leak into these jobs
    cluster = Cluster(root, env)

    daemons: list[tuple[str, int, subprocess.Popen | None]] = []  # stopped in reverse order
    outputs = []
    try:
        m = f"{root}/munge"
        subprocess.run(["runuser", "-u", "munge", "--", _which("munged"), f"--socket={m}/munge.socket.2",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
                       check=True, timeout=30)
        daemons.append(("munged", _read_pid(f"{m}/munged.pid"), None))  # it forks: not our child
        for daemon in ("slurmctld", "slurmd"):
            outputs.append(open(os.path.join(root, "log", f"{daemon}.out"), "w"))
            proc = subprocess.Popen([_which(daemon), "-D", "-f", conf], env=env, stdout=outputs[-1],
                                    stderr=subprocess.STDOUT)
            daemons.append((daemon, proc.pid, proc))
        deadline = time.monotonic() + 60
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout:
            dead = [name for name, _, proc in daemons if proc is not None and proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up idle ({', '.join(dead) or 'timeout'}):\n"
                                   + cluster.logs())
            time.sleep(0.3)
        yield cluster
    finally:
        if any(name == "slurmctld" for name, _, _ in daemons):
            jobs = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            for job in jobs:
                cluster.run("scancel", job, check=False)
            deadline = time.monotonic() + 60
            while jobs and time.monotonic() < deadline:
                if not cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                    break
                time.sleep(0.5)
        for _, pid, proc in reversed(daemons):
            _stop(pid, proc)
        for f in outputs:
            f.close()
        shutil.rmtree(root, ignore_errors=True)
