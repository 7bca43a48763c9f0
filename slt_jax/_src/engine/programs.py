"""The compiled chain programs: items (one chain each) vmapped, sharded over a mesh, cached.

The work of a run is a flat list of *items*, one chain each, with its own key, centre,
array settings and (optionally) restriction arguments. Items are padded to a multiple of
the number of devices, sharded over the mesh (``shard_map``: every device runs the vmapped
item program on its slice, with no communication) and the padding is dropped. After
``jax.distributed.initialize()`` the mesh spans every process's devices: each process feeds
and computes its share, and the results are gathered on every process. Because every item
owns its key, results do not depend on the number of devices or processes (up to float
rounding of the vectorised arithmetic).

**The program cache.** One program per (loss function, static configuration, plug-ins,
mesh), each compiled once per input shape by ``jax.jit``. The cache holds at most
:data:`MAX_PROGRAMS` of them and evicts the least recently used: a new ``lambda`` per call
(a fresh loss function) does not keep every compiled program alive for the life of the
process. :func:`num_compiled` counts compilations, evicted ones included.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from slt_jax._src import data as _data
from slt_jax._src import sources
from slt_jax._src.config import Arrays, Static
from slt_jax._src.engine import sharding
from slt_jax._src.engine.chain import run_chain
from slt_jax._src.engine.interfaces import EVERYTHING, ChainTrace

PyTree = Any

#: The most compiled programs kept (least recently used evicted first).
MAX_PROGRAMS = 32


class Plugins(NamedTuple):
    """The features plugged into every chain of a program (static, hashable)."""

    restriction: Any = None  # a Restriction spec: bound to each item's arguments
    observer: Any = None  # an Observer spec: bound to the replicated observer data


NO_PLUGINS = Plugins()


def resolve_mesh(mesh: Mesh | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh items are sharded over: ``mesh`` as given (its axes other than ``"model"``
    hold items, flattened; a ``"model"`` axis shards each chain's parameters: see
    :mod:`slt_jax._src.engine.sharding`), else a one-axis mesh of ``devices``, else of
    every device (every process's, after ``jax.distributed.initialize()``)."""
    if mesh is not None and devices is not None:
        raise ValueError("pass `mesh` or `devices`, not both.")
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        return sharding.auto_axes(mesh)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` is empty.")
    return Mesh(np.array(devices), ("items",))


def bind(loss_fn, static: Static, plugins: Plugins, args, observed) -> tuple:
    """One chain's plug-ins bound to its arguments: ``(restriction, observer)``."""
    restriction = EVERYTHING if plugins.restriction is None else plugins.restriction.bind(args)
    observer = None
    if plugins.observer is not None:
        observer = plugins.observer.bind(loss_fn, static.batch_size, static.num_draws, observed)
    return restriction, observer


def item(loss_fn, static: Static, plugins: Plugins, key, center, data, arrays, args, observed):
    """One chain with its plug-ins bound: the function every program vmaps."""
    restriction, observer = bind(loss_fn, static, plugins, args, observed)
    return run_chain(loss_fn, static, key, center, data, arrays, restriction, observer)


def chains(loss_fn, static: Static, keys, center, data, arrays: Arrays) -> ChainTrace:
    """Many chains from one centre, vmapped (traceable: for use inside a user's ``jit``)."""
    one = functools.partial(item, loss_fn, static, NO_PLUGINS)
    return jax.vmap(lambda k: one(k, center, data, arrays, None, None))(keys)


def full_loss(loss_fn, center, data, batch_size: int) -> jax.Array:
    """``L_n(center)``, ``batch_size`` examples at a time (traceable)."""
    return _data.dataset_mean(lambda b: loss_fn(center, b), data, batch_size)


def center_losses(
    loss_fn,
    centers: PyTree,
    data: PyTree,
    batch_size: int,
    mesh: Mesh | None = None,
    rules=None,
    *,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """``L_n(w*)`` of ``M`` distinct centres (leading axis), each evaluated once, ``batch_size``
    examples at a time (every process computes them all): ``(M,)`` full-data losses, or,
    given ``indices`` ``(k, batch_size)``, the ``(M, k)`` losses of those ``k`` minibatches
    (the bounded sample: the same examples whether ``data`` is on the device or a host
    source, which is read for them only). With a model axis in ``mesh`` the centres are
    split over it as the chains' are (a model too large for one device is evaluated where
    it lies). Its compiled programs live in the same bounded cache as the chain programs."""
    sampled = indices is not None

    def build():
        if sampled:
            one = lambda c, data, idx: batch_losses(loss_fn, c, data, idx)  # noqa: E731
            return jax.jit(jax.vmap(one, in_axes=(0, None, None)))
        one = lambda c, data: full_loss(loss_fn, c, data, batch_size)  # noqa: E731
        return jax.jit(jax.vmap(one, in_axes=(0, None)))

    replicate = lambda x: x  # noqa: E731
    if mesh is not None and sharding.MODEL_AXIS in mesh.axis_names:
        centers = place_centers(centers, mesh, rules, None)
        replicate = lambda tree: jax.tree.map(lambda x: _global(np.asarray(x), mesh, P()), tree)  # noqa: E731
    program = _cached(("center losses", loss_fn, batch_size, sampled), build)
    if not sources.is_source(data):
        args = (replicate(data),) + ((replicate(np.asarray(indices, np.int32)),) if sampled else ())
        return np.asarray(_host(program(centers, *args)), np.float64)
    # A host source: chunks of whole minibatches, as many as half its device budget holds.
    rows = max(batch_size, data.device_bytes // 2 // max(1, data.example_bytes))
    if sampled:  # only the sampled examples are read, a chunk of batches at a time
        per_chunk = max(1, rows // batch_size)
        out = []
        for start in range(0, len(indices), per_chunk):
            part = np.asarray(indices[start : start + per_chunk])
            chunk = data.gather(part.ravel())
            local = np.arange(part.size, dtype=np.int32).reshape(part.shape)
            out.append(np.asarray(_host(program(centers, replicate(chunk), replicate(local)))))
        return np.concatenate(out, axis=1).astype(np.float64)
    n = len(data)
    rows = min(n, rows // batch_size * batch_size)
    total = 0.0
    for start in range(0, n, rows):
        chunk = data.gather(np.arange(start, min(n, start + rows)))
        means = np.asarray(_host(program(centers, replicate(chunk))), np.float64)
        total = total + means * (min(n, start + rows) - start)
    return total / n


def batch_losses(loss_fn, center, data, indices) -> jax.Array:
    """``(k,)`` losses ``loss_fn(center, data[indices[j]])`` of ``k`` minibatches (traceable;
    in at least float32, :func:`~slt_jax._src.data.wide`)."""
    one = lambda idx: _data.wide(loss_fn(center, _data.take(data, idx)))  # noqa: E731
    return jax.lax.map(one, indices)


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_EVICTED = [0]  # compilations of programs no longer cached


def num_compiled() -> int:
    """How many item programs have been compiled (one per loss, configuration, plug-ins,
    mesh and input shape), those evicted from the cache included (the centre-loss programs
    are not counted)."""
    live = [p for k, p in _PROGRAMS.items() if k[0] != "center losses"]
    return _EVICTED[0] + sum(program._cache_size() for program in live)


def program(loss_fn, static: Static, plugins: Plugins, mesh: Mesh, shared: bool = False):
    """The jitted item program for one loss, static configuration, plug-ins and mesh
    (``shared``: one centre for every item, passed once; see :class:`Items`)."""
    return _cached(
        (loss_fn, static, plugins, mesh, shared),
        lambda: _build(loss_fn, static, plugins, mesh, shared),
    )


def _cached(cache_key, build):
    """The program under ``cache_key``, built on first use; the least recently used is
    evicted past :data:`MAX_PROGRAMS` (dropping its loss function with it)."""
    if cache_key in _PROGRAMS:
        _PROGRAMS.move_to_end(cache_key)
        return _PROGRAMS[cache_key]
    _PROGRAMS[cache_key] = compiled = build()
    while len(_PROGRAMS) > MAX_PROGRAMS:
        key, evicted = _PROGRAMS.popitem(last=False)
        if key[0] != "center losses":
            _EVICTED[0] += evicted._cache_size()
    return compiled


#: On CPU, a chain-step of at least this many parameter × batch-row products runs faster
#: as a map over the chains than as a vmap (measured: benchmarks/bench_chain_layout.py).
MAP_THRESHOLD = 2**22


def default_layout(static: Static, centers: PyTree, num_items: int, shared: bool = False) -> str:
    """``"vmap"`` on accelerators; on CPU, ``"map"`` when a chain-step is large (XLA's CPU
    backend runs batched matmuls of medium size slower than one chain at a time)."""
    if static.chain_layout != "auto":
        return static.chain_layout
    if jax.default_backend() != "cpu":
        return "vmap"
    per_chain = sum(np.size(x) for x in jax.tree.leaves(centers)) // max(1, num_items)
    if shared:
        per_chain = sum(np.size(x) for x in jax.tree.leaves(centers))
    return "map" if per_chain * static.batch_size >= MAP_THRESHOLD else "vmap"


def map_in_batches(fn, xs, batch: int):
    """``lax.map`` of ``fn`` over the leading axis, ``batch`` items vmapped at each step (the
    count padded with the last item, the padding dropped). Unlike ``lax.map(batch_size=)``
    it allows outputs with a zero-length axis (no burn-in, no diagnostics)."""
    if batch <= 1:
        return jax.lax.map(fn, xs)
    count = jax.tree.leaves(xs)[0].shape[0]
    steps = -(-count // batch)
    take = np.minimum(np.arange(steps * batch), count - 1)
    grouped = jax.tree.map(lambda x: x[take].reshape(steps, batch, *x.shape[1:]), xs)
    out = jax.lax.map(jax.vmap(fn), grouped)
    return jax.tree.map(lambda y: y.reshape(steps * batch, *y.shape[2:])[:count], out)


def over_items(per_device, mesh: Mesh, per_item: tuple[bool, ...]):
    """``per_device`` (a function of one device's items) as a jitted program over ``mesh``:
    the arguments flagged in ``per_item`` split over the items axes, the others replicated.

    No collectives over the items axes: every slice is independent, so the varying-axis
    type check (which would reject a scan's constant initial carry) has nothing to protect.
    A model axis stays automatic: the partitioner splits each chain's parameters as they
    arrive (see :func:`place_centers`) and communicates within the step; with a model axis
    only, XLA partitions the whole program.
    """
    axes = sharding.item_axes(mesh)
    if not axes:
        return jax.jit(per_device)
    spec = sharding.item_spec(mesh)
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=tuple(spec if flag else P() for flag in per_item),
        out_specs=spec,
        axis_names=set(axes),
        check_vma=False,
    )
    return jax.jit(sharded)


def over_chains(one, per_item: tuple[bool, ...], static: Static):
    """``one`` (a function of one chain's arguments) over a device's chains, the arguments
    flagged in ``per_item`` holding one row per chain: a ``vmap``, or with
    ``chain_layout="map"`` a map over groups of ``chain_batch`` vmapped chains."""
    if static.chain_layout != "map":
        return jax.vmap(one, in_axes=tuple(0 if p else None for p in per_item))

    def per_device(*inputs):
        def chain(rows):
            rows = iter(rows)
            return one(*(next(rows) if p else x for x, p in zip(inputs, per_item, strict=True)))

        mapped = tuple(x for x, p in zip(inputs, per_item, strict=True) if p)
        return map_in_batches(chain, mapped, static.chain_batch)

    return per_device


def _build(loss_fn, static: Static, plugins: Plugins, mesh: Mesh, shared: bool = False):
    one = functools.partial(item, loss_fn, static, plugins)
    per_item = (True, not shared, False, True, True, False)
    return over_items(over_chains(one, per_item, static), mesh, per_item)


def _global(host: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """A global array from a host array every process holds in full."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _host(tree: PyTree) -> PyTree:
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


class Items(NamedTuple):
    """The inputs of ``W`` items (one chain each), as host values: ``keys`` ``(W,)``,
    ``centers`` and ``args`` (a restriction's arguments, or ``None``) with a leading ``W``
    axis, ``arrays`` scalars shared by every item or ``(W,)`` arrays.

    ``shared``: every item has the same centre, and ``centers`` is that one centre (no
    leading axis). It is passed to the program once, replicated over the items axes (split
    over a model axis as usual), and the chains' ``vmap`` leaves it unbatched: a leaf no
    chain moves is held once, not once per chain."""

    keys: jax.Array
    centers: PyTree
    arrays: Arrays
    args: PyTree = None
    shared: bool = False


def padded_rows(num_items: int, mesh: Mesh) -> np.ndarray:
    """Row indices that pad ``num_items`` items to a multiple of the items axes' size (the
    last item repeated; the padding's results are dropped)."""
    pad = -num_items % sharding.num_item_slots(mesh)
    return np.concatenate([np.arange(num_items), np.full(pad, num_items - 1)]).astype(int)


def place_centers(centers: PyTree, mesh: Mesh, rules, leading) -> PyTree:
    """Stacked centres (leading axis split as ``leading``: the items axes, or ``None``) on
    the mesh, each leaf also split over a model axis by ``rules`` or FSDP
    (:func:`~slt_jax._src.engine.sharding.parameter_specs`)."""
    one = jax.tree.map(lambda x: np.asarray(x)[0], centers)
    specs = sharding.parameter_specs(one, mesh, rules)
    return jax.tree.map(
        lambda x, spec: _global(np.asarray(x), mesh, P(leading, *spec)),
        centers,
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )


def place(items: Items, data, mesh: Mesh, observed=None, rules=None) -> tuple:
    """Pad the items to a multiple of the items axes' size and place everything on the
    mesh: the items sharded over the items axes (each centre's leaves also over a model
    axis, by ``rules`` or FSDP: :func:`~slt_jax._src.engine.sharding.parameter_specs`),
    ``data`` and ``observed`` replicated. Returns the program's arguments."""
    num_items = len(items.keys)
    take = padded_rows(num_items, mesh)
    per_item = lambda x: _global(np.asarray(x)[take], mesh, sharding.item_spec(mesh))  # noqa: E731
    replicated = lambda x: _global(np.asarray(x), mesh, P())  # noqa: E731
    key_data = np.asarray(jax.random.key_data(items.keys))
    arrays = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (num_items,)), items.arrays)
    if items.shared:
        one = jax.tree.map(lambda x: np.asarray(x)[None], items.centers)
        centers = jax.tree.map(lambda x: x[0], place_centers(one, mesh, rules, None))
    else:
        centers = jax.tree.map(lambda x: np.asarray(x)[take], items.centers)
        centers = place_centers(centers, mesh, rules, sharding.item_axes(mesh) or None)
    return (
        jax.random.wrap_key_data(per_item(key_data)),
        centers,
        jax.tree.map(replicated, data),
        jax.tree.map(per_item, arrays),
        jax.tree.map(per_item, items.args),
        jax.tree.map(replicated, observed),
    )


def run_items(
    loss_fn, static: Static, items: Items, data, mesh: Mesh, *, plugins=NO_PLUGINS, observed=None
) -> ChainTrace:
    """Run the items sharded over ``mesh``: host traces with a leading item axis."""
    layout = default_layout(static, items.centers, len(items.keys), items.shared)
    static = static._replace(chain_layout=layout)
    placed = place(items, data, mesh, observed, static.partition_rules)
    traces = _host(program(loss_fn, static, plugins, mesh, items.shared)(*placed))
    return jax.tree.map(lambda x: x[: len(items.keys)], traces)


def lower_items(
    loss_fn, static: Static, items: Items, data, mesh: Mesh, *, plugins=NO_PLUGINS, observed=None
):
    """The lowered item program for these inputs (for XLA's memory analysis)."""
    layout = default_layout(static, items.centers, len(items.keys), items.shared)
    static = static._replace(chain_layout=layout)
    placed = place(items, data, mesh, observed, static.partition_rules)
    return program(loss_fn, static, plugins, mesh, items.shared).lower(*placed)
