"""Resumable, multi-worker ingestion: documents in, indexed shards out.

Document n (counting from 0 over all inputs, in their fixed order) goes to shard
n // docs_per_shard, so every shard but the last is full and a shard's number says which
documents it holds. A shard is written under a temporary name and renamed as soon as it is
full; the manifest is rewritten after each one. A run started again over the same inputs and settings keeps
the shards the manifest lists, skips their documents and carries on: no document is lost or
written twice.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lumina.data.indexed import (
    MANIFEST_FORMAT,
    IndexedShard,
    ShardWriter,
    manifest_path,
    read_manifest,
    shard_name,
    write_manifest,
)
from lumina.data.sources import DocumentReader, check_encoding_errors, fingerprint, resolve_inputs
from lumina.data.tokenizer import Tokenizer

# A task for a worker is a run of documents of about this many characters: large enough that
# pickling is cheap beside encoding, small enough to keep both workers busy on small inputs.
_TASK_CHARS = 1 << 18
_TASK_DOCS = 1024


@dataclass
class PrepareResult:
    """What `prepare_dataset` wrote."""

    prefix: str
    num_docs: int
    num_tokens: int
    num_shards: int
    resumed_docs: int
    """Documents an earlier, interrupted run had already written (skipped this time)."""
    seconds: float
    invalid_bytes: dict[str, int] = field(default_factory=dict)
    """Per input file, the bytes that were not UTF-8 (replaced or skipped)."""


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The token stream of `texts`, each followed by EOS, and each document's length with its EOS."""
    ids = tokenizer.encode_batch(texts)
    for doc in ids:
        doc.append(tokenizer.eos_id)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=tokenizer.token_dtype, count=int(lengths.sum()))
    return tokens, lengths


_worker_tokenizer: Tokenizer | None = None


def _init_worker(model_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_path)


def _encode_task(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return encode_documents(_worker_tokenizer, texts)


def _tasks(docs: Iterable[str], first_doc: int, docs_per_shard: int) -> Iterator[list[str]]:
    """Group documents into tasks that never straddle two shards."""
    texts: list[str] = []
    chars = 0
    for n, text in enumerate(docs, start=first_doc):
        texts.append(text)
        chars += len(text)
        if chars >= _TASK_CHARS or len(texts) >= _TASK_DOCS or (n + 1) % docs_per_shard == 0:
            yield texts
            texts, chars = [], 0
    if texts:
        yield texts


def _encoded(
    tasks: Iterable[list[str]], tokenizer: Tokenizer, pool: Any, depth: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, lengths) per task, in task order, encoded here or by the pool's workers."""
    if pool is None:
        for texts in tasks:
            yield encode_documents(tokenizer, texts)
        return
    # Pool.imap would read the whole input ahead of the workers; `depth` tasks in flight keep
    # every worker busy and memory flat.
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(_encode_task, (task,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _intact_shards(prefix: str, entries: list[dict[str, Any]], docs_per_shard: int) -> list[dict[str, Any]]:
    """The leading shards of an interrupted run that are still whole; a later shard is redone."""
    folder = Path(prefix).parent
    kept = []
    for i, entry in enumerate(entries):
        if entry["name"] != shard_name(prefix, i) or entry["docs"] != docs_per_shard:
            break
        try:
            shard = IndexedShard(folder / entry["name"], verify=True)
        except ValueError:
            break
        if (shard.header.num_docs, shard.header.num_tokens) != (entry["docs"], entry["tokens"]):
            break
        kept.append(entry)
    return kept


def prepare_dataset(
    inputs: list[str],
    output: str,
    tokenizer: Tokenizer,
    workers: int = 1,
    docs_per_shard: int = 100_000,
    text_field: str = "text",
    encoding_errors: str = "replace",
    max_docs: int | None = None,
    progress: bool = False,
) -> PrepareResult:
    """Tokenize every document of `inputs` into the dataset `output` (a path prefix).

    `inputs` are files, directories, `c4` or `c4:validation` (see `lumina.data.sources`).
    `workers` > 1 encodes in that many processes. `max_docs` stops after that many documents.
    Calling it again after an interruption finishes the job; calling it on a finished dataset
    with the same inputs and settings does nothing.
    """
    if workers < 1:
        raise ValueError(f"workers {workers}: must be at least 1")
    if docs_per_shard < 1:
        raise ValueError(f"docs per shard {docs_per_shard}: must be at least 1")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max docs {max_docs}: must be at least 1")
    check_encoding_errors(encoding_errors)
    if Path(output).is_dir() or output.endswith(("/", "\\")):
        raise ValueError(f"output {output!r} is a directory; give a path prefix such as {Path(output) / 'train'}")
    sources = resolve_inputs(inputs)
    settings = {
        "inputs": fingerprint(sources),
        "text_field": text_field,
        "encoding_errors": encoding_errors,
        "docs_per_shard": docs_per_shard,
        "max_docs": max_docs,
    }
    start = time.perf_counter()
    manifest = read_manifest(output)
    if manifest is not None:
        _check_resumable(output, manifest, tokenizer, settings)
        if manifest["complete"]:
            return _result(output, manifest, manifest["num_docs"], time.perf_counter() - start, {})
        manifest["shards"] = _intact_shards(output, manifest["shards"], docs_per_shard)
    else:
        manifest = {
            "format": MANIFEST_FORMAT,
            "complete": False,
            "tokenizer_sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "dtype": tokenizer.token_dtype.name,
            "settings": settings,
            "shards": [],
        }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    done = len(manifest["shards"]) * docs_per_shard
    with ExitStack() as stack:
        pool = None
        if workers > 1:
            # spawn, not fork: the parent may hold threads (pyarrow, torch) that fork would copy mid-lock.
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer.path,))
            )
        reader = stack.enter_context(
            DocumentReader(sources, text_field, encoding_errors, pool.imap if pool is not None else map)
        )
        docs = itertools.islice(iter(reader), done, max_docs)
        bar = stack.enter_context(_progress_bar(progress, done, max_docs))
        _write_shards(
            output,
            manifest,
            tokenizer,
            _encoded(_tasks(docs, done, docs_per_shard), tokenizer, pool, 2 * workers + 2),
            bar,
        )
    total = sum(s["docs"] for s in manifest["shards"])
    if total == 0:
        raise ValueError(f"{', '.join(inputs)}: no documents found")
    manifest.update(complete=True, num_docs=total, num_tokens=sum(s["tokens"] for s in manifest["shards"]))
    write_manifest(output, manifest)
    return _result(output, manifest, done, time.perf_counter() - start, reader.invalid_bytes)


