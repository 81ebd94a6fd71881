"""The shard format: documents come back as written; damage is caught by size or checksum."""

import json

import numpy as np
import pytest

from lumina.data import IndexedDataset
from lumina.data.indexed import IndexedShard, ShardWriter, manifest_path

SHA = "ab" * 32


def write_shard(path, docs, vocab_size=1000, dtype=np.uint16):
    writer = ShardWriter(str(path), np.dtype(dtype), vocab_size, SHA)
    writer.add(np.concatenate(docs), np.array([len(d) for d in docs]))
    writer.publish()
    return [np.asarray(d) for d in docs]


@pytest.mark.parametrize("dtype, vocab", [(np.uint16, 65536), (np.uint32, 70000)])
def test_documents_read_back_exactly(tmp_path, dtype, vocab):
    rng = np.random.default_rng(0)
    docs = write_shard(tmp_path / "s", [rng.integers(0, vocab, n) for n in (5, 1, 300, 17)], vocab, dtype)
    shard = IndexedShard(tmp_path / "s")
    assert shard.tokens.dtype == dtype and shard.header.vocab_size == vocab and shard.header.tokenizer_sha256 == SHA
    assert shard.num_docs == 4 and (tmp_path / "s.bin").stat().st_size == 323 * np.dtype(dtype).itemsize
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(shard.document(i), doc)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_truncated_files_are_caught_by_size(tmp_path):
    write_shard(tmp_path / "s", [np.arange(10), np.arange(7)])
    data = (tmp_path / "s.bin").read_bytes()
    (tmp_path / "s.bin").write_bytes(data[:-2])
    with pytest.raises(ValueError, match=r"s.bin: token file is 32 bytes, its index says 34; truncated"):
        IndexedShard(tmp_path / "s", verify=False)
    (tmp_path / "s.bin").write_bytes(data)
    index = (tmp_path / "s.idx").read_bytes()
    (tmp_path / "s.idx").write_bytes(index[:-8])
    with pytest.raises(ValueError, match=r"s.idx: index is \d+ bytes, its header says \d+ \(2 documents\); truncated"):
        IndexedShard(tmp_path / "s")
    (tmp_path / "s.idx").write_bytes(index[:20])
    with pytest.raises(ValueError, match=r"s.idx: truncated index \(20 bytes"):
        IndexedShard(tmp_path / "s")


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_files_are_caught_by_checksum(tmp_path):
    write_shard(tmp_path / "s", [np.arange(10), np.arange(7)])
    flip_byte(tmp_path / "s.bin", 5)
    with pytest.raises(ValueError, match=r"s.bin: token checksum mismatch"):
        IndexedShard(tmp_path / "s")
    flip_byte(tmp_path / "s.bin", 5)
    flip_byte(tmp_path / "s.idx", (tmp_path / "s.idx").stat().st_size - 12)  # inside the offsets
    with pytest.raises(ValueError, match=r"s.idx: index checksum mismatch"):
        IndexedShard(tmp_path / "s")
    flip_byte(tmp_path / "s.idx", (tmp_path / "s.idx").stat().st_size - 12)
    flip_byte(tmp_path / "s.idx", 0)
    with pytest.raises(ValueError, match=r"s.idx: not a Lumina index file"):
        IndexedShard(tmp_path / "s")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"gone.idx: index file missing"):
        IndexedShard(tmp_path / "gone")
    write_shard(tmp_path / "s", [np.arange(3)])
    (tmp_path / "s.bin").unlink()
    with pytest.raises(ValueError, match=r"s.bin: token file missing"):
        IndexedShard(tmp_path / "s")
    with pytest.raises(ValueError, match=r"nothing.manifest.json: no dataset here"):
        IndexedDataset(str(tmp_path / "nothing"))


def test_dataset_reads_across_shards_and_checks_its_manifest(tmp_path):
    a = write_shard(tmp_path / "d.00000", [np.arange(4), np.arange(10, 13)])
    b = write_shard(tmp_path / "d.00001", [np.arange(20, 26)])
    shards = [{"name": "d.00000", "docs": 2, "tokens": 7}, {"name": "d.00001", "docs": 1, "tokens": 6}]
    manifest = {"format": "lumina-indexed-dataset", "complete": True, "tokenizer_sha256": SHA, "vocab_size": 1000,
                "num_docs": 3, "num_tokens": 13}
    manifest["shards"] = shards
    manifest_path(str(tmp_path / "d")).write_text(json.dumps(manifest))
    ds = IndexedDataset(str(tmp_path / "d"))
    assert (ds.num_docs, ds.num_tokens) == (3, 13)
    for i, doc in enumerate(a + b):
        np.testing.assert_array_equal(ds.document(i), doc)
    np.testing.assert_array_equal(ds.tokens(5, 10), [11, 12, 20, 21, 22])
    assert [ds.doc_token_offset(i) for i in range(4)] == [0, 4, 7, 13]

    # A manifest edited to list fewer shards: the totals no longer add up; with the totals edited
    # too, the unlisted shard's file gives it away.
    edited = {**manifest, "shards": shards[:1]}
    manifest_path(str(tmp_path / "d")).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"num_docs is 3 but its 1 shards hold 2: the manifest was edited"):
        IndexedDataset(str(tmp_path / "d"))
    manifest_path(str(tmp_path / "d")).write_text(json.dumps({**edited, "num_docs": 2, "num_tokens": 7}))
    with pytest.raises(ValueError, match=r"lists 1 shards but .*d.00001.bin exists too"):
        IndexedDataset(str(tmp_path / "d"))

    manifest["shards"][1]["tokens"] = 7
    manifest_path(str(tmp_path / "d")).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"d.00001.idx: 1 documents / 6 tokens, the manifest says 1 / 7"):
        IndexedDataset(str(tmp_path / "d"))
    manifest["complete"] = False
    manifest_path(str(tmp_path / "d")).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"d.manifest.json: the dataset is incomplete"):
        IndexedDataset(str(tmp_path / "d"))
    manifest_path(str(tmp_path / "d")).write_text("{not json")
    with pytest.raises(ValueError, match=r"d.manifest.json: corrupted manifest"):
        IndexedDataset(str(tmp_path / "d"))
