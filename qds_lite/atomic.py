"""Atomic file writes: every file qds writes (sidecars, reports, refined images) appears whole or not at all.

The data goes to a temporary file in the destination folder (same filesystem, so the final rename is
atomic), is flushed to disk, and then replaces the destination. A crash or Ctrl-C leaves either the old file
or the new one, never a torn mix, and never a stray temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`, on an exception it vanishes.

    An existing destination keeps its permission bits.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def refuse_input_overwrite(source: object, out: str | os.PathLike) -> None:
    """qds never writes over an input: raise when ``out`` is the input file (same path, or same inode)."""
    from .errors import QdsError

    out_path = Path(out)
    if out_path.is_dir():
        raise QdsError(f"{out_path}: is a directory", hint="give a file name for the output")
    if not isinstance(source, (str, os.PathLike)):
        return
    src = Path(source)
    same = out_path.resolve() == src.resolve()
    if not same and out_path.exists() and src.exists():
        same = os.path.samefile(out_path, src)
    if same:
        raise QdsError(f"{out_path}: refusing to overwrite the input image", hint="choose another output file")


def write_output(out: str | os.PathLike, data: bytes | str) -> None:
    """Write an output file atomically; a failure is a QdsError naming the file."""
    from .errors import QdsError

    try:
        (write_text_atomic if isinstance(data, str) else write_bytes_atomic)(out, data)
    except OSError as e:
        raise QdsError(f"{out}: cannot write ({e.strerror or e})") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
