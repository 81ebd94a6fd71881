"""Each parameter's fp32 master weight and Adam moments, whole over data parallel, under every
optimizer DeepSpeed may wrap Lumina's AdamW in.

What a layout-free checkpoint needs is, per parameter, the tensors an optimizer step reads: the
fp32 master weight, `exp_avg` and `exp_avg_sq`. Where they live depends on the layout:

| layout | master weight | Adam moments | how they are reached |
| --- | --- | --- | --- |
| ZeRO-0, fp32 (with or without PP) | the module's parameter | `optimizer.state[param]` | directly |
| ZeRO-0, bf16, no PP: DeepSpeed's `FP16_UnfusedOptimizer` | its `fp32_groups` copy | the inner AdamW's state of that copy | by position in `fp16_groups` |
| ZeRO-1/2, and bf16 with PP (`BF16_Optimizer`) | a fragment of a flat partition | fragments of the flat partition's state | `deepspeed.utils.safe_get/set_full_*` (an all-reduce over the parameter's data-parallel group) |
| ZeRO-3 | a partition | partitions | the same functions; the bf16/fp32 module copy through `GatheredParameters` |

DeepSpeed's functions cover the last two rows only (they return None for the first two); the
first two are plain torch objects. Everything here is collective over data parallel where
DeepSpeed's functions are: every rank calls it for the same parameters in the same order.
"""

from __future__ import annotations

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def _inner(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer at the bottom of DeepSpeed's wrappers: Lumina's own AdamW object."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    while hasattr(optimizer, "optimizer") and isinstance(optimizer.optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _unfused_master(optimizer, param: torch.nn.Parameter) -> torch.Tensor | None:
    """The fp32 copy FP16_UnfusedOptimizer keeps of `param`, or None under any other optimizer."""
    for lp_group, hp_group in zip(getattr(optimizer, "fp16_groups", ()), getattr(optimizer, "fp32_groups", ())):
        for lp, hp in zip(lp_group, hp_group):
            if lp is param:
                return hp
    return None


def _deepspeed_managed(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def adam_step(optimizer) -> int:
    """Adam's step count (the same for every parameter; 0 before the first step)."""
    for state in _inner(optimizer).state.values():
        step = state.get("step")
        if step is not None:
            return int(step.item() if torch.is_tensor(step) else step)
    return 0


def prepare(optimizer) -> None:
    """Make every parameter's Adam moments reachable. torch creates them at the first step, and a
    checkpoint's are loaded before that, so zero moments are created where there are none. ZeRO-1/2
    and BF16_Optimizer link each parameter to its fragment of the flat state once, at their first
    step, and keep nothing if the state was still empty then; they are linked again here."""
    inner = _inner(optimizer)
    # ZeRO-3 hands its flat fp32 partitions to the inner optimizer only during its step.
    flat = [(p, inner.defaults) for p in getattr(optimizer, "fp32_partitioned_groups_flat", ())]
    for p, group in [(p, g) for g in inner.param_groups for p in g["params"]] + flat:
        if inner.state.get(p):
            continue
        device = p.device if group.get("fused") or group.get("capturable") else torch.device("cpu")
        inner.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32, device=device),
                          "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                          "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def set_adam_step(optimizer, step: int) -> None:
    for state in _inner(optimizer).state.values():
        old = state.get("step")
        if torch.is_tensor(old):
            old.fill_(float(step))
        elif old is not None:
            state["step"] = step


def get(optimizer, param: torch.nn.Parameter, moments: bool = True) -> dict[str, torch.Tensor]:
    """{"param": fp32 master, "exp_avg", "exp_avg_sq"} of `param`, whole over data parallel (a
    tensor-parallel or expert shard stays a shard). Collective under ZeRO and BF16_Optimizer."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if _deepspeed_managed(param):
        out = {"param": safe_get_full_fp32_param(param)}
        if moments:
            out.update({k: safe_get_full_optimizer_state(param, k) for k in MOMENTS})
        return {k: v.detach().float().cpu() for k, v in out.items()}
    master = _unfused_master(optimizer, param)
    master = param if master is None else master
    out = {"param": master.detach().float().cpu().clone()}
    if moments:
        state = _inner(optimizer).state.get(master, {})
        out.update({k: (state[k].detach().float().cpu().clone() if k in state else torch.zeros_like(out["param"]))
                    for k in MOMENTS})
    return out


@torch.no_grad()
def set_(optimizer, param: torch.nn.Parameter, values: dict[str, torch.Tensor]) -> None:
    """Set `param`'s master weight (and its low-precision module copy) and, where `values` holds
    them, its Adam moments, from tensors whole over data parallel. Call `prepare` first."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    value = values["param"]
    if _deepspeed_managed(param):
        if hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.to(param.device, param.dtype))
            for k in ("param", *MOMENTS):
                if k in values:
                    _set_zero3_partition(param, values[k], None if k == "param" else k)
            return
        param.data.copy_(value.to(param.device, param.dtype))
        safe_set_full_fp32_param(param, value.to(param.device).float())
        for k in MOMENTS:
            if k in values:
                safe_set_full_optimizer_state(param, values[k].to(param.device).float(), k)
        return
    param.data.copy_(value.to(param.device, param.dtype))
    master = _unfused_master(optimizer, param)
    if master is not None:
        master.data.copy_(value.to(master.device, master.dtype))
    else:
        master = param
    state = _inner(optimizer).state.get(master)
    if state is None:
        return
    for k in MOMENTS:
        if k in values and k in state:
            state[k].copy_(values[k].to(state[k].device, state[k].dtype))


def _set_zero3_partition(param: torch.nn.Parameter, value: torch.Tensor, key: str | None) -> None:
    """This rank's ZeRO-3 partition of `param`'s master weight (key None) or moment, from the whole
    tensor. DeepSpeed's `set_full_hp_param` does the same but slices past the end for the padded
    last partition of a parameter whose size the data-parallel size does not divide (a 1-element
    parameter on 2 ranks)."""
    opt = param._z3_optimizer
    part, _ = opt._get_fp32_opt_state_partition(param, release_swap_buffers=False, optim_state_key=key)
    flat = value.flatten().to(part.device, part.dtype)
    start = part.numel() * opt._get_param_partition_rank(param)
    n = max(0, min(part.numel(), flat.numel() - start))
    part.data.zero_()
    part.data[:n].copy_(flat[start:start + n])
