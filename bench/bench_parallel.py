"""Tensor, pipeline and expert parallel, measured beside what the layout and the model predict:
the bytes every parallel group moves in one optimizer step, and the pipeline bubble. Run:

    python bench/bench_parallel.py [--cases TP2 PP2 EP2 TP2xPP2 TP2xPP2xEP2] [--parts bytes bubble real-bubble]
                                   [--iters 3] [--json PATH]

(about 6 minutes on a 2-core machine.)

Bytes per step ("bytes"): the real Trainer (lumina/train/loop.py, DeepSpeed engine, gloo on CPU,
debug preset, fp32, ZeRO-0) runs each layout in fresh spawned ranks. Every torch.distributed
collective and point-to-point call is wrapped before DeepSpeed and megatron-core start
(lumina/bench/collectives.py) and counted inside --iters steps after --warmup ones. A call is
attributed to TP, PP, EP, DP or EDP (expert data parallel) by its ranks: the group it runs on, or
for a send/recv the pair {this rank, peer}, is looked up in ParallelLayout's group lists (the
embedding group counts as PP; where two kinds have the same ranks, an all-to-all is EP and
anything else the first of TP, PP, DP). Each rank's count is then compared with the figure computed
from the layout and the model dimensions (`computed_bytes`: hidden size, sequence length,
micro-batch, layers per stage, vocabulary shard, micro-batches, and for EP the tokens each rank
routed to each expert, read from the MoE layers after every forward). Payload is each call's full
buffer (as in bench/bench_dp.py); for EP the "remote" rows leave out the rows an all-to-all keeps
on its own rank. Scalars (losses, flags, norms) are measured but not computed: they are the
residual of the measured figure.

Pipeline bubble ("bubble"): the fraction of a step a stage is idle, 1 - busy / step, where busy is
the time in DeepSpeed's ForwardPass and BackwardPass instructions, against (p-1)/(m+p-1) for p
stages and m micro-batches. The stages are synthetic: DeepSpeed's real PipelineEngine (its 1F1B
TrainSchedule, p2p sends, optimizer step) over p one-weight stages whose forward sleeps t and whose
backward sleeps 2t. Sleep needs no CPU, so the measurement holds on a 2-core machine where 4 stage
processes would otherwise fight for the cores and turn compute time into contention: with real
compute, a PP4 stage's busy time would include the time it waits for a core. The formula assumes
equal stages and free communication; the difference is the time of each p2p hop on the critical
path and DeepSpeed's per-instruction work. "real-bubble" measures the same fraction on the real
Trainer at PP2 (debug dense; 2 ranks on 2 cores, one thread each), where the stages are not
equal (the last holds the LM head and the loss) and where busy time is real compute, so other
jobs on the machine inflate it: a reference, beside the idle its stages' costs predict.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from lumina.bench.collectives import CommCounter, spawn_ranks
from lumina.util.provenance import write_json

FP32 = 4
KINDS = ("TP", "PP", "EP", "DP", "EDP")


@dataclass(frozen=True)
class Case:
    name: str
    mode: str
    world: int
    tp: int = 1
    pp: int = 1
    ep: int = 1


CASES = (Case("TP2", "dense", 2, tp=2), Case("PP2", "dense", 2, pp=2), Case("EP2", "moe", 2, ep=2),
         Case("TP2xPP2", "dense", 4, tp=2, pp=2), Case("TP2xPP2xEP2", "hybrid", 8, tp=2, pp=2, ep=2))


# -- bytes per step: measured in the ranks -----------------------------------------------------

def classifier(layout, rank: int):
    """classify(op, group ranks, p2p peer) -> TP, PP, EP, DP, EDP, local (a 1-rank group) or world."""
    lists = {"TP": layout.tp_groups(), "PP": layout.pp_groups() + layout.embedding_groups(),
             "DP": layout.dp_groups(), "EP": layout.ep_groups(), "EDP": layout.expert_dp_groups()}
    mine = {kind: [set(g) for g in groups if rank in g] for kind, groups in lists.items()}

    def classify(op: str, ranks: tuple[int, ...], peer: int | None) -> str:
        members = {rank, peer} if peer is not None else set(ranks)
        if len(members) == 1:
            return "local"
        if op.startswith("all_to_all"):
            order = ("EP", "TP", "PP", "DP", "EDP")
        else:
            order = ("PP", "TP", "DP", "EP", "EDP") if peer is not None else ("TP", "PP", "DP", "EP", "EDP")
        for kind in order:
            if any(members <= g if peer is not None else members == g for g in mine[kind]):
                return kind
        return "world" if len(members) == layout.world_size else "other"

    return classify


def record_routing(module) -> list[tuple[int, list[int], int]]:
    """After every MoE forward: (layer, tokens this rank dispatched to each expert, bytes per count)."""
    from lumina.model.moe import MoE

    log: list[tuple[int, list[int], int]] = []
    for m in module.modules():
        if isinstance(m, MoE):
            layer = int(m.router.weight.init_name.split(".")[1])  # "blocks.<i>.…" on every layout

            def hook(mod, inputs, output, layer=layer):
                counts = mod.stats["tokens_per_expert"]  # what the trainer logs, per forward here
                log.append((layer, counts.tolist(), counts.element_size()))

            m.register_forward_hook(hook)
    return log


def _bytes_rank(argv: list[str], warmup: int, iters: int) -> dict:
    """One rank: count every call of `iters` Trainer steps by group; report what the formula needs."""
    import dataclasses

    import torch.distributed as dist

    counter = CommCounter()
    counter.install()  # before DeepSpeed and megatron-core bind their collectives
    from lumina.pretrain import build_parser
    from lumina.train.loop import Trainer

    trainer = Trainer(build_parser().parse_args(argv))
    rank = dist.get_rank()
    counter.classify = classifier(trainer.layout, rank)
    routing = record_routing(trainer.engine.module)
    for _ in range(warmup):  # the first step also sends the pipeline's tensor shapes
        trainer.train_iteration()
        trainer.iteration += 1
    routing.clear()
    dist.barrier()
    counter.active = True
    for _ in range(iters):
        trainer.train_iteration()
        trainer.iteration += 1
    counter.active = False
    params = [p for p in trainer.engine.module.parameters() if p.requires_grad]
    expert = sum(p.numel() for p in params if getattr(p, "allreduce", True) is False)
    result = {"rank": rank, "by_kind": {f"{k}|{op}": v for (k, op), v in counter.by_kind.items()},
              "routing": routing, "dense_params": sum(p.numel() for p in params) - expert,
              "expert_params": expert, "cfg": trainer.cfg.to_dict(),
              "layout": dataclasses.asdict(trainer.layout), "micro_batch": trainer.res.micro_batch_size,
              "micro_batches": trainer.res.grad_accum}
    dist.barrier()
    dist.destroy_process_group()
    return result


# -- bytes per step: computed from the layout and the model ------------------------------------

def _layout(d: dict):
    from lumina.parallel.layout import ParallelLayout

    return ParallelLayout(**{**d, "stage_num_layers": tuple(d["stage_num_layers"])})


def computed_bytes(ranks: list[dict], rank: int, iters: int = 1) -> dict[str, list[tuple[str, str, float]]]:
    """Per kind, the terms (what, direction, payload bytes per step) one rank's calls should carry.

    Every activation is fp32 (B, T, D) per micro-batch, B = micro-batch, T = sequence length,
    D = hidden size; a MoD-routed layer runs its block on the B x ceil(capacity T) chosen tokens.
    TP (megatron-core): the embedding all-reduces its output; each layer all-reduces the outputs of
    its two row-parallel projections (attention out, MLP down) forward and the input gradients of
    its five column-parallel ones (q, k, v, gate, up) backward; an MoE layer instead all-reduces its
    experts' partial outputs (one row per dispatched token) forward and its input gradient
    backward; the head all-reduces its input gradient, the vocab-parallel loss three (B, T) fp32
    tensors. PP: each stage boundary carries (hidden, aux) forward and their gradients backward,
    per micro-batch; the first and last stage all-reduce the tied embedding's gradient (V/T x D).
    EP, per MoE layer and micro-batch: the per-expert counts, then the tokens to each expert's rank
    and the outputs back, and the same two exchanges reversed in backward. DP/EDP (ZeRO-0): one
    all-reduce of every dense (expert) gradient per step.

    DeepSpeed 0.19's pipeline engine backpropagates a non-last stage's outputs one tensor at a
    time (`out.backward(grad, retain_graph=True)` for hidden, then for aux), so with MoE a second
    backward runs through everything the aux-loss sum depends on: every layer's router, hence every
    attention and every MoE layer but the stage's last. Its TP and EP calls are terms of their own.
    """
    import math

    from lumina.config import ModelConfig

    me = ranks[rank]
    cfg, layout = ModelConfig.from_dict(me["cfg"]), _layout(me["layout"])
    c = layout.coords(rank)
    B, m, T, D = me["micro_batch"], me["micro_batches"], cfg.seq_length, cfg.hidden_size
    first, last = c.pp == 0, c.pp == layout.pp - 1
    stage = list(layout.stage_layers(c.pp))
    routed = set(cfg.routed_layers())
    # Tokens each layer's block runs on, summed over the step's micro-batches, as bytes of (., D).
    rows = {layer: B * (math.ceil(cfg.mod.capacity * T) if layer in routed else T) * m * D * FP32 for layer in stage}
    moe = cfg.moe is not None
    # DeepSpeed 0.19's pipeline backward runs one backward per float output of a non-last stage,
    # (hidden, then aux), so a second pass goes through all that the aux-loss sum depends on: with
    # MoE, every router, hence every attention and all but the stage's last MoE layer.
    again = layout.pp > 1 and not last and moe
    act = B * T * D * FP32 * m  # one (B, T, D) tensor for every micro-batch of the step
    # Per MoE forward of this step: (layer, rows out, rows in, of which to/from other EP ranks).
    exchanges = _expert_exchanges(ranks, rank, layout) if moe else []
    terms: dict[str, list[tuple[str, str, float]]] = {k: [] for k in KINDS}

    if layout.tp > 1:
        tp = terms["TP"]
        if first:
            tp.append(("embedding output", "fwd", act))
        tp.append(("attention out projection", "fwd", sum(rows.values())))
        tp.append(("q, k, v input gradients", "bwd", 3 * sum(rows.values())))
        if moe:
            dispatched = sum(out for _, out, _, _, _ in exchanges) * D * FP32 / iters
            tp.append(("experts' partial outputs", "fwd", dispatched))
            tp.append(("MoE input gradient", "bwd", sum(rows.values())))
        else:
            tp.append(("MLP down projection", "fwd", sum(rows.values())))
            tp.append(("gate, up input gradients", "bwd", 2 * sum(rows.values())))
        if again:
            tp.append(("q, k, v and MoE input gradients again (aux backward)", "bwd",
                       3 * sum(rows.values()) + sum(rows[layer] for layer in stage[:-1])))
        if last:
            tp.append(("head input gradient", "bwd", act))
            tp.append(("vocab-parallel loss: max, target logit, sum of exp", "fwd", 3 * B * T * FP32 * m))

    if layout.pp > 1:
        boundaries = int(not first) + int(not last)
        pair = (B * T * D + 1) * FP32 * m * boundaries  # hidden states and the aux-loss sum
        terms["PP"] += [("activations (hidden, aux) sent and received", "fwd", pair),
                        ("their gradients sent and received", "bwd", pair)]
        if cfg.tie_embeddings and (first or last):
            terms["PP"].append(("tied embedding gradient", "step", cfg.vocab_size // layout.tp * D * FP32))

    if layout.ep > 1:
        row = D * FP32 / iters
        size = me["routing"][0][2] if me["routing"] else 0
        counts = len(exchanges) * layout.num_experts * size / iters
        kept = len(exchanges) * layout.experts_per_rank * size / iters
        for kind, pick in (("EP", lambda e: e[1] + e[2]), ("EP remote", lambda e: e[3] + e[4])):
            terms[kind] = [("expert counts", "fwd", counts - kept if kind == "EP remote" else counts),
                           ("tokens out, outputs back", "fwd", sum(map(pick, exchanges)) * row),
                           ("the same, reversed", "bwd", sum(map(pick, exchanges)) * row)]
            if again:
                terms[kind].append(("reversed again (aux backward)", "bwd",
                                    sum(pick(e) for e in exchanges if e[0] != stage[-1]) * row))

    if layout.dp > 1:
        terms["DP"].append(("dense gradients", "step", me["dense_params"] * FP32))
    if layout.edp > 1 and me["expert_params"]:
        terms["EDP"].append(("expert gradients", "step", me["expert_params"] * FP32))
    return {k: v for k, v in terms.items() if v}


def _expert_exchanges(ranks: list[dict], rank: int, layout) -> list[tuple[int, int, int, int, int]]:
    """Per MoE forward on `rank`: (layer, token rows it sends, rows it receives, and of these the
    rows to / from other EP ranks), from the counts every member of its EP group dispatched."""
    c = layout.coords(rank)
    group = next(g for g in layout.ep_groups() if rank in g)
    own = layout.stage_experts(c.ep)
    out = []
    for call in zip(*(ranks[r]["routing"] for r in group)):  # the same forward on every member
        if len({layer for layer, _, _ in call}) != 1:
            raise RuntimeError(f"expert group {group} ran its MoE layers in different orders: {call}")
        mine = call[group.index(rank)][1]
        kept = sum(mine[e] for e in own)
        received = sum(counts[e] for _, counts, _ in call for e in own)
        out.append((call[0][0], sum(mine), received, sum(mine) - kept, received - kept))
    return out


def measured_bytes(result: dict, iters: int) -> dict[str, dict[str, float]]:
    """Per kind: calls, payload and remote bytes per step, and the operations seen."""
    out: dict[str, dict[str, Any]] = {}
    for key, (calls, payload, remote) in result["by_kind"].items():
        kind, op = key.split("|")
        row = out.setdefault(kind, {"calls": 0.0, "payload": 0.0, "remote": 0.0, "ops": set()})
        row["calls"] += calls / iters
        row["payload"] += payload / iters
        row["remote"] += remote / iters
        row["ops"].add(op)
    return out


def compare(ranks: list[dict], iters: int) -> list[dict]:
    """One row per (rank, kind): computed against measured payload (EP also its remote part)."""
    rows = []
    for r in range(len(ranks)):
        computed, measured = computed_bytes(ranks, r, iters), measured_bytes(ranks[r], iters)
        for kind in sorted(set(computed) | set(measured) - {"local"}, key=lambda k: (k not in KINDS, k)):
            base = kind.split()[0]
            got = measured.get(base, {"calls": 0.0, "payload": 0.0, "remote": 0.0, "ops": set()})
            want = sum(b for _, _, b in computed.get(kind, []))
            value = got["remote"] if kind.endswith("remote") else got["payload"]
            rows.append({"rank": r, "kind": kind, "calls": got["calls"], "ops": sorted(got["ops"]),
                         "computed": want, "measured": value, "ratio": value / want if want else None,
                         "terms": computed.get(kind, [])})
    return rows


def trainer_argv(case: Case, micro_batch: int, micro_batches: int, steps: int, run_dir: str) -> list[str]:
    dp = case.world // (case.tp * case.pp)
    return ["--preset", "debug", "--mode", case.mode, "--seq-length", "128",
            "--micro-batch-size", str(micro_batch), "--global-batch-size", str(micro_batch * micro_batches * dp),
            "--tensor-model-parallel-size", str(case.tp), "--pipeline-model-parallel-size", str(case.pp),
            "--expert-model-parallel-size", str(case.ep), "--zero-stage", "0",
            "--train-iters", str(steps), "--eval-iters", "0", "--eval-interval", "1000000",
            "--save-interval", "1000000", "--log-interval", "1000000", "--no-progress",
            "--peak-tflops", "1",  # else the Trainer measures a CPU matmul peak (MFU only)
            "--run-dir", run_dir]


def run_bytes(case: Case, micro_batch: int, micro_batches: int, warmup: int, iters: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp:
        argv = trainer_argv(case, micro_batch, micro_batches, warmup + iters, tmp)
        try:
            ranks = spawn_ranks(case.world, _bytes_rank, (argv, warmup, iters), threads=1, timeout=timeout)
        except RuntimeError as exc:
            return {"case": case.name, "error": _reason(str(exc))}
    return {"case": case.name, "rows": compare(ranks, iters)}


def _reason(error: str) -> str:
    """The exception line of a failed rank's report (its last 'Error:' line)."""
    lines = [ln.strip() for ln in error.splitlines() if "Error" in ln and ":" in ln]
    return lines[-1] if lines else error.strip().splitlines()[0]


