"""AdamW with param groups that keep weight decay off norms and biases, expert groups as
DeepSpeed expects, a skippable step for non-finite losses, and the warmup + cosine schedule."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

# Where torch has fused AdamW kernels and Lumina runs (torch also has them for mps, xpu and hpu).
_FUSED_DEVICES = ("cpu", "cuda")
_warned_unfused: set[str] = set()


class _SkipNextStep:
    """Mixin: an optimizer whose next step can be skipped, leaving moments, step count and
    weights untouched. DeepSpeed (ZeRO 0-3, bf16, offload) calls the client optimizer's step() at
    the accumulation boundary, so skipping here works under every one of them."""

    skip_next: bool = False
    skipped_last: bool = False
    # Set under pipeline parallel, where only the last stage sees the loss: a collective that
    # every rank reaches at its step and that returns whether any rank saw a non-finite loss.
    decide_skip = None

    def step(self, *args, **kwargs):
        if self.decide_skip is not None:
            self.skip_next = self.decide_skip()
        self.skipped_last = self.skip_next
        if self.skip_next:
            self.skip_next = False
            return None
        return super().step(*args, **kwargs)


class SkippableAdamW(_SkipNextStep, torch.optim.AdamW):
    pass


def make_optimizer(groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                   cpu_offload: bool) -> torch.optim.Optimizer:
    """torch AdamW, fused; with ZeRO-Offload, DeepSpeed's CPU Adam in AdamW mode (DeepSpeed refuses
    other optimizers there, and its vectorised CPU step is what makes offload bearable).

    Fused, because the per-tensor kernels of the default (foreach) step cost more than the update
    itself at small widths: on the benchmark's 2-core CPU one debug MoE step's update takes 3.8 ms
    fused against 19.2 ms foreach (docs/training.md). It is also the Hugging Face Trainer's
    default (`adamw_torch_fused`). Where torch has no fused kernel for a parameter's device or
    dtype, the foreach step runs instead, with one warning that says so.
    """
    if not cpu_offload:
        unfusable = sorted({f"{p.dtype} on {p.device.type}" for g in groups for p in g["params"]
                            if p.device.type not in _FUSED_DEVICES or not p.is_floating_point()})
        if not unfusable:
            return SkippableAdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        key = ", ".join(unfusable)
        if key not in _warned_unfused:
            _warned_unfused.add(key)
            warnings.warn(f"fused AdamW runs on floating-point parameters on {' or '.join(_FUSED_DEVICES)}, "
                          f"but some are {key}; falling back to torch's foreach AdamW (same update, slower)",
                          stacklevel=2)
        return SkippableAdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    class SkippableCPUAdam(_SkipNextStep, DeepSpeedCPUAdam):
        pass

    return SkippableCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)


def param_groups(model: nn.Module, weight_decay: float, expert_group: str = "experts") -> list[dict]:
    """Decay matrices only; norms, biases and 1-D params get none. Expert weights go in their
    own group marked the way DeepSpeed's MoE utilities mark them (`moe: True`, `name`: under
    expert parallel the DeepSpeed expert group name, e.g. `ep_size_2`)."""
    decay, no_decay, experts = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "is_expert", False):
            experts.append(p)
        elif p.ndim < 2 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    if experts:
        groups.append({"name": expert_group, "params": experts, "weight_decay": weight_decay, "moe": True})
    return [g for g in groups if g["params"]]


def lr_at(iteration: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `total` (Loshchilov & Hutter 2017).

    A pure function of the iteration, so resuming needs no scheduler state.
    """
    if warmup > 0 and iteration < warmup:
        return lr * (iteration + 1) / warmup
    progress = min(1.0, (iteration - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
