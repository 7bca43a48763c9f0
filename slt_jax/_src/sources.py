"""Data sets that stay on the host: minibatches gathered in blocks and sent ahead of use.

A data set is either a pytree of arrays on the device (minibatches drawn inside the
compiled loop: :mod:`slt_jax._src.data`) or a :class:`HostSource`, for a data set larger
than device memory. A source is indexed by example; the engine draws the same keyed
index stream for it as for an on-device data set (so a data set that fits gives the same
λ̂ either way), gathers a block of steps' minibatches for all chains on the host, and
transfers it while the previous block runs (:mod:`slt_jax._src.engine.stream`).

* :class:`TokenWindows`: a token file (a ``numpy`` memmap of ``uint16``/``uint32`` ids, or
  ``.npy``) or array cut into windows of ``seq_len`` tokens; example ``i`` is
  ``tokens[i·stride : i·stride + seq_len]``.
* :class:`HostArrays`: a pytree of host arrays or memmaps with a leading example axis.
* :class:`HostDataset`: any indexable of examples (``len`` and ``[i]``): a list of arrays or
  tuples or dicts of arrays, a Hugging Face ``datasets.Dataset`` (Arrow on disk; columns
  read with ``with_format("numpy")``), a ``numpy`` memmap.

Every source is checked before anything is compiled (:meth:`HostSource.check`): examples
that differ in shape or dtype (the index named), non-finite floats, token files shorter than
one window, token ids outside the vocabulary (``vocab_size=``, or the loss function's
``vocab_size`` attribute).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np

PyTree = Any

#: Bytes of minibatches sent to the device at a time, by default.
DEFAULT_DEVICE_BYTES = 64 * 2**20
#: Examples read at a time by the checks (and L_n(w*)).
_SCAN_ROWS = 65536


class HostSource:
    """A data set on the host, indexed by example (see the module docstring).

    Subclasses define ``__len__``, :meth:`gather` and ``spec`` (one example's shapes and
    dtypes, a pytree of ``jax.ShapeDtypeStruct``). ``device_bytes``: the most bytes of
    minibatches on the device at once (a block of steps for every chain of a device; two
    blocks are alive while one is sent ahead of use).
    """

    device_bytes: int = DEFAULT_DEVICE_BYTES

    def __len__(self) -> int:
        raise NotImplementedError

    def gather(self, indices: np.ndarray) -> PyTree:
        """The examples ``indices`` (any shape), stacked: leaves ``(*indices.shape, ...)``."""
        raise NotImplementedError

    @property
    def spec(self) -> PyTree:
        raise NotImplementedError

    @property
    def example_bytes(self) -> int:
        return int(sum(np.prod(s.shape, dtype=int) * s.dtype.itemsize for s in _leaves(self.spec)))

    def chunks(self):
        """``(first index, examples)`` over the whole source, ``_SCAN_ROWS`` at a time."""
        for start in range(0, len(self), _SCAN_ROWS):
            yield start, self.gather(np.arange(start, min(len(self), start + _SCAN_ROWS)))

    def check(self, vocab_size: int | None = None) -> None:
        """Raise ``ValueError`` on bad examples (before anything is compiled)."""
        for start, rows in self.chunks():
            _check_rows(rows, start, vocab_size)

    def check_once(self, vocab_size: int | None = None, *, fingerprint: bool = False) -> None:
        """:meth:`check`, remembered for this source: a source's examples do not change, so
        the runs of a sweep (one per checkpoint, a calibration and its run) read it once.
        With ``fingerprint`` (a results directory will record it), :meth:`fingerprint` is
        computed in the same read where the source allows it (token files, host arrays)."""
        passed = self.__dict__.setdefault("_passed_checks", set())
        check = vocab_size not in passed
        digest = fingerprint and "_digest" not in self.__dict__
        if check and digest:
            self._digest = self._check_and_fingerprint(vocab_size)
        elif check:
            self.check(vocab_size)
        elif digest:
            self.fingerprint()
        passed.add(vocab_size)

    def fingerprint(self) -> str:
        """A digest that identifies the data (results directories compare it on resume),
        computed once per source."""
        if "_digest" not in self.__dict__:
            self._digest = self._fingerprint()
        return self._digest

    def _fingerprint(self) -> str:
        h = hashlib.sha256(type(self).__name__.encode())
        for _, rows in self.chunks():
            for leaf in jax.tree.leaves(rows):
                h.update(np.ascontiguousarray(leaf).tobytes())
        return h.hexdigest()[:24]

    def _check_and_fingerprint(self, vocab_size: int | None) -> str:
        """:meth:`check` and then :meth:`_fingerprint` (sources that can do both in one read
        override it)."""
        self.check(vocab_size)
        return self._fingerprint()

    def like(self, rows: int) -> PyTree:
        """Shapes and dtypes of ``rows`` examples (for tracing)."""
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct((rows, *s.shape), s.dtype), self.spec)


def _leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def _check_rows(rows: PyTree, start: int, vocab_size: int | None) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(rows)[0]:
        name = jax.tree_util.keystr(path) or "<root>"
        if np.issubdtype(leaf.dtype, np.floating):
            bad = ~np.isfinite(leaf.reshape(len(leaf), -1)).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"example {start + int(np.argmax(bad))} of the data source has non-finite "
                    f"values in {name}; clean the data set before estimating the LLC."
                )
        if vocab_size is not None and np.issubdtype(leaf.dtype, np.integer):
            bad = ((leaf < 0) | (leaf >= vocab_size)).reshape(len(leaf), -1).any(axis=1)
            if bad.any():
                i = int(np.argmax(bad))
                value = leaf[i][(leaf[i] < 0) | (leaf[i] >= vocab_size)].ravel()[0]
                raise ValueError(
                    f"example {start + i} of the data source has token id {int(value)} in "
                    f"{name}, outside the vocabulary [0, {vocab_size})."
                )


class TokenWindows(HostSource):
    """Windows of ``seq_len`` tokens of a token file or array.

    Args:
      tokens: a path (``.npy``, or a raw binary file of ``dtype`` ids read as a memmap) or
        a 1-D integer array (a memmap included).
      seq_len: tokens per example.
      stride: tokens between the starts of consecutive windows (default ``seq_len``: the
        windows do not overlap; the tail shorter than a window is not used).
      dtype: the ids' dtype of a raw file (``"uint16"`` or ``"uint32"``).
      vocab_size: ids must lie in ``[0, vocab_size)`` (checked over the whole file).
      device_bytes: see :class:`HostSource`.

    Example:
      >>> import numpy as np, slt_jax as sj
      >>> windows = sj.TokenWindows(np.arange(100, dtype=np.uint16), seq_len=8)
      >>> len(windows), windows.gather(np.array([1])).tolist()
      (12, [[8, 9, 10, 11, 12, 13, 14, 15]])
    """

    def __init__(
        self,
        tokens,
        seq_len: int,
        *,
        stride: int | None = None,
        dtype: str | None = None,
        vocab_size: int | None = None,
        device_bytes: int = DEFAULT_DEVICE_BYTES,
    ):
        self.path = None
        if isinstance(tokens, str | os.PathLike):
            self.path = os.fspath(tokens)
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"token file {self.path} does not exist.")
            if self.path.endswith(".npy"):
                tokens = np.load(self.path, mmap_mode="r")
            else:
                if dtype is None:
                    raise TypeError(
                        f"token file {self.path}: pass dtype= ('uint16' or 'uint32') for a "
                        "raw binary file."
                    )
                size = os.path.getsize(self.path)
                if size % np.dtype(dtype).itemsize:
                    raise ValueError(
                        f"token file {self.path} has {size} bytes, not a whole number of "
                        f"{dtype} ids: truncated, or another dtype."
                    )
                tokens = np.memmap(self.path, dtype=dtype, mode="r") if size else np.zeros(0)
        tokens = np.asarray(tokens) if not isinstance(tokens, np.memmap) else tokens
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"tokens must be a 1-D array of integer ids, got shape {tokens.shape} and "
                f"dtype {tokens.dtype}."
            )
        seq_len, stride = int(seq_len), int(seq_len if stride is None else stride)
        if seq_len < 1 or stride < 1:
            raise ValueError(f"seq_len ({seq_len}) and stride ({stride}) must be >= 1.")
        where = f"token file {self.path}" if self.path else "the token array"
        if len(tokens) < seq_len:
            raise ValueError(
                f"{where} has {len(tokens)} tokens, fewer than one window (seq_len={seq_len})."
            )
        self.tokens, self.seq_len, self.stride = tokens, seq_len, stride
        self.vocab_size = vocab_size
        self.device_bytes = int(device_bytes)
        self._count = (len(tokens) - seq_len) // stride + 1

    def __len__(self) -> int:
        return self._count

    @property
    def spec(self):
        return jax.ShapeDtypeStruct((self.seq_len,), np.dtype(self.tokens.dtype))

    def gather(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        starts = indices.reshape(-1, 1).astype(np.int64) * self.stride
        rows = self.tokens[starts + np.arange(self.seq_len)]
        return np.asarray(rows).reshape(*indices.shape, self.seq_len)

    def check(self, vocab_size: int | None = None) -> None:
        vocab = self.vocab_size if vocab_size is None else vocab_size
        if vocab is None:
            return
        for start, part in self._blocks():
            self._check_block(start, part, vocab)

    def _blocks(self):
        """``(first token, tokens)`` over the whole file, one streaming read."""
        block = _SCAN_ROWS * self.seq_len
        for start in range(0, len(self.tokens), block):
            yield start, np.asarray(self.tokens[start : start + block])

    def _check_block(self, start: int, part: np.ndarray, vocab: int) -> None:
        bad = (part < 0) | (part >= vocab) if part.dtype.kind == "i" else part >= vocab
        if bad.any():
            at = start + int(np.argmax(bad))
            where = f"token file {self.path}" if self.path else "the token array"
            raise ValueError(
                f"{where}: token {at} (id {int(self.tokens[at])}, in example "
                f"{at // self.stride}) is outside the vocabulary [0, {vocab})."
            )

    def _hashed(self) -> tuple:
        """The fingerprint's hash, before the tokens, and the number of tokens it covers."""
        h = hashlib.sha256(f"tokens {self.seq_len} {self.stride}".encode())
        return h, self._count * self.stride + self.seq_len

    def _fingerprint(self) -> str:
        h, end = self._hashed()
        h.update(np.ascontiguousarray(self.tokens[:end]))
        return h.hexdigest()[:24]

    def _check_and_fingerprint(self, vocab_size: int | None) -> str:
        vocab = self.vocab_size if vocab_size is None else vocab_size
        h, end = self._hashed()
        for start, part in self._blocks():
            if vocab is not None:
                self._check_block(start, part, vocab)
            if start < end:
                h.update(np.ascontiguousarray(part[: end - start]))
        return h.hexdigest()[:24]


