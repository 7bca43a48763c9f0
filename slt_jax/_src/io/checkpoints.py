"""Checkpoint sets: K snapshots of one model's parameters stacked on a leading axis, the
input of a batch LLC sweep over a training run. Built from snapshots in memory, from a
directory that Flax training code wrote (Orbax, safetensors, Flax msgpack) or of Hugging
Face model directories (Pythia's revisions, a Trainer's ``checkpoint-N``), or from whatever
you have (:func:`as_checkpoint_set`). Everything stays on the host, as numpy. A set loaded
from a directory is lazy: it holds the steps, the sources and the parameter structure, and
reads a checkpoint's arrays only when asked (:meth:`CheckpointSet.read`), so that a sweep
holds a chunk of checkpoints at a time, not all of them."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence, ValuesView
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.io import hf
from slt_jax._src.io import lazy as _lazy
from slt_jax._src.io.fingerprint import _digest
from slt_jax._src.io.formats import (
    _SUFFIXES,
    FORMATS,
    _flat,
    _is_flax_msgpack,
    _items,
    _preview,
    _step_from_name,
    save_checkpoint,
)
from slt_jax._src.validation import leaf_name

__all__ = [
    "CheckpointSet",
    "as_checkpoint_set",
    "load_checkpoint_set",
    "save_checkpoint",
    "stack_checkpoints",
]

PyTree = Any


class Chunk(NamedTuple):
    """Some checkpoints of a set, read: their stacked ``params`` (host numpy, leading axis
    ``len(hashes)``) and each one's content hash (as
    :func:`slt_jax._src.io.fingerprint.checkpoint_hashes` gives it)."""

    params: PyTree
    hashes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CheckpointSet:
    """K snapshots of one model's parameters, stacked: the input of a batch LLC sweep.

    ``steps`` are the ``(K,)`` int64 training steps, strictly ascending; ``params`` is a
    pytree (dict, Linen params, ``nnx.State``) whose every leaf is a host numpy array with
    leading axis K; ``sources`` are K labels (paths, or ``"checkpoint 3"``) for messages.
    ``len(cs)`` is K.

    A set from a directory (:func:`load_checkpoint_set`, :func:`slt_jax.lm.load_checkpoints`)
    is *lazy* (``cs.lazy``): it knows its steps, sources and :attr:`template` from the
    files' headers and reads a checkpoint only when :meth:`read` (or :meth:`load`) asks for
    it, so a sweep holds one chunk of checkpoints at a time. ``cs.params`` on a lazy set reads
    every checkpoint into memory (K × the parameters): the library never does; use
    ``cs.read(indices)``.

    Example:
      >>> import numpy as np
      >>> cs = CheckpointSet.from_stacked({"w": np.zeros((4, 3))}, steps=[0, 10, 20, 30])
      >>> len(cs), cs.select(slice(1, 3)).steps.tolist(), cs.read([0, 2])["w"].shape
      (4, [10, 20], (2, 3))
    """

    steps: np.ndarray
    params: PyTree
    sources: tuple[str, ...]
    lazy: ClassVar[bool] = False

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def _positions(self, indices) -> np.ndarray:
        """``indices`` (an int, a slice, ints, a boolean mask) as positions in the set."""
        return np.atleast_1d(np.arange(len(self))[indices])

    def select(self, indices) -> CheckpointSet:
        """The checkpoints at ``indices``: an int, a slice, increasing ints or a boolean mask
        (a lazy set stays lazy: nothing is read)."""
        idx = self._positions(indices)
        if idx.size == 0:
            raise ValueError(f"`indices` {indices!r} selects none of the {len(self)} checkpoints.")
        if np.any(np.diff(idx) <= 0):
            raise ValueError(f"`indices` must be increasing without repeats; got {idx.tolist()}.")
        return self._subset(idx)

    def _subset(self, idx: np.ndarray) -> CheckpointSet:
        params = jax.tree.map(lambda x: x[idx], self.params)
        return CheckpointSet(self.steps[idx], params, tuple(self.sources[i] for i in idx))

    @property
    def template(self) -> PyTree:
        """One checkpoint's structure, with :class:`jax.ShapeDtypeStruct` leaves."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), self.params)

    def read(self, indices) -> PyTree:
        """The parameters of the checkpoints at ``indices``, as numpy indexing gives them: an
        int gives one snapshot, ints (repeats allowed, each checkpoint read once) or a slice
        give them stacked on a leading axis. A lazy set reads those checkpoints' files now.
        """
        if isinstance(indices, int | np.integer):
            return jax.tree.map(lambda x: x[0], self.load([indices]).params)
        return self.load(indices).params

    def load(self, indices) -> Chunk:
        """:meth:`read` and the content hash of each checkpoint read (from the same read)."""
        idx = self._positions(indices)
        params = jax.tree.map(lambda x: x[idx], self.params)
        leaves = jax.tree.leaves(params)
        return Chunk(params, tuple(_digest([x[j] for x in leaves]) for j in range(len(idx))))

    def stamps(self) -> list[str]:
        """What identifies each checkpoint, cheaply: its content hash for a set in memory;
        for a lazy set a hash of its files' names, sizes and modification times (see
        :mod:`slt_jax._src.io.lazy`)."""
        return list(self.load(slice(None)).hashes)

    @classmethod
    def from_stacked(cls, params: PyTree, steps: Sequence[int] | None = None) -> CheckpointSet:
        """A set from a stacked pytree whose leaves share one leading length K >= 1.

        ``steps`` default to ``0..K-1``; checkpoints are reordered so that steps ascend.
        """
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        names, arrays = [leaf_name(p) for p, _ in flat], [np.asarray(x) for _, x in flat]
        if not arrays:
            raise ValueError("`params` has no array leaves.")
        for name, x in zip(names, arrays, strict=True):
            if x.ndim == 0:
                raise ValueError(f"params leaf {name} is a scalar; it needs a leading K axis.")
            if len(x) != len(arrays[0]):
                raise ValueError(
                    f"params leaf {name} has leading length {len(x)} but leaf {names[0]} has "
                    f"{len(arrays[0])}: every leaf must be stacked over the same K checkpoints."
                )
        if not len(arrays[0]):
            raise ValueError("`params` is stacked over 0 checkpoints; K must be >= 1.")
        labels = [f"checkpoint {i}" for i in range(len(arrays[0]))]
        return _finish(treedef, names, arrays, steps, labels, lambda i: labels[i])


