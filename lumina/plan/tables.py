"""The generated tables of docs/ops.md: plans for every size on A100-80GB and H100, and the
claims check. `python -m lumina.plan.tables docs/ops.md` rewrites the part between the markers;
tests/plan/test_generated.py fails when the page drifts."""

from __future__ import annotations

import sys

from lumina.plan.claims import CLAIMS, check, table
from lumina.plan.generate import MODES, smallest_fit
from lumina.plan.hardware import GIB
from lumina.plan.search import hours_label, tokens_label
from lumina.presets import SIZES

BEGIN, END = "<!-- generated: python -m lumina.plan.tables docs/ops.md -->", "<!-- end generated -->"


def plan_table(gpu_name: str) -> str:
    rows = ["| size | mode | GPUs | TP x PP x DP (EP) | ZeRO | micro x accum | recompute | GiB / GPU | "
            "tokens/s (MFU) | tokens | time | cost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in SIZES:
        for mode in MODES:
            plan = smallest_fit(size, mode, gpu_name)
            rows.append(
                f"| {size} | {mode} | {plan.gpus} | {plan.tp} x {plan.pp} x {plan.dp} ({plan.ep}) | {plan.zero} | "
                f"{plan.micro_batch} x {plan.grad_accum} | {plan.recompute} | {plan.memory.total / GIB:.1f} | "
                f"{plan.tokens_per_s:,.0f} ({plan.mfu.mfu * plan.efficiency:.0%}) | {tokens_label(plan.tokens)} | "
                f"{hours_label(plan.hours)} | ${plan.cost:,.0f} |")
    return "\n".join(rows)


def generated() -> str:
    parts = [BEGIN, "",
             "### A100-80GB ($4.00 per GPU-hour)", "", plan_table("a100-80gb"), "",
             "### H100-80GB ($6.00 per GPU-hour)", "", plan_table("h100-80gb"), "",
             "### Claims check (`lumina plan --check-claims`)", "", table([check(c) for c in CLAIMS]), "", END]
    return "\n".join(parts)


def splice(page: str) -> str:
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + generated() + tail


if __name__ == "__main__":
    from lumina.util.files import atomic_write_text

    path = sys.argv[1]
    with open(path) as f:
        atomic_write_text(path, splice(f.read()))
    print(f"wrote {path}")
