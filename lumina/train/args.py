"""Training flags. Names follow Megatron-LM where Megatron has one, so its users feel at home.

`add_train_args` defines them once for both `deepspeed lumina/pretrain.py` and `lumina train`;
`resolve` turns the parsed namespace into a validated ModelConfig plus batch arithmetic, and
refuses contradictions in our own words before DeepSpeed or torch.distributed start.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from lumina.config import MODES, ModelConfig, MoDConfig, MoEConfig
from lumina.parallel.layout import add_parallel_args
from lumina.presets import SIZES, get_preset
from lumina.util.argtypes import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, UNIT_OPEN,
                                  number)

# Flags that only mean something in one mode: value None means "not given".
_MOE_FLAGS = ("num_experts", "moe_router_topk", "moe_capacity_factor", "moe_eval_capacity_factor",
              "moe_dropless", "moe_aux_loss_coeff", "moe_z_loss_coeff", "moe_noop_experts")
_MOD_FLAGS = ("mod_capacity", "mod_layer_pattern", "mod_predictor_loss_coeff")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default="debug", help=f"model size: {', '.join(SIZES)}")
    g.add_argument("--mode", default="hybrid", help=f"model mode: {', '.join(MODES)}")
    g.add_argument("--seq-length", type=POSITIVE_INT, default=None, help="tokens per sample (default: the preset's)")
    g.add_argument("--num-layers", type=POSITIVE_INT, default=None,
                   help="transformer layers (default: the preset's); e.g. a short b1 for a quick GPU benchmark")
    g.add_argument("--depth-scaled-init", action="store_const", const=True, default=None,
                   help="init the residual-stream output projections at std / sqrt(2 * layers) (GPT-2, Megatron)")
    g.add_argument("--num-experts", type=POSITIVE_INT, default=None, help="MoE experts (moe/hybrid only)")
    g.add_argument("--moe-router-topk", type=POSITIVE_INT, default=None, help="experts per token")
    g.add_argument("--moe-capacity-factor", type=POSITIVE, default=None, help="training capacity factor")
    g.add_argument("--moe-eval-capacity-factor", type=POSITIVE, default=None, help="evaluation capacity factor")
    g.add_argument("--moe-dropless", action="store_const", const=True, default=None, help="no capacity limit")
    g.add_argument("--moe-aux-loss-coeff", type=NON_NEGATIVE, default=None, help="Switch balance loss weight")
    g.add_argument("--moe-z-loss-coeff", type=NON_NEGATIVE, default=None, help="router z-loss weight")
    g.add_argument("--moe-noop-experts", type=NON_NEGATIVE_INT, default=None, help="no-op experts (integrated MoDE)")
    g.add_argument("--mod-capacity", type=number(float, 0, 1, low_open=True), default=None, help="MoD capacity in (0, 1]")
    g.add_argument("--mod-layer-pattern", default=None, help='"alternate", "all" or indices like "1,3"')
    g.add_argument("--mod-predictor-loss-coeff", type=NON_NEGATIVE, default=None, help="MoD predictor BCE weight")

    g = parser.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=POSITIVE_INT, default=8)
    g.add_argument("--global-batch-size", type=POSITIVE_INT, default=None,
                   help="default: micro batch x data-parallel size (no accumulation)")
    g.add_argument("--train-iters", type=POSITIVE_INT, default=300)
    g.add_argument("--lr", type=POSITIVE, default=3e-3)
    g.add_argument("--min-lr", type=NON_NEGATIVE, default=3e-4)
    g.add_argument("--lr-warmup-iters", type=NON_NEGATIVE_INT, default=None, help="default: 10%% of --train-iters")
    g.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.1)
    g.add_argument("--adam-beta1", type=UNIT_OPEN, default=0.9)
    g.add_argument("--adam-beta2", type=UNIT_OPEN, default=0.95)
    g.add_argument("--adam-eps", type=POSITIVE, default=1e-8)
    g.add_argument("--clip-grad", type=NON_NEGATIVE, default=None,
                   help="gradient clipping norm, 0 for none (default: the DeepSpeed JSON's gradient_clipping, else 1.0)")
    g.add_argument("--seed", type=SEED, default=1234)
    g.add_argument("--bf16", action="store_true", help="bf16 weights and activations (fp32 master weights)")
    g.add_argument("--recompute-activations", action="store_true", help="activation checkpointing per block")
    g.add_argument("--max-nonfinite-iters", type=POSITIVE_INT, default=5,
                   help="stop after this many skipped iterations in a row (NaN/inf loss or gradient norm)")

    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", default=None,
                   help="[weight] prefix [weight prefix ...] of prepared shards (default: embedded corpus)")
    g.add_argument("--valid-data-path", nargs="+", default=None, help="validation shards (default: embedded)")
    g.add_argument("--tokenizer-model", default=None, help="sentencepiece .model (default: embedded)")

    g = parser.add_argument_group("checkpoints, eval and logging")
    g.add_argument("--save", default=None, help="checkpoint directory (default: <run dir>/checkpoints)")
    g.add_argument("--load", default=None, help="resume from this checkpoint directory")
    g.add_argument("--save-interval", type=POSITIVE_INT, default=100)
    g.add_argument("--keep-last", type=POSITIVE_INT, default=2, help="checkpoints to keep")
    g.add_argument("--eval-interval", type=POSITIVE_INT, default=100)
    g.add_argument("--eval-iters", type=NON_NEGATIVE_INT, default=10)
    g.add_argument("--log-interval", type=POSITIVE_INT, default=10)
    g.add_argument("--run-dir", default=None, help="where metrics, logs and checkpoints go (default: runs/<preset>_<mode>)")
    g.add_argument("--tensorboard-dir", default=None, help="default: <run dir>/tensorboard")
    g.add_argument("--peak-tflops", type=POSITIVE, default=None,
                   help="device peak for MFU; default: the GPU table, or a measured CPU matmul peak")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    g.add_argument("--skip-memory-check", action="store_true",
                   help="start even when the planner's memory estimate exceeds the device's free memory")

    g = parser.add_argument_group("deepspeed")
    g.add_argument("--ds_config", "--deepspeed_config", dest="ds_config", default=None,
                   help="DeepSpeed JSON (default: generated from these flags)")
    g.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2, 3),
                   help="ZeRO stage when no --ds_config is given (default 0)")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    add_parallel_args(parser)
    # Test hook: iterations whose loss is replaced by NaN, to exercise the non-finite path.
    g.add_argument("--debug-nan-iters", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    # ... and iterations whose loss stays finite but whose gradients are infinite (plain steps).
    g.add_argument("--debug-inf-grad-iters", type=int, nargs="*", default=[], help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Resolved:
    model: ModelConfig
    world_size: int
    dp_size: int
    micro_batch_size: int
    global_batch_size: int
    grad_accum: int


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None) is not None]


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The preset for --preset/--mode with the explicit model flags applied."""
    cfg = get_preset(args.preset, args.mode)
    if cfg.moe is None and _given(args, _MOE_FLAGS):
        raise ValueError(f"{', '.join(_given(args, _MOE_FLAGS))} only apply to --mode moe or hybrid, "
                         f"not --mode {args.mode}")
    if cfg.mod is None and _given(args, _MOD_FLAGS):
        raise ValueError(f"{', '.join(_given(args, _MOD_FLAGS))} only apply to --mode mod or hybrid, "
                         f"not --mode {args.mode}")
    changes: dict = {}
    if args.seq_length is not None:
        changes["seq_length"] = args.seq_length
    if getattr(args, "num_layers", None) is not None:
        changes["num_layers"] = args.num_layers
    if getattr(args, "depth_scaled_init", None):
        changes["depth_scaled_init"] = True
    if cfg.moe is not None:
        moe = {k: v for k, v in {
            "num_experts": args.num_experts, "top_k": args.moe_router_topk,
            "capacity_factor_train": args.moe_capacity_factor,
            "capacity_factor_eval": args.moe_eval_capacity_factor, "dropless": args.moe_dropless,
            "aux_loss_coef": args.moe_aux_loss_coeff, "z_loss_coef": args.moe_z_loss_coeff,
            "num_noop_experts": args.moe_noop_experts}.items() if v is not None}
        if moe:
            changes["moe"] = MoEConfig(**{**cfg.moe.__dict__, **moe})
    if cfg.mod is not None:
        mod = {k: v for k, v in {
            "capacity": args.mod_capacity, "layer_pattern": args.mod_layer_pattern,
            "predictor_loss_coef": args.mod_predictor_loss_coeff}.items() if v is not None}
        if mod:
            changes["mod"] = MoDConfig(**{**cfg.mod.__dict__, **mod})
    return cfg.replace(**changes) if changes else cfg


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is None or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={value} is invalid: must be > 0")