class _LazyCheckpointSet(CheckpointSet):
    """A :class:`CheckpointSet` whose checkpoints stay on disk until read (see
    :class:`CheckpointSet`). Not a dataclass to ``dataclasses.replace``: ``select`` it."""

    lazy: ClassVar[bool] = True

    def __init__(self, snapshots: _lazy.Snapshots, positions: np.ndarray | None = None):
        positions = np.arange(len(snapshots)) if positions is None else positions
        object.__setattr__(self, "_snapshots", snapshots)
        object.__setattr__(self, "_at", np.asarray(positions, int))
        object.__setattr__(self, "steps", np.asarray(snapshots.steps, np.int64)[positions])
        object.__setattr__(self, "sources", tuple(str(snapshots.paths[i]) for i in positions))

    @property
    def params(self) -> PyTree:  # type: ignore[override]
        """Every checkpoint, read now into memory (K × the parameters)."""
        return self.read(slice(None))

    @property
    def template(self) -> PyTree:
        return self._snapshots.template

    @property
    def format(self) -> str:
        return self._snapshots.kind

    def _subset(self, idx: np.ndarray) -> CheckpointSet:
        return _LazyCheckpointSet(self._snapshots, self._at[idx])

    def load(self, indices) -> Chunk:
        """Read the checkpoints at ``indices`` (each distinct one once, straight into the
        stacked arrays: the memory of those checkpoints plus one being read), with their
        content hashes. A file that is gone, cut short, corrupt or changed since listing is
        a :class:`~slt_jax._src.io.lazy.CheckpointReadError` naming it."""
        idx = self._positions(indices)
        snapshots = self._snapshots
        out = [np.empty((len(idx), *spec.shape), spec.dtype) for spec in snapshots.specs]
        hashes: dict[int, str] = {}
        for j, i in enumerate(idx):
            first = int(np.flatnonzero(idx == i)[0])
            if first < j:  # a repeat: copy the row already read
                for x in out:
                    x[j] = x[first]
                continue
            leaves, hashes[int(i)] = snapshots.read(int(self._at[i]))
            for x, leaf in zip(out, leaves, strict=True):
                x[j] = leaf
            del leaves
        params = jax.tree_util.tree_unflatten(snapshots.treedef, out)
        return Chunk(params, tuple(hashes[int(i)] for i in idx))

    def stamps(self) -> list[str]:
        return [self._snapshots.stamps[i] for i in self._at]

    def conform(self, like: PyTree) -> CheckpointSet:
        """The same checkpoints, each put into the structure of ``like`` when read."""
        snapshots = self._snapshots
        entries = list(zip(snapshots.steps, snapshots.paths, strict=True))
        conformed = _lazy.Snapshots(snapshots.kind, entries, like, _conform)
        return _LazyCheckpointSet(conformed, self._at)

    def __repr__(self) -> str:
        return (
            f"CheckpointSet(lazy, {self.format}, {len(self)} checkpoints, steps "
            f"{_preview([str(s) for s in self.steps.tolist()])})"
        )

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__


