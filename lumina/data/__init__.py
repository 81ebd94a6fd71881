"""Lumina's data pipeline: raw text to the token batches the trainer reads.

    load_tokenizer(path=None) -> Tokenizer        None: the tokenizer of the embedded corpus
    train_tokenizer(documents, output, vocab_size, model_type="bpe") -> Tokenizer
    prepare_dataset(inputs, output, tokenizer, workers=1, ...) -> PrepareResult
    embedded_corpus_shards(cache_dir=None) -> (train_prefix, validation_prefix)
    BatchLoader(prefixes, weights, seq_length, micro_batch_size, dp_rank, dp_size, seed, ...)
    parse_data_path(["0.7", "c4", "0.3", "books"]) -> (["c4", "books"], [0.7, 0.3])
    IndexedDataset(prefix)                          documents and tokens of a prepared dataset

See docs/data.md. Names load on first use: prepare's worker processes import this package and
need neither torch (the loader) nor `datasets` (the sources).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "PrepareResult": "prepare",
    "prepare_dataset": "prepare",
    "embedded_corpus_shards": "cache",
    "BatchLoader": "loader",
    "parse_data_path": "loader",
    "IndexedDataset": "indexed",
}
__all__ = [
    "BatchLoader",
    "IndexedDataset",
    "PrepareResult",
    "Tokenizer",
    "embedded_corpus_shards",
    "load_tokenizer",
    "parse_data_path",
    "prepare_dataset",
    "train_tokenizer",
]

if TYPE_CHECKING:
    from lumina.data.cache import embedded_corpus_shards
    from lumina.data.indexed import IndexedDataset
    from lumina.data.loader import BatchLoader, parse_data_path
    from lumina.data.prepare import PrepareResult, prepare_dataset
    from lumina.data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lumina.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lumina.data.{_EXPORTS[name]}"), name)