def resolve(args: argparse.Namespace, world_size: int | None = None) -> Resolved:
    """Validate flags and derive the batch arithmetic: global = micro x accumulation x DP."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    _positive(args, "micro_batch_size", "train_iters", "lr", "log_interval", "save_interval",
              "eval_interval", "keep_last", "max_nonfinite_iters")
    if args.eval_iters < 0:
        raise ValueError(f"--eval-iters={args.eval_iters} is invalid: must be >= 0")
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise ValueError(f"--min-lr={args.min_lr} is invalid: must be in [0, --lr={args.lr}]")
    if args.lr_warmup_iters is None:
        args.lr_warmup_iters = args.train_iters // 10
    if args.lr_warmup_iters < 0 or args.lr_warmup_iters > args.train_iters:
        raise ValueError(f"--lr-warmup-iters={args.lr_warmup_iters} is invalid: must be in "
                         f"[0, --train-iters={args.train_iters}]")
    if args.ds_config is not None and args.zero_stage is not None:
        raise ValueError("--zero-stage and --ds_config both set the ZeRO stage: give one "
                         "(put zero_optimization.stage in the JSON)")
    if args.load is not None and not os.path.isdir(args.load):
        raise ValueError(f"--load={args.load!r}: no such checkpoint directory")
    cfg = model_config(args)
    model_parallel = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    if model_parallel <= 0 or world % model_parallel:
        raise ValueError(f"--tensor-model-parallel-size x --pipeline-model-parallel-size = {model_parallel} "
                         f"does not divide the world size {world}")
    dp = world // model_parallel
    mbs = args.micro_batch_size
    gbs = args.global_batch_size if args.global_batch_size is not None else mbs * dp
    if gbs <= 0 or gbs % (mbs * dp):
        raise ValueError(
            f"--global-batch-size={gbs} must be a positive multiple of --micro-batch-size ({mbs}) x "
            f"data-parallel size ({dp}) = {mbs * dp}; e.g. {mbs * dp * max(1, round(gbs / (mbs * dp)))}")
    return Resolved(cfg, world, dp, mbs, gbs, gbs // (mbs * dp))