def _check_resumable(output: str, manifest: dict[str, Any], tokenizer: Tokenizer, settings: dict[str, Any]) -> None:
    path = manifest_path(output)
    if manifest["tokenizer_sha256"] != tokenizer.sha256 or manifest["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(
            f"{path}: written with tokenizer {manifest['tokenizer_sha256'][:12]} (vocab {manifest['vocab_size']}), "
            f"but {tokenizer.path} is {tokenizer.sha256[:12]} (vocab {tokenizer.vocab_size}); "
            f"use that tokenizer, or a new --output"
        )
    changed = sorted(k for k in settings if manifest["settings"].get(k) != settings[k])
    if changed:
        raise ValueError(
            f"{path}: written from other {', '.join(changed)}; use a new --output, or delete {output}.* to start over"
        )


def _write_shards(
    output: str,
    manifest: dict[str, Any],
    tokenizer: Tokenizer,
    results: Iterable[tuple[np.ndarray, np.ndarray]],
    bar: Any,
) -> None:
    """Write encoded tasks into shards, publishing each as soon as it holds docs_per_shard documents."""
    docs_per_shard = manifest["settings"]["docs_per_shard"]
    folder = Path(output).parent
    writer: ShardWriter | None = None
    tokens_this_run = 0
    started = time.perf_counter()
    try:
        for tokens, lengths in results:
            if writer is None:
                name = shard_name(output, len(manifest["shards"]))
                writer = ShardWriter(str(folder / name), tokenizer.token_dtype, tokenizer.vocab_size, tokenizer.sha256)
            writer.add(tokens, lengths)
            if writer.num_docs == docs_per_shard:
                _publish(output, manifest, writer)
                writer = None
            tokens_this_run += len(tokens)
            bar.set_postfix_str(f"{tokens_this_run / (time.perf_counter() - started):,.0f} tok/s", refresh=False)
            bar.update(len(lengths))
        if writer is not None:
            _publish(output, manifest, writer)
            writer = None
    finally:
        if writer is not None:
            writer.discard()


def _publish(output: str, manifest: dict[str, Any], writer: ShardWriter) -> None:
    writer.publish()
    manifest["shards"].append({"name": Path(writer.path).name, "docs": writer.num_docs, "tokens": writer.num_tokens})
    write_manifest(output, manifest)


def _progress_bar(enabled: bool, initial: int, total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="doc", unit_scale=True, disable=not enabled, smoothing=0.1)


def _result(
    output: str, manifest: dict[str, Any], resumed: int, seconds: float, invalid: dict[str, int]
) -> PrepareResult:
    return PrepareResult(
        prefix=output,
        num_docs=manifest["num_docs"],
        num_tokens=manifest["num_tokens"],
        num_shards=len(manifest["shards"]),
        resumed_docs=resumed,
        seconds=seconds,
        invalid_bytes=invalid,
    )
