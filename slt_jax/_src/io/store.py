"""Results on disk: written chunk by chunk as a sweep runs, atomically, and resumable.

Layout of an output directory::

    manifest.json          the full configuration, the checkpoint steps, the chunking and
                           the library version (written first, atomically)
    chunk-00000.nc …       one netCDF file per finished chunk (xarray, h5netcdf engine)

A chunk holds a result over checkpoints of the type the store was opened with (an
:class:`~slt_jax.LLCResult` for :func:`~slt_jax.estimate_llc_checkpoints`, a
``RefinedCheckpointsResult`` for :func:`~slt_jax.estimate_refined_llc_checkpoints`), whose
``format`` the manifest records. Each chunk file is written to a temporary name in the same
directory, flushed to disk and renamed into place, so a crash at any moment leaves either
the whole file or none of it.
Re-opening the directory with the same configuration skips the chunks already there; a
different configuration is an error, never a silent mix. The manifest holds content hashes
of every checkpoint and of the data set, so re-training into the same checkpoint directory
or changing the data is caught too, and a fingerprint of the loss function's traced program
(compared only under the JAX version and precision that wrote it: otherwise a warning says it
could not be checked). A writer holds an exclusive lock on ``out/.lock``: a second run on the
same directory is refused. A store may declare manifest keys *growing* (the refined sweep's
``checkpoints``, ``{step: hash}``): a later run may add entries, never change one, and a
finished chunk counts only if it holds exactly the steps of that chunk of the current run
(others are run again and replaced). A directory is used only if it is new, empty (but for the lock
and torn temporary files of a killed run) or has this library's manifest: one holding other
files, or another program's ``manifest.json``, is an error. Only the library's own
temporary files (``.chunk-00000.nc.tmp-PID-XXXX``, ``.manifest.json.tmp-PID-XXXX``, as
``_src/io/atomic.py`` names them) are ever deleted.
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

from slt_jax._src.io import export
from slt_jax._src.io.atomic import write_atomic
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
_TEMPORARY = re.compile(r"\.(chunk-\d{5,}\.nc|manifest\.json)\.tmp-\d+(?:-[a-z0-9_]+)?")


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


def read_manifest(path: pathlib.Path, format: str = FORMAT) -> dict[str, Any] | None:
    """The manifest of the results directory ``path``, or ``None`` if it has none.

    A ``manifest.json`` that this library did not write (not JSON, or without the
    ``format`` of the results read, ``format``) is a ``ValueError`` naming the file.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        stored = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"it cannot be read as JSON ({type(error).__name__}: {error})"
    else:
        if isinstance(stored, dict) and stored.get("format") == format:
            return stored
        problem = f'it has no "format": {format!r}'
        if isinstance(stored, dict) and str(stored.get("format", "")).startswith("slt_jax-"):
            problem += f" (it holds {stored['format']!r} results)"
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


def _normalise(manifest: dict[str, Any], format: str = FORMAT) -> dict[str, Any]:
    return json.loads(json.dumps({"format": format, **manifest}))


def _tracing(manifest: dict) -> tuple:
    """What a traced program's text depends on: the JAX version and the precision."""
    platform = manifest.get("platform") or {}
    return platform.get("jax"), platform.get("x64")


# How a differing top-level manifest key is named in the one-line summary of an error.
_SHOWN = {"data_hash": "data", "checkpoint_hashes": "checkpoints", "loss_fn": "loss function"}


def _compare(stored: dict, now: dict, path: pathlib.Path, skip=()) -> None:
    """Warn about informational differences; raise ``ValueError`` listing the others
    (``skip``: keys compared elsewhere)."""
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
    differences = _differences(stored, now, skip=(*unchecked, *skip))
    if differences:
        keys = dict.fromkeys(d.split(":")[0].split(".")[0] for d in differences)
        what = ", ".join(_SHOWN.get(k, k) for k in keys)
        raise ValueError(
            f"out={str(path)!r} holds results of a different configuration (other settings: "
            f"{what} differ); use another output directory, or the same settings to "
            "resume:\n  " + "\n  ".join(differences)
        )


