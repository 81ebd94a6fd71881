"""`lumina plan`: layout, memory per GPU, speed, time and cost of a run before it is submitted."""

from __future__ import annotations

import argparse
import json

from lumina.util.argtypes import COUNT, NON_NEGATIVE, POSITIVE_INT, number


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="debug", help="model size (see `lumina presets`)")
    parser.add_argument("--mode", default="dense", help="dense, moe, mod or hybrid")
    parser.add_argument("--gpu", default="a100-80gb", help="a100-40gb, a100-80gb, h100-80gb, h200-141gb, rtx-4090")
    parser.add_argument("--gpus", type=POSITIVE_INT, default=8, help="GPUs in all (whole nodes beyond one node)")
    parser.add_argument("--gpus-per-node", type=POSITIVE_INT, default=None, help="default: 8, or --gpus if fewer")
    parser.add_argument("--seq-length", type=POSITIVE_INT, default=None, help="default: the preset's")
    parser.add_argument("--global-batch-tokens", type=COUNT, default=str(4 * 1024 * 1024),
                        help="tokens per optimizer step (default 4,194,304 = 1,024 x 4,096; K/M/B suffixes are decimal)")
    parser.add_argument("--tokens", type=COUNT, default=None, help="tokens to train (default: 20 x active params, Chinchilla)")
    parser.add_argument("--price", type=NON_NEGATIVE, default=None, help="USD per GPU-hour (default: the GPU table's)")
    parser.add_argument("--mfu", type=number(float, 0, 1, low_open=True), default=None, help="override the MFU assumption (0-1)")
    parser.add_argument("--tensor-model-parallel-size", type=POSITIVE_INT, default=None, help="pin TP (default: searched)")
    parser.add_argument("--pipeline-model-parallel-size", type=POSITIVE_INT, default=None, help="pin PP (default: searched)")
    parser.add_argument("--expert-model-parallel-size", type=POSITIVE_INT, default=None, help="pin EP (default: searched)")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None, help="pin the ZeRO stage (default: searched)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--check-claims", action="store_true",
                        help="check the original benchmark table's figures against the planner")


def _report(plan) -> str:
    from lumina.plan.hardware import GIB
    from lumina.plan.search import hours_label, tokens_label

    m = plan.memory
    g = plan.gpu
    lines = [f"plan: {plan.cfg.name}/{plan.cfg.mode} on {plan.gpus} x {g.name} ({plan.nodes} node(s) of "
             f"{plan.gpus_per_node}), seq {plan.seq}, global batch {plan.global_batch} sequences"]
    if not plan.fits:
        lines.append("DOES NOT FIT: " + "; ".join(plan.notes))
        lines.append("closest layout (least memory):")
    lines += [
        f"layout: TP {plan.tp} x PP {plan.pp} x DP {plan.dp} (EP {plan.ep}), ZeRO {plan.zero}, micro-batch "
        f"{plan.micro_batch} x accumulation {plan.grad_accum}, recompute {plan.recompute}"
        + (f", layers per stage {','.join(map(str, plan.stage_layers))}" if plan.pp > 1 else ""),
        f"memory per GPU (stage {m.stage}): {m.total / GIB:.1f} GiB of {g.memory_gib:g}",
        f"  weights {m.weights / GIB:.2f} (experts {m.expert_weights / GIB:.2f}), gradients {m.gradients / GIB:.2f}, "
        f"optimizer {m.optimizer / GIB:.2f}, activations {m.activations / GIB:.2f} (MoD saves "
        f"{m.mod_activation_saving / GIB:.2f}), buffers {m.buffers / GIB:.2f}, fragmentation 10% "
        f"{m.fragmentation / GIB:.2f}",
        f"FLOPs per token (training): {plan.flops_per_token:.3e}",
        f"{plan.mfu.kind} MFU {plan.mfu.mfu:.0%} x efficiency {plan.efficiency:.2f} (pipeline bubble, recompute): "
        f"{plan.tokens_per_s:,.0f} tokens/s projected (step: compute {plan.compute_s:.2f} s, communication "
        f"{plan.comm_s:.2f} s, overlapped up to the compute time)",
        f"  MFU source: {plan.mfu.source}",
        f"train {tokens_label(plan.tokens)} tokens: {hours_label(plan.hours)}, "
        f"${plan.cost:,.0f} at ${plan.price_per_hour:.2f}/GPU-hour",
        "  (projection from the stated model, not a measurement)",
        "run it with: " + " ".join(plan.train_flags()) + f" --zero-stage {plan.zero}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lumina.plan.hardware import gpu
    from lumina.plan.search import best
    from lumina.presets import get_preset

    if args.check_claims:
        from lumina.plan.claims import CLAIMS, check, table

        rows = [check(c) for c in CLAIMS]
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(table(rows))
            print("\nOnly claims held with their source are checked; see lumina/plan/claims.py and docs/ops.md.")
        return 0
    tokens = args.tokens
    plan = best(get_preset(args.preset, args.mode), gpu(args.gpu), args.gpus, gpus_per_node=args.gpus_per_node,
                global_batch_tokens=int(args.global_batch_tokens), seq=args.seq_length,
                tokens=tokens, price=args.price, mfu=args.mfu,
                fixed={"tp": args.tensor_model_parallel_size, "pp": args.pipeline_model_parallel_size,
                       "ep": args.expert_model_parallel_size, "zero": args.zero_stage})
    print(json.dumps(plan.to_dict(), indent=1) if args.json else _report(plan))
    return 0 if plan.fits else 1
