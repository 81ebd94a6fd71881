"""The embedded corpus: cleaned as promised, validation held out, provenance kept in step."""

import hashlib
import re

from lumina.data.embedded import (
    CORPUS_DIR,
    VALIDATION_BOOK,
    clean_gutenberg,
    corpus_files,
    write_embedded_corpus,
)

RAW_BOOK = (
    "\ufeffThe Project Gutenberg EBook of A Test\r\n\r\nRelease Date: never\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK\r\nA TEST ***\r\n\r\n\r\n"
    "Chapter 1\r\n\r\n  Indented  line.\r\nLast line.\r\n\r\n\r\n"
    "End of the Project Gutenberg EBook of A Test,\r\nby Nobody\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK A TEST ***\r\n\r\nLicence text.\r\n"
)


def test_clean_gutenberg_keeps_only_the_book_with_lf_and_no_bom():
    assert clean_gutenberg(RAW_BOOK, "test") == "Chapter 1\n\n  Indented  line.\nLast line.\n"


def test_write_embedded_corpus_holds_out_the_validation_book(tmp_path):
    raw = tmp_path / "raw"
    (raw / "gutenberg").mkdir(parents=True)
    (raw / "tinyshakespeare.txt").write_bytes(b"First Citizen:\r\nSpeak.\r\n")
    (raw / "gutenberg" / VALIDATION_BOOK).write_text(RAW_BOOK, encoding="utf-8", newline="")
    (raw / "gutenberg" / "pg1_other.txt").write_text(
        RAW_BOOK.replace("Chapter 1", "Other"), encoding="utf-8", newline=""
    )
    out = tmp_path / "corpus"
    write_embedded_corpus(str(raw), out)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["pg1_other.txt", "tinyshakespeare.txt"]
    assert [p.name for p in (out / "validation").iterdir()] == [VALIDATION_BOOK]
    assert (out / "train" / "tinyshakespeare.txt").read_bytes() == b"First Citizen:\nSpeak.\n"
    assert (out / "train" / "pg1_other.txt").read_text(encoding="utf-8").startswith("Other\n")


def test_shipped_corpus_is_clean_and_split():
    train, valid = corpus_files("train"), corpus_files("validation")
    assert len(train) == 10 and [p.name for p in valid] == [VALIDATION_BOOK]
    assert VALIDATION_BOOK not in {p.name for p in train}
    for path in train + valid:
        data = path.read_bytes()
        assert b"\r" not in data and not data.startswith(b"\xef\xbb\xbf"), path
        text = data.decode("utf-8")
        assert "*** START OF" not in text and "*** END OF" not in text, path
        assert "project gutenberg" not in text.lower(), path
        assert len(text) > 100_000 and text.endswith("\n") and not text.startswith("\n"), path


def test_sources_md_lists_the_sha256_of_every_shipped_file():
    listed = dict(
        re.findall(
            r"`((?:train|validation)/[\w.]+)` \| [\d,]+ \| ([0-9a-f]{64})", (CORPUS_DIR / "SOURCES.md").read_text()
        )
    )
    shipped = {
        f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in corpus_files("train") + corpus_files("validation")
    }
    assert listed == shipped