# -- pipeline bubble ---------------------------------------------------------------------------

def time_instructions(engine) -> dict[str, float]:
    """Accumulate the wall time of the pipeline engine's instructions: compute (ForwardPass,
    BackwardPass), p2p (send/recv, where a stage waits for its neighbour), other."""
    from deepspeed.runtime.pipe import schedule

    totals = {"compute": 0.0, "p2p": 0.0, "other": 0.0}
    compute = (schedule.ForwardPass, schedule.BackwardPass)
    p2p = (schedule.SendActivation, schedule.RecvActivation, schedule.SendGrad, schedule.RecvGrad)

    def timed(fn, key):
        def run(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - start
        return run

    engine._INSTRUCTION_MAP = {  # the instance's map: _exec_schedule looks it up on self
        cls: timed(fn, "compute" if cls in compute else "p2p" if cls in p2p else "other")
        for cls, fn in type(engine)._INSTRUCTION_MAP.items()}
    return totals


def _idle_steps(step, totals: dict[str, float], steps: int) -> dict:
    """Run `steps` steps after a barrier each; per step the idle fraction and the time split."""
    import torch.distributed as dist

    idle, busy, walls, split = [], [], [], {k: [] for k in totals}
    for _ in range(steps):
        dist.barrier()
        before = dict(totals)
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
        walls.append(wall)
        for k in totals:
            split[k].append((totals[k] - before[k]) / wall)
        busy.append(totals["compute"] - before["compute"])
        idle.append(1.0 - busy[-1] / wall)
    return {"idle": statistics.median(idle), "idle_steps": idle, "step_s": statistics.median(walls),
            "busy_s": statistics.median(busy),
            **{f"{k}_fraction": statistics.median(v) for k, v in split.items()}}


def _synthetic_stage_class():
    import torch
    from torch import nn

    class SleepCost(torch.autograd.Function):
        """A layer whose forward takes `t` and backward `2t` of wall time, and no CPU."""

        @staticmethod
        def forward(ctx, x, t):
            ctx.t = t
            time.sleep(t)
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            time.sleep(2 * ctx.t)
            return grad, None

    class SleepStage(nn.Module):
        def __init__(self, t: float):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))
            self.t = t

        def forward(self, x):
            return SleepCost.apply(x * self.w, self.t)

    return SleepStage


