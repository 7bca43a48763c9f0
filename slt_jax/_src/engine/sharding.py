"""How a mesh holds the items and each chain's parameters.

A mesh's axis named :data:`MODEL_AXIS` (``"model"``) shards every chain's parameters; all
its other axes hold items (one chain each, as without a model axis). With a model axis of
size ``m``, a chain's centre, position and kernel state are split over ``m`` devices and
XLA's SPMD partitioner inserts the communication (all-gathers of weights, reduce-scatters
of gradients) inside the compiled step; the items axes stay independent (``shard_map``,
no communication).

How each parameter leaf is split (its :class:`~jax.sharding.PartitionSpec` over the model
axis, one entry per dimension of the leaf):

* **By default, FSDP**: the largest dimension that the model axis divides (the first of
  equal ones); a leaf with no such dimension (a bias of odd length, a scalar) is
  replicated. Communication per step: every weight gathered once, every gradient
  reduced once.
* **By partition rules** (``partition_rules=`` of :class:`~slt_jax.LLCConfig`): pairs
  ``(regex, spec)``; a leaf whose path (``"layers/0/attn/kernel"``: the keys of the pytree
  joined by ``/``) matches a rule's regex (``re.search``; the first matching rule wins)
  gets that rule's spec, e.g. ``("attn/(q|k|v)/kernel", (None, "model"))`` for
  column-parallel and ``("attn/out/kernel", ("model", None))`` for row-parallel
  projections of a Megatron-style tensor-parallel layer. A spec has at most one entry per
  dimension (missing trailing entries: not split). Leaves that match no rule fall back to
  FSDP. A rule that matches no leaf, a spec longer than its leaf's rank, one naming
  another axis, or one whose axis does not divide its dimension is an error, raised
  before anything is compiled.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

from slt_jax._src import validation
from slt_jax._src.config import normalize_rules

PyTree = Any

#: The mesh axis that shards each chain's parameters.
MODEL_AXIS = "model"


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis of the automatic type (XLA's SPMD partitioner places the
    parameters' intermediates; an ``Explicit`` mesh from ``jax.make_mesh`` would make
    shardings part of the types)."""
    types = getattr(mesh, "axis_types", None)
    if types is not None and all(t == AxisType.Auto for t in types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def item_axes(mesh: Mesh) -> tuple[str, ...]:
    """The axes that hold items: every axis but the model axis."""
    return tuple(a for a in mesh.axis_names if a != MODEL_AXIS)


def item_spec(mesh: Mesh) -> P:
    """The spec of an array with one row per item: rows split over the items axes."""
    return P(item_axes(mesh) or None)


def num_item_slots(mesh: Mesh) -> int:
    """The number of item shards (the product of the items axes' sizes)."""
    return int(np.prod([mesh.shape[a] for a in item_axes(mesh)], dtype=int))


def model_size(mesh: Mesh) -> int:
    """The size of the model axis (1 without one)."""
    return int(mesh.shape.get(MODEL_AXIS, 1))


def _axes_of(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    """The default split of a leaf: its largest dimension that ``size`` divides."""
    if size == 1:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % size == 0 and d >= size]
    if not candidates:
        return P()
    _, dim = max(candidates, key=lambda c: (c[0], -c[1]))
    return P(*([None] * dim), MODEL_AXIS)


def parameter_specs(params: PyTree, mesh: Mesh, rules=None) -> PyTree:
    """The :class:`~jax.sharding.PartitionSpec` of each leaf of one chain's ``params`` over
    the model axis (a pytree like ``params``; every spec ``P()`` without a model axis).

    Raises:
      ValueError: a rule that matches no leaf, names an axis other than the model axis,
        is longer than its leaf's rank, or whose axis does not divide its dimension.
    """
    size = model_size(mesh)
    rules = normalize_rules(rules) or ()
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    used = [False] * len(rules)
    specs = []
    for path, leaf in flat:
        name, shape = validation.path_string(path), tuple(np.shape(leaf))
        rule = next((i for i, (pattern, _) in enumerate(rules) if re.search(pattern, name)), None)
        if rule is None:
            specs.append(fsdp_spec(shape, size) if MODEL_AXIS in mesh.axis_names else P())
            continue
        used[rule] = True
        pattern, spec = rules[rule]
        if len(spec) > len(shape):
            raise ValueError(
                f"partition rule {pattern!r} gives {len(spec)} entries for leaf {name} of "
                f"shape {shape} (rank {len(shape)})."
            )
        for dim, entry in enumerate(spec):
            axes = _axes_of(entry)
            other = [a for a in axes if a != MODEL_AXIS]
            if other:
                raise ValueError(
                    f"partition rule {pattern!r} names mesh axis {other[0]!r} for leaf {name}; "
                    f"parameters are split over the {MODEL_AXIS!r} axis only (the others "
                    "hold chains)."
                )
            if axes and MODEL_AXIS not in mesh.axis_names:
                raise ValueError(
                    f"partition rule {pattern!r} splits leaf {name} over {MODEL_AXIS!r}, but "
                    f"the mesh has no such axis (axes {mesh.axis_names}); pass a mesh with a "
                    f"{MODEL_AXIS!r} axis."
                )
            if axes and shape[dim] % size:
                raise ValueError(
                    f"partition rule {pattern!r}: dimension {dim} of leaf {name} (shape "
                    f"{shape}) has size {shape[dim]}, which the {MODEL_AXIS!r} axis of size "
                    f"{size} does not divide."
                )
        specs.append(P(*spec))
    unused = [rules[i][0] for i, hit in enumerate(used) if not hit]
    if unused:
        names = ", ".join(validation.path_string(p) for p, _ in flat[:6])
        raise ValueError(
            f"partition rule {unused[0]!r} matches no parameter (leaf paths look like: "
            f"{names}{', ...' if len(flat) > 6 else ''})."
        )
    return jax.tree_util.tree_unflatten(treedef, specs)
