"""Ingestion: every document lands once, in order, as the tokenizer encodes it, even across an
interruption; bad input leaves nothing behind."""

import json

import numpy as np
import pytest

import lumina.data.prepare as prepare_module
from lumina.data import BatchLoader, IndexedDataset, prepare_dataset
from lumina.data.indexed import read_manifest
from lumina.data.sources import DocumentReader
from tests.data.conftest import C4_SLICE


def shard_files(prefix):
    folder = prefix.parent
    return {p.name: p.read_bytes() for p in sorted(folder.glob(prefix.name + ".*"))}


def test_every_document_reads_back_as_the_tokenizer_encodes_it(c4_prefix, c4_docs, small_tokenizer):
    ds = IndexedDataset(c4_prefix)
    assert ds.num_docs == len(c4_docs) == 200 and len(ds.shards) == 4
    for i, text in enumerate(c4_docs):
        doc = ds.document(i)
        assert doc.tolist() == small_tokenizer.encode(text) + [small_tokenizer.eos_id]
        assert small_tokenizer.decode(doc[:-1].tolist()) == text
    assert ds.num_tokens == sum(len(small_tokenizer.encode(t)) + 1 for t in c4_docs)


def test_two_workers_write_the_same_bytes_as_one(tmp_path, c4_prefix, small_tokenizer):
    from pathlib import Path

    prefix = tmp_path / "c4"
    prepare_dataset([str(C4_SLICE)], str(prefix), small_tokenizer, workers=2, docs_per_shard=64)
    assert shard_files(prefix) == shard_files(Path(c4_prefix))


class Interrupting(DocumentReader):
    after = 150

    def __iter__(self):
        for n, text in enumerate(super().__iter__()):
            if n == self.after:
                raise KeyboardInterrupt
            yield text


def test_interrupted_prepare_resumes_without_losing_or_repeating_documents(
    tmp_path, monkeypatch, c4_prefix, small_tokenizer
):
    from pathlib import Path

    prefix = tmp_path / "c4"
    monkeypatch.setattr(prepare_module, "DocumentReader", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset([str(C4_SLICE)], str(prefix), small_tokenizer, docs_per_shard=64)
    manifest = read_manifest(str(prefix))
    # docs 0-127 made two whole shards; the third was cut short and never published
    assert not manifest["complete"] and [s["docs"] for s in manifest["shards"]] == [64, 64]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c4.00000.bin",
        "c4.00000.idx",
        "c4.00001.bin",
        "c4.00001.idx",
        "c4.manifest.json",
    ]
    with pytest.raises(ValueError, match="the dataset is incomplete"):
        BatchLoader([str(prefix)], None, 16, 1, 0, 1, 0)

    monkeypatch.setattr(prepare_module, "DocumentReader", DocumentReader)
    result = prepare_dataset([str(C4_SLICE)], str(prefix), small_tokenizer, docs_per_shard=64)
    assert (result.resumed_docs, result.num_docs) == (128, 200)
    assert shard_files(prefix) == shard_files(Path(c4_prefix))


def test_a_damaged_shard_from_the_interrupted_run_is_redone(tmp_path, monkeypatch, c4_prefix, small_tokenizer):
    from pathlib import Path

    prefix = tmp_path / "c4"
    monkeypatch.setattr(prepare_module, "DocumentReader", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset([str(C4_SLICE)], str(prefix), small_tokenizer, docs_per_shard=64)
    monkeypatch.setattr(prepare_module, "DocumentReader", DocumentReader)
    bin1 = tmp_path / "c4.00001.bin"
    bin1.write_bytes(bin1.read_bytes()[:100])
    result = prepare_dataset([str(C4_SLICE)], str(prefix), small_tokenizer, docs_per_shard=64)
    assert result.resumed_docs == 64
    assert shard_files(prefix) == shard_files(Path(c4_prefix))


def test_a_finished_dataset_is_not_redone(c4_prefix, small_tokenizer):
    from pathlib import Path

    before = {p: p.stat().st_mtime_ns for p in Path(c4_prefix).parent.iterdir()}
    result = prepare_dataset([str(C4_SLICE)], c4_prefix, small_tokenizer, docs_per_shard=64)
    assert result.resumed_docs == result.num_docs == 200
    assert {p: p.stat().st_mtime_ns for p in Path(c4_prefix).parent.iterdir()} == before


def test_resuming_with_another_tokenizer_or_settings_is_refused(c4_prefix, embedded_tokenizer, small_tokenizer):
    with pytest.raises(
        ValueError,
        match=r"c4.manifest.json: written with tokenizer \w+ \(vocab 512\), "
        r"but .*tokenizer.model is \w+ \(vocab 2048\)",
    ):
        prepare_dataset([str(C4_SLICE)], c4_prefix, embedded_tokenizer, docs_per_shard=64)
    with pytest.raises(ValueError, match=r"c4.manifest.json: written from other docs_per_shard"):
        prepare_dataset([str(C4_SLICE)], c4_prefix, small_tokenizer, docs_per_shard=50)


def test_max_docs_and_empty_documents(tmp_path, small_tokenizer):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", "a", "", "b c"]))
    prepare_dataset([str(src)], str(tmp_path / "all"), small_tokenizer)
    ds = IndexedDataset(str(tmp_path / "all"))
    assert [ds.document(i).tolist()[-1] for i in range(4)] == [small_tokenizer.eos_id] * 4
    assert ds.document(0).tolist() == [small_tokenizer.eos_id]  # an empty document is kept, as its EOS
    prepare_dataset([str(src)], str(tmp_path / "two"), small_tokenizer, max_docs=2)
    assert IndexedDataset(str(tmp_path / "two")).num_docs == 2


def test_bad_input_leaves_nothing_behind(tmp_path, small_tokenizer):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"missing.jsonl: no such file"):
        prepare_dataset([str(C4_SLICE), str(tmp_path / "missing.jsonl")], str(out / "x"), small_tokenizer)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(ValueError, match=r"blank.jsonl: no documents found"):
        prepare_dataset([str(blank)], str(out / "x"), small_tokenizer)
    assert not out.exists() or not list(out.iterdir())
    with pytest.raises(ValueError, match=r"is a directory; give a path prefix"):
        prepare_dataset([str(C4_SLICE)], str(tmp_path), small_tokenizer)
    with pytest.raises(ValueError, match=r"workers 0: must be at least 1"):
        prepare_dataset([str(C4_SLICE)], str(out / "x"), small_tokenizer, workers=0)


def test_tokens_are_uint16_for_small_vocabularies(c4_prefix):
    ds = IndexedDataset(c4_prefix)
    assert all(s.tokens.dtype == np.uint16 for s in ds.shards)
