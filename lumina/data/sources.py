"""Where documents come from: C4 on the Hugging Face hub, or local files, all read through `datasets`.

Local inputs are files or directories of C4-format JSON lines (`.json`, `.jsonl`, optionally
`.gz`), parquet, or plain text (`.txt`, one document per file). Missing, empty and unsupported
inputs are refused before a single document is read, so nothing is written for them; a file found
malformed while it is read stops the run with its name, and only whole shards stay behind. Files
are read in a fixed order (inputs as given, directories sorted), which is what lets an interrupted
prepare skip exactly the documents it already wrote.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt",)
ACCEPTED = ", ".join(JSON_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES)

# `c4` names the training split; `c4:validation` the validation split.
HUB_NAMES = {"c4": "train", "c4:train": "train", "c4:validation": "validation"}

ENCODING_ERRORS = ("replace", "skip")
INVALID_BYTES_FATE = {"replace": "replaced with U+FFFD", "skip": "dropped"}
_CHUNK = 1 << 24  # bytes read at a time when checking or repairing UTF-8
_READ_BATCH = 256  # records per batch taken from `datasets`
# The surrogateescape handler maps each undecodable byte to one of these code points, which valid
# UTF-8 can never produce, so counting them counts the bad bytes exactly.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def check_encoding_errors(value: str) -> None:
    if value not in ENCODING_ERRORS:
        raise ValueError(f"encoding errors {value!r}: expected one of {', '.join(ENCODING_ERRORS)}")


@dataclass(frozen=True)
class LocalFile:
    path: Path
    kind: str  # the `datasets` builder: "json", "parquet" or "text"


@dataclass(frozen=True)
class HubC4:
    split: str


Source = LocalFile | HubC4


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("json", JSON_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def _checked_file(path: Path, kind: str) -> LocalFile:
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")
    return LocalFile(path, kind)


def resolve_inputs(inputs: Iterable[str]) -> list[Source]:
    """Turn input names into sources, refusing missing, empty or unreadable ones up front."""
    sources: list[Source] = []
    for name in inputs:
        if name in HUB_NAMES:
            sources.append(HubC4(HUB_NAMES[name]))
            continue
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            readable = [(p, k) for p in files if (k := _kind(p)) is not None]
            if not readable:
                raise ValueError(f"{path}: directory has no input files (accepted: {ACCEPTED})")
            sources.extend(_checked_file(p, k) for p, k in readable)
        elif path.is_file():
            kind = _kind(path)
            if kind is None:
                raise ValueError(f"{path}: unsupported file type (accepted: {ACCEPTED})")
            sources.append(_checked_file(path, kind))
        else:
            raise ValueError(f"{path}: no such file or directory (or use 'c4' or 'c4:validation' for the hub)")
    if not sources:
        raise ValueError("no inputs given")
    return sources


def fingerprint(sources: list[Source]) -> list[Any]:
    """What identifies the inputs, for refusing to resume a prepare over changed files."""
    out: list[Any] = []
    for src in sources:
        if isinstance(src, HubC4):
            out.append(f"hf:allenai/c4/en/{src.split}")
        else:
            st = src.path.stat()
            out.append([str(src.path.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _open_bytes(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def is_valid_utf8(path: Path) -> bool:
    """Whether the (decompressed) file decodes as UTF-8; raises ValueError on a corrupt gzip."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        with _open_bytes(path) as f:
            while chunk := f.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    return True


