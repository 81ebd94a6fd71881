"""The results file of `lumina bench`: its schema, checked on write and on read, and atomic I/O.

The schema is a small typed description (no jsonschema dependency): each key maps to the types
its value may have; a nested dict is a sub-schema; a one-element list is "a list of these";
`Maybe(sub)` is None or a match of sub; `OneOf(a, b, ...)` is one of those values; `Rule(sub, f)`
is a match of sub that f finds nothing wrong with.
"""

from __future__ import annotations

import json
import os

from lumina.bench.breakdown import PARTS
from lumina.util.files import atomic_write_text, load_json

# Version 5: provenance and the repeated MFU peak; speed goals judged by lumina.bench.verdict.
SCHEMA_VERSION = 5

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


class Rule:
    """A match of `schema` for which `rule(value)` returns None (else the reason it fails)."""

    def __init__(self, schema, rule):
        self.schema = schema
        self.rule = rule


def _unrecorded_needs_a_note(p: dict) -> str | None:
    missing = [k for k in ("commit", "date", "command", "machine", "versions") if p[k] is None]
    if missing and not p["note"]:
        return f"{', '.join(missing)} not recorded and no note says why"
    if p["commit"] is not None and p["dirty"] is None:
        return "commit recorded without whether the tree had uncommitted changes (dirty)"
    return None


BREAKDOWN = {part: NUM for part in PARTS}
POINT = {"iteration": int, "tokens": int, "loss": NUM, "seconds": NUM, "step_seconds": NUM}
RUN = {
    "system": str, "size": str, "mode": str, "hardware": str,
    "params_total": int, "params_active": int, "flops_per_token": NUM,
    "tokens": int, "iters": int, "train_seconds": NUM, "tokens_per_s": NUM, "mfu": OPT_NUM,
    "final_loss": NUM, "valid_loss": NUM, "ppl": NUM, "peak_mem_gb": NUM,
    "skip_rate": OPT_NUM, "flops_reduction": OPT_NUM, "expert_utilisation": OPT_NUM, "load_balance": OPT_NUM,
    "expert_load": OPT_LIST, "mod_skip_per_layer": OPT_LIST,
    "curve": [POINT],
    "breakdown": Maybe(BREAKDOWN),   # seconds per step by part (lumina.bench.breakdown)
}
RATIO = {
    "size": str, "mode": str, "baseline": str, "lumina_tokens_per_s": NUM, "baseline_tokens_per_s": NUM,
    "ratio": NUM, "side_by_side_ratio": OPT_NUM, "side_by_side_range": OPT_LIST,
    # the per-round ratios' mean and one-sided 95% bounds [lower, upper] (lumina.bench.verdict)
    "side_by_side_mean": OPT_NUM, "side_by_side_bounds": OPT_LIST,
    "goal": OPT_NUM, "goal_verdict": OneOf("met", "not met", "undecided", None),
    "lumina_valid_loss": NUM, "baseline_valid_loss": NUM, "loss_difference": NUM,
    "loss_differences": [NUM], "loss_difference_mean": NUM, "loss_difference_se": OPT_NUM,
    "loss_difference_bounds": OPT_LIST, "loss_verdict": OneOf("yes", "no", "undecided"),
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
# iters: training iterations per mode (None: not recorded by the run).
GPU_ROW = {"mode": str, "gpu": str, "layers": int, "iters": (int, type(None)), "tokens_per_s": NUM, "mfu": NUM,
           "peak_mem_gb": NUM, "final_loss": NUM}
MACHINE = {"cpu": str, "cores": int, "threads": int, "gpu": OPT_STR}
VERSIONS = {"python": str, "lumina": OPT_STR, "torch": str, "deepspeed": OPT_STR, "transformers": OPT_STR}
# lumina.util.provenance.provenance(): what ran, where and on which code. Results measured before
# provenance was recorded carry None in what is unknown, and a note that says so.
PROVENANCE = Rule({"commit": OPT_STR, "dirty": (bool, type(None)), "date": OPT_STR, "command": OPT_STR,
                   "machine": Maybe(MACHINE), "versions": Maybe(VERSIONS), "note": OPT_STR},
                  _unrecorded_needs_a_note)
# The MFU peak: measured `repeats` times at the start of a bench run (the median is used for every
# row; min and max are the spread), or a datasheet figure.
PEAK = {"tflops": NUM, "min": NUM, "max": NUM, "repeats": int, "source": str, "note": OPT_STR}
SCHEMA = {
    "schema": int, "provenance": PROVENANCE, "peak": PEAK, "spec": dict,
    "runs": [RUN], "seed_runs": [SEED_RUN], "speed": [SPEED], "ratios": [RATIO], "loss_tolerance": NUM,
    "projected": [PROJECTED], "claims": [CLAIM],
}
# The GPU benchmark (tests/gpu/bench.sh writes this as gpu_bench.json), added to a results file
# with `lumina bench --add-gpu gpu_bench.json`: its own provenance, since it ran elsewhere.
GPU_BENCH = {"provenance": PROVENANCE, "rows": [GPU_ROW]}
OPTIONAL = {"gpu_bench": GPU_BENCH}


def check(value, schema=SCHEMA, where: str = "results") -> None:
    """Raise ValueError naming the first key whose value does not match the schema."""
    if schema is SCHEMA:
        for key, sub in OPTIONAL.items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
    if isinstance(schema, Rule):
        check(value, schema.schema, where)
        reason = schema.rule(value)
        if reason:
            raise ValueError(f"{where}: {reason}")
    elif isinstance(schema, Maybe):
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
    atomic_write_text(path, json.dumps(results, indent=1, sort_keys=True) + "\n")


def read_json(path: str, what: str = "results file", make: str = "run `lumina bench` to make it"):
    return load_json(path, what, make)


def load(path: str) -> dict:
    results = read_json(path)
    version = results.get("schema") if isinstance(results, dict) else None
    if version != SCHEMA_VERSION:
        raise ValueError(f"results file {path} has schema {version!r}, not {SCHEMA_VERSION}: "
                         f"`lumina bench --upgrade --out-dir {os.path.dirname(path) or '.'}` rewrites a schema-4 file")
    check(results)
    return results


def load_gpu_bench(path: str) -> dict:
    """tests/gpu/bench.sh's gpu_bench.json for `lumina bench --add-gpu`: refused unless its rows
    record the commit whose code they measured (the script records it; a label typed in later
    could name any commit)."""
    where = f"--add-gpu {path}"
    data = read_json(path, "--add-gpu file", "run tests/gpu/bench.sh to make it")
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: no rows; expected tests/gpu/bench.sh's gpu_bench.json")
    prov = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(prov, dict) or not prov.get("commit"):
        first = rows[0].get("mode", "?") if isinstance(rows[0], dict) else "?"
        raise ValueError(f"{where}: row 0 ({first}) does not record the commit it measured (provenance.commit); "
                         "run tests/gpu/bench.sh from a git checkout, which records it")
    check(data, GPU_BENCH, where)
    return data


def kept_gpu_bench(path: str) -> dict | None:
    """The GPU section of an existing results file, for a fresh CPU run to carry over: it was measured
    elsewhere (tests/gpu/bench.sh, its own provenance), and a CPU run cannot re-measure it, so a new
    `lumina bench` dropping it would lose the only GPU figures. Read before any training, so a broken
    section stops the run first."""
    if not os.path.exists(path):
        return None
    data = read_json(path)
    section = data.get("gpu_bench") if isinstance(data, dict) else None
    if section is not None:
        check(section, GPU_BENCH, f"{path}: gpu_bench")
    return section
