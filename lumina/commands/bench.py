"""`lumina bench`: train every mode at debug and debug_200m beside the baselines, project the rest,
and write the results file, docs/benchmarks.md and the plots.

    lumina bench                              # docs/benchmarks.md, docs/benchmarks/{results.json,*.png}
    lumina bench --debug-200m-tokens 8192     # a longer debug_200m budget
    lumina bench --smoke                      # seconds of debug: every output, under runs/bench-smoke
    lumina bench --report-only                # re-render the page and plots from the results file
    lumina bench --add-gpu gpu_bench.json     # add tests/gpu/bench.sh's results, re-render
    lumina bench --upgrade                    # rewrite a schema-4 results file to the current schema
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="a few iterations of debug in every mode and baseline (default output: runs/bench-smoke)")
    parser.add_argument("--debug-tokens", type=int, default=262_144, help="training tokens per debug run")
    parser.add_argument("--debug-200m-tokens", type=int, default=4_096,
                        help="training tokens per debug_200m run (the shortened budget)")
    parser.add_argument("--sizes", default="debug,debug_200m", help="which measured sizes to run")
    parser.add_argument("--out-dir", default=None,
                        help="results.json and the PNGs (default: docs/benchmarks, or runs/bench-smoke)")
    parser.add_argument("--markdown", default=None,
                        help="the page to write (default: docs/benchmarks.md, or <out-dir>/benchmarks.md)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: render the page and plots from <out-dir>/results.json")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one training run may take")
    parser.add_argument("--add-gpu", default=None, metavar="GPU_BENCH_JSON",
                        help="merge tests/gpu/bench.sh's gpu_bench.json into <out-dir>/results.json and re-render "
                             "(refused unless it records the commit it measured)")
    parser.add_argument("--upgrade", action="store_true",
                        help="rewrite <out-dir>/results.json from schema 4 to the current schema (verdicts "
                             "recomputed from its measurements, unrecorded provenance marked so) and re-render")


def _paths(args: argparse.Namespace) -> tuple[str, str]:
    out_dir = args.out_dir or ("runs/bench-smoke" if args.smoke else "docs/benchmarks")
    markdown = args.markdown or (os.path.join(out_dir, "benchmarks.md") if (args.smoke or args.out_dir)
                                 else "docs/benchmarks.md")
    return out_dir, markdown


def write_report(results: dict, out_dir: str, markdown: str) -> list[str]:
    from lumina.bench import plots, report
    from lumina.util.files import atomic_write_text

    written = plots.draw(results, out_dir)
    rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(markdown)) or ".")
    atomic_write_text(markdown, report.render(results, plots_dir=rel))
    return [markdown, *written]


def run(args: argparse.Namespace) -> int:
    from lumina.bench import results as results_io
    from lumina.bench.spec import default_spec, smoke_spec

    out_dir, markdown = _paths(args)
    results_path = os.path.join(out_dir, "results.json")
    if args.upgrade and (args.add_gpu or args.report_only or args.smoke):
        raise ValueError("--upgrade rewrites the results file on its own: give it without --add-gpu, "
                         "--report-only or --smoke")
    if args.upgrade:
        from lumina.bench.upgrade import upgrade

        results = upgrade(results_io.read_json(results_path), results_path)
        results_io.save(results, results_path)
    elif args.report_only or args.add_gpu:
        results = results_io.load(results_path)
        if args.add_gpu:
            results["gpu_bench"] = results_io.load_gpu_bench(args.add_gpu)
            results_io.save(results, results_path)  # checked against the schema first
    else:
        if args.smoke:
            spec = smoke_spec()
        else:
            spec = default_spec(args.debug_tokens, args.debug_200m_tokens)
            wanted = [s.strip() for s in args.sizes.split(",") if s.strip()]
            unknown = [s for s in wanted if s not in [x.preset for x in spec.sizes]]
            if unknown:
                raise ValueError(f"--sizes {args.sizes!r}: {', '.join(unknown)} is not measured by the bench; "
                                 f"choose from {', '.join(x.preset for x in spec.sizes)}")
            spec = dataclasses.replace(spec, sizes=tuple(s for s in spec.sizes if s.preset in wanted))
        from lumina.bench.runner import run as run_bench

        command = "lumina bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
            else "lumina bench"
        kept = results_io.kept_gpu_bench(results_path)
        results = run_bench(spec, command.strip(), timeout=args.timeout)
        if kept is not None:
            results["gpu_bench"] = kept
        results_io.save(results, results_path)
    for path in [results_path, *write_report(results, out_dir, markdown)]:
        print(f"lumina bench: wrote {path}")
    return 0
