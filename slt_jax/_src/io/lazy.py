"""A checkpoint directory read lazily: listed once (steps, sources, the parameter structure
and cheap identity stamps, from the files' headers and metadata), then each checkpoint read
only when asked for, its content hash computed from that same read.

What listing checks, per format, without reading any tensor data:

- ``safetensors`` and ``hf``: every weight file's header (8 bytes and a JSON object): the
  keys, shapes and dtypes of every checkpoint against the first one's (and ``like``'s), and
  the file's size against the data its header describes, so that a file cut short, or the
  newest step still being written, is an error naming it; for ``hf`` also every
  ``config.json`` (one architecture).
- ``orbax``: every step's pytree metadata (shapes and dtypes).
- ``msgpack``: the format has no header: every file is parsed as a stream (each object
  skipped, none built: its I/O, not its memory) so that a file cut short or corrupt is
  named before anything runs, and the first one is read for the structure; the others'
  structure is checked when they are read (an error naming the file). Prefer safetensors
  for large models.

What a read checks: the snapshot's structure, shapes and dtypes against the set's (a file
replaced since listing), finite values (an error naming the file and the leaf); a file that
has gone or cannot be read is a :class:`CheckpointReadError` naming it and its step.

**Stamps and hashes.** A checkpoint's *stamp* (:meth:`Snapshots.stamp`) is a hash of the
names, sizes and modification times of the files its read opens: computed at listing from
``stat`` alone. Its *content hash* is :func:`slt_jax._src.io.fingerprint.checkpoint_hashes`'
digest of its arrays (the same value an in-memory set gives), computed by :meth:`read` on the
arrays it has just read: no file is read twice. A results directory records the stamps in its
manifest (written before anything is read) and each chunk's content hashes with the chunk; on
resume a finished checkpoint whose stamp is unchanged is trusted without reading it, and one
whose stamp changed (a copy, a ``touch``, a re-training) is read and its content hash compared
with the one stored with its chunk (see :mod:`slt_jax._src.jobs.checkpoints`). Stamps, not
content hashes, go into the manifest because the manifest is written at the start, before the
files are read, and a resumed sweep must not read its finished checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.io import hf
from slt_jax._src.io.fingerprint import _digest
from slt_jax._src.io.formats import _corrupt, _flat, _nest, _read, orbax_item
from slt_jax._src.validation import leaf_name

PyTree = Any

# safetensors' dtypes as ``safetensors.numpy`` (and, for BF16, jax) reads them.
_SAFETENSORS_DTYPES = {**hf._DTYPES, "F16": np.float16, "BF16": jnp.bfloat16}


class CheckpointReadError(ValueError):
    """A checkpoint of a lazy set that could not be read when its turn came (gone, cut
    short, corrupt, or changed since the set was listed); the message names its file and
    step."""


def _spec(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(n) for n in shape), np.dtype(dtype))


def _files(path: pathlib.Path, kind: str) -> list[pathlib.Path]:
    """The files a read of the checkpoint ``path`` opens."""
    if kind == "hf":
        return hf.weight_paths(path)
    if path.is_dir():  # orbax: every file below the step directory
        return sorted(pathlib.Path(d) / f for d, _, names in os.walk(path) for f in names)
    return [path]


def stamp(path: pathlib.Path, kind: str) -> str:
    """A hash of the names, sizes and modification times of the checkpoint's files."""
    h = hashlib.sha256()
    for file in _files(path, kind):
        info = file.stat()
        name = file.relative_to(path) if file != path else file.name
        h.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _header_tree(path: pathlib.Path, kind: str, like: PyTree) -> PyTree | None:
    """The snapshot's structure with :class:`jax.ShapeDtypeStruct` leaves, from its headers
    or metadata alone; ``None`` for msgpack (which has none)."""
    if kind == "safetensors":
        try:
            header, _ = hf.safetensors_header(path)
        except ValueError as error:
            raise _corrupt(path, kind, str(error).replace(f"{path} ", "it ", 1)) from error
        flat = {}
        for key, entry in header.items():
            dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise ValueError(
                    f"{path}: tensor {key!r} has dtype {entry.get('dtype')}, which slt_jax "
                    "cannot read."
                )
            flat[tuple(re.split(r"[./]", key))] = _spec(entry["shape"], dtype)
        return _nest(flat, str(path))
    if kind == "hf":
        shapes = None
        if like is not None:
            shapes = {
                "/".join(p): tuple(np.shape(x)) for p, x in _flat(like, canonical=True).items()
            }
        _, specs = hf.param_specs(path, shapes)
        flat = {tuple(name.split("/")): _spec(s.shape, s.dtype) for name, s in specs.items()}
        return _nest(flat, str(path))
    if kind == "orbax":
        import orbax.checkpoint as ocp
        from etils import epath

        item = orbax_item(path)
        handler = ocp.PyTreeCheckpointHandler()
        try:
            meta = handler.metadata(epath.Path(item))
            meta = getattr(meta, "tree", meta)
        except Exception as error:
            raise _corrupt(item, kind, error) from error
        finally:
            handler.close()
        flat = _flat(meta)
        if not all(hasattr(m, "shape") and hasattr(m, "dtype") for m in flat.values()):
            return None  # metadata without shapes (an old orbax): read the first instead
        return _nest({k: _spec(m.shape, m.dtype) for k, m in flat.items()}, str(path))
    if kind == "msgpack":
        _check_msgpack(path)
    return None


