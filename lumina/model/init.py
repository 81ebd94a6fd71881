"""Layout-independent parameter initialisation.

Each weight is drawn from its own generator, seeded by (seed, parameter name), over the weight's
full (unsharded) shape, and each rank keeps only its slice. The initial model is therefore the
same whatever the tensor / expert parallel layout and whatever order modules were built in, so
a TP=2 run starts from exactly the TP=1 weights. Stacked expert weights are drawn one expert at
a time, so the largest tensor ever materialised is one expert's matrix, not the whole layer.

Layers mark their weights when they build them:
- `init_std` (float): normal(0, init_std); weights without it (norm scales, biases) keep their
  construction-time values.
- `partition_dim` / `partition_rank` / `partition_size`: the tensor-parallel split (the first is
  megatron-core's attribute name); `expert_offset`: global index of the first local expert.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def _seed_for(seed: int, name: str, index: int = 0) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def mark(param: torch.Tensor, init_std: float, partition_dim: int | None = None,
         partition_rank: int = 0, partition_size: int = 1, expert_offset: int | None = None) -> None:
    param.init_std = init_std
    if partition_dim is not None and partition_size > 1:
        # `tensor_model_parallel` is what DeepSpeed's gradient-norm code reads to count a sharded
        # weight on every TP rank (and a replicated one only once).
        param.tensor_model_parallel = True
        param.partition_dim = partition_dim
        param.partition_rank = partition_rank
        param.partition_size = partition_size
    if expert_offset is not None:
        param.expert_offset = expert_offset


def _full_slice(shape: tuple[int, ...], std: float, seed: int, dim: int | None, rank: int, size: int) -> torch.Tensor:
    full_shape = list(shape)
    if dim is not None:
        full_shape[dim] *= size
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(full_shape, generator=g) * std
    if dim is None:
        return full
    return full.narrow(dim, rank * shape[dim], shape[dim])


@torch.no_grad()
def initialize(model: nn.Module, seed: int) -> None:
    """Re-draw every marked weight of `model` from (seed, name), layout-independently."""
    for name, p in model.named_parameters():
        name = getattr(p, "init_name", name)
        std = getattr(p, "init_std", None)
        if std is None or p.device.type == "meta":
            continue
        dim = getattr(p, "partition_dim", None)
        rank, size = getattr(p, "partition_rank", 0), getattr(p, "partition_size", 1)
        offset = getattr(p, "expert_offset", None)
        if offset is None:
            p.copy_(_full_slice(tuple(p.shape), std, _seed_for(seed, name), dim, rank, size).to(p.dtype))
            continue
        # Stacked experts (E_local, ...): expert e is drawn on its own, keyed by its global index.
        sub_dim = None if dim is None else dim - 1
        for e in range(p.shape[0]):
            value = _full_slice(tuple(p.shape[1:]), std, _seed_for(seed, name, offset + e), sub_dim, rank, size)
            p[e].copy_(value.to(p.dtype))