def stack_checkpoints(
    snapshots: Sequence[PyTree],
    *,
    steps: Sequence[int] | None = None,
    sources: Sequence[str] | None = None,
) -> CheckpointSet:
    """Stack K same-structured parameter snapshots into a :class:`CheckpointSet`.

    Every snapshot (a pytree of jax or numpy arrays, Linen params, an ``nnx.State``, which
    stays one) must have the tree structure, leaf shapes and dtypes of the first, and only
    finite floating-point leaves. The result is sorted by step.

    ``steps`` (distinct integers, default ``0..K-1``) and ``sources`` (labels for messages,
    default ``"checkpoint i"``) go with ``snapshots`` (a list or tuple). Errors name the
    offending snapshot (index and label) and leaf: ``ValueError`` for a structure, shape or
    dtype mismatch, a non-finite value or bad ``steps``; ``TypeError`` for a non-floating leaf.

    Example:
      >>> import numpy as np
      >>> cs = stack_checkpoints([{"w": np.ones(3)}, {"w": np.zeros(3)}], steps=[200, 100])
      >>> cs.steps.tolist(), cs.params["w"][:, 0].tolist(), cs.sources
      ([100, 200], [0.0, 1.0], ('checkpoint 1', 'checkpoint 0'))
    """
    if type(snapshots) not in (list, tuple):
        raise TypeError(
            "`snapshots` must be a list or tuple of parameter pytrees, one per checkpoint, not "
            f"{type(snapshots).__name__}; for a stacked pytree use CheckpointSet.from_stacked."
        )
    if not snapshots:
        raise ValueError("`snapshots` is empty; a checkpoint set needs at least one snapshot.")
    labels = [f"checkpoint {i}" for i in range(len(snapshots))] if sources is None else sources
    if len(labels) != len(snapshots):
        raise ValueError(f"`sources` has {len(labels)} labels for {len(snapshots)} snapshots.")
    labels = [str(s) for s in labels]

    def where(i: int) -> str:
        return f"snapshot {i} ({labels[i]})"

    ref_flat, treedef = jax.tree_util.tree_flatten_with_path(snapshots[0])
    names = [leaf_name(p) for p, _ in ref_flat]
    if not names:
        raise ValueError(f"{where(0)} has no array leaves.")
    columns: list[list[np.ndarray]] = [[] for _ in names]
    for i, snapshot in enumerate(snapshots):
        flat, tree_i = jax.tree_util.tree_flatten_with_path(snapshot)
        if tree_i != treedef:
            what = _lazy.structure_difference(flat, tree_i, treedef, names)
            raise ValueError(f"{where(i)} does not match {where(0)}: structure differs: {what}.")
        for name, column, (_, leaf) in zip(names, columns, flat, strict=True):
            x = np.asarray(leaf)
            ref = column[0] if column else x
            for what, a, b in (("dtype", x.dtype, ref.dtype), ("shape", x.shape, ref.shape)):
                if a != b:
                    raise ValueError(
                        f"{where(i)} does not match {where(0)}: leaf {name} has {what} {a} vs {b}."
                    )
            column.append(x)
    arrays = [np.stack(column) for column in columns]
    return _finish(treedef, names, arrays, steps, labels, where)


