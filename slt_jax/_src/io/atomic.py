"""The one atomic file write of slt_jax: write under a temporary name in the target's
directory, flush it to disk, then ``os.replace`` it onto the target, so a reader sees the
old file or the whole new one, never a part (a crash leaves at most a temporary file,
``.NAME.tmp-PID-XXXX``, which :data:`TEMPORARY` recognises).

Used by the results store (chunks, manifests), Hugging Face model directories and the
checkpoint writers.

Example:
  >>> import pathlib, tempfile
  >>> from slt_jax._src.io.atomic import write_atomic
  >>> root = pathlib.Path(tempfile.mkdtemp())
  >>> write_atomic(root / "a.json", b"{}").read_text()         # bytes
  '{}'
  >>> _ = write_atomic(root / "b.txt", lambda tmp: tmp.write_text("hi"))  # or a writer
  >>> sorted(p.name for p in root.iterdir())                   # no temporary file left
  ['a.json', 'b.txt']
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import tempfile
from collections.abc import Callable

__all__ = ["TEMPORARY", "sync_directory", "write_atomic", "write_temp"]

# The name of a temporary file this module makes: ``.NAME.tmp-PID`` and a random suffix.
TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-\d+(?:-[a-z0-9_]+)?")


def write_temp(
    root: str | os.PathLike, name: str, data: bytes | Callable[[pathlib.Path], object]
) -> pathlib.Path:
    """``data`` (bytes, or a function writing the file at the path it is given) written and
    flushed to disk in a new temporary file of ``root`` named after ``name``, readable by
    all (0o644), for an ``os.replace`` onto ``root / name``; its path. A failed write leaves
    no temporary file."""
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.tmp-{os.getpid()}-", suffix="")
    path = pathlib.Path(tmp)
    try:
        if callable(data):
            os.close(fd)
            data(path)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(path, 0o644)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return path


def write_atomic(
    path: str | os.PathLike, data: bytes | Callable[[pathlib.Path], object]
) -> pathlib.Path:
    """Write ``data`` (bytes, or a function writing the file at the path it is given) to
    ``path`` atomically: :func:`write_temp` beside it, ``os.replace``, then the directory
    flushed so the rename survives a crash. Returns ``path``."""
    path = pathlib.Path(path)
    tmp = write_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sync_directory(path.parent)
    return path


def sync_directory(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
