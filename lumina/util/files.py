"""Crash-safe file writes: write a temporary sibling, fsync, then rename over the target."""

from __future__ import annotations

import hashlib
import os
import tempfile


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in 16 MiB chunks (files may be larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it, so set it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        # mkstemp creates 0600; the file must get the mode a plain open() would (0666 less the
        # umask), or configs, pages and checkpoint metadata become unreadable to the ops team.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_output_dir(flag: str, path: str) -> None:
    """`path` exists as a directory or can be created, and a file can be written in it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}={path!r} is a file; give a directory (it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".lumina-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag}={path!r} is not writable ({exc.strerror})") from None


def load_json(path: str, what: str, how_to_make: str) -> dict:
    """A JSON file as a dict; a missing or malformed file is a one-line ValueError naming `what`
    (e.g. "study results") and `how_to_make` it. JSON executes nothing it reads."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist: {how_to_make}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not JSON ({exc})") from None


def write_page(markdown: str, out_dir: str, render, draw) -> list[str]:
    """Draw a generated page's figures into `out_dir` (`draw(out_dir) -> paths`), then write the
    page (`render(plots_dir) -> text`), which links them by their folder relative to the page."""
    written = draw(out_dir)
    rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(markdown)) or ".")
    atomic_write_text(markdown, render(rel))
    return [markdown, *written]