def as_checkpoint_set(
    checkpoints: Any,
    *,
    steps: Sequence[int] | None = None,
    like: PyTree = None,
    format: str | None = None,
) -> CheckpointSet:
    """Whatever describes K checkpoints, as a :class:`CheckpointSet`.

    By the type of ``checkpoints``: a ``CheckpointSet`` is returned as is; a ``str`` or
    ``os.PathLike`` is a directory for :func:`load_checkpoint_set`; a plain ``list`` or
    ``tuple`` holds snapshots for :func:`stack_checkpoints`, and so does an iterator (a
    generator, a ``map``) or ``dict.values()``; anything else (a dict, an ``nnx.State``, a
    namedtuple) is an already-stacked pytree for :meth:`CheckpointSet.from_stacked`. A
    stacked pytree that is itself a list or tuple is ambiguous: pass it to
    ``CheckpointSet.from_stacked`` yourself.

    ``steps`` are those of snapshots or a stacked pytree (a directory or a ``CheckpointSet``
    carries its own, which ``steps`` must then equal). ``like`` is an optional template, as
    in :func:`load_checkpoint_set`, whose structure the params take. ``format`` picks the
    snapshots of a directory, as in :func:`load_checkpoint_set` (for a directory only).

    Example:
      >>> import numpy as np
      >>> as_checkpoint_set({"w": np.zeros((2, 3))}, steps=[9, 5]).steps.tolist()
      [5, 9]
    """
    if format is not None and not isinstance(checkpoints, str | os.PathLike):
        raise ValueError(
            f"format={format!r} applies to a checkpoint directory; got "
            f"{type(checkpoints).__name__} checkpoints."
        )
    if isinstance(checkpoints, CheckpointSet):
        cs = checkpoints
        if like is not None and cs.lazy:
            cs = cs.conform(like)
        elif like is not None:
            cs = dataclasses.replace(
                cs, params=_conform(cs.params, like, "the checkpoint set", stacked=True)
            )
    elif isinstance(checkpoints, str | os.PathLike):
        cs = load_checkpoint_set(checkpoints, like=like, format=format)
    elif type(checkpoints) in (list, tuple) or _is_snapshot_iterable(checkpoints):
        checkpoints = list(checkpoints)
        if like is not None:
            checkpoints = [_conform(s, like, f"snapshot {i}") for i, s in enumerate(checkpoints)]
        return stack_checkpoints(checkpoints, steps=steps)
    else:
        if like is not None:
            checkpoints = _conform(checkpoints, like, "the stacked params", stacked=True)
        return CheckpointSet.from_stacked(checkpoints, steps=steps)
    if steps is not None and not np.array_equal(np.asarray(steps), cs.steps):
        raise ValueError(f"`steps` {list(steps)} differ from the checkpoints' {cs.steps.tolist()}.")
    return cs


def _is_snapshot_iterable(x: Any) -> bool:
    """An iterable that is no pytree node (a generator, a ``map``, a dict view): its items."""
    return isinstance(x, Iterator | ValuesView)


