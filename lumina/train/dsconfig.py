"""DeepSpeed JSON: the base configs in ds_configs/ and reconciling a user's JSON with our flags.

The batch arithmetic (train_batch_size = micro batch x accumulation x data-parallel size) comes
from the flags; a JSON that contradicts it is refused here, in our words, before DeepSpeed's own
assert. Lumina always passes its own AdamW, so a JSON "optimizer" or "scheduler" block is refused
too (DeepSpeed would otherwise JIT-build fused_adam, about 50 s on CPU).
"""

from __future__ import annotations

import json
import math
import os

from lumina.train.args import Resolved

# (file stem, zero stage, bf16, optimizer CPU offload): the configs shipped in ds_configs/.
BASE_CONFIGS: tuple[tuple[str, int, bool, bool], ...] = (
    ("zero0", 0, False, False),
    ("zero1", 1, False, False),
    ("zero2", 2, False, False),
    ("zero3", 3, False, False),
    ("bf16_zero1", 1, True, False),
    ("bf16_zero2", 2, True, False),
    ("bf16_zero3", 3, True, False),
    ("bf16_zero3_offload", 3, True, True),
)

_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def base_config(zero_stage: int, bf16: bool, offload: bool = False) -> dict:
    """A DeepSpeed config without batch sizes (the launcher's flags fill those in)."""
    zero: dict = {"stage": zero_stage}
    if zero_stage >= 1:
        zero.update({"overlap_comm": False, "contiguous_gradients": True,
                     "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000})
    if zero_stage == 3:
        zero.update({"stage3_param_persistence_threshold": 100_000,
                     "stage3_gather_16bit_weights_on_model_save": True})
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict = {
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1_000_000_000,  # Lumina logs its own metrics
        "wall_clock_breakdown": False,
    }
    if bf16 and zero_stage >= 1:
        # Keeps fp32 gradient accumulation; DeepSpeed picks its BF16 optimizer path with this.
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    return cfg


def render(cfg: dict) -> str:
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"--ds_config={path!r}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except UnicodeDecodeError as exc:
        raise ValueError(f"--ds_config={path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "DeepSpeed configs are JSON in UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--ds_config={path!r} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--ds_config={path!r} must hold a JSON object, got {type(cfg).__name__}")
    _check_values(cfg, f"--ds_config={path!r}")
    return cfg


def _check_values(cfg: dict, where: str) -> None:
    """The values Lumina reads from a DeepSpeed JSON, checked where it is parsed (DeepSpeed would
    take a negative clip as a sign flip, or fail deep inside on a stage of "two")."""
    clip = cfg.get("gradient_clipping")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not math.isfinite(clip) or clip < 0):
        raise ValueError(f"{where} sets gradient_clipping={clip!r}: must be a finite number >= 0 (0 = no clipping)")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"{where} sets zero_optimization={zero!r}: must be a JSON object like {{\"stage\": 1}}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ValueError(f"{where} sets zero_optimization.stage={stage!r}: must be 0, 1, 2 or 3")
    for key in ("bf16", "fp16"):
        block = cfg.get(key, {})
        if not isinstance(block, dict) or not isinstance(block.get("enabled", False), bool):
            raise ValueError(f"{where} sets {key}={block!r}: must be a JSON object like {{\"enabled\": true}}")


def build(res: Resolved, ds_config: str | None, zero_stage: int | None, bf16: bool,
          clip_grad: float | None, on_cpu: bool) -> dict:
    """The DeepSpeed config for this run, with batch sizes from the flags."""
    cfg = load_json(ds_config) if ds_config else base_config(zero_stage or 0, bf16)
    where = f"--ds_config={ds_config!r}" if ds_config else "the generated DeepSpeed config"
    for block in ("optimizer", "scheduler"):
        if block in cfg:
            raise ValueError(f"{where} has an {block!r} block; Lumina passes its own AdamW and LR "
                             f"schedule (set --lr, --min-lr, --lr-warmup-iters): remove the block")
    want = {"train_micro_batch_size_per_gpu": res.micro_batch_size,
            "gradient_accumulation_steps": res.grad_accum, "train_batch_size": res.global_batch_size}
    for key in _BATCH_KEYS:
        have = cfg.get(key, "auto")
        if have != "auto" and have != want[key]:
            raise ValueError(
                f"{where} sets {key}={have} but the flags give {want[key]} (micro batch "
                f"{res.micro_batch_size} x accumulation {res.grad_accum} x data-parallel "
                f"{res.dp_size} = {res.global_batch_size}); drop the key or use \"auto\"")
        cfg[key] = want[key]
    if cfg.get("fp16", {}).get("enabled") and on_cpu:
        raise ValueError(f"{where} enables fp16, which DeepSpeed does not support on CPU; use bf16")
    if bf16:
        cfg.setdefault("bf16", {})["enabled"] = True
    # DeepSpeed's ZeRO allow-list compares optimizer types exactly; ours is torch's AdamW plus a
    # step skip for non-finite losses (lumina.train.optim), so it is allowed explicitly.
    cfg.setdefault("zero_allow_untested_optimizer", True)
    have = cfg.get("gradient_clipping")
    if clip_grad is not None and have is not None and have != clip_grad:
        raise ValueError(f"{where} sets gradient_clipping={have} but --clip-grad={clip_grad}; give one of them")
    cfg["gradient_clipping"] = clip_grad if clip_grad is not None else (have if have is not None else 1.0)
    cfg.setdefault("steps_per_print", 1_000_000_000)
    return cfg


def bf16_enabled(cfg: dict) -> bool:
    return bool(cfg.get("bf16", {}).get("enabled"))


def zero_stage_of(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def write_base_configs(directory: str) -> list[str]:
    """Write ds_configs/<name>.json for every entry of BASE_CONFIGS (the checked-in files)."""
    from lumina.util.files import atomic_write_text

    paths = []
    for name, stage, bf16, offload in BASE_CONFIGS:
        path = os.path.join(directory, f"{name}.json")
        atomic_write_text(path, render(base_config(stage, bf16, offload)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys

    for written in write_base_configs(sys.argv[1] if len(sys.argv) > 1 else "ds_configs"):
        print(f"wrote {written}")
