"""The embedded corpus prepared on first use: cached, reused, safe when two processes race."""

from pathlib import Path

import lumina.data.cache as cache_module
from lumina.data import IndexedDataset, embedded_corpus_shards
from lumina.data.embedded import corpus_files


def test_prepared_once_then_reused(tmp_path, monkeypatch, embedded_tokenizer):
    monkeypatch.setenv("LUMINA_CACHE", str(tmp_path))
    train, valid = embedded_corpus_shards()
    assert Path(train).parent.parent == tmp_path
    for prefix, split in ((train, "train"), (valid, "validation")):
        ds = IndexedDataset(prefix)
        assert ds.tokenizer_sha256 == embedded_tokenizer.sha256
        files = corpus_files(split)
        assert ds.num_docs == len(files)
        for i, path in enumerate(files):
            assert ds.document(i).tolist() == embedded_tokenizer.encode(path.read_text(encoding="utf-8")) + [2]
    stamps = {p: p.stat().st_mtime_ns for p in Path(train).parent.iterdir()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached shards were prepared again")

    monkeypatch.setattr(cache_module, "prepare_dataset", must_not_run)
    assert embedded_corpus_shards() == (train, valid)
    assert {p: p.stat().st_mtime_ns for p in Path(train).parent.iterdir()} == stamps


def test_losing_a_race_uses_the_winners_shards(tmp_path, monkeypatch):
    # While this call prepares, "another process" (a nested call) finishes first and publishes.
    real_prepare = cache_module.prepare_dataset
    raced = []

    def racing_prepare(*args, **kwargs):
        if not raced:
            raced.append(True)
            winner = embedded_corpus_shards(str(tmp_path))
            raced.append(winner)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(cache_module, "prepare_dataset", racing_prepare)
    assert embedded_corpus_shards(str(tmp_path)) == raced[1]
    assert [p.name for p in tmp_path.iterdir()] == [Path(raced[1][0]).parent.name]  # no leftover work folder
    IndexedDataset(raced[1][0])
