"""The results file of `lumina bench`: its schema, checked on write and on read, and atomic I/O.

The schema is a small typed description (no jsonschema dependency): each key maps to the types
its value may have; a nested dict is a sub-schema; a one-element list is "a list of these";
`Maybe(sub)` is None or a match of sub; `OneOf(a, b, ...)` is one of those values.
"""

from __future__ import annotations

import json
import os

from lumina.bench.breakdown import PARTS

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
OPT_LIST = (list, type(None))


class Maybe:
    """None, or a value that matches `schema`."""

    def __init__(self, schema):
        self.schema = schema


class OneOf:
    """One of a fixed set of values (a verdict's words)."""

    def __init__(self, *values):
        self.values = values


BREAKDOWN = {part: NUM for part in PARTS}
POINT = {"iteration": int, "tokens": int, "loss": NUM, "seconds": NUM, "step_seconds": NUM}
RUN = {
    "system": str, "size": str, "mode": str, "hardware": str,
    "params_total": int, "params_active": int, "flops_per_token": NUM,
    "tokens": int, "iters": int, "train_seconds": NUM, "tokens_per_s": NUM, "mfu": OPT_NUM,
    "final_loss": NUM, "valid_loss": NUM, "ppl": NUM, "peak_mem_gb": NUM, "peak_tflops": OPT_NUM,
    "skip_rate": OPT_NUM, "flops_reduction": OPT_NUM, "expert_utilisation": OPT_NUM, "load_balance": OPT_NUM,
    "expert_load": OPT_LIST, "mod_skip_per_layer": OPT_LIST,
    "curve": [POINT],
    "breakdown": Maybe(BREAKDOWN),   # seconds per step by part (lumina.bench.breakdown)
}
RATIO = {
    "size": str, "mode": str, "baseline": str, "lumina_tokens_per_s": NUM, "baseline_tokens_per_s": NUM,
    "ratio": NUM, "side_by_side_ratio": OPT_NUM, "side_by_side_range": OPT_LIST, "goal": OPT_NUM, "goal_met": (bool, type(None)), "lumina_valid_loss": NUM,
    "baseline_valid_loss": NUM, "loss_difference": NUM, "loss_no_worse": bool,
    "loss_differences": [NUM], "loss_difference_mean": NUM, "loss_difference_se": OPT_NUM,
    "loss_verdict": OneOf("yes", "no", "undecided"),
}
# One system's side of a speed trial (lumina.bench.speed); ratio*: Lumina's speed over this one's.
SPEED = {"size": str, "mode": str, "system": str, "rounds": int, "steps": int, "warmup": int, "step_seconds": [NUM],
         "tokens_per_s": NUM, "ratio": OPT_NUM, "ratio_min": OPT_NUM, "ratio_max": OPT_NUM}
SEED_RUN = {"size": str, "mode": str, "system": str, "seed": int, "valid_loss": NUM}
PROJECTED = {
    "size": str, "mode": str, "gpu": str, "gpus": int, "layout": str, "tokens_per_s": NUM, "mfu": NUM,
    "memory_gib": NUM, "tokens": NUM, "hours": NUM, "cost_usd": NUM, "flops_reduction": NUM,
    "params_total": int, "params_active": int,
}
CLAIM = {
    "preset": str, "mode": str, "gpu": str, "gpus": int, "claimed_tokens_per_s": NUM, "source": str,
    "flops_per_token": NUM, "implied_mfu": NUM, "planner_tokens_per_s": OPT_NUM, "planner_mfu": NUM,
    "memory_needed_gib": NUM, "gpu_memory_gib": NUM, "verdict": str,
}
GPU_ROW = {"mode": str, "gpu": str, "layers": int, "tokens_per_s": NUM, "mfu": NUM, "peak_mem_gb": NUM,
           "final_loss": NUM}
MACHINE = {"cpu": str, "cores": int, "gpu": OPT_STR, "threads": int, "python": str, "torch": str,
           "deepspeed": OPT_STR, "transformers": OPT_STR, "peak_tflops": NUM, "peak_source": str}
SCHEMA = {
    "schema": int, "date": str, "command": str, "machine": MACHINE, "spec": dict,
    "runs": [RUN], "seed_runs": [SEED_RUN], "speed": [SPEED], "ratios": [RATIO], "loss_tolerance": NUM, "projected": [PROJECTED], "claims": [CLAIM],
}


# Keys a results file may have in addition: the GPU benchmark (tests/gpu/bench.sh), added with
# `lumina bench --add-gpu gpu_bench.json [--gpu-commit REV]` once a GPU run exists.
OPTIONAL = {"gpu_bench": [GPU_ROW], "gpu_bench_commit": str}


def check(value, schema=SCHEMA, where: str = "results") -> None:
    """Raise ValueError naming the first key whose value does not match the schema."""
    if schema is SCHEMA:
        for key, sub in OPTIONAL.items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
    if isinstance(schema, Maybe):
        if value is not None:
            check(value, schema.schema, where)
    elif isinstance(schema, OneOf):
        if value not in schema.values:
            raise ValueError(f"{where}: expected one of {', '.join(map(repr, schema.values))}, got {value!r:.60}")
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        missing = [k for k in schema if k not in value]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        for key, sub in schema.items():
            check(value[key], sub, f"{where}.{key}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if isinstance(value, bool) and bool not in types:  # bool is an int to Python: not here
            raise ValueError(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool")
        if not isinstance(value, types):
            raise ValueError(f"{where}: expected {'/'.join(t.__name__ for t in types)}, "
                             f"got {type(value).__name__} {value!r:.60}")


def save(results: dict, path: str) -> None:
    check(results)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def load(path: str) -> dict:
    try:
        with open(path) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"results file {path} does not exist: run `lumina bench` to make it") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"results file {path} is not JSON ({exc})") from None
    check(results)
    return results