def load_checkpoint_set(
    directory: str | os.PathLike,
    *,
    like: PyTree = None,
    format: str | None = None,
    lazy: bool = True,
) -> CheckpointSet:
    """Load a directory of checkpoints, one per training step, as a :class:`CheckpointSet`.

    ``format`` is ``"orbax"`` (a sub-directory per step from ``ocp.CheckpointManager``,
    ``100/default/`` or ``checkpoint_100/<item>/`` with item ``default`` or ``params`` if
    several, or a plain ``StandardCheckpointer`` save ``100/``; restored without a target;
    ``*.orbax-checkpoint-tmp*`` skipped), ``"safetensors"`` (``*.safetensors``, keys joined by
    ``.`` or ``/``), ``"msgpack"`` (``*.msgpack`` from ``flax.serialization``, or files
    without a suffix such as ``checkpoint_100`` from ``flax.training.checkpoints``), ``"hf"``
    (a Hugging Face model directory per step, ``config.json`` and safetensors, as
    ``save_pretrained`` writes them: Pythia's revisions ``step143000/``, a ``Trainer``'s
    ``checkpoint-500/``; leaves named as the native language models name their parameters,
    the base model's prefix dropped, buffers and a tied head left out; every snapshot's
    config must have the first one's architecture) or ``None``, to detect the one present.
    The step comes from each name, its suffixes dropped: the integer after ``step``,
    ``checkpoint`` or ``ckpt`` (``step_100.safetensors``, ``ckpt-000100``,
    ``checkpoint_100/``, ``checkpoint-500/``), else a name that is an integer (``100/``), else
    the name's one integer apart from dtype tokens (``epoch5_bf16.msgpack``); a name with
    several candidates is an error. Snapshots are nested dicts with string keys (list
    indices as ``"0"``, ``"1"``, …), unless ``like`` is given: a template (dict of arrays,
    Linen params, ``nnx.State`` from ``nnx.split(model, nnx.Param, ...)`` or
    :func:`slt_jax.nnx_loss`) matched by key path as strings (``layers.0.kernel`` is
    ``['layers'][0]['kernel'].value``: a trailing ``value`` is ignored on both sides), whose
    structure each snapshot takes. Missing or extra leaves or other shapes are errors that
    name the file.

    The set is lazy (``lazy=True``, the default): listing the directory reads only names,
    ``stat`` and the files' headers or metadata (safetensors headers, ``config.json``, Orbax
    metadata; for msgpack, which has none, the first file), and checks there what they
    show: every snapshot's structure, shapes and dtypes against the first's, and each
    safetensors file's size against its header (a file cut short, or the newest step still
    being written, is an error naming it). Each checkpoint's arrays are read when
    :meth:`CheckpointSet.read` asks for them (a sweep: when its chunk runs), and checked
    then (finite values; for msgpack, the structure), with errors naming the file.
    ``lazy=False`` reads every checkpoint now into an in-memory set (K × the parameters).

    Example:
      >>> import tempfile, numpy as np
      >>> with tempfile.TemporaryDirectory() as d:
      ...     for step in (20, 10):
      ...         _ = save_checkpoint(d, step, {"layers": [{"w": np.full(2, step, np.float32)}]})
      ...     cs = load_checkpoint_set(d)  # lazy: nothing read yet
      ...     print(cs.steps.tolist(), cs.read([0, 1])["layers"]["0"]["w"].tolist())
      [10, 20] [[10.0, 10.0], [20.0, 20.0]]
    """
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise ValueError(f"`directory` {str(root)!r} is not a directory.")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS} or None.")
    found: dict[str, list[pathlib.Path]] = {f: [] for f in FORMATS}
    seen = [p.name + "/" * p.is_dir() for p in sorted(root.iterdir())]
    is_model = hf.is_hf_directory(root)  # a Trainer's output_dir: the final model, then steps
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or ".orbax-checkpoint-tmp" in entry.name:
            continue
        if is_model and entry.is_file() and hf.is_weight_file(entry.name):
            continue
        if entry.is_dir() and hf.has_weights(entry):
            found["hf"].append(entry)
        elif entry.is_file() and entry.suffix in _SUFFIXES:
            found[_SUFFIXES[entry.suffix]].append(entry)
        elif entry.is_file() and not entry.suffix and _is_flax_msgpack(entry):
            found["msgpack"].append(entry)  # flax.training.checkpoints: checkpoint_100
        elif entry.is_dir() and ((entry / "_CHECKPOINT_METADATA").is_file() or _items(entry)):
            found["orbax"].append(entry)
    kinds = [f for f in FORMATS if found[f]] if format is None else [format]
    if len(kinds) > 1:
        mix = "; ".join(f"{f}: {_preview([p.name for p in found[f]])}" for f in kinds)
        raise ValueError(
            f"{root} mixes checkpoint formats ({mix}); pass format= (--format on the command "
            "line) to pick one."
        )
    if not kinds or not found[kinds[0]]:
        expected = kinds[0] if kinds else "safetensors, msgpack or orbax"
        expected = "hf (Hugging Face model directory)" if expected == "hf" else expected
        raise ValueError(f"no {expected} checkpoints in {root}; it holds {_preview(seen)}.")
    entries = sorted((_step_from_name(p), p.name, p) for p in found[kinds[0]])
    if kinds[0] == "hf":
        _same_architecture([e[2] for e in entries])
    labels = [str(e[2]) for e in entries]
    _check_steps(np.asarray([e[0] for e in entries]), labels, lambda i: labels[i])
    snapshots = _lazy.Snapshots(kinds[0], [(e[0], e[2]) for e in entries], like, _conform)
    cs = _LazyCheckpointSet(snapshots)
    return cs if lazy else CheckpointSet(cs.steps, cs.params, cs.sources)


