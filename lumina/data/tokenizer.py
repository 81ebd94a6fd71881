"""A lossless sentencepiece tokenizer: training, loading, and the shipped default.

Sentencepiece's defaults normalise text (NFKC, collapsed whitespace, a dummy leading space) and
so cannot give the text back. The settings in `train_tokenizer` keep every character: identity
normalisation, whitespace kept as is, newline as its own piece and byte fallback for any
character outside the vocabulary. One character still needs help: sentencepiece writes spaces
as U+2581 internally, so a literal U+2581 would come back as a space; `Tokenizer.encode`
encodes it through its UTF-8 byte pieces instead, which decode to the character itself.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from lumina.data.embedded import CORPUS_DIR, corpus_files
from lumina.util.files import atomic_write_bytes

EMBEDDED_TOKENIZER = CORPUS_DIR / "tokenizer.model"
EMBEDDED_VOCAB_SIZE = 2048

# Reserved ids of every tokenizer Lumina trains. Sentencepiece requires an unknown piece even
# though byte fallback means it is never produced.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
NEWLINE_ID = 4
# 4 specials, the newline piece and 256 byte pieces come before any learned piece.
RESERVED_PIECES = 4 + 1 + 256

_SPACE_MARK = "\u2581"
_SEED = 1234
# Sentencepiece slows down per character on long inputs (0.25 us/char at 10k characters,
# 0.5 us/char at 100k); whole books encode ~4x faster cut into pieces of about this size.
_CHUNK_CHARS = 1 << 14


def _split_at_newlines(text: str) -> list[str]:
    """Cut `text` after newlines into pieces of at most ~_CHUNK_CHARS characters (longer only
    where a line is)."""
    pieces = []
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        cut = text.rfind("\n", start, start + _CHUNK_CHARS)
        if cut < 0:
            cut = text.find("\n", start + _CHUNK_CHARS)
            if cut < 0:
                break
        pieces.append(text[start : cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


class Tokenizer:
    """A sentencepiece model plus the facts the data pipeline checks it by."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        model = _read_model_bytes(self.path)
        self.sha256: str = hashlib.sha256(model).hexdigest()
        self._sp = spm.SentencePieceProcessor(model_proto=model)
        self.vocab_size: int = self._sp.get_piece_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.pad_id: int = self._sp.pad_id()
        self.unk_id: int = self._sp.unk_id()
        if self.eos_id < 0:
            raise ValueError(f"{self.path}: the tokenizer has no EOS piece; the pipeline separates documents with EOS")
        mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()]
        # Without byte pieces the literal U+2581 cannot be kept; such a model stays as lossy as it was.
        self._mark_ids = mark_ids if all(self._sp.is_byte(i) for i in mark_ids) else None
        # Cutting long texts after newlines leaves the ids unchanged only if no piece holds a
        # newline beside other characters: then no merge crosses one (Lumina's own models keep
        # newline as a piece of its own). Other models encode every text whole.
        self._cut_at_newlines = all(
            "\n" not in self._sp.id_to_piece(i) or self._sp.id_to_piece(i) == "\n" for i in range(self.vocab_size)
        )

    @property
    def token_dtype(self) -> np.dtype:
        """The narrowest unsigned type that holds every id: uint16 up to 65,536 pieces."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without BOS or EOS."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts in one call into sentencepiece."""
        chunks: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            for chunk in _split_at_newlines(text) if self._cut_at_newlines else (text,):
                chunks.append(chunk)
                owner.append(i)
        # One thread: sentencepiece's own batch threads gave no speed-up here (2 cores), and
        # prepare already runs one process per core.
        encoded = self._sp.encode(chunks, num_threads=1)
        if self._mark_ids is not None:
            for j, chunk in enumerate(chunks):
                if _SPACE_MARK in chunk:
                    encoded[j] = self._encode_with_marks(chunk)
        if len(chunks) == len(texts):
            return encoded
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(owner, encoded):
            out[i].extend(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; BOS, EOS and PAD decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def _encode_with_marks(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(_SPACE_MARK)):
            if i:
                ids.extend(self._mark_ids)
            ids.extend(self._sp.encode(part))
        return ids

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]}...)"


def _read_model_bytes(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: tokenizer model file not found")
    data = p.read_bytes()
    if not data:
        raise ValueError(f"{path}: tokenizer model file is empty")
    try:
        spm.SentencePieceProcessor(model_proto=data)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a sentencepiece .model file ({exc})") from None
    return data


def load_tokenizer(path: str | None = None) -> Tokenizer:
    """The tokenizer in the `.model` file at `path`; None gives the embedded corpus's tokenizer."""
    if path is None:
        if not EMBEDDED_TOKENIZER.is_file():
            raise ValueError(f"{EMBEDDED_TOKENIZER}: missing; regenerate it with `lumina tokenizer train --embedded`")
        path = str(EMBEDDED_TOKENIZER)
    return Tokenizer(path)


def _training_sentences(documents: Iterable[str]) -> Iterator[str]:
    # Sentencepiece learns from lines; the newline piece is reserved, so no merge needs it.
    for doc in documents:
        for line in doc.split("\n"):
            if line:
                yield line


def train_tokenizer(
    documents: Iterable[str],
    output: str | os.PathLike[str],
    vocab_size: int,
    model_type: str = "bpe",
    max_sentences: int = 2_000_000,
) -> Tokenizer:
    """Train a lossless sentencepiece model on `documents` and write it to `output`.

    Training is single-threaded with a fixed seed, so the same documents give the same file on
    every machine. Past `max_sentences` lines sentencepiece keeps a seeded random sample.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model type {model_type!r}: expected 'bpe' or 'unigram'")
    if vocab_size <= RESERVED_PIECES:
        raise ValueError(
            f"vocab size {vocab_size}: must exceed the {RESERVED_PIECES} reserved pieces "
            "(unk, BOS, EOS, PAD, newline, 256 bytes)"
        )
    if max_sentences < 1:
        raise ValueError(f"max sentences {max_sentences}: must be at least 1")
    model = io.BytesIO()
    spm.set_random_generator_seed(_SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(documents),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            user_defined_symbols=["\n"],
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            max_sentence_length=1 << 16,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ValueError(f"training a {vocab_size}-piece {model_type} tokenizer for {output}: {exc}") from None
    atomic_write_bytes(str(output), model.getvalue())
    return Tokenizer(output)


def train_embedded_tokenizer(output: str | os.PathLike[str] = EMBEDDED_TOKENIZER) -> Tokenizer:
    """Regenerate the shipped tokenizer: BPE, 2,048 pieces, on the embedded corpus's train split."""
    docs = (path.read_text(encoding="utf-8") for path in corpus_files("train"))
    return train_tokenizer(docs, output, EMBEDDED_VOCAB_SIZE, "bpe")
