"""Layout-free checkpoints: whole tensors by global name, safetensors and JSON only, checksummed.

A checkpoint is `<save>/iter_0000100/`:

- `part-RRRRR.safetensors`, one per writing rank: the fp32 master weight of every parameter the
  rank writes under its LuminaLM name (`blocks.3.attn.wq.weight`), and its Adam moments under
  `exp_avg/<name>` and `exp_avg_sq/<name>`. Tensor-parallel shards are gathered first and ZeRO
  partitions assembled, so every tensor is whole; stacked expert weights are stored one expert
  at a time under their global index, `blocks.1.mlp.w_gate[5]`. The rank that writes a tensor is
  the first that holds it whole: TP rank 0 and data-parallel rank 0 (expert-data-parallel rank 0
  for experts) of the stage that owns it, so the files of one save are disjoint.
- `rng-RRRRR.safetensors`: every RNG of rank R, restored only when the layout is unchanged.
- `lumina.json`: the model config, iteration, Adam's step count, the data position, the layout
  that wrote it (for information: nothing depends on it), an index of which file holds each
  tensor, the size and SHA-256 of every file, and its own SHA-256.

Loading reads only this: any layout (TP, PP, EP, DP, ZeRO 0-3, fp32 or bf16) takes its slice of
each whole tensor by name. The data position is global (samples consumed per dataset), so a run
resumed at another data-parallel size reads the same global batches. Nothing loaded executes
code (no pickle: safetensors and JSON), and every file's size and checksum are checked before
its bytes are used, so a truncated, flipped or foreign file is refused with its name.

Crash safety: every file is written to a temporary name and renamed; `lumina.json` is written
last, after a barrier every rank reaches only once its own files are on disk, and `<save>/latest`
is replaced only after that, so a crash mid-save never leaves a directory that a later run takes
as latest. Why not torch.distributed.checkpoint: it reshards DTensors, and Lumina's weights are
megatron-core TP shards inside DeepSpeed ZeRO partitions and expert blocks, none of them DTensors;
and its `.metadata` file is a pickle. docs/checkpoints.md has the full reasoning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist

from lumina.config import ModelConfig
from lumina.util.files import atomic_write_bytes, atomic_write_text, file_sha256

META = "lumina.json"
LATEST = "latest"
FORMAT = 2
"""Bumped when the layout of the files changes; an older checkpoint is refused with its version."""
_EXPERT_KEY = re.compile(r"(.+)\[(\d+)\]")


class SaveFailed(RuntimeError):
    """A rank could not write its files; raised on every rank alike."""


def tag_for(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta_digest(meta: dict) -> str:
    return _sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())


# -- RNG ----------------------------------------------------------------------------------------
def _rng_file() -> bytes:
    from safetensors.torch import save

    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    info = {"python": [version, list(mt), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return save(tensors, metadata={"state": json.dumps(info)})


def _set_rng(tensors: dict, info: dict) -> None:
    version, mt, gauss = info["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().view(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))


# -- writing ------------------------------------------------------------------------------------
def _whole_over_tp(t: torch.Tensor, p: torch.nn.Parameter, tp_group) -> torch.Tensor:
    """Concatenate the TP shards of `t` (this rank's slice of parameter `p`) along p's split."""
    size = getattr(p, "partition_size", 1)
    if size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(parts, t.contiguous(), group=tp_group)
    return torch.cat(parts, dim=p.partition_dim)


def _keys(name: str, kind: str) -> str:
    return name if kind == "param" else f"{kind}/{name}"


def _write_file(path: str, tensors: dict[str, torch.Tensor]) -> dict:
    """Stream the tensors to a temporary sibling, fsync, checksum it from the page cache, rename:
    no second copy of the file in memory."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        info = {"bytes": os.path.getsize(tmp), "sha256": file_sha256(tmp)}
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return info


def _finish(ckpt: str, meta: dict) -> None:
    meta["format"] = FORMAT
    meta["sha256"] = _meta_digest(meta)
    atomic_write_text(os.path.join(ckpt, META), json.dumps(meta, indent=1, sort_keys=True))
    atomic_write_text(os.path.join(os.path.dirname(ckpt), LATEST), os.path.basename(ckpt))


def save(engine, model: torch.nn.Module, layout, tp_group, save_dir: str, iteration: int,
         model_cfg: ModelConfig, loader_state: dict, keep_last: int, extra: dict) -> str:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    from lumina.train import paramstate

    tag = tag_for(iteration)
    ckpt = os.path.join(save_dir, tag)
    rank = dist.get_rank()
    c = layout.coords(rank)
    owned: dict[str, torch.Tensor] = {}
    paramstate.prepare(engine.optimizer)
    for _, p in model.named_parameters():
        name = p.init_name
        values = paramstate.get(engine.optimizer, p)  # collective over p's data-parallel group
        values = {k: _whole_over_tp(v, p, tp_group) for k, v in values.items()}
        expert = getattr(p, "expert_offset", None)
        if c.tp != 0 or (c.edp if expert is not None else c.dp) != 0:
            continue
        # The tied embedding lives on the first and the last stage; the first writes it.
        if c.pp != 0 and name == "embed.weight":
            continue
        for kind, v in values.items():
            if expert is None:
                owned[_keys(name, kind)] = v
            else:
                for e in range(v.shape[0]):
                    owned[_keys(f"{name}[{expert + e}]", kind)] = v[e]
    files, index, failure = {}, {}, None
    try:
        if owned:
            fname = f"part-{rank:05d}.safetensors"
            files[fname] = _write_file(os.path.join(ckpt, fname), owned)
            index = dict.fromkeys(owned, fname)
        rng_name = f"rng-{rank:05d}.safetensors"
        rng = _rng_file()
        atomic_write_bytes(os.path.join(ckpt, rng_name), rng)  # 15 kB: in memory is fine
        files[rng_name] = {"bytes": len(rng), "sha256": _sha256(rng)}
    except OSError as exc:  # a full disk, a quota, a vanished mount: every rank must hear of it
        failure = f"rank {rank} writing {exc.filename or ckpt}: {exc.strerror}"
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (files, index, failure))  # also the barrier: every rank's files are on disk
    failures = [f for _, _, f in gathered if f is not None]
    if failures:
        raise SaveFailed(f"saving iteration {iteration} to {ckpt} failed ({failures[0]}"
                         f"{f'; and {len(failures) - 1} more ranks' if len(failures) > 1 else ''}); "
                         f"{LATEST!r} still names the previous checkpoint")
    if rank == 0:
        meta = {"iteration": iteration, "model": model_cfg.to_dict(), "world_size": dist.get_world_size(),
                "adam_step": paramstate.adam_step(engine.optimizer), "loader": loader_state,
                "files": {}, "tensors": {}, **extra}
        for f, i, _ in gathered:
            meta["files"].update(f)
            meta["tensors"].update(i)
        _finish(ckpt, meta)
        _prune(save_dir, keep_last, tag, extra["run_id"])
    dist.barrier()
    return ckpt


