"""The study's results file: its schema (checked on write and on read with the benchmark's
checker, `lumina.bench.results.check`) and atomic I/O."""

from __future__ import annotations

import json

from lumina.bench.results import MACHINE, NUM, OPT_NUM, OPT_STR, VERSIONS, OneOf, check

# lumina.util.provenance's block (the same fields every results file carries), plus the study's own.
PROVENANCE = {"commit": OPT_STR, "dirty": (bool, type(None)), "command": str, "machine": MACHINE,
              "versions": VERSIONS, "note": OPT_STR, "date": str,
              "wall_seconds": NUM, "resumed_runs": int, "train_seconds": NUM, "load_average_start": [NUM], "load_average_end": [NUM], "threads": int}
RUN = {"dataset": str, "budget": NUM, "variant": str, "size": str, "seed": int, "mode": str,
       "hidden_size": int, "ffn_hidden_size": int, "params_total": int, "params_non_embedding": int,
       "flops_per_token": NUM, "steps": int, "tokens": int, "flops": NUM, "train_loss": NUM, "valid_loss": NUM,
       "train_seconds": NUM, "noop_fraction": OPT_NUM}
POINT = {"dataset": str, "budget": NUM, "variant": str, "size": str, "params_non_embedding": int, "flops": NUM,
         "tokens": int, "steps": int, "seeds": int, "valid_loss_mean": NUM, "valid_loss_se": OPT_NUM,
         "losses": dict}
VERDICT = {"dataset": str, "budget": NUM, "variant": str, "size": str, "dense_size": str, "flops": NUM,
           "dense_flops": NUM, "seeds": int, "difference_mean": NUM, "difference_se": OPT_NUM,
           "verdict": OneOf("better", "worse", "undecided")}
SCHEMA = {
    "schema": int, "kind": OneOf("full", "reduced", "smoke"), "provenance": PROVENANCE, "spec": dict,
    "sizes": [{"name": str, "hidden_size": int, "ffn_hidden_size": int}],
    "datasets": [{"name": str, "source": str, "sha256": str, "train_tokens": int, "eval_tokens": int}],
    "runs": [RUN], "points": [POINT], "frontier": [POINT], "verdicts": [VERDICT],
}


def save(results: dict, path: str) -> None:
    from lumina.util.files import atomic_write_text

    check(results, SCHEMA, "study results")
    atomic_write_text(path, json.dumps(results, indent=1, sort_keys=True) + "\n")


def load(path: str) -> dict:
    from lumina.util.files import load_json

    results = load_json(path, "study results", "run `lumina study isoflop` to make it")
    check(results, SCHEMA, "study results")
    return results
