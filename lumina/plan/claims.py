"""Claims check: figures from the benchmark table that inspired Lumina, beside the planner's.

Only figures we hold with their provenance are listed in CLAIMS. Lumina's brief quotes one of the
table's throughput cells (7B dense, one A100, 42,500 tokens/s); the rest of the table's figures
were not given to this repository, so they are not invented here: add each one to CLAIMS with its
source and the check covers it (docs/ops.md).

For each claim: the implied MFU = claimed tokens/s x training FLOPs per token / (GPUs x peak),
with FLOPs per token from lumina.accounting; the memory the planner's smallest layout needs on
the claimed GPUs; and a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from lumina.accounting import account
from lumina.plan.hardware import BEST_PUBLISHED_MFU, GIB, gpu
from lumina.plan.search import best, candidates
from lumina.presets import get_preset


@dataclass(frozen=True)
class Claim:
    preset: str
    mode: str
    gpu: str
    gpus: int
    tokens_per_s: float
    source: str


CLAIMS: tuple[Claim, ...] = (
    Claim("b7", "dense", "a100-80gb", 1, 42_500,
          "original benchmark table, 7B dense row, as quoted in Lumina's brief (A100 memory size not stated: "
          "the 80 GB part is assumed, the more favourable one)"),
)


def check(claim: Claim) -> dict:
    cfg = get_preset(claim.preset, claim.mode)
    g = gpu(claim.gpu)
    acc = account(cfg)
    implied = claim.tokens_per_s * acc.flops_per_token / (claim.gpus * g.peak_tflops * 1e12)
    plan = best(cfg, g, claim.gpus)
    gpn = min(g.gpus_per_node, claim.gpus)
    smallest = min(candidates(cfg, g, claim.gpus, gpn, max(1, 4 * 1024 * 1024 // cfg.seq_length),
                              cfg.seq_length, 1.0, 0.0), key=lambda p: p.memory.total)
    family = next(f for f in BEST_PUBLISHED_MFU if claim.gpu.startswith(f))
    best_mfu = BEST_PUBLISHED_MFU[family]
    verdicts = []
    if implied > 1.0:
        verdicts.append(f"physically impossible: needs {implied:.0%} of peak FLOP/s")
    elif implied > best_mfu:
        verdicts.append(f"implausible: implied MFU {implied:.0%} is above the best published {best_mfu:.1%}")
    if not plan.fits:
        verdicts.append(f"does not fit: needs {smallest.memory.total / GIB:.0f} GiB per GPU on {claim.gpus} x "
                        f"{g.name} ({g.memory_gib:g} GiB)")
    return {
        "preset": claim.preset, "mode": claim.mode, "gpu": claim.gpu, "gpus": claim.gpus,
        "claimed_tokens_per_s": claim.tokens_per_s, "source": claim.source,
        "flops_per_token": acc.flops_per_token, "implied_mfu": implied,
        "planner_tokens_per_s": plan.tokens_per_s if plan.fits else None, "planner_mfu": plan.mfu.mfu,
        "memory_needed_gib": smallest.memory.total / GIB, "gpu_memory_gib": g.memory_gib,
        "verdict": "; ".join(verdicts) or "plausible",
    }


def table(rows: list[dict]) -> str:
    """Markdown table of checked claims (also what `lumina plan --check-claims` prints)."""
    out = ["| claim | hardware | claimed tokens/s | implied MFU | planner tokens/s (MFU) | memory needed / GPU | verdict |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        planner = (f"{r['planner_tokens_per_s']:,.0f} ({r['planner_mfu']:.0%})" if r["planner_tokens_per_s"]
                   else "does not fit")
        out.append(f"| {r['preset']} {r['mode']} | {r['gpus']} x {r['gpu']} | {r['claimed_tokens_per_s']:,.0f} | "
                   f"{r['implied_mfu']:.0%} | {planner} | {r['memory_needed_gib']:.0f} GiB of {r['gpu_memory_gib']:g} | "
                   f"{r['verdict']} |")
    return "\n".join(out)