def _bubble_rank(stages: int, micro_batches: list[int], sleep: float, warmup: int, steps: int) -> dict:
    """One stage of a synthetic p-stage pipeline, for each m: the idle fraction of its steps."""
    import deepspeed
    import torch
    from deepspeed.pipe import LayerSpec, PipelineModule

    from lumina.train import distributed

    distributed.init(torch.device("cpu"))
    stage_class = _synthetic_stage_class()
    out = {}
    for m in micro_batches:
        module = PipelineModule([LayerSpec(stage_class, sleep) for _ in range(stages)], num_stages=stages,
                                loss_fn=lambda output, label: output.sum(), partition_method="uniform")
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": m,
                  "steps_per_print": 10**9, "zero_optimization": {"stage": 0}}
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=torch.optim.SGD(module.parameters(), lr=0.0),
                                               config=config)
        totals = time_instructions(engine)
        batch = (torch.ones(1, 8), torch.ones(1, 8))

        def step(engine=engine, m=m):
            engine.train_batch(iter([batch] * m))

        for _ in range(warmup):
            step()
        out[m] = _idle_steps(step, totals, steps)
    return out


def _real_bubble_rank(argv: list[str], warmup: int, steps: int) -> dict:
    """One stage of the real Trainer under PP: the idle fraction of its steps."""
    from lumina.pretrain import build_parser
    from lumina.train.loop import Trainer

    trainer = Trainer(build_parser().parse_args(argv))
    totals = time_instructions(trainer.engine)

    def step():
        trainer.train_iteration()
        trainer.iteration += 1

    for _ in range(warmup):
        step()
    return _idle_steps(step, totals, steps)