def write_weights(out_dir: str, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], extra: dict) -> str:
    """A weights-only checkpoint at iteration 0 (no Adam state, data from the start) from whole
    fp32 LuminaLM tensors: what `lumina import` and `lumina upcycle` write, and what `lumina train
    --load` starts from at any layout. One process; returns the checkpoint directory."""
    expected = _full_shapes(cfg)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights for {cfg.name}/{cfg.mode} lack {missing[:5]} or have unknown {unexpected[:5]}")
    tensors = {}
    experts = _expert_names(cfg)
    for name, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[name]):
            raise ValueError(f"weight {name} has shape {tuple(value.shape)}, {cfg.name}/{cfg.mode} needs "
                             f"{tuple(expected[name])}")
        value = value.detach().float().cpu()
        if name in experts:
            tensors.update({f"{name}[{e}]": value[e] for e in range(value.shape[0])})
        else:
            tensors[name] = value
    ckpt = os.path.join(out_dir, tag_for(0))
    fname = "part-00000.safetensors"
    meta = {"iteration": 0, "model": cfg.to_dict(), "world_size": 1, "adam_step": None, "loader": None,
            "files": {fname: _write_file(os.path.join(ckpt, fname), tensors)},
            "tensors": dict.fromkeys(tensors, fname), "preset": cfg.name, "mode": cfg.mode, **extra}
    _finish(ckpt, meta)
    return ckpt


def _expert_names(cfg: ModelConfig) -> set[str]:
    """The stacked expert weights (num_experts, ...) of the MoE layers, stored one expert per key."""
    from lumina.model import LuminaLM

    with torch.device("meta"):
        model = LuminaLM(cfg)
    return {n for n, p in model.named_parameters() if getattr(p, "expert_offset", None) is not None}


