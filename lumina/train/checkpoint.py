"""Checkpoints: DeepSpeed's engine state plus Lumina's own metadata, per-rank RNG and data state.

Layout: <save>/iter_0000100/ holds DeepSpeed's files, `rank_00000.pt` ... (data loader state and
every RNG of that rank) and `lumina.json` (model config, iteration, world size). `lumina.json` is
written last, after a barrier that every rank reaches only once its own files are on disk, and
`<save>/latest` is replaced (temp file + rename) only after that, so a crash mid-save never
leaves a half-written directory that a later run takes as latest.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as dist

from lumina.config import ModelConfig
from lumina.util.files import atomic_write_bytes, atomic_write_text

META = "lumina.json"
LATEST = "latest"


def tag_for(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, save_dir: str, iteration: int, model_cfg: ModelConfig, loader_state: dict,
         world_size: int, keep_last: int, extra: dict) -> str:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    tag = tag_for(iteration)
    rank = dist.get_rank()
    engine.save_checkpoint(save_dir, tag=tag, client_state={"iteration": iteration}, save_latest=False)
    buf = io.BytesIO()
    torch.save({"loader": loader_state, "rng": rng_state()}, buf)
    atomic_write_bytes(os.path.join(save_dir, tag, f"rank_{rank:05d}.pt"), buf.getvalue())
    dist.barrier()
    if rank == 0:
        meta = {"iteration": iteration, "model": model_cfg.to_dict(), "world_size": world_size, **extra}
        atomic_write_text(os.path.join(save_dir, tag, META), json.dumps(meta, indent=1))
        atomic_write_text(os.path.join(save_dir, LATEST), tag)
        _prune(save_dir, keep_last)
    dist.barrier()
    return os.path.join(save_dir, tag)


def _prune(save_dir: str, keep_last: int) -> None:
    tags = sorted(t for t in os.listdir(save_dir) if t.startswith("iter_"))
    for old in tags[:-keep_last]:
        shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)


def latest(load_dir: str) -> tuple[str, dict]:
    """(tag, metadata) of the newest complete checkpoint under load_dir, or ValueError."""
    path = os.path.join(load_dir, LATEST)
    if not os.path.isfile(path):
        raise ValueError(f"--load={load_dir!r} holds no complete checkpoint (no {LATEST!r} file)")
    with open(path) as f:
        tag = f.read().strip()
    meta_path = os.path.join(load_dir, tag, META)
    if not os.path.isfile(meta_path):
        raise ValueError(f"--load={load_dir!r}: {LATEST!r} names {tag!r} but {meta_path} is missing; "
                         "the checkpoint is incomplete")
    with open(meta_path) as f:
        return tag, json.load(f)


def check_compatible(meta: dict, model_cfg: ModelConfig, world_size: int, load_dir: str) -> None:
    saved = ModelConfig.from_dict(meta["model"])
    if (saved.name, saved.mode) != (model_cfg.name, model_cfg.mode):
        raise ValueError(f"--load={load_dir!r} is a {saved.name}/{saved.mode} checkpoint but this run "
                         f"is --preset {model_cfg.name} --mode {model_cfg.mode}")
    if saved != model_cfg:
        diff = [k for k, v in saved.to_dict().items() if model_cfg.to_dict().get(k) != v]
        raise ValueError(f"--load={load_dir!r} was saved with different model settings ({', '.join(diff)}): "
                         "use the flags it was trained with")
    if meta["world_size"] != world_size:
        raise ValueError(f"--load={load_dir!r} was saved by {meta['world_size']} ranks; this run has "
                         f"{world_size}. Resume on the same layout")


def load_rank_state(load_dir: str, tag: str, rank: int) -> dict:
    return torch.load(os.path.join(load_dir, tag, f"rank_{rank:05d}.pt"), weights_only=False)


def load_model_weights(load_dir: str) -> tuple[dict, dict]:
    """(full model state_dict, metadata) from the latest checkpoint, for eval and generation.
    Tensor-parallel shards (mp_rank_00, mp_rank_01, ...) are concatenated back."""
    tag, meta = latest(load_dir)
    ckpt = os.path.join(load_dir, tag)
    shards = sorted(f for f in os.listdir(ckpt) if f.startswith("mp_rank_") and f.endswith("_model_states.pt"))
    states = [torch.load(os.path.join(ckpt, f), map_location="cpu", weights_only=False).get("module") for f in shards]
    if not shards or not states[0]:  # ZeRO-3 keeps parameters partitioned: consolidate them
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        states = [get_fp32_state_dict_from_zero_checkpoint(load_dir, tag=tag)]
    full_shapes = _full_shapes(ModelConfig.from_dict(meta["model"]))
    merged = {}
    for key, first in states[0].items():
        if key not in full_shapes:  # e.g. megatron layers' `_extra_state` placeholders
            continue
        dims = [d for d in range(first.dim()) if first.shape[d] != full_shapes[key][d]]
        merged[key] = torch.cat([s[key] for s in states], dim=dims[0]).float() if dims else first.float()
    return merged, meta


def _full_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from lumina.model import LuminaLM

    with torch.device("meta"):
        return {k: v.shape for k, v in LuminaLM(cfg).state_dict().items()}
