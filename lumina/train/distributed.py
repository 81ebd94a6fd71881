"""Process-group start-up for one process (`lumina train`) or many (deepspeed / torchrun / srun)."""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_env() -> None:
    """Fill in a one-process world when no launcher set one; map SLURM's variables when srun did."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if os.environ["WORLD_SIZE"] != "1":
            raise ValueError("MASTER_PORT is not set for a multi-process run: launch with deepspeed, "
                             "torchrun or srun, or export MASTER_ADDR and MASTER_PORT")
        os.environ["MASTER_PORT"] = str(_free_port())


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init(dev: torch.device) -> None:
    """deepspeed.init_distributed with gloo on CPU, NCCL on GPU."""
    import deepspeed

    if dev.type == "cpu":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (about 30 s, see
        # docs/training.md) on every fresh machine. gloo's own all-reduce is correct and, at the
        # sizes a CPU trains, fast enough; LUMINA_DS_SHM=1 keeps DeepSpeed's op.
        if os.environ.get("LUMINA_DS_SHM") != "1":
            # `deepspeed.comm.torch` the attribute is the torch module; the submodule is in sys.modules.
            sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    else:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if dev.type == "cpu" else "nccl",
                                   verbose=False)


def any_rank(flag: bool, dev: torch.device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