def _grown(stored: dict, now: dict, path: pathlib.Path, growing: dict[str, str]) -> dict:
    """The stored manifest with the entries of ``now``'s growing keys added.

    A growing key holds a mapping (e.g. ``{step: checkpoint hash}``) that a later run may
    extend; an entry that both hold with different values is a ``ValueError``."""
    merged = dict(stored)
    for key, what in growing.items():
        old, new = stored.get(key) or {}, now.get(key) or {}
        changed = [k for k in new if k in old and old[k] != new[k]]
        if changed:
            shown = [int(k) if k.lstrip("-").isdigit() else k for k in changed]
            raise ValueError(
                f"out={str(path)!r} holds results of other {what} {shown[:6]}"
                f"{' …' if len(shown) > 6 else ''}: they differ from these; use another "
                "output directory."
            )
        merged[key] = {**old, **new}
    return merged


class ResultStore:
    """An output directory of a checkpoint sweep, whose chunks hold results of one type.

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
      result_type: what a chunk holds: :class:`~slt_jax.LLCResult` (default) or another
        result over checkpoints with ``to_xarray()``, a classmethod ``from_xarray(dataset)``
        whose dataset has a ``step`` coordinate, a classmethod ``concat(results)`` (joined,
        sorted by step) and a ``store_format`` string (the manifest's ``format``: a
        directory of one type is refused as the other).
      growing: ``{key: description}`` of manifest keys whose mapping a later run may
        extend (a run over more checkpoints resumes one over fewer): entries both runs hold
        must agree (else ``ValueError`` naming the ``description`` and the entries), the
        union is stored.
      checked_apart: top-level manifest keys not compared here, because the caller checks
        them itself (a lazy checkpoint set's stamps, verified against each chunk's hashes).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: dict[str, Any] | None = None,
        *,
        writer: bool = True,
        result_type: type = LLCResult,
        growing: dict[str, str] | None = None,
        checked_apart=(),
    ):
        self.path = check_out(path)
        self.writer = writer
        self.result_type = result_type
        self.format = format_of(result_type)
        self.growing = dict(growing or {})
        self.manifest = None
        self._lock = None
        if not writer:  # another process writes: the manifest must exist and agree
            stored = read_manifest(self.path, self.format)
            manifest = _normalise(manifest, self.format)
            if stored is None:
                raise ValueError(f"out={str(self.path)!r} has no {MANIFEST}.")
            skip = (*self.growing, *checked_apart)
            differences = _differences(stored, manifest, skip=skip)
            if differences:
                raise ValueError(f"out={str(self.path)!r}: manifests differ: {differences}")
            _grown(stored, manifest, self.path, self.growing)
            self.stored = self.manifest = manifest
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
        stored = read_manifest(self.path, self.format)
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
        the keys ``checked_apart``, which the caller checks itself), or write it
        (atomically) into a new directory. Growing keys are merged (and the merged manifest
        written when it gained entries)."""
        manifest = _normalise(manifest, self.format)
        if self.stored is not None:
            _compare(self.stored, manifest, self.path, skip=(*self.growing, *checked_apart))
            merged = _grown(self.stored, manifest, self.path, self.growing)
            if merged != self.stored:
                text = json.dumps(merged, indent=2, sort_keys=True)
                write_atomic(self.path / MANIFEST, text.encode())
                self.stored = merged
        else:
            text = json.dumps(manifest, indent=2, sort_keys=True)
            write_atomic(self.path / MANIFEST, text.encode())
            self.stored = manifest
        self.manifest = manifest

    def _chunk_path(self, index: int) -> pathlib.Path:
        return self.path / f"chunk-{index:05d}.nc"

    def has_chunk(self, index: int) -> bool:
        return self._chunk_path(index).exists()

    def finished_chunks(self, steps=None, chunk_size: int | None = None) -> set[int]:
        """Indices of the chunks already on disk; given the run's ``steps`` and
        ``chunk_size``, only those holding exactly the steps of that chunk of this run (a
        chunk written by a run over other checkpoints is run again, and replaced)."""
        found = _chunk_files(self.path)
        if steps is None:
            return set(found)
        steps = [int(s) for s in steps]
        wanted = {i: steps[i * chunk_size : (i + 1) * chunk_size] for i in found}
        return {i for i, f in found.items() if wanted[i] and _steps_of(f) == wanted[i]}

    def write_chunk(self, index: int, result: Any, *, hashes=None) -> None:
        """Write one chunk's results (with their steps) atomically; ``hashes``, the content
        hashes of its checkpoints, go with it (an attribute of the file)."""
        if not self.writer:
            raise RuntimeError("this process does not write the results.")
        dataset = result.to_xarray()
        if hashes is not None:
            dataset.attrs[_HASHES] = json.dumps([str(h) for h in hashes])
        export.to_netcdf(dataset, self._chunk_path(index))

    def read_chunk(self, index: int) -> Any:
        return _read(self._chunk_path(index), self.result_type)

    def chunk_hashes(self, index: int) -> list[str] | None:
        """The content hashes of a finished chunk's checkpoints, as written with it (``None``
        for a chunk written without them); only the file's attributes are read."""
        import xarray as xr

        with xr.open_dataset(self._chunk_path(index), engine="h5netcdf") as dataset:
            hashes = dataset.attrs.get(_HASHES)
        return None if hashes is None else list(json.loads(hashes))

    def load(self) -> Any:
        """Every finished chunk, joined along the checkpoint axis (sorted by step)."""
        return _read_all(self.path, self.result_type)


