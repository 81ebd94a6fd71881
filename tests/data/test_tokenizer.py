"""Text -> ids -> text is exact; the reserved ids are where the docs say; training is deterministic."""

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from lumina.data import Tokenizer, load_tokenizer, train_tokenizer
from lumina.data.embedded import corpus_files
from lumina.data.tokenizer import (
    BOS_ID,
    EMBEDDED_TOKENIZER,
    EOS_ID,
    NEWLINE_ID,
    PAD_ID,
    UNK_ID,
    train_embedded_tokenizer,
)

ODD = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r",
    "\r\n",
    "\x00",
    "\u2581",
    "\ufeff",
    "\u200b",
    "\u3000",
    "\x85",
    "é",
    "ß",
    "中文",
    "🙂",
    "e\u0301",
    "Ａ",
    "ﬁ",
    "…",
]
odd_text = st.lists(
    st.one_of(st.sampled_from(ODD), st.text(st.characters(codec="utf-8"), max_size=8)), max_size=30
).map("".join)


def test_corpus_round_trips(embedded_tokenizer):
    for path in corpus_files("train") + corpus_files("validation"):
        text = path.read_text(encoding="utf-8")
        assert embedded_tokenizer.decode(embedded_tokenizer.encode(text)) == text, path


def test_long_texts_get_the_ids_plain_sentencepiece_gives(embedded_tokenizer):
    # Tokenizer cuts long texts at newlines for speed; that must not change a single id.
    plain = spm.SentencePieceProcessor(model_file=embedded_tokenizer.path)
    for path in corpus_files("validation") + corpus_files("train")[:1]:
        text = path.read_text(encoding="utf-8")
        assert embedded_tokenizer.encode(text) == plain.encode(text), path


def test_c4_slice_round_trips(c4_docs, embedded_tokenizer, small_tokenizer):
    for tok in (embedded_tokenizer, small_tokenizer):
        for text, ids in zip(c4_docs, tok.encode_batch(c4_docs)):
            assert ids == tok.encode(text)
            assert tok.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(text=odd_text)
def test_odd_strings_round_trip(small_tokenizer, text):
    assert small_tokenizer.decode(small_tokenizer.encode(text)) == text


def test_reserved_ids(embedded_tokenizer, small_tokenizer):
    for tok in (embedded_tokenizer, small_tokenizer):
        assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (UNK_ID, BOS_ID, EOS_ID, PAD_ID) == (0, 1, 2, 3)
        assert tok.encode("\n") == [NEWLINE_ID]
        assert tok.decode([BOS_ID, *tok.encode("ab"), EOS_ID, PAD_ID]) == "ab"
    assert embedded_tokenizer.vocab_size == 2048 and embedded_tokenizer.token_dtype.name == "uint16"


def test_shipped_tokenizer_is_what_the_generator_writes(tmp_path):
    regenerated = train_embedded_tokenizer(tmp_path / "embedded.model")
    assert (tmp_path / "embedded.model").read_bytes() == EMBEDDED_TOKENIZER.read_bytes()
    assert regenerated.sha256 == load_tokenizer().sha256


def test_training_is_deterministic(tmp_path, c4_docs):
    a = train_tokenizer(c4_docs[:50], tmp_path / "a.model", vocab_size=400)
    b = train_tokenizer(c4_docs[:50], tmp_path / "b.model", vocab_size=400)
    assert a.sha256 == b.sha256 and a.encode(c4_docs[60]) == b.encode(c4_docs[60])


def test_unigram_round_trips(tmp_path, c4_docs):
    tok = train_tokenizer(c4_docs[:50], tmp_path / "u.model", vocab_size=400, model_type="unigram")
    assert tok.decode(tok.encode(c4_docs[70] + " \u2581\t\n")) == c4_docs[70] + " \u2581\t\n"


def test_bad_model_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="missing.model: tokenizer model file not found"):
        load_tokenizer(str(tmp_path / "missing.model"))
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.model: tokenizer model file is empty"):
        Tokenizer(tmp_path / "empty.model")
    (tmp_path / "junk.model").write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="junk.model: not a sentencepiece .model file"):
        Tokenizer(tmp_path / "junk.model")


def test_training_settings_are_validated(tmp_path, c4_docs):
    with pytest.raises(ValueError, match="vocab size 100: must exceed the 261 reserved pieces"):
        train_tokenizer(c4_docs, tmp_path / "x.model", vocab_size=100)
    with pytest.raises(ValueError, match="model type 'wordpiece'"):
        train_tokenizer(c4_docs, tmp_path / "x.model", vocab_size=400, model_type="wordpiece")
    with pytest.raises(ValueError, match="x.model"):  # more pieces than the text can make
        train_tokenizer(["tiny text"], tmp_path / "x.model", vocab_size=5000)
    assert not (tmp_path / "x.model").exists()
