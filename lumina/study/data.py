"""The study's two data sets, through the project's pipeline (lumina.data) and tokenizer.

- `c4`: the shipped sample (lumina/data/c4/, provenance in its SOURCES.md) or a C4 JSON-lines file
  the user passes. It is prepared into token shards once per machine (cached by the file's hash and
  the tokenizer's), and its last 10% of documents are held out: training never reads them.
- `embedded`: the corpus `lumina train` reads by default; its validation split is a whole book
  that training never reads (lumina.data.embedded.VALIDATION_BOOK).

The held-out batches are drawn once per data set with a fixed seed, so every run of the study is
scored on the same tokens.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

C4_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "c4" / "c4_en_train00000_head_1000.jsonl.gz"
# The shipped file's hash (lumina/data/c4/SOURCES.md): a damaged or swapped sample is refused.
C4_SAMPLE_SHA256 = "a048ad4af7f7e7aac425f2e1cffc96c9d7e10a413781c6317a59b3c38e4aacd3"
# The share of C4 documents (the last ones) held out from training.
C4_VALID_FRACTION = 0.1
# The held-out batches' loader seed: fixed, so the held-out tokens do not depend on the run's seed.
EVAL_SEED = 0


@dataclass
class DataSet:
    """Where one data set's training batches come from, and its held-out batches."""
    name: str
    source: str              # what was read, for the results file
    source_sha256: str
    train_prefixes: list[str]
    train_split: str         # "train" (C4: all but the held-out documents) or "all"
    valid_fraction: float
    valid_batches: list      # [micro_batch, seq + 1] int64 tensors
    train_tokens: int        # tokens the training split holds

    def train_loader(self, seq: int, micro_batch: int, seed: int, tokenizer):
        from lumina.data import BatchLoader

        return BatchLoader(self.train_prefixes, None, seq, micro_batch, 0, 1, seed, tokenizer.sha256,
                           vocab_size=tokenizer.vocab_size, split=self.train_split,
                           valid_fraction=self.valid_fraction, verify_checksums=False)


def check_c4_file(path: str) -> None:
    """--c4 FILE: refused in one line before any work when it is missing or not C4 JSON lines."""
    from lumina.data.sources import JSON_SUFFIXES

    if not os.path.isfile(path):
        raise ValueError(f"--c4 {path!r}: no such file; give a C4 JSON-lines file ({', '.join(JSON_SUFFIXES)})")
    if not path.lower().endswith(JSON_SUFFIXES):
        raise ValueError(f"--c4 {path!r}: expected a C4 JSON-lines file ({', '.join(JSON_SUFFIXES)}) "
                         "with a 'text' field per line")


def _c4_shards(path: str, sha256: str, tokenizer) -> str:
    """The prefix of `path` prepared as token shards, cached like the embedded corpus's."""
    from lumina.data.cache import cache_root, prepared_once
    from lumina.data.indexed import VERSION
    from lumina.data.prepare import prepare_dataset

    key = hashlib.sha256(f"{VERSION}:{tokenizer.sha256}:{sha256}".encode()).hexdigest()[:16]
    final = prepared_once(cache_root() / f"study-c4-{key}",
                          lambda work: prepare_dataset([path], str(work / "c4"), tokenizer))
    return str(final / "c4")


def load(name: str, seq: int, micro_batch: int, eval_batches: int, tokenizer, c4_file: str | None = None) -> DataSet:
    from lumina.data import BatchLoader, embedded_corpus_shards
    from lumina.data.embedded import corpus_sha256
    from lumina.util.files import file_sha256

    if name == "c4":
        path = c4_file or str(C4_SAMPLE)
        sha = file_sha256(path)
        if c4_file is None and sha != C4_SAMPLE_SHA256:
            raise ValueError(f"{path}: sha256 {sha} is not the shipped C4 sample's {C4_SAMPLE_SHA256}; "
                             "reinstall the package or pass --c4 FILE")
        train_prefixes, split, fraction = [_c4_shards(path, sha, tokenizer)], "train", C4_VALID_FRACTION
        valid_prefixes, valid_split = train_prefixes, "valid"
        source = "lumina/data/c4/" + C4_SAMPLE.name if c4_file is None else os.path.abspath(path)
    elif name == "embedded":
        train, valid = embedded_corpus_shards()
        train_prefixes, split, fraction = [train], "all", 0.0
        valid_prefixes, valid_split = [valid], "all"
        sha = corpus_sha256("train")
        source = "lumina/data/corpus (train; validation: the held-out book)"
    else:
        raise ValueError(f"study data set {name!r} is unknown: choose c4 or embedded")
    common = dict(tokenizer_sha256=tokenizer.sha256, vocab_size=tokenizer.vocab_size, valid_fraction=fraction)
    valid = BatchLoader(valid_prefixes, None, seq, micro_batch, 0, 1, EVAL_SEED, split=valid_split, **common)
    train_loader = BatchLoader(train_prefixes, None, seq, micro_batch, 0, 1, EVAL_SEED, split=split, **common)
    windows = sum(valid.windows)
    if windows < eval_batches * micro_batch:
        raise ValueError(f"data set {name} ({source}) holds out {windows} windows of {seq + 1} tokens, fewer "
                         f"than the {eval_batches} x {micro_batch} the evaluation reads; give a larger --c4 file")
    return DataSet(name=name, source=source, source_sha256=sha, train_prefixes=train_prefixes, train_split=split,
                   valid_fraction=fraction, valid_batches=[valid.next_batch() for _ in range(eval_batches)],
                   train_tokens=train_loader.tokens_per_epoch)
