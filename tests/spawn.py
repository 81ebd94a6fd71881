"""The one helper for multi-process tests: N ranks with gloo on CPU, per-rank env, a hang timeout.

Each rank runs `target(*args)` in a fresh spawned interpreter (so DeepSpeed's and
torch.distributed's global state never leak between tests). A rank that raises, exits non-zero
or outlives `timeout` fails the test with its traceback; a hang kills every rank instead of
freezing CI.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from typing import Any, Callable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(target: Callable, args: tuple, env: dict, queue) -> None:
    try:
        queue.put((int(env["RANK"]), "ok", target(*args)))
    except BaseException:  # report every failure, including SystemExit, to the parent
        queue.put((int(env["RANK"]), "error", traceback.format_exc()))


def spawn(target: Callable, world_size: int, args: tuple = (), timeout: float = 240.0,
          env: dict | None = None) -> list[Any]:
    """Run target on `world_size` ranks; returns each rank's return value, in rank order."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = str(_free_port())
    procs = []
    for rank in range(world_size):
        rank_env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
                    **(env or {})}
        p = ctx.Process(target=_rank_main, args=(target, args, rank_env, queue), daemon=True)
        # A spawned child copies os.environ at start, before it imports anything (torch reads
        # OMP_NUM_THREADS at import), so set the rank's variables around start().
        saved = dict(os.environ)
        os.environ.update(rank_env)
        try:
            p.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        procs.append(p)
    results: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world_size):
            try:
                rank, status, value = queue.get(timeout=timeout)
            except Exception:
                raise AssertionError(f"hang: {world_size - len(results) - len(errors)} rank(s) did not "
                                     f"finish within {timeout:.0f} s") from None
            if status == "ok":
                results[rank] = value
            else:
                errors.append(f"rank {rank} failed:\n{value}")
        if errors:
            raise AssertionError("\n".join(errors))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