# -- reading ------------------------------------------------------------------------------------
class Reader:
    """The tensors of one checkpoint by key, each file size- and checksum-checked at first use."""

    def __init__(self, ckpt: str, meta: dict):
        self.ckpt, self.meta = ckpt, meta
        self._files: dict[str, dict] = {}

    def file(self, fname: str) -> dict:
        if fname not in self._files:
            self._files[fname] = _read_checked(self.ckpt, fname, self.meta)
        return self._files[fname]

    def __contains__(self, key: str) -> bool:
        return key in self.meta["tensors"]

    def get(self, key: str) -> torch.Tensor:
        if key not in self.meta["tensors"]:
            raise ValueError(f"{os.path.join(self.ckpt, META)} indexes no tensor {key!r}; the checkpoint "
                             "does not match this model")
        return self.file(self.meta["tensors"][key])["tensors"][key]

    def rng(self, rank: int) -> tuple[dict, dict] | None:
        fname = f"rng-{rank:05d}.safetensors"
        if fname not in self.meta["files"]:
            return None
        f = self.file(fname)
        return f["tensors"], json.loads(f["metadata"]["state"])


def _read_checked(ckpt: str, fname: str, meta: dict) -> dict:
    """The tensors and metadata of one file, after its size and SHA-256 match `lumina.json`'s."""
    from safetensors import SafetensorError, safe_open

    path = os.path.join(ckpt, fname)
    want = meta["files"].get(fname)
    if want is None:
        raise ValueError(f"{path}: not listed in {META}; the checkpoint is not one Lumina wrote")
    try:
        size = os.path.getsize(path)
        digest = file_sha256(path) if size == want["bytes"] else None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    if size != want["bytes"]:
        raise ValueError(f"{path} is {size} bytes but {META} records {want['bytes']}: the file is "
                         "truncated or replaced")
    if digest != want["sha256"]:
        raise ValueError(f"{path}: SHA-256 differs from the one recorded at save; the file is damaged "
                         "or replaced")
    try:
        with safe_open(path, framework="pt") as f:
            return {"tensors": {k: f.get_tensor(k) for k in f.keys()}, "metadata": f.metadata() or {}}
    except (SafetensorError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a safetensors file ({exc})") from None


def _run_id(ckpt: str) -> str | None:
    try:
        with open(os.path.join(ckpt, META), encoding="utf-8") as f:
            return json.load(f).get("run_id")
    except (OSError, ValueError):
        return None


def _prune(save_dir: str, keep_last: int, newest: str, run_id: str) -> None:
    """Keep this run's last `keep_last` complete checkpoints up to `newest` (the one just written).
    Only checkpoints of the same run (`run_id`, inherited on resume) are candidates: another run's
    in the same directory, and a directory without `lumina.json` (a save that died), are never
    deleted here, nor is one newer than `newest`."""
    if keep_last <= 0:
        return
    tags = sorted(t for t in os.listdir(save_dir) if re.fullmatch(r"iter_\d{7}", t) and t <= newest
                  and _run_id(os.path.join(save_dir, t)) == run_id)
    for old in tags[:-keep_last]:
        shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)


