"""Lumina's sentencepiece model as a Hugging Face `tokenizers` pipeline (tokenizer.json).

Sentencepiece BPE merges, at each step, the adjacent pair whose concatenation is the piece with
the highest score; a `tokenizers` BPE model merges the pair with the lowest rank in its merge
list. Listing every split (left, right) of every normal piece, ordered by the piece's score,
makes the two the same algorithm. A unigram model maps to `tokenizers`' Unigram with the same
scores (both run Viterbi over the piece log-probabilities). Byte fallback, the reserved pieces
and the user-defined symbols (Lumina's newline piece) carry over one for one.

Two inputs still encode differently, both by Hugging Face convention:
- the literal text of a control piece (`</s>`) is that special token in Hugging Face (so a prompt
  can start with it, as `lumina generate` starts with EOS), but plain characters in Lumina;
- a literal U+2581 (sentencepiece's space mark) is a space to Hugging Face's Metaspace, while
  `lumina.data.Tokenizer` encodes it through its UTF-8 byte pieces.
`check` compares the two tokenizers on texts that avoid these and is run by every export.
"""

from __future__ import annotations

import json

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

# sentencepiece ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE_MARK = "\u2581"

# Texts the export checks the converted tokenizer on: prose, spacing runs, newlines, digits,
# punctuation and characters outside the vocabulary (byte fallback).
CHECK_TEXTS = (
    "ROMEO:\nBut soft, what light through yonder window breaks?",
    "  two  spaces,\tone tab, and a trailing space ",
    "\n\nblank lines\n\n\nand 1234567890 digits; (brackets) [and] {braces} \"quotes\" 'too'",
    "Ünïcödé, 日本語のテキスト, emoji 🙂 and the euro sign \u20ac",
    "word" * 40,
)


def _proto(model: bytes) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model)
    return proto


def convert(model: bytes, path: str):
    """A `tokenizers.Tokenizer` equivalent to the sentencepiece model `model` (read from `path`,
    named in errors). Refuses normalisation rules it cannot reproduce."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    proto = _proto(model)
    norm = proto.normalizer_spec
    # Lumina's tokenizers keep text as is (lumina.data.tokenizer). A model that rewrites it
    # (NFKC tables, collapsed spaces) would need those rules reproduced too: refuse it instead.
    if norm.precompiled_charsmap or norm.remove_extra_whitespaces:
        raise ValueError(f"{path}: the tokenizer normalises text (rule {norm.name!r}, "
                         f"remove_extra_whitespaces={norm.remove_extra_whitespaces}); only identity "
                         "normalisation, as `lumina tokenizer train` writes, can be converted")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    unk = next(piece for piece, _, kind in pieces if kind == _UNKNOWN)
    if proto.trainer_spec.model_type == model_pb2.TrainerSpec.BPE:
        normal = {piece for piece, _, kind in pieces if kind == _NORMAL}
        merges = []
        for piece, score, kind in pieces:
            if kind != _NORMAL:
                continue
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in normal and right in normal:
                    merges.append((-score, vocab[piece], vocab[left], (left, right)))
        merges.sort(key=lambda m: m[:3])  # highest score first, as sentencepiece picks
        tok = Tokenizer(BPE(vocab=vocab, merges=[m[3] for m in merges], unk_token=unk,
                            fuse_unk=True, byte_fallback=True))
    elif proto.trainer_spec.model_type == model_pb2.TrainerSpec.UNIGRAM:
        tok = Tokenizer(Unigram([(piece, score) for piece, score, _ in pieces], unk_id=vocab[unk],
                                byte_fallback=True))
    else:
        raise ValueError(f"{path}: sentencepiece model type {proto.trainer_spec.model_type} cannot be "
                         "converted; only bpe and unigram")
    prepend = "always" if norm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE_MARK, prepend_scheme=prepend, split=False)
    steps = [decoders.Replace(_SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    # Sentencepiece matches user-defined symbols before the model runs and never splits them.
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p, _, k in pieces if k == _USER_DEFINED])
    tok.add_special_tokens([AddedToken(p, normalized=False, special=True)
                            for p, _, k in pieces if k in (_CONTROL, _UNKNOWN)])
    return tok


def piece(model: bytes, token_id: int) -> str:
    """The text of piece `token_id` of the sentencepiece model `model`."""
    return spm.SentencePieceProcessor(model_proto=model).id_to_piece(token_id)


def tokenizer_config(sp: spm.SentencePieceProcessor) -> dict:
    """tokenizer_config.json: the generic fast tokenizer class reads tokenizer.json as written
    (a model-specific class would rebuild the pipeline with its own defaults, e.g. Llama's dummy
    prefix). No BOS is added, so `tokenizer(text).input_ids` equals Lumina's `encode(text)`. No
    model_max_length either: RoPE runs past the training length, as `lumina generate` does."""
    def piece(i: int) -> str | None:
        return sp.id_to_piece(i) if i >= 0 else None

    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": piece(sp.bos_id()),
            "eos_token": piece(sp.eos_id()), "unk_token": piece(sp.unk_id()), "pad_token": piece(sp.pad_id()),
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}


def write(model: bytes, path: str, out_dir: str) -> None:
    """tokenizer.json, tokenizer_config.json and the sentencepiece model itself (tokenizer.model,
    which `lumina import` reads back) into out_dir."""
    import os

    tok = convert(model, path)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_proto=model)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(sp), f, indent=2)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model)


def check(hf_tokenizer, lumina_tokenizer, texts: tuple[str, ...] = CHECK_TEXTS) -> None:
    """Raise unless both tokenizers give the same ids and the same text back for every text."""
    for text in texts:
        ours = lumina_tokenizer.encode(text)
        theirs = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            raise ValueError(f"the converted tokenizer encodes {text[:40]!r} as {theirs[:12]}... but "
                             f"{lumina_tokenizer.path} gives {ours[:12]}...")
        if hf_tokenizer.decode(theirs) != lumina_tokenizer.decode(ours):
            raise ValueError(f"the converted tokenizer decodes {text[:40]!r} differently from "
                             f"{lumina_tokenizer.path}")
