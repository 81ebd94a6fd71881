"""Where conversions write and what they read: a staged output directory, and a Hugging Face
model directory read through JSON and safetensors only.

Output goes to a temporary sibling of the target, renamed into place at the end, so an
interrupted conversion never leaves a half-written directory under the name asked for.
Input never runs code: `pytorch_model.bin` (a pickle) is refused, as is any shard index that
points outside the model directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import torch


def check_output(flag: str, path: str) -> None:
    """Refuse an output path that is a file or a non-empty directory."""
    if os.path.isfile(path) or (os.path.exists(path) and not os.path.isdir(path)):
        raise ValueError(f"{flag}={path!r} is a file; give a directory that does not exist yet (or is empty)")
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(f"{flag}={path!r} exists and is not empty; give a directory that does not exist yet "
                         "(or is empty)")


@contextlib.contextmanager
def staged_output(flag: str, path: str) -> Iterator[str]:
    """A temporary directory next to `path`, renamed to `path` when the block succeeds and removed
    when it fails."""
    check_output(flag, path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.tmp-", dir=parent)
    try:
        yield tmp
        check_output(flag, path)  # nothing appeared there meanwhile
        if os.path.isdir(path):
            os.rmdir(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_hf_config(flag: str, hf_dir: str) -> dict:
    """config.json of a Hugging Face model directory, as a dict."""
    if not os.path.isdir(hf_dir):
        raise ValueError(f"{flag}={hf_dir!r}: no such directory")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{flag}={hf_dir!r} is not a Hugging Face model directory: it has no config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{flag}={hf_dir!r}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{flag}={hf_dir!r}: config.json holds a {type(config).__name__}, not an object")
    return config


def weight_files(flag: str, hf_dir: str) -> list[str]:
    """The safetensors files holding the model: model.safetensors or the shards its index lists."""
    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{flag}={hf_dir!r}: model.safetensors.index.json has no readable weight_map "
                             f"({exc})") from None
        for name in names:
            if os.path.basename(name) != name or not name.endswith(".safetensors"):
                raise ValueError(f"{flag}={hf_dir!r}: model.safetensors.index.json names {name!r}; shards must be "
                                 ".safetensors files in the model directory")
        return [os.path.join(hf_dir, n) for n in names]
    if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in os.listdir(hf_dir)):
        raise ValueError(f"{flag}={hf_dir!r} holds pytorch_model.bin, a pickle that can run code when loaded; "
                         "convert it to safetensors first (transformers' save_pretrained writes safetensors)")
    raise ValueError(f"{flag}={hf_dir!r} has no model.safetensors (nor a model.safetensors.index.json)")


def read_tensors(flag: str, files: list[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files, as fp32 (exact for bf16 and fp16 sources)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"{flag}: {path} is listed by the shard index but missing")
        try:
            part = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{flag}: {path} is not a readable safetensors file ({exc})") from None
        tensors.update({k: v.float() for k, v in part.items()})
    return tensors
