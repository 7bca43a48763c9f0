"""Results on disk: written chunk by chunk as a sweep runs, atomically, and resumable.

Layout of an output directory::

    manifest.json          the full configuration, the checkpoint steps, the chunking and
                           the library version (written first, atomically)
    chunk-00000.nc …       one netCDF file per finished chunk (xarray, h5netcdf engine)

Each chunk file is written to a temporary name in the same directory, flushed to disk and
renamed into place, so a crash at any moment leaves either the whole file or none of it.
Re-opening the directory with the same configuration skips the chunks already there; a
different configuration is an error, never a silent mix. The manifest holds content hashes
of every checkpoint and of the data set, so re-training into the same checkpoint directory
or changing the data is caught too, and a fingerprint of the loss function's traced program
(compared only under the JAX version and precision that wrote it: otherwise a warning says it
could not be checked). A writer holds an exclusive lock on ``out/.lock``: a second run on the
same directory is refused. A directory is used only if it is new, empty (but for the lock
and torn temporary files of a killed run) or has this library's manifest: one holding other
files, or another program's ``manifest.json``, is an error. Only the library's own
temporary files (``.chunk-00000.nc.tmp-PID``, ``.manifest.json.tmp-PID``) are ever deleted.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

from slt_jax._src.results import LLCResult, concat_results
from slt_jax._src.userwarn import warn as warn_user

MANIFEST = "manifest.json"
FORMAT = "slt_jax-llc-checkpoints/1"
LOCK = ".lock"
# Recorded but not required to match on resume (a difference only warns).
_INFORMATIONAL = ("slt_jax_version", "platform")
# Compared only when the same JAX version and precision wrote them (their value depends on
# both); otherwise a warning says they could not be checked.
_TRACED = {"loss_fn": "the loss function"}
# The names this library writes: chunks, the lock, and the temporary files of atomic writes.
_CHUNK = re.compile(r"chunk-(\d{5,})\.nc")
_HASHES = "checkpoint_hashes"  # the chunk file's attribute holding its checkpoints' hashes
_TEMPORARY = re.compile(r"\.(chunk-\d{5,}\.nc|manifest\.json)\.tmp-\d+")


def check_out(out: Any) -> pathlib.Path:
    """``out`` as a path: a non-empty ``str`` or ``os.PathLike`` that is no existing file."""
    if not isinstance(out, str | os.PathLike) or not isinstance(os.fspath(out), str):
        raise TypeError(f"`out` must be a directory path (str or os.PathLike), got {out!r}.")
    if not os.fspath(out).strip():
        raise ValueError("`out` is an empty path; name the results directory.")
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out={str(path)!r} exists and is not a directory.")
    return path


def read_manifest(path: pathlib.Path) -> dict[str, Any] | None:
    """The manifest of the results directory ``path``, or ``None`` if it has none.

    A ``manifest.json`` that this library did not write (not JSON, or without its
    ``format``) is a ``ValueError`` naming the file.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        stored = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"it cannot be read as JSON ({type(error).__name__}: {error})"
    else:
        if isinstance(stored, dict) and stored.get("format") == FORMAT:
            return stored
        problem = f'it has no "format": {FORMAT!r}'
    raise ValueError(
        f"{str(manifest_path)!r} is not a slt_jax results manifest: {problem}. The directory "
        "holds something else; use another output directory."
    )


def _chunk_files(path: pathlib.Path) -> dict[int, pathlib.Path]:
    """``{index: file}`` of the finished chunks in ``path`` (exact names only)."""
    found = {}
    for entry in path.iterdir():
        match = _CHUNK.fullmatch(entry.name)
        if match and entry.is_file():
            found[int(match.group(1))] = entry
    return found


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _differences(stored: dict, now: dict, prefix: str = "", skip=()) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        if key in _INFORMATIONAL or key in skip:
            continue
        a, b = stored.get(key, "<missing>"), now.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            shown = [v if len(repr(v)) < 80 else f"{repr(v)[:77]}..." for v in (a, b)]
            out.append(f"{prefix}{key}: {shown[0]!r} (stored) vs {shown[1]!r} (now)")
    return out


def _normalise(manifest: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({"format": FORMAT, **manifest}))


