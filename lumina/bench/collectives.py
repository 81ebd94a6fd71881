"""What the communication benchmarks share: a counter of torch.distributed traffic, and fresh
ranks spawned on gloo for one measurement (bench/bench_dp.py, bench/bench_parallel.py).

The counter wraps the collectives and the point-to-point calls of `torch.distributed` in place,
so it must be installed before DeepSpeed or megatron-core bind some of them at import. Each call
is counted by operation (`calls`, `bytes`) and, when `classify` is set, by the parallel group it
runs on (`by_kind`): the caller maps a call's ranks to TP, PP, EP, DP, ...
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing as mp
import os
import socket
from collections.abc import Callable
from typing import Any

# The argument that holds each call's logical payload: the full buffer an all-reduce reduces, the
# gathered output of an all-gather, the full input of a reduce-scatter (so all-reduce =
# reduce-scatter + all-gather in these units), the tensor a point-to-point call sends or receives.
PAYLOAD_ARG = {
    "all_reduce": "tensor", "reduce": "tensor", "broadcast": "tensor", "all_reduce_coalesced": "tensors",
    "all_gather": "tensor_list", "all_gather_into_tensor": "output_tensor", "_all_gather_base": "output_tensor",
    "reduce_scatter": "input_list", "reduce_scatter_tensor": "input", "_reduce_scatter_base": "input",
    "all_to_all_single": "input", "all_to_all": "input_tensor_list", "gather": "tensor", "scatter": "tensor",
    "send": "tensor", "recv": "tensor", "isend": "tensor", "irecv": "tensor",
}
POINT_TO_POINT = {"send": "dst", "isend": "dst", "recv": "src", "irecv": "src"}

# Bytes each rank sends per payload byte, bandwidth-optimal (ring) algorithms on N ranks.
_WIRE_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_reduce_coalesced": lambda n: 2 * (n - 1) / n,
                "all_gather": lambda n: (n - 1) / n, "all_gather_into_tensor": lambda n: (n - 1) / n,
                "_all_gather_base": lambda n: (n - 1) / n, "reduce_scatter": lambda n: (n - 1) / n,
                "reduce_scatter_tensor": lambda n: (n - 1) / n, "_reduce_scatter_base": lambda n: (n - 1) / n,
                "all_to_all_single": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n}

# Calls below this many bytes are scalars (losses, flags, norms): listed apart by `calls`/`bytes`.
SMALL = 1024


def nbytes(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return value.numel() * value.element_size() if hasattr(value, "numel") else 0


def wire_bytes(op_bytes: dict[str, int], world: int) -> float:
    """Bytes each rank sends for these payloads ({op: bytes}) with ring algorithms on `world` ranks."""
    return sum(_WIRE_FACTOR.get(op.split()[0], lambda n: 1.0)(world) * b for op, b in op_bytes.items())


# classify(op, ranks of the group, peer of a point-to-point call or None) -> a group label.
Classifier = Callable[[str, tuple[int, ...], int | None], str]


class CommCounter:
    """Counts calls and payload bytes of torch.distributed collectives while `active`.

    `calls`/`bytes`: per operation name, calls under `SMALL` bytes under their own key.
    `by_kind`: per (label from `classify`, operation), [calls, payload bytes, remote bytes], where
    remote leaves out what stays on the rank: an all-to-all's own split, anything on a 1-rank group.
    """

    def __init__(self) -> None:
        self.active = False
        self.classify: Classifier | None = None
        self.calls: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.by_kind: dict[tuple[str, str], list[int]] = {}
        self._depth = 0  # torch's legacy names call the new ones: count the outermost call only
        self._ranks: dict[int, tuple[int, ...]] = {}

    def install(self) -> None:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        for name in PAYLOAD_ARG:
            original = getattr(c10d, name, None)
            if original is None:
                continue
            wrapped = self._wrap(name, original)
            # DeepSpeed reaches these both as torch.distributed.X and distributed_c10d.X.
            setattr(c10d, name, wrapped)
            if getattr(dist, name, None) is original:
                setattr(dist, name, wrapped)

    def reset(self) -> None:
        self.calls, self.bytes, self.by_kind = {}, {}, {}

    def _wrap(self, name: str, original):
        signature = inspect.signature(original)

        @functools.wraps(original)
        def counted(*args, **kwargs):
            if self.active and self._depth == 0:
                self._count(name, signature.bind(*args, **kwargs).arguments)
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted

    def _count(self, name: str, call: dict[str, Any]) -> None:
        payload = nbytes(call[PAYLOAD_ARG[name]])
        key = name if payload >= SMALL else f"{name} (<{SMALL} B)"
        self.calls[key] = self.calls.get(key, 0) + 1
        self.bytes[key] = self.bytes.get(key, 0) + payload
        if self.classify is None:
            return
        ranks = self._group_ranks(call.get("group"))
        peer = call.get(POINT_TO_POINT[name]) if name in POINT_TO_POINT else None
        remote = payload
        if name == "all_to_all_single":
            remote -= _own_split_bytes(call, payload, ranks)
        elif peer is None and len(ranks) == 1:
            remote = 0
        entry = self.by_kind.setdefault((self.classify(name, ranks, peer), name), [0, 0, 0])
        entry[0] += 1
        entry[1] += payload
        entry[2] += remote

    def _group_ranks(self, group) -> tuple[int, ...]:
        import torch.distributed as dist

        key = id(group)
        if key not in self._ranks:
            self._ranks[key] = tuple(dist.get_process_group_ranks(group or dist.group.WORLD))
        return self._ranks[key]


def _own_split_bytes(call: dict[str, Any], payload: int, ranks: tuple[int, ...]) -> int:
    """Bytes of an all_to_all_single's input that this rank addresses to itself."""
    import torch.distributed as dist

    me = ranks.index(dist.get_rank())
    x, splits = call["input"], call.get("input_split_sizes")
    if not splits:
        return payload // len(ranks)
    row = x[0].numel() * x.element_size() if x.shape[0] else 0
    return splits[me] * row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(target: Callable, args: tuple, env: dict[str, str], queue) -> None:
    os.environ.update(env)
    try:
        queue.put((int(env["RANK"]), "ok", target(*args)))
    except BaseException as exc:  # report, never hang the parent
        import traceback

        queue.put((int(env["RANK"]), "error", f"{exc!r}\n{traceback.format_exc()}"))


def spawn_ranks(world: int, target: Callable, args: tuple, threads: int, timeout: float,
                env: dict[str, str] | None = None) -> list[Any]:
    """Run `target(*args)` on `world` fresh gloo ranks (no DeepSpeed state shared between runs);
    each rank's return value, in rank order. A rank that fails raises RuntimeError with its error."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = str(free_port())
    procs = []
    for rank in range(world):
        rank_env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": str(threads),
                    **(env or {})}
        saved = dict(os.environ)
        os.environ.update(rank_env)  # torch reads OMP_NUM_THREADS at import, in the child
        try:
            p = ctx.Process(target=_rank_main, args=(target, args, rank_env, queue), daemon=True)
            p.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        procs.append(p)
    try:
        results = {}
        for _ in range(world):
            try:
                rank, status, value = queue.get(timeout=timeout)
            except Exception:
                raise RuntimeError(f"{world - len(results)} rank(s) did not finish within {timeout:.0f} s") from None
            if status != "ok":
                raise RuntimeError(f"rank {rank} failed: {value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
