"""Rewrite a schema-4 results file (before provenance was recorded) to the current schema, from its
own measurements: nothing is re-measured and nothing unknown is filled in.

- provenance: the date, command, machine and versions it recorded; the commit and the state of the
  tree as unrecorded (None), with a note saying so.
- peak: its one measurement (repeats 1), with the range of the trainer's own per-process
  measurements in the same run stated in the note (the per-run values are dropped from the runs).
- ratios: recomputed by lumina.bench.runner.ratios from the runs, seeds and speed trials, so the
  verdicts follow the current rule (lumina.bench.verdict).
- gpu_bench: its rows with iterations unrecorded, and provenance unrecorded: the commit it was
  labelled with is named in the note as the commit that added the rows.
"""

from __future__ import annotations

import copy

from lumina.bench.results import SCHEMA_VERSION, check
from lumina.bench.runner import ratios

UNRECORDED = "measured before results files recorded their commit, at schema {old}"


def upgrade(old: dict, where: str = "results") -> dict:
    if not isinstance(old, dict) or old.get("schema") != 4:
        found = old.get("schema") if isinstance(old, dict) else None
        raise ValueError(f"{where}: schema {found!r} cannot be upgraded; only schema 4 can (current: "
                         f"{SCHEMA_VERSION})")
    old = copy.deepcopy(old)
    m = old["machine"]
    note = UNRECORDED.format(old=4)
    runs = old["runs"]
    per_run = [r.pop("peak_tflops") for r in runs if r.get("peak_tflops") is not None]
    for r in runs:
        r.pop("peak_tflops", None)
    peak_note = "taken before the bench repeated the measurement"
    if per_run:
        peak_note += (f"; the trainer's own measurements in this run's {len(per_run)} Lumina processes ranged "
                      f"{min(per_run):.3f} to {max(per_run):.3f} TFLOP/s")
    new = {
        "schema": SCHEMA_VERSION,
        "provenance": {"commit": None, "dirty": None, "date": old["date"], "command": old["command"],
                       "machine": {k: m[k] for k in ("cpu", "cores", "threads", "gpu")},
                       "versions": {"python": m["python"], "lumina": None, "torch": m["torch"],
                                    "deepspeed": m["deepspeed"], "transformers": m["transformers"]},
                       "note": note},
        "peak": {"tflops": m["peak_tflops"], "min": m["peak_tflops"], "max": m["peak_tflops"], "repeats": 1,
                 "source": m["peak_source"], "note": peak_note},
        **{k: old[k] for k in ("spec", "runs", "seed_runs", "speed", "loss_tolerance", "projected", "claims")},
        "ratios": ratios(runs, old["seed_runs"], old["speed"]),
    }
    if old.get("gpu_bench"):
        label = old.get("gpu_bench_commit")
        gpu_note = UNRECORDED.format(old=4) + (
            f"; their label, commit {label}, was typed in when they were added and is no record of the code "
            "they measured"
            if label else "")
        new["gpu_bench"] = {
            "provenance": {"commit": None, "dirty": None, "date": None, "command": None, "machine": None,
                           "versions": None, "note": gpu_note},
            "rows": [{**row, "iters": row.get("iters")} for row in old["gpu_bench"]]}
    check(new, where=where)
    return new
