"""Does a bad value given to lumina._C reach Python as ValueError on this machine, or kill the process?

On the first GPU machine any C++ exception from lumina._C killed Python (SIGSEGV), CPU ops too,
while a minimal torch extension that throws raised normally (docs/kernels.md). Each case runs in
a child process, so a crash is reported instead of ending this script; a child killed by a signal
is run again under gdb (when installed) for a native backtrace. Then the facts that decide between
the candidate causes: the pybind11 lumina._C was compiled with against the one torch ships, the
libraries lumina._C needs, the symbols it exports, and every copy of a C++ or OpenMP runtime
mapped into a process that imported both.

    python tests/gpu/crash_probe.py          # exit 1 when a case crashed or did not raise ValueError

tests/gpu/run.sh runs it before the gpu tests; it runs on CPU too (the CPU cases only).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

CASE = """
import sys, torch
from lumina.ops import backend, routing
device = sys.argv[1]
assert backend.kernel("expert_histogram", torch.device(device)) is not None, backend.describe("expert_histogram", device)
try:
    routing.expert_histogram(torch.tensor([[0, 7]], device=device), 4)
except ValueError as exc:
    print("ValueError:", exc)
    sys.exit(0)
print("no ValueError")
sys.exit(3)
"""

FACTS = """
import os, re, torch, lumina._C as C
print("lumina._C pybind11", C.PYBIND11_VERSION, C.PYBIND11_INTERNALS_ID)
header = os.path.join(os.path.dirname(torch.__file__), "include", "pybind11", "detail", "common.h")
parts = [re.search(rf"#define PYBIND11_VERSION_{p} (\\d+)", open(header).read()).group(1) for p in ("MAJOR", "MINOR", "MICRO")]
print("torch's bundled pybind11", ".".join(parts))
try:
    import pybind11
    print("pip pybind11", pybind11.__version__, pybind11.get_include())
except ImportError:
    print("pip pybind11: not installed")
print("lumina._C", C.__file__)
runtimes = sorted({line.split()[-1] for line in open("/proc/self/maps")
                   if re.search(r"lib(stdc\\+\\+|gcc_s|gomp|iomp5|cudart)[^/]*\\.so", line)})
print("runtimes mapped:", *runtimes, sep="\\n  ")
"""


def _run(argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _describe(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"


def probe(device: str) -> bool:
    child = _run([sys.executable, "-X", "faulthandler", "-c", CASE, device])
    ok = child.returncode == 0
    print(f"== bad value on {device}: {_describe(child.returncode)}; {(child.stdout.strip() or '-')[:300]}")
    if not ok:
        print(child.stderr[-4000:])
    if child.returncode < 0 and shutil.which("gdb"):
        gdb = _run(["gdb", "-batch", "-ex", "run", "-ex", "bt 40", "-ex", "info sharedlibrary", "--args",
                    sys.executable, "-c", CASE, device], timeout=300)
        print(f"-- gdb backtrace ({device})\n{gdb.stdout[-12000:]}")
    return ok


def build_facts() -> None:
    facts = _run([sys.executable, "-c", FACTS])
    print(facts.stdout + facts.stderr[-2000:])
    import lumina._C as C  # after the children: importing it here cannot hide their outcome

    for tool, args in (("ldd", [C.__file__]), ("readelf", ["-d", C.__file__])):
        if shutil.which(tool):
            out = _run([tool, *args]).stdout
            keep = [line for line in out.splitlines() if tool == "ldd" or re.search(r"NEEDED|RPATH|RUNPATH", line)]
            print(f"-- {tool}\n" + "\n".join(keep))
    if shutil.which("nm"):
        exported = [line for line in _run(["nm", "-D", "--defined-only", C.__file__]).stdout.splitlines()
                    if line.strip()]
        print(f"-- {len(exported)} dynamic symbols exported (with -fvisibility=hidden: PyInit__C and what torch's "
              "headers mark visible)")


def main() -> int:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = [probe(device) for device in devices]
    build_facts()
    print("crash probe:", "ok, every bad value raised ValueError" if all(results) else "FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