def _check_msgpack(path: pathlib.Path) -> None:
    """A msgpack file is one whole map and nothing after it: parsed as a stream, each object
    skipped, not built (the memory of its largest array at most), since the format has no
    header to check a file by. A ``ValueError`` naming the file otherwise."""
    import msgpack

    with open(path, "rb") as f:
        head = f.read(1)
        if not head:
            raise _corrupt(path, "msgpack", "the file is empty")
        if not (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
            raise _corrupt(path, "msgpack", "it does not start with a map, as flax writes")
        f.seek(0)
        unpacker = msgpack.Unpacker(f, read_size=2**20, max_buffer_size=2**62)
        try:
            unpacker.skip()
        except msgpack.OutOfData as error:
            raise _corrupt(path, "msgpack", "Unpack failed: incomplete input") from error
        except Exception as error:  # msgpack's format errors
            raise _corrupt(path, "msgpack", error) from error
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            return
        except Exception:
            pass
        raise _corrupt(path, "msgpack", "data follow the first object (Unpack failed: extra data)")


def structure_difference(flat, tree_i, treedef, names) -> str:
    """What differs between a tree (``flat``: its leaves with paths, ``tree_i``: its
    structure) and the set's structure ``treedef`` with leaf ``names``: the first missing
    leaf, else the first extra one, else the two structures."""
    got = [leaf_name(p) for p, _ in flat]
    missing = [n for n in names if n not in set(got)]
    extra = [n for n in got if n not in set(names)]
    if missing:
        return f"leaf {missing[0]} is missing"
    if extra:
        return f"it has an extra leaf {extra[0]}"
    return f"{tree_i} vs {treedef}"


def _mismatch(tree: PyTree, treedef, names, specs, where: str, first: str) -> str | None:
    """How ``tree`` (arrays or specs) differs from the set's structure, or ``None``."""
    flat, tree_i = jax.tree_util.tree_flatten_with_path(tree)
    if tree_i != treedef:
        what = structure_difference(flat, tree_i, treedef, names)
        return f"{where} does not match {first}: structure differs: {what}."
    for name, spec, (_, leaf) in zip(names, specs, flat, strict=True):
        for what, a, b in (
            ("dtype", np.dtype(leaf.dtype), spec.dtype),
            ("shape", tuple(leaf.shape), spec.shape),
        ):
            if a != b:
                return f"{where} does not match {first}: leaf {name} has {what} {a} vs {b}."
    return None


class Snapshots:
    """The checkpoints of a directory, listed (and checked) from headers, read one by one.

    Args:
      kind: the format (``"safetensors"``, ``"msgpack"``, ``"orbax"``, ``"hf"``).
      entries: ``(step, path)`` pairs, ascending by step.
      like: the template each snapshot is put into (as in ``load_checkpoint_set``), or
        ``None``.
      conform: ``conform(tree, like, label)``, which puts a snapshot into ``like``.
    """

    def __init__(self, kind: str, entries: Sequence[tuple[int, pathlib.Path]], like, conform):
        self.kind, self.like, self._conform = kind, like, conform
        self.steps = [int(s) for s, _ in entries]
        self.paths = [p for _, p in entries]
        trees = [self._shaped(path) for path in self.paths]
        first = trees[0]
        if first is None:  # no header (msgpack): the first snapshot's arrays give the structure
            first = jax.tree.map(lambda x: _spec(x.shape, x.dtype), self._load(0))
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(first)
        self.names = [leaf_name(p) for p, _ in flat]
        self.specs = [leaf for _, leaf in flat]
        if not self.specs:
            raise ValueError(f"{self.paths[0]} has no array leaves.")
        for name, spec in zip(self.names, self.specs, strict=True):
            if not jnp.issubdtype(spec.dtype, jnp.floating):
                raise TypeError(
                    f"{self.paths[0]}: leaf {name} has dtype {spec.dtype}; every leaf must be "
                    "floating-point (leave step counters and other state out of the checkpoints)."
                )
        for path, tree in zip(self.paths[1:], trees[1:], strict=True):
            problem = tree is not None and self._differs(tree, path)
            if problem:
                raise ValueError(problem)
        self.template = jax.tree_util.tree_unflatten(self.treedef, self.specs)
        self.stamps = [stamp(path, kind) for path in self.paths]

    def _differs(self, tree, path) -> str | None:
        where, first = str(path), str(self.paths[0])
        return _mismatch(tree, self.treedef, self.names, self.specs, where, first)

    def _shaped(self, path: pathlib.Path) -> PyTree | None:
        """The header tree of ``path``, put into ``like``; an incomplete file of the newest
        step is said to be perhaps still being written."""
        try:
            tree = _header_tree(path, self.kind, self.like)
        except ValueError as error:
            if "incomplete" in str(error) and path == self.paths[-1]:
                raise ValueError(
                    f"{error} It is the newest checkpoint (step {self.steps[-1]}) of "
                    f"{path.parent}: if training is still writing it, wait until it is "
                    "complete; otherwise re-save it or move it out of the directory."
                ) from error
            raise
        if tree is not None and self.like is not None:
            tree = self._conform(tree, self.like, str(path))
        return tree

    def _load(self, k: int) -> PyTree:
        tree = _read(self.paths[k], self.kind, self.like)
        return tree if self.like is None else self._conform(tree, self.like, str(self.paths[k]))

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, k: int) -> tuple[list[np.ndarray], str]:
        """The leaves of checkpoint ``k`` (in the template's order) and their content hash.

        Every failure is a :class:`CheckpointReadError` naming the file and the step.
        """
        path, step = self.paths[k], self.steps[k]
        try:
            if self.kind == "safetensors":
                _header_tree(path, self.kind, None)  # cut short since listing: say so plainly
            tree = self._load(k)
            problem = self._differs(tree, path)
            if problem:
                raise ValueError(f"{problem} (the file changed after the set was listed?)")
            leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
            for name, x in zip(self.names, leaves, strict=True):
                if not np.isfinite(x).all():
                    raise ValueError(
                        f"{path}: leaf {name} contains non-finite values (NaN or inf)."
                    )
        except OSError as error:
            raise CheckpointReadError(
                f"checkpoint at step {step}: {path} cannot be read ({type(error).__name__}: "
                f"{error.strerror or error}); it was there when the checkpoint set was listed: "
                "was it moved, deleted or cut short?"
            ) from error
        except (ValueError, TypeError) as error:
            raise CheckpointReadError(f"checkpoint at step {step}: {error}") from error
        return leaves, _digest(leaves)