def latest(load_dir: str) -> tuple[str, dict]:
    """(tag, metadata) of the newest complete checkpoint under load_dir, or ValueError. The
    metadata's own checksum and format are checked here."""
    path = os.path.join(load_dir, LATEST)
    if not os.path.isfile(path):
        raise ValueError(f"--load={load_dir!r} holds no complete checkpoint (no {LATEST!r} file)")
    with open(path, encoding="utf-8", errors="replace") as f:
        tag = f.read().strip()
    if not re.fullmatch(r"iter_\d{7}", tag):
        raise ValueError(f"{path} names {tag[:40]!r}, not a checkpoint directory like 'iter_0000100'")
    meta_path = os.path.join(load_dir, tag, META)
    if not os.path.isfile(meta_path):
        raise ValueError(f"--load={load_dir!r}: {LATEST!r} names {tag!r} but {meta_path} is missing; "
                         "the checkpoint is incomplete")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format", "none (DeepSpeed's per-layout files)") if isinstance(meta, dict) else "?"
        raise ValueError(f"{meta_path}: checkpoint format {found}; this Lumina reads format {FORMAT}. "
                         "Checkpoints from before the layout-free format cannot be loaded")
    if meta.get("sha256") != _meta_digest(meta):
        raise ValueError(f"{meta_path}: SHA-256 differs from the one recorded at save; the file is damaged")
    return tag, meta


def check_compatible(meta: dict, model_cfg: ModelConfig, load_dir: str, tokenizer_sha256: str | None = None) -> None:
    """The model must be the one saved, tokenizer included (another tokenizer gives the same
    vocabulary size different token ids, and training would go on silently wrong); the layout
    (world size, TP, PP, EP, ZeRO, precision) may differ."""
    saved = ModelConfig.from_dict(meta["model"])
    if (saved.name, saved.mode) != (model_cfg.name, model_cfg.mode):
        raise ValueError(f"--load={load_dir!r} is a {saved.name}/{saved.mode} checkpoint but this run "
                         f"is --preset {model_cfg.name} --mode {model_cfg.mode}")
    if saved != model_cfg:
        diff = [k for k, v in saved.to_dict().items() if model_cfg.to_dict().get(k) != v]
        raise ValueError(f"--load={load_dir!r} was saved with different model settings ({', '.join(diff)}): "
                         "use the flags it was trained with")
    saved_tok = meta.get("tokenizer_sha256")
    if tokenizer_sha256 is not None and saved_tok is not None and saved_tok != tokenizer_sha256:
        raise ValueError(f"--load={load_dir!r} was trained with tokenizer {saved_tok[:12]} but this run uses "
                         f"{tokenizer_sha256[:12]}: use the --tokenizer-model it was trained with")


@torch.no_grad()
def load(engine, model: torch.nn.Module, load_dir: str, tag: str, meta: dict, layout: dict) -> None:
    """Collective: set every parameter's weight and Adam state from the checkpoint, whatever the
    layout that wrote it, and restore this rank's RNG when `layout` (the run's {tp, pp, ep, dp,
    zero}) is the one that wrote it."""
    from lumina.train import paramstate

    ckpt = os.path.join(load_dir, tag)
    reader = Reader(ckpt, meta)
    kinds = ("param",) if meta["adam_step"] is None else ("param", *paramstate.MOMENTS)
    paramstate.prepare(engine.optimizer)
    for _, p in model.named_parameters():
        name, expert = p.init_name, getattr(p, "expert_offset", None)
        dim, size = getattr(p, "partition_dim", None), getattr(p, "partition_size", 1)
        values = {}
        for kind in kinds:
            if expert is None:
                whole = reader.get(_keys(name, kind))
            else:
                n = p.ds_shape[0] if hasattr(p, "ds_shape") else p.shape[0]
                whole = torch.stack([reader.get(_keys(f"{name}[{expert + e}]", kind)) for e in range(n)])
            if size > 1:
                width = whole.shape[dim] // size
                whole = whole.narrow(dim, p.partition_rank * width, width)
            values[kind] = whole
        paramstate.set_(engine.optimizer, p, values)  # collective over p's data-parallel group
    paramstate.set_adam_step(engine.optimizer, meta["adam_step"] or 0)
    # RNG streams belong to ranks: they carry over only to the same ranks doing the same work.
    if meta.get("layout") == layout and meta.get("world_size") == dist.get_world_size():
        state = reader.rng(dist.get_rank())
        if state is not None:
            _set_rng(*state)


def load_model_weights(load_dir: str) -> tuple[dict, dict]:
    """(whole fp32 LuminaLM state_dict, metadata) from the latest checkpoint, for eval, generation
    and export: the master weights by name, expert blocks stacked in global order."""
    tag, meta = latest(load_dir)
    reader = Reader(os.path.join(load_dir, tag), meta)
    cfg = ModelConfig.from_dict(meta["model"])
    experts: dict[str, dict[int, torch.Tensor]] = {}
    out = {}
    for key in meta["tensors"]:
        if "/" in key:  # Adam moments
            continue
        m = _EXPERT_KEY.fullmatch(key)
        if m:
            experts.setdefault(m.group(1), {})[int(m.group(2))] = reader.get(key)
        else:
            out[key] = reader.get(key)
    for name, by_index in experts.items():
        out[name] = torch.stack([by_index[e] for e in sorted(by_index)])
    expected = _full_shapes(cfg)
    wrong = sorted(k for k in expected if k not in out or tuple(out[k].shape) != tuple(expected[k]))
    if wrong:
        raise ValueError(f"{os.path.join(load_dir, tag, META)}: missing or misshapen weights {wrong[:5]} "
                         f"for {cfg.name}/{cfg.mode}")
    return out, meta


def _full_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from lumina.model import LuminaLM

    with torch.device("meta"):
        return {k: v.shape for k, v in LuminaLM(cfg).state_dict().items()}