def theory(p: int, m: int) -> float:
    """Idle fraction of 1F1B (and GPipe) with equal stages and free communication."""
    return (p - 1) / (m + p - 1)


def unequal_theory(costs: list[float], m: int) -> list[float]:
    """Per stage idle fraction when stage s spends costs[s] on a micro-batch's forward and backward
    (communication free): the step is the first micro-batch's pass through every stage plus m - 1
    more at the pace of the slowest stage. Equal costs give `theory`."""
    step = sum(costs) + (m - 1) * max(costs)
    return [1 - m * c / step for c in costs]


# -- report ------------------------------------------------------------------------------------

def _print_bytes(results: list[dict], args) -> None:
    print(f"\nBytes per optimizer step (debug preset, fp32, ZeRO-0, micro-batch {args.micro_batch_size} x "
          f"{args.micro_batches} micro-batches x seq 128, {args.iters} counted steps after {args.warmup} warm-up; "
          "payload = each call's full buffer, per rank)")
    print(f"{'layout':<13}{'kind':<11}{'calls':>7}{'computed B':>15}{'measured B':>15}{'meas/comp':>10}"
          f"{'worst rank':>11}   operations (rank 0)")
    for res in results:
        if "error" in res:
            print(f"{res['case']:<13}not run: {res['error']}")
            continue
        for kind in dict.fromkeys(r["kind"] for r in res["rows"]):
            rows = [r for r in res["rows"] if r["kind"] == kind]
            r0 = rows[0]
            ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
            worst = max(ratios, key=lambda x: abs(x - 1)) if ratios else None
            ratio = f"{r0['ratio']:.4f}" if r0["ratio"] is not None else "-"
            print(f"{res['case']:<13}{kind:<11}{r0['calls']:>7.0f}{r0['computed']:>15,.0f}{r0['measured']:>15,.0f}"
                  f"{ratio:>10}{(f'{worst:.4f}' if worst is not None else '-'):>11}   {', '.join(r0['ops'])}")
    print("worst rank: the ratio farthest from 1 over all ranks; measured - computed is the scalars "
          "(loss means, non-finite flags, gradient-norm pieces) the formula leaves out.")
    print("\nComputed terms, rank 0 (bytes per step):")
    for res in results:
        for row in res.get("rows", []):
            if row["rank"] == 0 and row["terms"]:
                terms = "; ".join(f"{what} ({d}) {b:,.0f}" for what, d, b in row["terms"])
                print(f"  {res['case']} {row['kind']}: {terms}")


