"""The embedded default corpus: Tiny Shakespeare plus ten Project Gutenberg books.

The cleaned text ships inside the package under `lumina/data/corpus/` (`train/` and
`validation/`), so a new user trains with no download. `write_embedded_corpus` regenerates those
files from the raw public-domain copies; nothing reads the raw copies at run time.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from lumina.util.files import atomic_write_text

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
TRAIN_DIR = CORPUS_DIR / "train"
VALIDATION_DIR = CORPUS_DIR / "validation"

# Held out whole, so validation never shares a document with training. It is the shortest book,
# which keeps the training split as large as possible.
VALIDATION_BOOK = "pg43_jekyll_and_hyde.txt"

START_MARKER = "*** START OF"
END_MARKER = "*** END OF"
# Most books close with an "End of (the) Project Gutenberg EBook of ..." line just above the END
# marker. It is footer, not text, and PG asks that copies without its licence drop its name.
_PG_CLOSING = re.compile(r"^End of (?:the )?Project Gutenberg", re.MULTILINE | re.IGNORECASE)


def clean_text(text: str) -> str:
    """Drop a leading byte-order mark and turn CRLF line ends into LF."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def clean_gutenberg(text: str, name: str) -> str:
    """Keep only the book between Project Gutenberg's `*** START OF` and `*** END OF` lines.

    The header, the closing "End of Project Gutenberg ..." line and the licence footer are not
    the author's text. The START marker's closing
    `***` can fall on the following line (PG #43 wraps its title), so the body starts after the
    line that closes the marker.
    """
    text = clean_text(text)
    start = text.find(START_MARKER)
    end = text.find(END_MARKER, start + 1)
    if start < 0 or end < 0:
        raise ValueError(f"{name}: expected one '{START_MARKER}' line and one '{END_MARKER}' line after it")
    close = text.find("***", start + len(START_MARKER))
    body_start = text.find("\n", close) + 1
    body_end = text.rfind("\n", 0, end) + 1
    closing = [m.start() for m in _PG_CLOSING.finditer(text, body_start, body_end)]
    if closing:
        body_end = closing[-1]
    return text[body_start:body_end].strip("\n") + "\n"


def corpus_files(split: str) -> list[Path]:
    """The cleaned text files of the embedded corpus split `train` or `validation`, sorted."""
    dirs = {"train": TRAIN_DIR, "validation": VALIDATION_DIR}
    if split not in dirs:
        raise ValueError(f"embedded corpus split {split!r}: expected 'train' or 'validation'")
    files = sorted(dirs[split].glob("*.txt"))
    if not files:
        raise ValueError(f"{dirs[split]}: the embedded corpus is missing from the installed package")
    return files


def corpus_sha256(split: str) -> str:
    """One hash over the names and bytes of a split's files: a cache key for derived shards."""
    h = hashlib.sha256()
    for path in corpus_files(split):
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def write_embedded_corpus(source_dir: str, out_dir: str | Path = CORPUS_DIR) -> list[Path]:
    """Clean the raw public-domain files in `source_dir` into `out_dir`/{train,validation}.

    `source_dir` holds `tinyshakespeare.txt` and `gutenberg/*.txt`, as laid out in the
    project's shared data. Returns the files written.
    """
    src = Path(source_dir)
    shakespeare = src / "tinyshakespeare.txt"
    books = sorted((src / "gutenberg").glob("*.txt"))
    if not shakespeare.is_file() or not books:
        raise ValueError(f"{src}: expected tinyshakespeare.txt and gutenberg/*.txt")
    if VALIDATION_BOOK not in {b.name for b in books}:
        raise ValueError(f"{src / 'gutenberg'}: the validation book {VALIDATION_BOOK} is missing")
    cleaned = {shakespeare.name: clean_text(shakespeare.read_text(encoding="utf-8"))}
    for book in books:
        cleaned[book.name] = clean_gutenberg(book.read_text(encoding="utf-8"), str(book))
    written = []
    for name, text in cleaned.items():
        dest = Path(out_dir) / ("validation" if name == VALIDATION_BOOK else "train") / name
        atomic_write_text(str(dest), text)
        written.append(dest)
    return written