def _steps_of(path: pathlib.Path) -> list[int]:
    """The training steps a chunk file holds (its ``step`` coordinate only)."""
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as dataset:
        return [int(s) for s in dataset["step"].values]


def _read(path: pathlib.Path, result_type: type = LLCResult) -> Any:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as dataset:
        return result_type.from_xarray(dataset.load())


def _read_all(path: pathlib.Path, result_type: type = LLCResult) -> Any:
    chunks = _chunk_files(path)
    if not chunks:
        raise ValueError(f"{str(path)!r} has no finished chunks yet.")
    concat = getattr(result_type, "concat", concat_results)
    return concat([_read(chunks[index], result_type) for index in sorted(chunks)])


def _chunk_size(manifest: dict, path: pathlib.Path) -> int:
    size = manifest.get("chunk_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{str(path / MANIFEST)!r} has no valid chunk_size (got {size!r}).")
    return size


def format_of(result_type: type) -> str:
    """The manifest ``format`` of a directory of ``result_type`` results."""
    return getattr(result_type, "store_format", FORMAT)


def stored_chunk_size(path: str | os.PathLike, result_type: type = LLCResult) -> int | None:
    """The chunking of an existing results directory (resuming keeps it), else ``None``."""
    path = check_out(path)
    stored = read_manifest(path, format_of(result_type))
    return None if stored is None else _chunk_size(stored, path)


def load_results(path: str | os.PathLike) -> LLCResult:
    """The results written by :func:`slt_jax.estimate_llc_checkpoints` with ``out=path``.

    Returns an :class:`~slt_jax.LLCResult` over the checkpoints finished so far (sorted
    by step); ``.to_xarray()`` gives the labelled dataset.
    """
    return read_results(path)


def read_results(path: str | os.PathLike, result_type: type = LLCResult) -> Any:
    """The finished chunks of the results directory ``path`` holding ``result_type``
    results, joined and sorted by step (no lock is taken: a running sweep may add more)."""
    path = pathlib.Path(path)
    if not path.is_dir() or read_manifest(path, format_of(result_type)) is None:
        raise ValueError(f"{str(path)!r} is not a results directory (no {MANIFEST}).")
    return _read_all(path, result_type)
