"""Expert parallel: the experts of each MoE layer split over the E ranks of an expert group.

Routing stays local: every rank routes its own tokens over all experts with its own capacity,
exactly as one process would route the same micro-batch. Only the expert MLPs move. The
permuted tokens (already in expert order, from `lumina.ops.routing.permute`) go to the rank that
owns their expert in one all-to-all, each rank runs its local experts, and a second all-to-all
brings the outputs back before `routing.unpermute` weights and combines them. Results therefore
equal the single-process ones; only the placement of the expert weights changes.

The groups are DeepSpeed's expert groups (`deepspeed.utils.groups`, names `ep_size_<E>`), so the
ZeRO optimizer partitions and reduces expert gradients within the expert-data-parallel group
and dense gradients over the whole data-parallel group. Expert weights carry DeepSpeed's marks
(`allreduce=False`, `group_name`). DeepSpeed only switches its MoE handling on when the model
contains its own `deepspeed.moe.layer.MoE`; `deepspeed_initialize` below widens that one
isinstance check to Lumina's MoE for the duration of `deepspeed.initialize` (see
docs/parallelism.md, "Expert parallel").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lumina.parallel.layout import ParallelLayout


@dataclass(frozen=True)
class ExpertParallel:
    size: int           # E: ranks that split the experts
    rank: int           # this rank's index in its expert group
    group: object       # the expert-parallel process group (carries the all-to-all)
    group_name: str     # DeepSpeed's key for it and for the expert-data-parallel group

    def local_experts(self, num_experts: int) -> tuple[int, int]:
        """(first global expert, count) held by this rank: a contiguous block."""
        per_rank = num_experts // self.size
        return self.rank * per_rank, per_rank


def create_groups(layout: ParallelLayout, mpu=None) -> ExpertParallel:
    """Build DeepSpeed's expert and expert-data-parallel groups and check them against the layout."""
    from deepspeed.utils import groups

    if mpu is None:
        groups._create_expert_and_data_parallel(layout.ep, use_data_before_expert_parallel_=False)
    else:
        groups.mpu = mpu
        groups._create_expert_data_and_model_parallel(layout.ep, mpu, use_data_before_expert_parallel_=False)
    name = f"ep_size_{layout.ep}"
    group = groups._get_expert_parallel_group(name)
    rank = dist.get_rank()
    want_ep = next(g for g in layout.ep_groups() if rank in g)
    want_edp = next(g for g in layout.expert_dp_groups() if rank in g)
    got_ep = dist.get_process_group_ranks(group)
    got_edp = dist.get_process_group_ranks(groups._get_expert_data_parallel_group(name))
    if sorted(got_ep) != sorted(want_ep) or sorted(got_edp) != sorted(want_edp):
        raise RuntimeError(f"DeepSpeed's expert groups for rank {rank} (ep {got_ep}, expert dp {got_edp}) differ "
                           f"from Lumina's layout (ep {want_ep}, expert dp {want_edp}); this is a bug")
    return ExpertParallel(size=layout.ep, rank=dist.get_rank(group), group=group, group_name=name)


def mark_expert_param(param: torch.Tensor, ep: ExpertParallel) -> None:
    """DeepSpeed's marks for a parameter that is not replicated over data parallel."""
    param.allreduce = False
    param.group_name = ep.group_name


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; backward is the reverse exchange.

    megatron-core's `all_to_all` allocates its uneven-split output on `torch.cuda.current_device()`,
    which fails on CPU, so Lumina has its own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, send: list[int], recv: list[int]) -> torch.Tensor:
        ctx.group, ctx.send, ctx.recv = group, send, recv
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad, ctx.group, ctx.recv, ctx.send), None, None, None


def all_to_all(x: torch.Tensor, group, send: list[int], recv: list[int]) -> torch.Tensor:
    return _AllToAll.apply(x, group, send, recv)


def exchange_counts(counts: torch.Tensor, ep: ExpertParallel) -> torch.Tensor:
    """counts: (num_experts,) tokens this rank sends to each global expert. Returns (E, local):
    row s = tokens rank s of the group sends to each of this rank's experts."""
    local = counts.numel() // ep.size
    recv = torch.empty_like(counts)
    dist.all_to_all_single(recv, counts.contiguous(), group=ep.group)
    return recv.view(ep.size, local)


@contextlib.contextmanager
def deepspeed_sees_lumina_moe(model_class: type):
    """Within the block, DeepSpeed's engine counts `model_class` modules as its MoE layers.

    The engine decides `has_moe_layers` (expert groups for the ZeRO optimizer and for ZeRO-0's
    gradient all-reduce) with `isinstance(module, MoE)` against its own class, while it builds the
    optimizer inside `deepspeed.initialize`. Outside the block the check is restored, so DeepSpeed's
    MoE checkpoint layout (which expects its own module tree) is never used: Lumina saves expert
    weights in its per-rank checkpoint files instead (lumina/train/checkpoint.py).
    """
    from deepspeed.runtime import engine

    original = engine.MoE
    engine.MoE = (original, model_class)
    try:
        yield
    finally:
        engine.MoE = original