class HostArrays(HostSource):
    """A pytree of host arrays (``numpy`` arrays or memmaps) whose leading axis indexes
    examples, as ``data`` would be on the device, kept on the host.

    Example:
      >>> import numpy as np, slt_jax as sj
      >>> data = sj.HostArrays((np.zeros((10, 3), np.float32), np.arange(10)))
      >>> len(data), data.gather(np.array([4, 5]))[1].tolist()
      (10, [4, 5])
    """

    def __init__(self, arrays, *, vocab_size=None, device_bytes=DEFAULT_DEVICE_BYTES):
        leaves = jax.tree.leaves(arrays)
        if not leaves or any(np.ndim(x) == 0 for x in leaves):
            raise ValueError("HostArrays needs array leaves with a leading example axis.")
        lengths = {len(x) for x in leaves}
        if len(lengths) != 1:
            raise ValueError(
                f"the leaves of HostArrays have different lengths {sorted(lengths)}; every leaf "
                "must have one row per example."
            )
        self.arrays = jax.tree.map(
            lambda x: x if isinstance(x, np.ndarray) else np.asarray(x), arrays
        )
        self.vocab_size, self.device_bytes = vocab_size, int(device_bytes)
        self._n = lengths.pop()
        if self._n == 0:
            raise ValueError("the data source has no examples.")

    def __len__(self) -> int:
        return self._n

    @property
    def spec(self):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), self.arrays)

    def gather(self, indices: np.ndarray) -> PyTree:
        indices = np.asarray(indices)
        flat = np.sort(np.unique(indices.ravel()))  # one sorted read of a memmap
        where = np.searchsorted(flat, indices)
        return jax.tree.map(lambda x: np.asarray(x[flat])[where], self.arrays)

    def check(self, vocab_size: int | None = None) -> None:
        super().check(self.vocab_size if vocab_size is None else vocab_size)

    def _check_and_fingerprint(self, vocab_size: int | None) -> str:
        vocab = self.vocab_size if vocab_size is None else vocab_size
        h = hashlib.sha256(type(self).__name__.encode())
        for start, rows in self.chunks():
            _check_rows(rows, start, vocab)
            for leaf in jax.tree.leaves(rows):
                h.update(np.ascontiguousarray(leaf).tobytes())
        return h.hexdigest()[:24]


