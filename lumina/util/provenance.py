"""Where a results file came from: the commit whose code ran (and whether the working tree had
uncommitted changes), the machine, the library versions, the command and the time.

Every writer of a results file (`lumina bench`, tests/gpu/bench.sh, the bench/*.py scripts'
--json) records this block from here, so a figure can always be traced to the code that made it.
`lumina.bench.results` checks the block's fields.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

# The checkout this lumina package lives in (None of git's answers apply to an installed wheel).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_state(root: str = ROOT) -> tuple[str | None, bool | None]:
    """(HEAD's full hash, whether tracked or untracked-but-not-ignored files differ from it), or
    (None, None) outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None, None


def machine() -> dict:
    """The CPU (model name), its cores, torch's threads and the first GPU, if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu}


def versions() -> dict:
    """Python, Lumina and the libraries whose code does the measured work (None: not installed)."""
    import lumina

    out = {"python": platform.python_version(), "lumina": lumina.__version__}
    for name in ("torch", "deepspeed", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # a missing optional package is recorded as such
            out[name] = None
    return out


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a user would type it (`python bench/x.py ...`)."""
    argv = sys.argv if argv is None else argv
    script = argv[0]
    if os.path.isfile(script) and os.path.abspath(script).startswith(ROOT + os.sep):
        script = os.path.relpath(os.path.abspath(script), ROOT)
    return shlex.join(["python", script, *argv[1:]])


def provenance(command: str) -> dict:
    """The block every results file carries (the keys `lumina.bench.results.PROVENANCE` checks)."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty, "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(),
            "note": None if commit else "not run from a git checkout: the commit is unknown"}


def describe(p: dict) -> str:
    """One line: `commit abc1234 (with uncommitted changes)` or why there is none."""
    if p["commit"] is None:
        return f"commit not recorded ({p['note']})"
    return f"commit {p['commit'][:7]}" + (" with uncommitted changes" if p["dirty"] else "")


def write_json(path: str, report: dict, record: dict | None = None) -> None:
    """Write `report` under its provenance (`record`, else this process's) to `path`: a temporary
    sibling first, then renamed."""
    from lumina.util.files import atomic_write_text

    full = {"provenance": record or provenance(command_line()), **report}
    atomic_write_text(path, json.dumps(full, indent=1, default=sorted) + "\n")
