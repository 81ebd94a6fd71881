"""Megatron-style indexed token shards, and datasets made of them.

A shard is two files. `NAME.bin` is the flat token stream (uint16 when the vocabulary fits, else
uint32), every document followed by EOS, memory-mapped when read. `NAME.idx` is a fixed header
followed by the document offsets into that stream (uint64, one more than there are documents):

    magic "LUMINAIX" | version u32 | token bytes u32 | vocab size u32 | 0 u32 |
    documents u64 | tokens u64 | tokenizer sha256 | .bin sha256 | index sha256

The index sha256 covers the header before it and the offsets, so a damaged `.idx` is caught
cheaply; the `.bin` sha256 catches damaged tokens at the cost of reading them (~1.3 GB/s).

A dataset is a prefix `P`: `P.manifest.json` lists its shards `P.00000`, `P.00001`, ... in
order, the settings that made them, and whether the prepare that writes them has finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lumina.util.files import atomic_write_bytes, atomic_write_text, file_sha256

MAGIC = b"LUMINAIX"
VERSION = 1
MANIFEST_FORMAT = "lumina-indexed-dataset"
_HEADER = struct.Struct("<8sIIIIQQ32s32s32s")
_HASHED = _HEADER.size - 32  # the index checksum covers every header byte before itself
_DTYPES = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}


def manifest_path(prefix: str) -> Path:
    return Path(f"{prefix}.manifest.json")


def shard_name(prefix: str, index: int) -> str:
    return f"{Path(prefix).name}.{index:05d}"


def _check_shard_list(prefix: str, manifest: dict[str, Any]) -> None:
    """The manifest lists every shard prepare-data wrote, in order, and its totals add up: an
    edited list (2 of 5 shards) would otherwise train on part of the data without a word."""
    where = manifest_path(prefix)
    shards = manifest.get("shards", [])
    names = [entry.get("name") for entry in shards]
    if names != [shard_name(prefix, i) for i in range(len(shards))]:
        raise ValueError(f"{where}: lists shards {names[:4]}{'...' if len(names) > 4 else ''}; prepare-data writes "
                         f"{shard_name(prefix, 0)}, {shard_name(prefix, 1)}, ... in order: the manifest was edited")
    for key, field in (("num_docs", "docs"), ("num_tokens", "tokens")):
        total = sum(entry.get(field, 0) for entry in shards)
        if manifest.get(key) != total:
            raise ValueError(f"{where}: {key} is {manifest.get(key)} but its {len(shards)} shards hold {total}: "
                             "the manifest was edited or a shard is missing from it")
    unlisted = Path(prefix).parent / f"{shard_name(prefix, len(shards))}.bin"
    if unlisted.exists():
        raise ValueError(f"{where}: lists {len(shards)} shards but {unlisted} exists too: the manifest was edited "
                         "(run prepare-data again to rebuild it)")


def write_manifest(prefix: str, manifest: dict[str, Any]) -> None:
    atomic_write_text(str(manifest_path(prefix)), json.dumps(manifest, indent=1) + "\n")


def read_manifest(prefix: str) -> dict[str, Any] | None:
    """The manifest of `prefix`, or None when there is none yet."""
    path = manifest_path(prefix)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupted manifest ({exc}); delete {prefix}.* and prepare again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a Lumina dataset manifest (expected format {MANIFEST_FORMAT!r})")
    return manifest


class ShardWriter:
    """Appends encoded documents to `PATH.bin.tmp`; `publish` then writes the index and renames
    both into place, `.idx` last, so a shard with an index is always whole."""

    def __init__(self, path: str, dtype: np.dtype, vocab_size: int, tokenizer_sha256: str) -> None:
        if np.dtype(dtype).itemsize not in _DTYPES:
            raise ValueError(f"{path}: token dtype {dtype}: expected uint16 or uint32")
        self.path = path
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        self.tokenizer_sha256 = tokenizer_sha256
        self._bin_tmp = f"{path}.bin.tmp"
        self._file = open(self._bin_tmp, "wb")
        self._hash = hashlib.sha256()
        self._lengths: list[np.ndarray] = []
        self.num_docs = 0
        self.num_tokens = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: `tokens` is their concatenation, `lengths[i]` the size of document i."""
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._lengths.append(np.asarray(lengths, dtype=np.uint64))
        self.num_docs += len(lengths)
        self.num_tokens += len(tokens)

    def publish(self) -> None:
        if self.num_docs == 0:
            raise ValueError(f"{self.path}: a shard needs at least one document")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        offsets = np.zeros(self.num_docs + 1, dtype=np.uint64)
        np.cumsum(np.concatenate(self._lengths), out=offsets[1:])
        header = _HEADER.pack(
            MAGIC,
            VERSION,
            self.dtype.itemsize,
            self.vocab_size,
            0,
            self.num_docs,
            self.num_tokens,
            bytes.fromhex(self.tokenizer_sha256),
            self._hash.digest(),
            b"\0" * 32,
        )
        index_hash = hashlib.sha256(header[:_HASHED] + offsets.tobytes()).digest()
        os.replace(self._bin_tmp, f"{self.path}.bin")
        atomic_write_bytes(f"{self.path}.idx", header[:_HASHED] + index_hash + offsets.tobytes())

    def discard(self) -> None:
        self._file.close()
        Path(self._bin_tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardHeader:
    dtype: np.dtype
    vocab_size: int
    num_docs: int
    num_tokens: int
    tokenizer_sha256: str
    bin_sha256: str


def _read_index(path: Path) -> tuple[ShardHeader, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"{path}: index file missing")
    size = path.stat().st_size
    if size < _HEADER.size:
        raise ValueError(f"{path}: truncated index ({size} bytes, the header alone is {_HEADER.size})")
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
    magic, version, itemsize, vocab, _, docs, tokens, tok_sha, bin_sha, idx_sha = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a Lumina index file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ValueError(f"{path}: index version {version}, this Lumina reads version {VERSION}")
    if itemsize not in _DTYPES:
        raise ValueError(f"{path}: token size {itemsize} bytes, expected 2 or 4")
    if docs == 0 or tokens < docs:
        # Every document holds at least its EOS, and writers never publish an empty shard.
        raise ValueError(f"{path}: header says {docs} documents and {tokens} tokens; corrupted")
    expected = _HEADER.size + 8 * (docs + 1)
    if size != expected:
        raise ValueError(
            f"{path}: index is {size} bytes, its header says {expected} ({docs} documents); truncated or corrupted"
        )
    offsets = np.memmap(path, dtype=np.uint64, mode="r", offset=_HEADER.size, shape=(docs + 1,))
    if hashlib.sha256(raw[:_HASHED] + offsets.tobytes()).digest() != idx_sha:
        raise ValueError(f"{path}: index checksum mismatch; the file is corrupted")
    header = ShardHeader(_DTYPES[itemsize], vocab, docs, tokens, tok_sha.hex(), bin_sha.hex())
    return header, offsets


class IndexedShard:
    """One shard, memory-mapped. `verify` also checks the token file's checksum."""

    def __init__(self, path: str | os.PathLike[str], verify: bool = True) -> None:
        self.path = str(path)
        self.header, self.offsets = _read_index(Path(f"{self.path}.idx"))
        bin_path = Path(f"{self.path}.bin")
        if not bin_path.is_file():
            raise ValueError(f"{bin_path}: token file missing")
        want = self.header.num_tokens * self.header.dtype.itemsize
        if bin_path.stat().st_size != want:
            raise ValueError(
                f"{bin_path}: token file is {bin_path.stat().st_size} bytes, its index says {want}; "
                "truncated or corrupted"
            )
        if verify and file_sha256(bin_path) != self.header.bin_sha256:
            raise ValueError(f"{bin_path}: token checksum mismatch; the file is corrupted")
        self.tokens = np.memmap(bin_path, dtype=self.header.dtype, mode="r", shape=(self.header.num_tokens,))

    @property
    def num_docs(self) -> int:
        return self.header.num_docs

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i`, ending with EOS."""
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]


class IndexedDataset:
    """The shards of a prefix read as one token stream and one list of documents."""

    def __init__(self, prefix: str, verify: bool = True) -> None:
        self.prefix = prefix
        manifest = read_manifest(prefix)
        if manifest is None:
            raise ValueError(
                f"{manifest_path(prefix)}: no dataset here; write one with `lumina prepare-data --output {prefix}`"
            )
        if not manifest.get("complete"):
            raise ValueError(
                f"{manifest_path(prefix)}: the dataset is incomplete (prepare-data was interrupted); "
                "run the same command again to finish it"
            )
        self.manifest = manifest
        self.tokenizer_sha256: str = manifest["tokenizer_sha256"]
        self.vocab_size: int = manifest["vocab_size"]
        folder = Path(prefix).parent
        self.shards = [IndexedShard(folder / entry["name"], verify) for entry in manifest["shards"]]
        for shard, entry in zip(self.shards, manifest["shards"]):
            h = shard.header
            if h.tokenizer_sha256 != self.tokenizer_sha256 or h.vocab_size != self.vocab_size:
                raise ValueError(
                    f"{shard.path}.idx: tokenizer {h.tokenizer_sha256[:12]} (vocab {h.vocab_size}) differs from the "
                    f"manifest's {self.tokenizer_sha256[:12]} (vocab {self.vocab_size})"
                )
            if (h.num_docs, h.num_tokens) != (entry["docs"], entry["tokens"]):
                raise ValueError(
                    f"{shard.path}.idx: {h.num_docs} documents / {h.num_tokens} tokens, the manifest says "
                    f"{entry['docs']} / {entry['tokens']}"
                )
        _check_shard_list(prefix, manifest)
        # Where each shard starts, in documents and in tokens, for finding a position's shard.
        self.doc_starts = np.cumsum([0] + [s.num_docs for s in self.shards], dtype=np.int64)
        self.token_starts = np.cumsum([0] + [s.header.num_tokens for s in self.shards], dtype=np.int64)
        self.num_docs = int(self.doc_starts[-1])
        self.num_tokens = int(self.token_starts[-1])

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i` of the whole dataset, ending with EOS."""
        if not 0 <= i < self.num_docs:
            raise IndexError(f"{self.prefix}: document {i} of {self.num_docs}")
        s = int(np.searchsorted(self.doc_starts, i, side="right")) - 1
        return self.shards[s].document(i - int(self.doc_starts[s]))

    def doc_token_offset(self, i: int) -> int:
        """Where document `i` starts in the token stream (`num_tokens` for i == num_docs)."""
        if i == self.num_docs:
            return self.num_tokens
        s = int(np.searchsorted(self.doc_starts, i, side="right")) - 1
        return int(self.token_starts[s]) + int(self.shards[s].offsets[i - int(self.doc_starts[s])])

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens `start:stop` of the concatenated stream, across shard boundaries."""
        if not 0 <= start < stop <= self.num_tokens:
            raise IndexError(f"{self.prefix}: tokens {start}:{stop} of {self.num_tokens}")
        parts = []
        s = int(np.searchsorted(self.token_starts, start, side="right")) - 1
        while start < stop:
            base = int(self.token_starts[s])
            end = min(stop, int(self.token_starts[s + 1]))
            parts.append(self.shards[s].tokens[start - base : end - base])
            start = end
            s += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
