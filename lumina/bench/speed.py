"""Speed ratios measured side by side: Lumina's trainer and its baselines in one process, their
timed steps interleaved.

The full runs of `lumina bench` run one after another, each in its own process, and on a shared
machine the speed of the machine itself drifts between them. On the 2-core VM this benchmark was
built on, the full runs put Lumina's trainer at 0.79x to 1.16x of the plain loop that runs the
same model, while side by side the two were within 4% in every mode (docs/benchmarks.md): the
drift is larger than the distance to the speed goals. Here every system is built in one process and the
timed steps take turns: round r times `steps` steps of each system, in an order that rotates
each round, so a slow stretch of the machine lands on all of them. A round's ratio is Lumina's
steps against the baseline's in that round; the median over rounds and the range are reported,
and a goal is judged on the per-round ratios by lumina.bench.verdict (met only when the lower
one-sided 95% bound of their mean reaches it).

"Lumina" is `Trainer.train_iteration`, the trainer's step: DeepSpeed engine forward, backward,
gradient norm and optimizer step, as `lumina train` runs it, without the per-iteration logging
(which `lumina train` does every --log-interval iterations). Each system warms up first and reads
its own loader, from the same seed, so all of them see the same batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def round_ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """Lumina's speed over the baseline's in each round: their step time over ours."""
    return [b / a for a, b in zip(ours, theirs)]


def trial(job: dict) -> dict:
    """Time `job["kinds"]` baselines against Lumina's trainer, interleaved (see the module doc)."""
    import tempfile

    from lumina.bench.baselines import build
    from lumina.pretrain import build_parser
    from lumina.train.loop import Trainer, _data, plan_layout
    from lumina.train.optim import lr_at

    rounds, steps, warmup = job["rounds"], job["steps"], job["warmup"]
    with tempfile.TemporaryDirectory(prefix="lumina-speed-") as run_dir:
        args = build_parser().parse_args(job["trainer_args"] + ["--run-dir", run_dir])
        trainer = Trainer(args)

        def lumina_step() -> None:
            trainer.train_iteration()
            trainer.iteration += 1

        systems = {"lumina": lumina_step}
        res, cfg, _, _, tokenizer = plan_layout(args)
        for kind in job["kinds"]:
            base = build(kind, args, cfg)
            loader, _ = _data(args, cfg.seq_length, res.micro_batch_size, 0, 1, tokenizer)
            state = {"it": 0}

            def step(base=base, loader=loader, state=state) -> None:
                lr = lr_at(state["it"], args.lr, args.min_lr, args.lr_warmup_iters, args.train_iters)
                base.step(loader.next_batch(), lr)
                state["it"] += 1

            systems[base.name] = step
        names = list(systems)
        for name in names:
            for _ in range(warmup):
                systems[name]()
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for _ in range(steps):
                    systems[name]()
                seconds[name].append((time.perf_counter() - start) / steps)
    tokens = res.micro_batch_size * cfg.seq_length
    out = {"rounds": rounds, "steps": steps, "warmup": warmup, "tokens_per_step": tokens, "systems": {}}
    for name in names:
        out["systems"][name] = {"step_seconds": seconds[name],
                                "tokens_per_s": tokens / statistics.median(seconds[name])}
    for name in names[1:]:
        ratios = round_ratios(seconds["lumina"], seconds[name])
        out["systems"][name].update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumina.bench.speed")
    parser.add_argument("job", help="the job as JSON (runner.run_speed)")
    job = json.loads(parser.parse_args(argv).job)
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(trial(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