def _same_architecture(directories: Sequence[pathlib.Path]) -> None:
    """Every model directory's config.json has the first one's architecture."""
    first = hf.architecture(hf.read_config(directories[0]))
    for directory in directories[1:]:
        other = hf.architecture(hf.read_config(directory))
        if other != first:
            keys = ["model_type", *sorted(first.keys() | other.keys())]
            key = next(k for k in keys if first.get(k) != other.get(k))
            raise ValueError(
                f"{directory / hf.CONFIG} differs from {directories[0] / hf.CONFIG} in {key} "
                f"({other.get(key)!r} vs {first.get(key)!r}): the snapshots of a checkpoint set "
                "must share one architecture."
            )


def _finish(treedef, names, arrays, steps, labels, where: Callable[[int], str]) -> CheckpointSet:
    """Check stacked leaves (floating, finite) and ``steps``; sort by step."""
    for name, x in zip(names, arrays, strict=True):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{where(0)}: leaf {name} has dtype {x.dtype}; every leaf must be floating-point "
                "(leave step counters and other state out of the checkpoints)."
            )
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{where(i)}: leaf {name} contains non-finite values (NaN or inf).")
    if steps is None:
        steps = np.arange(len(labels))
    steps = _check_steps(np.asarray(steps), labels, where)
    order = np.argsort(steps, kind="stable")
    if np.any(np.diff(order) != 1):  # a copy only when the order changes
        arrays = [x[order] for x in arrays]
    params = jax.tree_util.tree_unflatten(treedef, arrays)
    return CheckpointSet(steps[order].astype(np.int64), params, tuple(labels[i] for i in order))


def _check_steps(steps: np.ndarray, labels, where: Callable[[int], str]) -> np.ndarray:
    """``steps``: K distinct integers in [0, 2**32) (a step seeds its chains' keys)."""
    if steps.shape != (len(labels),):
        raise ValueError(f"`steps` has shape {steps.shape} for {len(labels)} checkpoints.")
    if not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"`steps` must be integers, got dtype {steps.dtype}.")
    outside = (steps < 0) | (steps >= 2**32)  # a step seeds its chains' keys (32 bits)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"`steps` must be in [0, 2**32); {where(i)} has step {steps[i]}.")
    values, counts = np.unique(steps, return_counts=True)
    if np.any(counts > 1):
        i, j = np.flatnonzero(steps == values[counts > 1][0])[:2]
        raise ValueError(f"`steps`: step {steps[i]} appears twice ({where(i)} and {where(j)}).")
    return steps


def _conform(tree: PyTree, like: PyTree, label: str, *, stacked: bool = False) -> PyTree:
    """``tree``'s leaves in the structure of ``like``, matched by key path (as strings)."""
    have, want = _flat(tree, canonical=True), _flat(like, canonical=True)
    missing = [".".join(p) for p in want if p not in have]
    extra = [".".join(p) for p in have if p not in want]
    if missing or extra:
        what = [f"{k} {_preview(v)}" for k, v in (("missing", missing), ("extra", extra)) if v]
        raise ValueError(f"{label} does not match `like`: {'; '.join(what)}.")
    leaves = []
    for parts, template in want.items():
        x = have[parts]
        x = x if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x)
        shape, expected = x.shape[int(stacked) :], tuple(np.shape(template))
        if shape != expected:
            name = ".".join(parts)
            raise ValueError(f"{label}: leaf {name} has shape {shape}, `like` has {expected}.")
        leaves.append(x)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


# A name's step: the integer after one of these words (``step_100``, ``ckpt-7``) ...