def _print_bubble(bubble: dict, real: dict, sleep: float, micro_batch: int) -> None:
    if bubble:
        print(f"\nPipeline bubble, synthetic stages (forward sleeps {sleep * 1e3:.0f} ms, backward "
              f"{2 * sleep * 1e3:.0f} ms; DeepSpeed PipelineEngine, 1F1B TrainSchedule); idle = 1 - "
              "(ForwardPass + BackwardPass time) / step time, median over steps, mean over stages")
        print(f"{'p':>3}{'m':>4}{'theory':>9}{'measured':>10}{'diff':>8}{'stage range':>16}{'step ms':>9}"
              f"{'p2p':>7}{'other':>7}")
        for p, per_m in bubble.items():
            for m, stages in per_m.items():
                idle = [s["idle"] for s in stages]
                mean = statistics.mean(idle)
                step, p2p, other = (statistics.mean(s[k] for s in stages)
                                    for k in ("step_s", "p2p_fraction", "other_fraction"))
                print(f"{p:>3}{m:>4}{theory(p, m):>9.3f}{mean:>10.3f}{mean - theory(p, m):>+8.3f}"
                      f"{f'{min(idle):.3f}-{max(idle):.3f}':>16}{step * 1e3:>9.0f}{p2p:>7.3f}{other:>7.3f}")
        print("p2p, other: fractions of the step spent in send/recv (waiting for the neighbour included) "
              "and in the remaining instructions (micro-batch loads, gradient reduction, optimizer step).")
    if real:
        print(f"\nPipeline bubble, real Trainer PP2 (debug dense, micro-batch {micro_batch}, seq 128; stage 0: "
              "embedding, layers 0-1; stage 1: layers 2-3, norm, tied head, loss; equal parameters, unequal work)")
        print(f"{'m':>4}{'theory':>9}{'stage 0':>9}{'stage 1':>9}{'unequal theory':>16}"
              f"{'stage ms/micro-batch':>22}{'step ms':>9}")
        for m, stages in real.items():
            if isinstance(stages, str):
                print(f"{m:>4}  not run: {stages}")
                continue
            costs = [s["busy_s"] / m for s in stages]
            predicted = " ".join(f"{x:.3f}" for x in unequal_theory(costs, m))
            per_micro = " / ".join(f"{c * 1e3:.1f}" for c in costs)
            print(f"{m:>4}{theory(2, m):>9.3f}{stages[0]['idle']:>9.3f}{stages[1]['idle']:>9.3f}{predicted:>16}"
                  f"{per_micro:>22}{stages[0]['step_s'] * 1e3:>9.0f}")
        print("unequal theory: the idle fractions the stages' measured forward + backward time per micro-batch "
              "predict (step = their sum + (m - 1) x the slowest; unequal_theory).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["bytes", "bubble", "real-bubble"],
                        choices=["bytes", "bubble", "real-bubble"])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--micro-batches", type=int, default=4, help="per step (gradient accumulation)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted steps per run")
    parser.add_argument("--iters", type=int, default=3, help="counted (timed) steps per run")
    parser.add_argument("--bubble-stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--bubble-micro-batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--sleep", type=float, default=0.05, help="synthetic forward seconds (backward 2x)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run before giving up")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    os.environ.setdefault("LUMINA_CACHE", os.path.join(tempfile.gettempdir(), "lumina-bench-cache"))
    start = time.perf_counter()
    report: dict[str, Any] = {"date": datetime.date.today().isoformat(), "args": vars(args),
                              "load_before": os.getloadavg()[0]}
    print(f"load average before: {report['load_before']:.2f} (the machine's other jobs share its cores)")
    if "bytes" in args.parts:
        cases = [c for c in CASES if c.name in args.cases]
        report["bytes"] = [run_bytes(c, args.micro_batch_size, args.micro_batches, args.warmup, args.iters,
                                     args.timeout) for c in cases]
        _print_bytes(report["bytes"], args)
    bubble: dict = {}
    if "bubble" in args.parts:
        for p in args.bubble_stages:
            stages = spawn_ranks(p, _bubble_rank, (p, args.bubble_micro_batches, args.sleep, 1, args.iters),
                                 threads=1, timeout=args.timeout)
            bubble[p] = {m: [s[m] for s in stages] for m in args.bubble_micro_batches}
    real: dict = {}
    if "real-bubble" in args.parts:
        for m in args.bubble_micro_batches:
            with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp:
                argv = trainer_argv(Case("PP2", "dense", 2, pp=2), args.micro_batch_size, m, 2 + args.iters, tmp)
                try:
                    real[m] = spawn_ranks(2, _real_bubble_rank, (argv, 2, args.iters), threads=1,
                                          timeout=args.timeout)
                except RuntimeError as exc:
                    real[m] = _reason(str(exc))
    _print_bubble(bubble, real, args.sleep, args.micro_batch_size)
    report["bubble"] = {str(p): {str(m): v for m, v in per_m.items()} for p, per_m in bubble.items()}
    report["real_bubble"] = {str(m): v for m, v in real.items()}
    report["load_after"] = os.getloadavg()[0]
    print(f"\n{time.perf_counter() - start:.0f} s; load average after: {report['load_after']:.2f}")
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
