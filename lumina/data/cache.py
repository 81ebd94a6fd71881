"""The embedded corpus's shards, prepared on first use and cached per machine."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lumina.data.embedded import TRAIN_DIR, VALIDATION_DIR, corpus_sha256
from lumina.data.indexed import VERSION
from lumina.data.prepare import prepare_dataset
from lumina.data.tokenizer import load_tokenizer


def cache_root() -> Path:
    """`$LUMINA_CACHE`, else `~/.cache/lumina`."""
    return Path(os.environ.get("LUMINA_CACHE") or Path.home() / ".cache" / "lumina")


def embedded_corpus_shards(cache_dir: str | None = None) -> tuple[str, str]:
    """Prefixes of the embedded corpus's train and validation datasets, tokenized with the
    embedded tokenizer; prepared the first time and reused after.

    The folder is named by a hash of the corpus, the tokenizer and the shard format, so a
    changed package never reads stale shards.
    """
    tokenizer = load_tokenizer()
    key = hashlib.sha256(
        f"{VERSION}:{tokenizer.sha256}:{corpus_sha256('train')}:{corpus_sha256('validation')}".encode()
    ).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root()

    def build(work: Path) -> None:
        for split, source in (("train", TRAIN_DIR), ("validation", VALIDATION_DIR)):
            prepare_dataset([str(source)], str(work / split), tokenizer)

    final = prepared_once(root / f"embedded-{key}", build)
    return str(final / "train"), str(final / "validation")


def prepared_once(final: Path, build: Callable[[Path], None]) -> Path:
    """`final`, a folder of prepared data that `build(folder)` writes, made if it is missing.

    `build` writes into a private folder that is then renamed into place, so two processes racing
    here each build, the rename is atomic, and the loser's copy is dropped."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the published cache is for every user of the machine
    try:
        build(work)
        try:
            os.rename(work, final)
        except OSError:
            if not final.is_dir():  # not lost to a racing process: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
