"""The global gradient norm of one step, each gradient counted exactly once, and clipping by it.

Used where DeepSpeed's own optimizer does not compute a correct norm: ZeRO-0 (fp32, and bf16 where
DeepSpeed wraps the optimizer in its FP16_Optimizer). DeepSpeed's ZeRO-0 clipping averages
per-rank norms that each see only their own experts under expert parallel, and under pipeline
parallel counts the tied embedding twice and non-TP weights only on stage 0. ZeRO 1-2 and the
BF16 optimizer compute the norm themselves (tests/parallel check both against one process).

Which ranks hold which gradients (after the data-parallel reduction at the step boundary):
- a weight sharded over TP: a different slice on every TP rank (sum the squares over TP);
- an expert weight: a different block of experts on every EP rank (sum over EP);
- a pipeline stage's weights: only on that stage (sum over the pipeline group), except the last
  stage's copy of a tied embedding (`ds_pipe_replicated`), which is skipped;
- everything else is replicated and counted once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _all_reduce(t: torch.Tensor, group, device: torch.device) -> torch.Tensor:
    t = t.to(device)
    dist.all_reduce(t, group=group)
    return t.cpu()


@torch.no_grad()
def global_grad_norm(module: nn.Module, device: torch.device, *, tp_group=None, ep_group=None,
                     pipe_group=None, clip: float | None = None) -> float:
    """Pre-clip L2 norm of every gradient of the model; with `clip`, scales the gradients in place
    by clip / norm when the norm exceeds it (torch's clip_grad_norm_ rule)."""
    # [TP-sharded, replicated] squared sums, dense and expert. Per-tensor norms in one fused call
    # each (no FP64 copy of every gradient), summed in FP64.
    grads: dict[tuple[bool, int], list[torch.Tensor]] = {}
    for p in module.parameters():
        if p.grad is None or getattr(p, "ds_pipe_replicated", False):
            continue
        key = (getattr(p, "allreduce", True) is False, 0 if getattr(p, "tensor_model_parallel", False) else 1)
        grads.setdefault(key, []).append(p.grad.detach())
    dense, experts = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for (is_expert, slot), tensors in grads.items():
        norms = torch.stack(torch._foreach_norm(tensors)).double().cpu()
        (experts if is_expert else dense)[slot] += norms.pow(2).sum()
    if ep_group is not None:
        experts = _all_reduce(experts, ep_group, device)
    dense = dense + experts
    if pipe_group is not None:
        dense = _all_reduce(dense, pipe_group, device)
    sharded = dense[:1]
    if tp_group is not None:
        sharded = _all_reduce(sharded, tp_group, device)
    norm = float((sharded[0] + dense[1]).sqrt())
    if clip is not None and norm > clip:
        coef = clip / (norm + 1e-6)  # DeepSpeed's and torch's clip_grad_norm_ formula
        for p in module.parameters():
            if p.grad is not None:
                p.grad.mul_(coef)
    return norm
