"""Chains × checkpoints sharded over devices and hosts, with JAX's own mesh machinery.

The work of a run is a flat list of *items*, one per (checkpoint, chain) pair: each owns
its key and its centre. Items are padded to a multiple of the number of devices, sharded
over a one-dimensional mesh (``shard_map``; every device runs the vmapped item program on
its slice, with no communication), and the padding is dropped. After
``jax.distributed.initialize()`` the mesh spans every process's devices: each process
feeds and computes its share, and the results are gathered on every process. Because every
item owns its key, results do not depend on the number of devices or processes (up to
float rounding of the vectorised arithmetic).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from slt_jax import _data
from slt_jax.engine import ChainConfig, ChainTrace, SamplerSettings, run_chain
from slt_jax.observe import Observed
from slt_jax.posterior import LossFn

PyTree = Any


def resolve_mesh(mesh: Mesh | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh items are sharded over: ``mesh`` as given (all its axes are used, flattened),
    else a one-axis mesh of ``devices``, else of every device (every process's, after
    ``jax.distributed.initialize()``)."""
    if mesh is not None and devices is not None:
        raise ValueError("pass `mesh` or `devices`, not both.")
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        return mesh
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` is empty.")
    return Mesh(np.array(devices), ("items",))


def _item(loss_fn, config, key, center, data, settings, mask, observed):
    return run_chain(loss_fn, config, key, center, data, settings, mask, observed)


@functools.partial(jax.jit, static_argnames=("loss_fn", "batch_size"))
def _center_losses(loss_fn, centers, data, batch_size):
    full = lambda c: _data.dataset_mean(lambda b: loss_fn(c, b), data, batch_size)  # noqa: E731
    return jax.vmap(full)(centers)


def center_losses(loss_fn: LossFn, centers: PyTree, data: PyTree, batch_size: int) -> np.ndarray:
    """``(M,)`` full-data losses ``L_n(w*)`` of ``M`` distinct centres (leading axis), each
    evaluated once, ``batch_size`` examples at a time (every process computes them all)."""
    return np.asarray(_center_losses(loss_fn, centers, data, batch_size))


def center_loss(loss_fn: LossFn, params: PyTree, data: PyTree, batch_size: int) -> float:
    """``L_n(w*)`` of one centre, computed before any chain runs (a small program).

    Raises:
      FloatingPointError: if it is not finite (the LLC is undefined there), so that the
        chain program is neither compiled nor run.
    """
    one = jax.tree.map(lambda x: np.asarray(x)[None], params)
    init_loss = float(center_losses(loss_fn, one, data, batch_size)[0])
    if not np.isfinite(init_loss):
        raise FloatingPointError(
            f"the loss at w* over the data is {init_loss} (not finite): the LLC is undefined "
            "there; check loss_fn at these parameters (e.g. a log of 0)."
        )
    return init_loss


_PROGRAMS: dict = {}


def num_compiled() -> int:
    """How many item programs have been compiled (one per loss, configuration, mesh, shape)."""
    return sum(program._cache_size() for program in _PROGRAMS.values())


def _program(loss_fn: LossFn, config: ChainConfig, mesh: Mesh):
    """The jitted item program for one loss, static configuration and mesh (cached)."""
    if (loss_fn, config, mesh) not in _PROGRAMS:
        _PROGRAMS[loss_fn, config, mesh] = _build_program(loss_fn, config, mesh)
    return _PROGRAMS[loss_fn, config, mesh]


def _build_program(loss_fn: LossFn, config: ChainConfig, mesh: Mesh):
    spec = P(mesh.axis_names)

    def per_device(keys, centers, data, settings, masks, observed):
        items = jax.vmap(_item, in_axes=(None, None, 0, 0, None, 0, 0, None))
        return items(loss_fn, config, keys, centers, data, settings, masks, observed)

    # No collectives: every device's slice is independent, so the varying-axis type check
    # (which would reject the scan's constant initial carry) has nothing to protect.
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(spec, spec, P(), spec, spec, P()),
        out_specs=spec,
        check_vma=False,
    )
    return jax.jit(sharded)


def _global(host: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """A global array from a host array every process holds in full."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _host(tree: PyTree) -> PyTree:
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def place_items(keys, centers, data, settings, mesh: Mesh, masks=None, observed=None):
    """Pad the items to a multiple of the mesh size and place everything on the mesh.

    ``keys`` ``(W,)``, ``centers`` and ``masks`` (leaves with a leading ``W`` axis) and
    ``settings`` (scalars shared by every item, or ``(W,)`` arrays, one value per item) are
    host values, sharded over the mesh; ``data`` and ``observed`` are replicated.
    """
    num_items = len(keys)
    pad = -num_items % mesh.size
    take = np.concatenate([np.arange(num_items), np.full(pad, num_items - 1)]).astype(int)
    key_data = np.asarray(jax.random.key_data(keys))[take]
    spec = P(mesh.axis_names)
    placed_keys = jax.random.wrap_key_data(_global(key_data, mesh, spec))
    placed_centers = jax.tree.map(lambda x: _global(np.asarray(x)[take], mesh, spec), centers)
    placed_data = jax.tree.map(lambda x: _global(np.asarray(x), mesh, P()), data)
    placed_settings = jax.tree.map(
        lambda x: _global(np.broadcast_to(np.asarray(x), (num_items,))[take], mesh, spec),
        settings,
    )
    placed_masks = jax.tree.map(lambda x: _global(np.asarray(x)[take], mesh, spec), masks)
    placed_observed = jax.tree.map(lambda x: _global(np.asarray(x), mesh, P()), observed)
    return (
        placed_keys,
        placed_centers,
        placed_data,
        placed_settings,
        placed_masks,
        placed_observed,
    )


def run_items(
    loss_fn: LossFn,
    config: ChainConfig,
    keys: jax.Array,
    centers: PyTree,
    data: PyTree,
    settings: SamplerSettings,
    mesh: Mesh,
    masks: PyTree | None = None,
    observed: Observed | None = None,
) -> ChainTrace:
    """Run ``W`` items sharded over ``mesh``; host traces with a leading ``W`` axis.

    Item ``i`` is one chain with key ``keys[i]`` started at centre ``centers[i]`` with the
    sampler settings ``settings[i]`` (or the shared scalars), restricted to the coordinates
    ``masks[i]`` selects (all when ``masks`` is None), observing ``observed``. The full-data
    loss at each distinct centre is :func:`center_losses`' job (once per centre, not per
    item).
    """
    num_items = len(keys)
    placed = place_items(keys, centers, data, settings, mesh, masks, observed)
    traces = _host(_program(loss_fn, config, mesh)(*placed))
    return jax.tree.map(lambda x: x[:num_items], traces)


def lower_items(
    loss_fn, config, keys, centers, data, settings, mesh: Mesh, masks=None, observed=None
):
    """The lowered item program for these inputs (for XLA's memory analysis)."""
    placed = place_items(keys, centers, data, settings, mesh, masks, observed)
    return _program(loss_fn, config, mesh).lower(*placed)