class HostDataset(HostSource):
    """Any indexable of examples (see the module docstring), each a pytree of arrays of the
    same shapes and dtypes (checked for every example before anything is compiled).

    Args:
      examples: ``len(examples)`` examples, ``examples[i]`` one of them. A Hugging Face
        ``datasets.Dataset`` is read as numpy (``with_format("numpy")``), its ``columns``
        (default: all) as a dict.
      columns: for a ``datasets.Dataset``, the columns to keep.
      vocab_size: integer leaves must lie in ``[0, vocab_size)``.
      device_bytes: see :class:`HostSource`.

    Example:
      >>> import numpy as np, slt_jax as sj
      >>> data = sj.HostDataset([(np.ones(3, np.float32), np.int32(i)) for i in range(10)])
      >>> len(data), [a.shape for a in data.gather(np.array([[0, 1], [2, 3]]))]
      (10, [(2, 2, 3), (2, 2)])
    """

    def __init__(
        self, examples, *, columns=None, vocab_size=None, device_bytes=DEFAULT_DEVICE_BYTES
    ):
        if hasattr(examples, "with_format") and hasattr(examples, "column_names"):
            keep = list(columns or examples.column_names)
            examples = examples.with_format("numpy", columns=keep)
            self._columns = keep
        else:
            self._columns = None
        if not hasattr(examples, "__len__") or not hasattr(examples, "__getitem__"):
            raise TypeError(
                f"a HostDataset needs len() and [i] (an indexable of examples), got "
                f"{type(examples).__name__}."
            )
        if len(examples) == 0:
            raise ValueError("the data source has no examples.")
        self.examples, self.vocab_size = examples, vocab_size
        self.device_bytes = int(device_bytes)
        first = self._example(0)
        self._treedef = jax.tree.structure(first)
        self._spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), first)

    def _example(self, i: int) -> PyTree:
        example = self.examples[int(i)]
        if self._columns is not None:
            example = {k: example[k] for k in self._columns}
        return jax.tree.map(np.asarray, example)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def spec(self):
        return self._spec

    def _columns_of(self, rows) -> dict | None:
        """A ``datasets.Dataset``'s rows (a dict of columns) as arrays of the examples'
        shapes and dtypes, or ``None`` if they are not (ragged, another dtype)."""
        out = {}
        for k in self._columns:
            column, spec = rows[k], self._spec[k]
            if not isinstance(column, np.ndarray) or column.dtype == object:
                return None
            if column.shape[1:] != spec.shape or column.dtype != spec.dtype:
                return None
            out[k] = column
        return out

    def gather(self, indices: np.ndarray) -> PyTree:
        indices = np.asarray(indices)
        stacked = None
        if self._columns is not None:  # one read of the Arrow table for the whole block
            stacked = self._columns_of(self.examples[indices.ravel().tolist()])
        if stacked is None:
            flat = [self._example(i) for i in indices.ravel()]
            stacked = jax.tree.map(lambda *xs: np.stack(xs), *flat)
        return jax.tree.map(lambda x: x.reshape(*indices.shape, *x.shape[1:]), stacked)

    def check(self, vocab_size: int | None = None) -> None:
        vocab = self.vocab_size if vocab_size is None else vocab_size
        if self._columns is not None:  # Arrow: whole chunks at a time where they are uniform
            for start in range(0, len(self), _SCAN_ROWS):
                stop = min(len(self), start + _SCAN_ROWS)
                rows = self._columns_of(self.examples[start:stop])
                if rows is None:
                    self._check_examples(range(start, stop), vocab)
                else:
                    _check_rows(rows, start, vocab)
            return
        self._check_examples(range(len(self)), vocab)

    def _check_examples(self, indices, vocab) -> None:
        want = _leaves(self._spec)
        for i in indices:
            example = self._example(i)
            leaves, treedef = jax.tree.flatten(example)
            if treedef != self._treedef:
                raise ValueError(
                    f"example {i} of the data source has structure {treedef}, but example 0 "
                    f"has {self._treedef}; every example must have the same structure."
                )
            for leaf, spec in zip(leaves, want, strict=True):
                if leaf.shape != spec.shape or leaf.dtype != spec.dtype:
                    raise ValueError(
                        f"example {i} of the data source has a leaf of shape {leaf.shape} and "
                        f"dtype {leaf.dtype}, but example 0 has {spec.shape} {spec.dtype}; "
                        "every example must have the same shapes and dtypes (pad or bucket "
                        "variable-length examples)."
                    )
            _check_rows(jax.tree.map(lambda x: x[None], example), i, vocab)


def is_source(data) -> bool:
    return isinstance(data, HostSource)