def repair_utf8(path: Path, dest: Path, errors: str) -> int:
    """Write `path` decompressed to `dest` with each invalid byte replaced by U+FFFD ("replace")
    or dropped ("skip"); returns how many bytes were invalid."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    replacement = "\ufffd" if errors == "replace" else ""
    count = 0
    with _open_bytes(path) as src, open(dest, "w", encoding="utf-8", newline="") as out:
        while True:
            chunk = src.read(_CHUNK)
            text, n = _ESCAPED_BYTE.subn(replacement, decoder.decode(chunk, final=not chunk))
            out.write(text)
            count += n
            if not chunk:
                return count


class DocumentReader:
    """Iterates the text of every document of `sources`, in order.

    Use it as a context manager: files with invalid UTF-8 are repaired into a temporary folder
    on entry (`datasets` itself would stop at the first bad byte), and `invalid_bytes` then says
    how many bytes each such file had. `mapper` runs the UTF-8 check over the files; pass a pool's
    `imap` to check large inputs in parallel.
    """

    def __init__(
        self,
        sources: list[Source],
        text_field: str = "text",
        encoding_errors: str = "replace",
        mapper: Callable[[Callable[[Path], bool], list[Path]], Iterable[bool]] = map,
    ) -> None:
        check_encoding_errors(encoding_errors)
        self.sources = sources
        self.text_field = text_field
        self.encoding_errors = encoding_errors
        self._mapper = mapper
        self.invalid_bytes: dict[str, int] = {}
        # original file -> the file `datasets` reads (a repaired copy where the original is not UTF-8)
        self._readable = {s.path: s.path for s in sources if isinstance(s, LocalFile)}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> DocumentReader:
        # Parquet is binary, and arrow itself checks that its string columns hold UTF-8.
        local = [s.path for s in self.sources if isinstance(s, LocalFile) and s.kind != "parquet"]
        self._tmp = tempfile.TemporaryDirectory(prefix="lumina-utf8-")
        try:
            for i, (path, valid) in enumerate(zip(local, self._mapper(is_valid_utf8, local))):
                if valid:
                    continue
                suffix = ".jsonl" if _kind(path) == "json" else path.suffix
                fixed = Path(self._tmp.name) / f"{i}{suffix}"
                self.invalid_bytes[str(path)] = repair_utf8(path, fixed, self.encoding_errors)
                self._readable[path] = fixed
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __iter__(self) -> Iterator[str]:
        if self._tmp is None:
            raise RuntimeError("DocumentReader must be entered with `with` before iterating")
        for group in _groups(self.sources):
            yield from self._read_group(group)

    def _read_group(self, group: list[Source]) -> Iterator[str]:
        import datasets

        datasets.disable_progress_bars()
        # The JSON builder logs a malformed file at ERROR and then raises; our one-line error below
        # names the file and carries the same reason, so its log line would only be a second line.
        logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
        head = group[0]
        if isinstance(head, HubC4):
            where = f"allenai/c4 en {head.split} on the Hugging Face hub"
            hint = "; download the json.gz files and pass their folder"
            field = "text"
            args, options = ("allenai/c4", "en"), {"split": head.split}
        else:
            where = str(head.path) if len(group) == 1 else f"{head.path} (and {len(group) - 1} more .txt files)"
            hint = ""
            field = "text" if head.kind == "text" else self.text_field
            args = (head.kind,)
            options = {"data_files": [str(self._readable[s.path]) for s in group], "split": "train"}
            if head.kind == "text":
                options["sample_by"] = "document"
        try:
            # Batches of records: reading row by row costs ~3x more, all of it in the parent process.
            batches = datasets.load_dataset(*args, streaming=True, **options).iter(batch_size=_READ_BATCH)
        except Exception as exc:  # the hub, pyarrow and fsspec raise many types; all mean "cannot open"
            raise ValueError(f"{where}: cannot open ({exc}){hint}") from exc
        n = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # pyarrow, json and fsspec errors alike mean a malformed file
                raise ValueError(f"{where}: cannot read records from {n} on ({type(exc).__name__}: {exc})") from exc
            texts = batch.get(field)
            bad = 0 if texts is None else next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                if texts is not None and texts[bad] is not None:
                    value = repr(texts[bad])
                    raise ValueError(f"{where}: record {n + bad} has {field!r} = {value[:40]}, a "
                                     f"{type(texts[bad]).__name__}; the text field must be a string")
                raise ValueError(f"{where}: record {n + bad} has no text field {field!r} (fields: {sorted(batch)})")
            n += len(texts)
            yield from texts


def _groups(sources: list[Source]) -> Iterator[list[Source]]:
    # Each JSON or parquet file is opened alone, so errors name it. Plain-text files are batched into
    # one `load_dataset` call because opening one costs ~0.25 s and a folder may hold thousands.
    run: list[Source] = []
    for src in sources:
        if isinstance(src, LocalFile) and src.kind == "text":
            run.append(src)
            continue
        if run:
            yield run
            run = []
        yield [src]
    if run:
        yield run
