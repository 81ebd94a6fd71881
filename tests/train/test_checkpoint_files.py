"""The checkpoint files on their own (one process, no training): a half-written checkpoint is never
taken as latest, every file is checked before use, and nothing in one can run code."""

import json
import os
import pickle

import pytest
import torch

from lumina.model import LuminaLM
from lumina.presets import get_preset
from lumina.train import checkpoint


@pytest.fixture
def saved(tmp_path):
    """A weights-only moe checkpoint of a freshly initialised debug model, and its weights."""
    cfg = get_preset("debug", "moe")
    weights = LuminaLM(cfg, init_seed=7).state_dict()
    checkpoint.write_weights(str(tmp_path), cfg, weights, {"tokenizer_sha256": "x"})
    return tmp_path, weights


def test_weights_round_trip_with_experts_stored_by_global_index(saved):
    path, weights = saved
    from safetensors.torch import load_file

    stored = load_file(path / "iter_0000000" / "part-00000.safetensors")
    assert torch.equal(stored["blocks.0.mlp.w_gate[5]"], weights["blocks.0.mlp.w_gate"][5])
    loaded, meta = checkpoint.load_model_weights(str(path))
    assert meta["iteration"] == 0 and meta["adam_step"] is None
    assert sorted(loaded) == sorted(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_latest_points_at_a_complete_checkpoint(saved):
    path, _ = saved
    (path / "iter_0000008").mkdir()  # a save that died before its metadata and `latest`
    tag, meta = checkpoint.latest(str(path))
    assert (tag, meta["iteration"]) == ("iter_0000000", 0)


def test_latest_naming_an_incomplete_directory_is_refused(tmp_path):
    (tmp_path / "iter_0000008").mkdir()
    (tmp_path / checkpoint.LATEST).write_text("iter_0000008")
    with pytest.raises(ValueError, match="the checkpoint is incomplete"):
        checkpoint.latest(str(tmp_path))


def test_directory_without_latest_is_refused(saved):
    path, _ = saved
    os.unlink(path / checkpoint.LATEST)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        checkpoint.latest(str(path))


def test_compatibility_checks_name_the_difference_but_not_the_layout(saved):
    path, _ = saved
    _, meta = checkpoint.latest(str(path))
    moe = get_preset("debug", "moe")
    checkpoint.check_compatible(meta, moe, str(path))  # any world size and layout may load it
    with pytest.raises(ValueError, match=r"is a debug/moe checkpoint but this run is --preset debug --mode dense"):
        checkpoint.check_compatible(meta, get_preset("debug", "dense"), str(path))
    with pytest.raises(ValueError, match=r"different model settings \(seq_length\)"):
        checkpoint.check_compatible(meta, moe.replace(seq_length=64), str(path))
    # Another tokenizer of the same vocabulary size maps the text to other ids: refused, named.
    checkpoint.check_compatible(meta, moe, str(path), tokenizer_sha256="x")
    with pytest.raises(ValueError, match=r"trained with tokenizer x but this run uses 0123456789ab: use the --tokenizer-model"):
        checkpoint.check_compatible(meta, moe, str(path), tokenizer_sha256="0123456789abcdef")


def _part(path):
    return path / "iter_0000000" / "part-00000.safetensors"


def test_a_flipped_byte_is_refused_naming_the_file(saved):
    path, _ = saved
    data = bytearray(_part(path).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: safetensors alone would load it
    _part(path).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"part-00000\.safetensors: SHA-256 differs"):
        checkpoint.load_model_weights(str(path))


def test_a_truncated_file_is_refused_naming_the_file(saved):
    path, _ = saved
    data = _part(path).read_bytes()
    _part(path).write_bytes(data[: len(data) - 4096])
    with pytest.raises(ValueError, match=r"part-00000\.safetensors is \d+ bytes but lumina.json records"):
        checkpoint.load_model_weights(str(path))


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_is_refused_and_runs_nothing(saved, tmp_path_factory):
    path, _ = saved
    marker = tmp_path_factory.mktemp("marker") / "ran"
    payload = pickle.dumps({"weights": _RunsCode(str(marker))})
    _part(path).write_bytes(payload)
    with pytest.raises(ValueError, match=r"part-00000\.safetensors is \d+ bytes"):
        checkpoint.load_model_weights(str(path))
    # Even with lumina.json rewritten to vouch for the file, it is parsed as safetensors, never unpickled.
    meta_path = path / "iter_0000000" / checkpoint.META
    meta = json.loads(meta_path.read_text())
    meta["files"]["part-00000.safetensors"] = {"bytes": len(payload), "sha256": checkpoint._sha256(payload)}
    meta["sha256"] = checkpoint._meta_digest(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"part-00000\.safetensors: not a safetensors file"):
        checkpoint.load_model_weights(str(path))
    assert not marker.exists()


def test_edited_metadata_and_the_old_format_are_refused(saved):
    path, _ = saved
    meta_path = path / "iter_0000000" / checkpoint.META
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "iteration": 5}))
    with pytest.raises(ValueError, match=r"lumina.json: SHA-256 differs"):
        checkpoint.latest(str(path))
    meta_path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"lumina.json: not valid JSON"):
        checkpoint.latest(str(path))
    meta_path.write_text(json.dumps({"iteration": 4, "model": meta["model"], "world_size": 1}))
    with pytest.raises(ValueError, match=r"checkpoint format none \(DeepSpeed's per-layout files\)"):
        checkpoint.latest(str(path))


def test_retention_deletes_only_this_runs_complete_checkpoints(tmp_path):
    """A second run in the same directory keeps the first run's checkpoints, a save that died (no
    lumina.json) neither counts nor goes, and nothing newer than the checkpoint just written goes."""
    def make(iteration: int, run_id: str | None) -> None:
        d = tmp_path / checkpoint.tag_for(iteration)
        d.mkdir()
        if run_id is not None:
            (d / checkpoint.META).write_text(json.dumps({"run_id": run_id}))

    for i in (10, 20, 30):
        make(i, "first")
    make(2, "second")
    make(3, None)  # died mid-save
    make(4, "second")
    make(6, "second")
    checkpoint._prune(str(tmp_path), 1, checkpoint.tag_for(4), "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iter_0000003", "iter_0000004", "iter_0000006", "iter_0000010", "iter_0000020", "iter_0000030"]
    checkpoint._prune(str(tmp_path), 1, checkpoint.tag_for(6), "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iter_0000003", "iter_0000006", "iter_0000010", "iter_0000020", "iter_0000030"]


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp's 0600 must not survive the rename: configs, pages and checkpoint metadata are read
    by other users on a cluster."""
    from lumina.util.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "a.json"), "{}")
        with open(tmp_path / "b.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == os.stat(tmp_path / "b.json").st_mode & 0o777 == 0o644
