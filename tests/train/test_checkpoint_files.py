"""A half-written checkpoint is never taken as latest."""

import json

import pytest

from lumina.presets import get_preset
from lumina.train import checkpoint


def _complete(tmp_path, tag: str, iteration: int) -> None:
    (tmp_path / tag).mkdir()
    meta = {"iteration": iteration, "model": get_preset("debug", "dense").to_dict(), "world_size": 1}
    (tmp_path / tag / checkpoint.META).write_text(json.dumps(meta))


def test_latest_points_at_a_complete_checkpoint(tmp_path):
    _complete(tmp_path, "iter_0000004", 4)
    (tmp_path / checkpoint.LATEST).write_text("iter_0000004")
    (tmp_path / "iter_0000008").mkdir()  # a save that died before its metadata and `latest`
    tag, meta = checkpoint.latest(str(tmp_path))
    assert (tag, meta["iteration"]) == ("iter_0000004", 4)


def test_latest_naming_an_incomplete_directory_is_refused(tmp_path):
    (tmp_path / "iter_0000008").mkdir()
    (tmp_path / checkpoint.LATEST).write_text("iter_0000008")
    with pytest.raises(ValueError, match="the checkpoint is incomplete"):
        checkpoint.latest(str(tmp_path))


def test_directory_without_latest_is_refused(tmp_path):
    _complete(tmp_path, "iter_0000004", 4)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        checkpoint.latest(str(tmp_path))


def test_compatibility_checks_name_the_difference(tmp_path):
    _complete(tmp_path, "iter_0000004", 4)
    meta = json.loads((tmp_path / "iter_0000004" / checkpoint.META).read_text())
    dense = get_preset("debug", "dense")
    with pytest.raises(ValueError, match="saved by 1 ranks; this run has 2"):
        checkpoint.check_compatible(meta, dense, 2, str(tmp_path))
    with pytest.raises(ValueError, match=r"different model settings \(seq_length\)"):
        checkpoint.check_compatible(meta, dense.replace(seq_length=64), 1, str(tmp_path))
