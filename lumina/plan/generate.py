"""The planned DeepSpeed JSON and SLURM script of each of the 32 preset/mode combinations.

Hardware: the benchmark table's, 1 to 48 A100s. Each combination gets the smallest GPU count of
TABLE_GPUS on A100-80GB where the planner finds a layout that fits; a model that fits on none of
them gets the count the planner says it needs (doubling from 48), so `sbatch slurm/<name>.sh` is a
valid submission on a cluster with that many A100s, and the script's header says so.
"""

from __future__ import annotations

import math
from functools import lru_cache

from lumina.plan.hardware import gpu
from lumina.plan.search import Plan, fastest_fitting
from lumina.presets import SIZES, get_preset
from lumina.train.dsconfig import base_config

TABLE_GPU = "a100-80gb"
TABLE_GPUS = (1, 2, 4, 8, 16, 24, 32, 40, 48)
MODES = ("dense", "moe", "mod", "hybrid")
SLURM_TIME = "2-00:00:00"  # a common partition limit; requeue + resume carries a run past it


def combos() -> list[tuple[str, str]]:
    return [(size, mode) for size in SIZES for mode in MODES]


def gpu_counts() -> list[int]:
    """The benchmark table's GPU counts, then doubling: the ladder a smallest fit is looked for on."""
    counts = list(TABLE_GPUS)
    while counts[-1] < 1 << 16:
        counts.append(counts[-1] * 2)
    return counts


@lru_cache(maxsize=None)
def smallest_fit(size: str, mode: str, gpu_name: str = TABLE_GPU) -> Plan:
    """The fastest plan on the smallest count of `gpu_counts()` GPUs where one fits."""
    cfg, g = get_preset(size, mode), gpu(gpu_name)
    for n in gpu_counts():
        plan = fastest_fitting(cfg, g, n)
        if plan is not None:
            return plan
    raise ValueError(f"{size}/{mode}: no layout fits on up to {gpu_counts()[-1]} x {gpu_name}")


def table_plan(size: str, mode: str) -> Plan:
    """The plan of the generated files: the smallest A100-80GB fit."""
    return smallest_fit(size, mode, TABLE_GPU)


def train_iters(plan: Plan) -> int:
    return max(1, math.ceil(plan.tokens / (plan.global_batch * plan.seq)))


def ds_config(plan: Plan) -> dict:
    cfg = base_config(plan.zero, bf16=True)
    cfg.update({"train_micro_batch_size_per_gpu": plan.micro_batch,
                "gradient_accumulation_steps": plan.grad_accum,
                "train_batch_size": plan.global_batch})
    return cfg


def header(plan: Plan) -> list[str]:
    """Why this hardware, for the script's comments."""
    within = plan.gpus <= TABLE_GPUS[-1]
    return [f"{plan.cfg.name}/{plan.cfg.mode}: {plan.gpus} x {plan.gpu.name} ({plan.nodes} node(s) of {plan.gpus_per_node})"
            + ("" if within else f"; fits on none of the benchmark table's 1-{TABLE_GPUS[-1]} A100s"),
            f"plan: TP {plan.tp} x PP {plan.pp} x DP {plan.dp} (EP {plan.ep}), ZeRO {plan.zero}, micro-batch "
            f"{plan.micro_batch} x accumulation {plan.grad_accum}, recompute {plan.recompute}, "
            f"{plan.memory.total / 2**30:.1f} GiB per GPU of {plan.gpu.memory_gib:g}",
            f"projected (not measured): {plan.tokens_per_s:,.0f} tokens/s at {plan.mfu.kind} {plan.mfu.mfu:.0%} MFU, "
            f"{plan.hours:,.1f} h for {plan.tokens:.3g} tokens; see `lumina plan`"]