def _tracing(manifest: dict) -> tuple:
    """What a traced program's text depends on: the JAX version and the precision."""
    platform = manifest.get("platform") or {}
    return platform.get("jax"), platform.get("x64")


def _compare(stored: dict, now: dict, path: pathlib.Path, apart=()) -> None:
    """Warn about informational differences; raise ``ValueError`` listing the others
    (except the keys ``apart``, which the caller checks itself)."""
    for key in _INFORMATIONAL:
        if stored.get(key) != now.get(key):
            warn_user(
                f"resuming results written with {key}={stored.get(key)}, now "
                f"{now.get(key)}: new chunks may differ at float precision.",
                UserWarning,
            )
    unchecked = []
    (jax_then, x64_then), (jax_now, x64_now) = _tracing(stored), _tracing(now)
    for key, what in _TRACED.items():
        if key not in now:
            continue
        if key not in stored:
            why = f"they do not record {what}"
        elif (jax_then, x64_then) != (jax_now, x64_now):
            why = (
                f"they were written with JAX {jax_then} (x64={x64_then}), now JAX {jax_now} "
                f"(x64={x64_now}), which traces it differently"
            )
        else:
            continue
        unchecked.append(key)
        warn_user(
            f"{what} could not be checked against the results in {str(path)!r}: {why}; "
            f"make sure {what} is unchanged, or use another output directory.",
            UserWarning,
        )
    if "key" in stored and stored.get("key") == now.get("key"):
        # The chain keys are what the seed determines: seed=0 and seed=jax.random.key(0)
        # (recorded as 0 and None) are the same run.
        stored, now = (
            {**m, "config": {k: v for k, v in m.get("config", {}).items() if k != "seed"}}
            for m in (stored, now)
        )
    differences = _differences(stored, now, skip=(*unchecked, *apart))
    if differences:
        raise ValueError(
            f"out={str(path)!r} holds results of a different configuration; "
            "use another output directory, or the same settings to resume:\n  "
            + "\n  ".join(differences)
        )


