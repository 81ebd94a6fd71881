"""`lumina study isoflop`: dense, moe, mod and hybrid at equal training FLOPs, at several sizes and
seeds, on the C4 sample and the embedded corpus; writes the results file, docs/study.md and plots.

    lumina study isoflop                       # docs/study.md, docs/study/{results.json,*.png}
    lumina study isoflop --smoke               # seconds: every output, under runs/study-smoke
    lumina study isoflop --c4 my_c4.jsonl.gz   # train and evaluate on your own C4 file
    lumina study isoflop --report-only         # re-render the page and plots from the results file
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

from lumina.util.argtypes import number


def _list(kind, flag: str, low: float):
    """An argparse type: comma-separated numbers, each >= low."""
    one = number(kind, low=low)

    def parse(text: str):
        try:
            return tuple(one(part) for part in text.split(","))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: {exc}") from None

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    from lumina.util.argtypes import Parser

    sub = parser.add_subparsers(dest="study", metavar="STUDY", parser_class=Parser, required=True)
    p = sub.add_parser("isoflop", help="every mode at equal training FLOPs: frontier, verdicts against dense",
                       description="dense, moe, mod and hybrid at equal training FLOPs, at several sizes and "
                                   "seeds, on the C4 sample and the embedded corpus: held-out loss, the isoFLOP "
                                   "frontier and a verdict per mode against dense; writes the results file, "
                                   "docs/study.md and its plots")
    p.add_argument("--smoke", action="store_true", help="tiny budgets, one seed (default output: runs/study-smoke)")
    p.add_argument("--c4", default=None, metavar="FILE",
                   help="a C4 JSON-lines file (.jsonl, .jsonl.gz, ...) instead of the shipped 1,000-document sample")
    p.add_argument("--budgets", type=_list(float, "--budgets", 1.0), default=None,
                   help="training FLOPs per run, comma-separated (default: 6e10,1.2e11,2.4e11)")
    p.add_argument("--seeds", type=_list(int, "--seeds", 0), default=None, help="default: 1,2,3")
    p.add_argument("--width-factors", type=_list(float, "--width-factors", 0.0), default=None,
                   help="model widths relative to the base preset's (default: 0.25,0.5,1,1.5)")
    p.add_argument("--base", default=None, help="the preset the size ladder scales (default: debug)")
    p.add_argument("--datasets", default=None, help="c4, embedded or both (default: c4,embedded)")
    p.add_argument("--out-dir", default=None, help="results.json and the PNGs (default: docs/study, or runs/study-smoke)")
    p.add_argument("--markdown", default=None,
                   help="the page to write (default: docs/study.md, or <out-dir>/study.md)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: render the page and plots from <out-dir>/results.json")


def _spec(args: argparse.Namespace):
    from lumina.study.spec import default_spec, smoke_spec

    spec = smoke_spec() if args.smoke else default_spec()
    changes = {k: v for k, v in (("budgets", args.budgets), ("seeds", args.seeds),
                                 ("width_factors", args.width_factors), ("base", args.base)) if v is not None}
    if args.datasets is not None:
        changes["datasets"] = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    if "budgets" in changes and spec.ablation_budget >= len(changes["budgets"]):
        changes["ablation_budget"] = len(changes["budgets"]) // 2
    try:
        return dataclasses.replace(spec, **changes)
    except ValueError as exc:
        raise ValueError(str(exc).replace("study ", "--", 1) if str(exc).startswith("study ") else str(exc)) from None


def write_report(results: dict, out_dir: str, markdown: str) -> list[str]:
    from lumina.study import plots, report
    from lumina.util.files import write_page

    return write_page(markdown, out_dir, lambda rel: report.render(results, plots_dir=rel),
                      lambda d: plots.draw(results, d))


def run(args: argparse.Namespace) -> int:
    from lumina.study import results as results_io

    out_dir = args.out_dir or ("runs/study-smoke" if args.smoke else "docs/study")
    markdown = args.markdown or (os.path.join(out_dir, "study.md") if (args.smoke or args.out_dir) else "docs/study.md")
    results_path = os.path.join(out_dir, "results.json")
    if args.report_only:
        results = results_io.load(results_path)
    else:
        spec = _spec(args)
        if args.c4 is not None:
            from lumina.study.data import check_c4_file

            check_c4_file(args.c4)
        from lumina.study.runner import run as run_study

        argv = sys.argv[1:3] == ["study", "isoflop"]
        command = "lumina study isoflop" + (" " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if argv else "")
        results = run_study(spec, command.strip(), out_dir, c4_file=args.c4)
        results_io.save(results, results_path)
        os.unlink(os.path.join(out_dir, "progress.jsonl"))  # the results file now holds every run
    for path in [results_path, *write_report(results, out_dir, markdown)]:
        print(f"lumina study: wrote {path}")
    return 0
