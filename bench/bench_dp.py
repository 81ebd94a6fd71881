"""Data-parallel overhead: 1-rank vs 2-rank training throughput on the same global batch, and the
gradient communication volume of one optimizer step, computed from the model and counted on the
collective calls. Prints the tables; run:

    python bench/bench_dp.py [--stages 0 1] [--iters 8] [--repeats 3] [--json PATH]

Throughput: the real Trainer (DeepSpeed engine, gloo on CPU) runs in spawned ranks; 1 rank does
micro-batch M x accumulation 2, 2 ranks do micro-batch M x DP 2, so both see the same global
batch. Only steady-state iterations are timed (the first --warmup ones are not); each run gives
the median iteration time, and the ratio is the median over --repeats interleaved rounds.

Communication: every torch.distributed collective is wrapped before DeepSpeed starts (it caches
some of them), and the bytes of its tensors are counted only inside the timed iterations, so the
start-up broadcasts and eval are not counted.

Caveat: the cores are split between the ranks (1 rank gets all --threads intra-op threads, 2 ranks
get half each). On a machine with as few cores as ranks the two ranks share the same cores, so DP
cannot speed anything up here: the ratio measures DP's overhead (communication, duplicated
optimizer work, smaller per-rank GEMMs), not its scaling. When other jobs load the machine, a
rank with 2+ threads can stall on its OpenMP barriers (steps 10-50x slower); --threads 1 avoids it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from lumina.bench.collectives import CommCounter, spawn_ranks, wire_bytes
from lumina.util.provenance import write_json

def _rank(argv: list[str], warmup: int, iters: int) -> dict:
    """One rank: build the Trainer, run warm-up then timed iterations; what the parent reports."""
    import torch
    import torch.distributed as dist

    counter = CommCounter()
    counter.install()  # before DeepSpeed caches its all-gather / reduce-scatter functions
    from lumina.pretrain import build_parser
    from lumina.train.loop import Trainer

    trainer = Trainer(build_parser().parse_args(argv))
    for _ in range(warmup):
        trainer.train_iteration()
        trainer.iteration += 1
    times = []
    for _ in range(iters):
        dist.barrier()  # start together, so a step's time includes waiting for the slower rank
        start = time.perf_counter()
        counter.active = True
        trainer.train_iteration()
        counter.active = False
        times.append(time.perf_counter() - start)
        trainer.iteration += 1
    params = sum(p.numel() for p in trainer.engine.module.parameters() if p.requires_grad)
    result = {"times": times, "params": params, "threads": torch.get_num_threads(),
              "calls": counter.calls, "bytes": counter.bytes}
    dist.barrier()
    dist.destroy_process_group()
    return result


def run(world: int, argv: list[str], threads: int, warmup: int, iters: int, timeout: float) -> dict:
    """Spawn `world` fresh ranks (no DeepSpeed state shared between runs); rank 0's result."""
    return spawn_ranks(world, _rank, (argv, warmup, iters), threads, timeout)[0]


