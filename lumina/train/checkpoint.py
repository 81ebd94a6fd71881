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
    torch.save({"loader": loader_state, "rng": rng_state(), "experts": expert_shards(engine.module)}, buf)
    atomic_write_bytes(os.path.join(save_dir, tag, f"rank_{rank:05d}.pt"), buf.getvalue())
    dist.barrier()
    if rank == 0:
        meta = {"iteration": iteration, "model": model_cfg.to_dict(), "world_size": world_size, **extra}
        atomic_write_text(os.path.join(save_dir, tag, META), json.dumps(meta, indent=1))
        atomic_write_text(os.path.join(save_dir, LATEST), tag)
        _prune(save_dir, keep_last)
    dist.barrier()
    return os.path.join(save_dir, tag)


def expert_shards(module: torch.nn.Module) -> dict:
    """This rank's expert-parallel weights. DeepSpeed's module file comes from data-parallel rank 0
    only, so under expert parallel it holds the experts of EP rank 0 alone; each rank's file keeps
    its own block (with its global expert offset and tensor-parallel slice, for merging)."""
    shards = {}
    for name, p in module.named_parameters():
        if getattr(p, "allreduce", True) is False:
            tp_dim = getattr(p, "partition_dim", None) if getattr(p, "tensor_model_parallel", False) else None
            shards[name] = {"tensor": p.detach().cpu().clone(), "offset": p.expert_offset,
                            "tp_dim": tp_dim, "tp_rank": getattr(p, "partition_rank", 0)}
    return shards


@torch.no_grad()
def restore_expert_shards(module: torch.nn.Module, rank_state: dict) -> None:
    params = dict(module.named_parameters())
    for name, shard in rank_state.get("experts", {}).items():
        params[name].copy_(shard["tensor"].to(params[name].device, params[name].dtype))


def _merge_expert_shards(ckpt: str, rename) -> dict[str, torch.Tensor]:
    """Whole expert tensors from every rank's expert shards: TP slices side by side, then the
    expert blocks in offset order. Ranks that hold the same slice (expert data parallel) agree.
    `rename` maps a shard's parameter name to its LuminaLM key."""
    pieces: dict[str, dict[int, dict[int, tuple]]] = {}
    for f in sorted(os.listdir(ckpt)):
        if not (f.startswith("rank_") and f.endswith(".pt")):
            continue
        state = torch.load(os.path.join(ckpt, f), map_location="cpu", weights_only=False)
        for name, shard in state.get("experts", {}).items():
            by_offset = pieces.setdefault(rename(name), {}).setdefault(shard["offset"], {})
            by_offset[shard["tp_rank"]] = (shard["tensor"], shard["tp_dim"])
    merged = {}
    for name, by_offset in pieces.items():
        blocks = []
        for offset in sorted(by_offset):
            slices = [by_offset[offset][r] for r in sorted(by_offset[offset])]
            tp_dim = slices[0][1]
            blocks.append(torch.cat([t for t, _ in slices], dim=tp_dim) if tp_dim is not None else slices[0][0])
        merged[name] = torch.cat(blocks, dim=0).float()
    return merged


def _model_pieces(ckpt: str, cfg: ModelConfig, tp: int | None) -> tuple[dict[str, dict[int, torch.Tensor]], bool]:
    """{LuminaLM key: {TP rank: tensor}} from DeepSpeed's model files, and whether they came from
    a pipeline. DeepSpeed writes, by layout:
    - no pipeline: `mp_rank_XX_model_states.pt`, XX the TP rank, LuminaLM keys;
    - pipeline: `layer_SS-model_states.pt` per spec SS (`layer_SS-model_TT-model_states.pt` under
      TP, TT the TP rank), keys relative to the spec (lumina.parallel.pipeline.lumina_key);
    - pipeline with MoE layers (DeepSpeed's MoE save path): `mp_rank_XX_model_states.pt`, XX the
      grid's model-parallel rank pp * TP + tp, keys of the whole PipelineModule."""
    import re

    from lumina.parallel.pipeline import lumina_key, lumina_name

    pieces: dict[str, dict[int, torch.Tensor]] = {}
    files = sorted(os.listdir(ckpt))
    layer_files = [(f, re.fullmatch(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt", f)) for f in files]
    layer_files = [(f, m) for f, m in layer_files if m is not None]
    for f, m in layer_files:
        state = torch.load(os.path.join(ckpt, f), map_location="cpu", weights_only=False)
        for key, value in state.items():
            pieces.setdefault(lumina_key(int(m.group(1)), key, cfg.num_layers), {})[int(m.group(2) or 0)] = value
    if layer_files:
        return pieces, True
    shards = [f for f in files if re.fullmatch(r"mp_rank_\d+_model_states\.pt", f)]
    pipeline = False
    for f in shards:
        module = torch.load(os.path.join(ckpt, f), map_location="cpu", weights_only=False).get("module") or {}
        index = int(f.split("_")[2])
        pipeline = pipeline or any(k.split(".")[0].isdigit() or k.startswith("tied_modules.") for k in module)
        for key, value in module.items():
            name = lumina_name(key, cfg.num_layers) if pipeline else key
            pieces.setdefault(name, {})[index % (tp or 1) if pipeline else index] = value
    return pieces, pipeline


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
    """(full model state_dict, metadata) from the latest checkpoint, for eval and generation, from
    any layout: tensor-parallel shards are concatenated back, pipeline stages' files renamed to
    LuminaLM's keys, and expert-parallel blocks taken from the per-rank files."""
    tag, meta = latest(load_dir)
    ckpt = os.path.join(load_dir, tag)
    cfg = ModelConfig.from_dict(meta["model"])
    pieces, pipeline = _model_pieces(ckpt, cfg, meta.get("layout", {}).get("tp"))
    if not pieces:  # ZeRO-3 keeps parameters partitioned: consolidate them
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        pieces = {k: {0: v} for k, v in get_fp32_state_dict_from_zero_checkpoint(load_dir, tag=tag).items()}
    full_shapes = _full_shapes(cfg)
    from lumina.parallel.pipeline import lumina_name

    merged = _merge_expert_shards(ckpt, (lambda n: lumina_name(n, cfg.num_layers)) if pipeline else (lambda n: n))
    for key, by_rank in pieces.items():
        if key not in full_shapes or key in merged:  # e.g. megatron layers' `_extra_state` placeholders
            continue
        slices = [by_rank[r] for r in sorted(by_rank)]
        first = slices[0]
        dims = [d for d in range(first.dim()) if first.shape[d] != full_shapes[key][d]]
        merged[key] = torch.cat(slices, dim=dims[0]).float() if dims else first.float()
    return merged, meta


def _full_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from lumina.model import LuminaLM

    with torch.device("meta"):
        return {k: v.shape for k, v in LuminaLM(cfg).state_dict().items()}