class ResultStore:
    """An output directory of a checkpoint sweep.

    Opening a writer checks the directory (a new or empty one, or one that this library
    wrote: anything else is a ``ValueError``), takes its lock, removes the temporary files
    of a killed run and reads the stored manifest, if any; :meth:`start` then compares the
    run's manifest with it, or writes it.

    Args:
      path: the directory (created if missing).
      manifest: a JSON-serialisable description of the run, or ``None`` to call
        :meth:`start` later. If the directory already has one, the two must agree (except
        the library version and platform), or ``ValueError`` lists the differences.
      writer: ``False`` in a process that only reads what another one writes: the
        manifest must then exist and agree.
      checked_apart: top-level manifest keys not compared here, because the caller checks
        them itself (a lazy checkpoint set's stamps, verified against each chunk's hashes).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: dict[str, Any] | None = None,
        *,
        writer: bool = True,
        checked_apart=(),
    ):
        self.path = check_out(path)
        self.writer = writer
        self.manifest = None
        self._lock = None
        if not writer:  # another process writes: the manifest must exist and agree
            stored, manifest = read_manifest(self.path), _normalise(manifest)
            if stored is None:
                raise ValueError(f"out={str(self.path)!r} has no {MANIFEST}.")
            differences = _differences(stored, manifest, skip=checked_apart)
            if differences:
                raise ValueError(f"out={str(self.path)!r}: manifests differ: {differences}")
            self.stored, self.manifest = stored, manifest
            return
        if self.path.exists():  # refuse a foreign directory before writing into it
            self._read_stored()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock()
        try:
            for entry in self.path.iterdir():  # torn writes of a killed run
                if _TEMPORARY.fullmatch(entry.name) and entry.is_file():
                    entry.unlink()
            self.stored = self._read_stored()  # again, now that no other run can write
            if manifest is not None:
                self.start(manifest)
        except BaseException:
            self.close()
            raise

    def _read_stored(self) -> dict[str, Any] | None:
        """The stored manifest; with none, the directory must hold nothing but our files."""
        stored = read_manifest(self.path)
        if stored is None:
            others = sorted(
                p.name
                for p in self.path.iterdir()
                if p.name != LOCK and not _TEMPORARY.fullmatch(p.name)
            )
            if others:
                shown = ", ".join(others[:5]) + (", …" if len(others) > 5 else "")
                raise ValueError(
                    f"out={str(self.path)!r} is not empty ({shown}) but has no {MANIFEST}: "
                    "it is not a results directory; use a new or empty one."
                )
        return stored

    @property
    def stored_chunk_size(self) -> int | None:
        """The chunking of the results already in the directory (resuming keeps it)."""
        return None if self.stored is None else _chunk_size(self.stored, self.path)

    def _acquire_lock(self):
        handle = open(self.path / LOCK, "w")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise ValueError(
                    f"out={str(self.path)!r} is being written by another run (it holds "
                    f"{LOCK}); wait for it or use another output directory."
                ) from None
        return handle

    def close(self) -> None:
        """Release the directory's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, manifest: dict[str, Any], *, checked_apart=()) -> None:
        """Compare ``manifest`` with the stored one (``ValueError`` if they differ, but for
        the keys ``checked_apart``), or write it (atomically) into a new directory."""
        manifest = _normalise(manifest)
        if self.stored is not None:
            _compare(self.stored, manifest, self.path, checked_apart)
        else:
            text = json.dumps(manifest, indent=2, sort_keys=True)
            _atomic_write(self.path / MANIFEST, lambda tmp: tmp.write_text(text))
            self.stored = manifest
        self.manifest = manifest

    def _chunk_path(self, index: int) -> pathlib.Path:
        return self.path / f"chunk-{index:05d}.nc"

    def has_chunk(self, index: int) -> bool:
        return self._chunk_path(index).exists()

    def finished_chunks(self) -> set[int]:
        """Indices of the chunks already on disk."""
        return set(_chunk_files(self.path))

    def write_chunk(self, index: int, result: LLCResult, *, hashes=None) -> None:
        """Write one chunk's results (with their steps) atomically; ``hashes``, the content
        hashes of its checkpoints, go with it (an attribute of the file)."""
        if not self.writer:
            raise RuntimeError("this process does not write the results.")
        dataset = result.to_xarray()
        if hashes is not None:
            dataset.attrs[_HASHES] = json.dumps([str(h) for h in hashes])
        _atomic_write(
            self._chunk_path(index), lambda tmp: dataset.to_netcdf(tmp, engine="h5netcdf")
        )

    def read_chunk(self, index: int) -> LLCResult:
        return _read(self._chunk_path(index))

    def chunk_hashes(self, index: int) -> list[str] | None:
        """The content hashes of a finished chunk's checkpoints, as written with it (``None``
        for a chunk written without them); only the file's attributes are read."""
        import xarray as xr

        with xr.open_dataset(self._chunk_path(index), engine="h5netcdf") as dataset:
            hashes = dataset.attrs.get(_HASHES)
        return None if hashes is None else list(json.loads(hashes))

    def load(self) -> LLCResult:
        """Every finished chunk, joined along the checkpoint axis (sorted by step)."""
        return _read_all(self.path)


def _read(path: pathlib.Path) -> LLCResult:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as dataset:
        return LLCResult.from_xarray(dataset.load())


def _read_all(path: pathlib.Path) -> LLCResult:
    chunks = _chunk_files(path)
    if not chunks:
        raise ValueError(f"{str(path)!r} has no finished chunks yet.")
    return concat_results([_read(chunks[index]) for index in sorted(chunks)])


def _chunk_size(manifest: dict, path: pathlib.Path) -> int:
    size = manifest.get("chunk_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{str(path / MANIFEST)!r} has no valid chunk_size (got {size!r}).")
    return size


def stored_chunk_size(path: str | os.PathLike) -> int | None:
    """The chunking of an existing results directory (resuming keeps it), else ``None``."""
    path = check_out(path)
    stored = read_manifest(path)
    return None if stored is None else _chunk_size(stored, path)


def load_results(path: str | os.PathLike) -> LLCResult:
    """The results written by :func:`slt_jax.estimate_llc_checkpoints` with ``out=path``.

    Returns an :class:`~slt_jax.LLCResult` over the checkpoints finished so far (sorted
    by step); ``.to_xarray()`` gives the labelled dataset.
    """
    path = pathlib.Path(path)
    if read_manifest(path) is None:
        raise ValueError(f"{str(path)!r} is not a results directory (no {MANIFEST}).")
    return _read_all(path)