def computed_step_comm(stage: int, params: int) -> dict[str, int]:
    """Gradient payload bytes per optimizer step from the model (fp32, 4 bytes a parameter).

    ZeRO-0: the engine all-reduces every gradient (buffered_allreduce_fallback).
    ZeRO-1/2 in DeepSpeed 0.19 (stage_1_and_2.average_tensor, reduce_scatter=True and the default
    use_multi_rank_bucket_allreduce=True): the gradient buckets are *all-reduced* and each rank
    keeps its partition (allreduce_and_scatter), then the updated fp32 partitions are all-gathered
    (all_gather_dp_groups). A textbook ZeRO-1 would reduce-scatter instead: (N-1)/N less traffic.
    """
    grads = params * 4
    return {"all_reduce": grads} if stage == 0 else {"all_reduce": grads, "all_gather_into_tensor": grads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--mode", default="dense", help="dense, moe, mod or hybrid")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1], help="ZeRO stages (0-2)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per run")
    parser.add_argument("--iters", type=int, default=8, help="timed iterations per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads in all, split evenly between the ranks")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run before giving up")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    world, accum = 2, 2
    gbs = args.micro_batch_size * world
    tokens_per_iter = gbs * args.seq_length
    os.environ.setdefault("LUMINA_CACHE", os.path.join(tempfile.gettempdir(), "lumina-bench-cache"))
    # tok/s[stage][world] per round; comm[stage] from the last 2-rank round.
    rates: dict[int, dict[int, list[float]]] = {s: {1: [], world: []} for s in args.stages}
    comm: dict[int, dict] = {}
    params, threads_seen = 0, {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_dp_") as tmp:
        # Interleaved rounds: each round runs every configuration once, so a slow spell of the
        # machine hits all of them rather than one.
        for rnd in range(args.repeats):
            for stage in args.stages:
                for ranks in (1, world):
                    argv = ["--preset", args.preset, "--mode", args.mode,
                            "--seq-length", str(args.seq_length),
                            "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(gbs),
                            "--zero-stage", str(stage), "--train-iters", str(args.warmup + args.iters),
                            "--eval-iters", "0", "--eval-interval", "1000000", "--save-interval", "1000000",
                            "--log-interval", "1000000", "--no-progress",
                            "--peak-tflops", "1",  # else the Trainer measures a CPU matmul peak (MFU only)
                            "--run-dir", os.path.join(tmp, f"r{rnd}_z{stage}_w{ranks}")]
                    threads = max(1, args.threads // ranks)
                    res = run(ranks, argv, threads, args.warmup, args.iters, args.timeout)
                    rates[stage][ranks].append(tokens_per_iter / statistics.median(res["times"]))
                    params, threads_seen[ranks] = res["params"], res["threads"]
                    if ranks == world:
                        comm[stage] = {op: (res["calls"][op] / args.iters, res["bytes"][op] / args.iters)
                                       for op in sorted(res["calls"])}
    elapsed = time.perf_counter() - start

    print(f"preset={args.preset}/{args.mode} params={params:,} seq={args.seq_length} global batch {gbs} "
          f"= 1 rank x micro {args.micro_batch_size} x accum {accum} = {world} ranks x micro "
          f"{args.micro_batch_size}; threads/rank 1:{threads_seen.get(1)} {world}:{threads_seen.get(world)}; "
          f"{args.iters} timed iters (+{args.warmup} warm-up), {args.repeats} interleaved rounds, {elapsed:.0f} s")
    print(f"{'ZeRO':<6}{'1-rank tok/s':>14}{f'{world}-rank tok/s':>14}{'ratio':>8}   per-round ratios")
    report: dict[str, Any] = {"preset": args.preset, "mode": args.mode, "params": params,
                              "seq_length": args.seq_length, "global_batch_size": gbs, "world": world,
                              "iters": args.iters, "warmup": args.warmup, "repeats": args.repeats,
                              "threads_per_rank": threads_seen, "stages": {}}
    for stage in args.stages:
        one, two = rates[stage][1], rates[stage][world]
        ratios = [b / a for a, b in zip(one, two)]
        print(f"{stage:<6}{statistics.median(one):>14,.0f}{statistics.median(two):>14,.0f}"
              f"{statistics.median(ratios):>8.2f}   {' '.join(f'{r:.2f}' for r in ratios)}")
        report["stages"][str(stage)] = {"tokens_per_s_1rank": one, f"tokens_per_s_{world}rank": two,
                                        "ratios": ratios, "ratio_median": statistics.median(ratios)}

    print(f"\nComm per optimizer step, {world} ranks, rank 0 (payload = full buffer reduced / gathered; "
          f"wire = bytes sent per rank by ring algorithms: all-reduce 2(N-1)/N, all-gather and "
          f"reduce-scatter (N-1)/N, others 1x)")
    print(f"{'ZeRO':<6}{'op':<24}{'calls/step':>11}{'payload B/step':>16}")
    for stage in args.stages:
        for op, (calls, nbytes) in comm[stage].items():
            print(f"{stage:<6}{op:<24}{calls:>11.1f}{nbytes:>16,.0f}")
    print(f"\n{'ZeRO':<6}{'computed payload B':>20}{'measured payload B':>20}{'ratio':>7}"
          f"{'computed wire B':>17}{'measured wire B':>17}{'ratio':>7}")
    for stage in args.stages:
        computed = computed_step_comm(stage, params)
        measured = {op: nbytes for op, (_, nbytes) in comm[stage].items()}
        c, m = sum(computed.values()), sum(measured.values())
        cw, mw = wire_bytes(computed, world), wire_bytes(measured, world)
        print(f"{stage:<6}{c:>20,.0f}{m:>20,.0f}{m / c:>7.3f}{cw:>17,.0f}{mw:>17,.0f}{mw / cw:>7.3f}")
        report["stages"][str(stage)].update({
            "comm_per_step": {op: {"calls": calls, "payload_bytes": nbytes}
                              for op, (calls, nbytes) in comm[stage].items()},
            "computed_payload_bytes": computed, "measured_payload_bytes": m,
            "computed_wire_bytes": cw, "measured_wire_bytes": mw})
    print("computed: ZeRO-0 all_reduce(4P); ZeRO-1/2 all_reduce(4P) + all_gather(4P) (DeepSpeed 0.19 "
          "all-reduces the gradient buckets, see computed_step_comm); P = trainable parameters.")
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
