r"""Compact restricted chains: a weight refinement whose chains hold only what moves.

A weight-refined chain (:mod:`slt_jax.refine`) moves the selected coordinates ``V`` and
holds the others at ``w*``. The mask restriction (:class:`slt_jax._src.refine.MaskRestriction`)
runs it as a full-size chain: a full copy of every parameter, a full boolean mask, full
sampler state, a gradient of every parameter, moves put back onto the mask every step.
A *compact* restriction runs the same chain on the selected entries alone:

* the position (and the sampler's state, gradient and noise) is a tuple of flat vectors,
  one per *affected* leaf, holding that leaf's selected entries ``u_j = w_j[I_j]``;
  leaves with no selected entry are not in the chain's state at all;
* the loss is a function of ``u``: ``L(u) = L_n(w*)`` with ``w*_j[I_j]`` replaced by
  ``u_j``, so gradients are taken with respect to ``u`` only (the backward pass computes
  the gradient of the affected leaves, not of the whole model);
* the centre ``w*`` is an argument shared by the chains of a program (not replicated
  per chain): under ``vmap`` the unaffected leaves stay unbatched;
* the noise of coordinate ``(j, i)`` is entry ``offset_j + i`` of the full-size chain's
  draw (:func:`slt_jax._src.samplers.noise.normal_entries`), at cost ``O(|V|)``.

With the same keys a compact chain therefore follows the masked chain's selected
coordinates to float rounding: the same λ̂, loss trace and diagnostics (the unselected
coordinates contribute nothing to ``‖w − w*‖``, ``‖∇log p‖``, ``‖noise‖`` or the MALA
ratio of the mask path either).

**Shape groups.** One compiled program serves every refinement that touches the same
leaves with the same number of entries in each (e.g. the heads of one layer, whose
indices ``I_j`` are per-chain arguments); refinements of another shape (an MLP, the heads
of another layer) form their own group and program. :func:`plan` makes the groups.

**When.** :func:`plan` chooses the compact path whenever it reproduces the mask path: a
stochastic-gradient Langevin sampler (``sgld``, ``rmsprop_sgld``: ``Sampler.compactable``)
and JAX's partitionable Threefry keys (the default). Otherwise (SGHMC, SGNHT, whose
unselected momenta or thermostat enter the mask path's dynamics; MALA, HMC, NUTS, which
sample the unselected coordinates as dummies; another PRNG) the mask path runs, in one
program for all refinements.

Example:
  >>> import numpy as np
  >>> params = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}
  >>> masks = {"row0": {"a": np.array([[1, 1, 1], [0, 0, 0]], bool), "b": np.zeros(4, bool)},
  ...          "row1": {"a": np.array([[0, 0, 0], [1, 1, 1]], bool), "b": np.zeros(4, bool)},
  ...          "b": {"a": np.zeros((2, 3), bool), "b": np.ones(4, bool)}}
  >>> [(type(p.restriction).__name__, p.names) for p in plan(params, masks, "sgld")]
  [('CompactRestriction', ('row0', 'row1')), ('CompactRestriction', ('b',))]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src import refine
from slt_jax._src.posterior import sampling_dtype
from slt_jax._src.samplers import noise as _noise
from slt_jax._src.samplers.specs import resolve_sampler

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CompactRestriction:
    """The restriction plug-in of a compact refinement (static: selects the program).
    Implements the engine's :class:`~slt_jax._src.engine.interfaces.Restriction`; its
    per-chain arguments are the flat indices ``I_j`` (int32), one array per affected leaf.

    Attributes:
      leaves: the affected leaves' positions in the parameters' leaf order.
      sizes: ``|I_j|``, the selected entries of each.
      offsets: each affected leaf's first entry in the flattened parameters (where its
        noise lies in the full-size draw).
      noise_dtype: the float type of the full-size draw (the flattened position's).
    """

    leaves: tuple[int, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    noise_dtype: str

    def bind(self, indices) -> _BoundCompact:
        return _BoundCompact(self, tuple(indices))


class _BoundCompact:
    projects = False  # the position holds the moving coordinates only

    def __init__(self, spec: CompactRestriction, indices: tuple):
        self.spec, self.indices = spec, indices

    def origin(self, center):
        """``u* = (w*_j[I_j])_j``, in the model's float types."""
        leaves = jax.tree.leaves(center)
        return tuple(
            leaves[j].reshape(-1)[i] for j, i in zip(self.spec.leaves, self.indices, strict=True)
        )

    def params(self, position, center):
        """``w*`` with each affected leaf's entries ``I_j`` set from ``u_j``."""
        leaves, treedef = jax.tree.flatten(center)
        for j, i, u in zip(self.spec.leaves, self.indices, position, strict=True):
            leaf = leaves[j]
            flat = (
                leaf.reshape(-1)
                .at[i]
                .set(u.astype(leaf.dtype), indices_are_sorted=True, unique_indices=True)
            )
            leaves[j] = flat.reshape(leaf.shape)
        return jax.tree.unflatten(treedef, leaves)

    def loss(self, loss_fn, center):
        return lambda position, batch: loss_fn(self.params(position, center), batch)

    def restrict(self, position, origin):
        return position

    def select(self, tree):
        return tree

    def noise(self, key, position):
        """Entries ``offset_j + I_j`` of the full-size chain's ``N(0, I)`` draw."""
        dtype = np.dtype(self.spec.noise_dtype)
        return tuple(
            _noise.normal_entries(key, offset + i, dtype).astype(u.dtype)
            for offset, i, u in zip(self.spec.offsets, self.indices, position, strict=True)
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    """One program's refinements: ``restriction`` (the plug-in), ``names`` (in the order
    given) and ``args`` (``{name: the chain arguments}``: indices, or the mask)."""

    restriction: Any
    names: tuple[str, ...]
    args: dict[str, Any]


def compactable(params: PyTree, sampler) -> bool:
    """Whether compact chains reproduce the mask path for these parameters and sampler
    (see the module docstring)."""
    sampler = resolve_sampler(sampler)
    leaves = jax.tree.leaves(params)
    dtype = _noise.flat_dtype([sampling_dtype(jnp.dtype(x.dtype)) for x in leaves])
    total = sum(int(np.size(x)) for x in leaves)
    wide = total < 2**31 or bool(jax.config.jax_enable_x64)
    return sampler.compactable and wide and _noise.reproducible(dtype)


def plan(params: PyTree, masks: Mapping[str, PyTree], sampler) -> list[Plan]:
    """The programs that run these refinements (``masks``: ``{name: mask}`` from
    :func:`slt_jax.refine.masks`): one compact plan per shape group (first appearance
    order), or one mask plan for all when :func:`compactable` is false."""
    if not compactable(params, sampler):
        return [Plan(refine.MaskRestriction(), tuple(masks), dict(masks))]
    leaves = jax.tree.leaves(params)
    sizes = [int(np.size(x)) for x in leaves]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    dtype = _noise.flat_dtype([sampling_dtype(jnp.dtype(x.dtype)) for x in leaves])
    index = np.int64 if sum(sizes) >= 2**31 else np.int32
    groups: dict[tuple, list[str]] = {}
    args = {}
    for name, tree in masks.items():
        selected = [np.flatnonzero(np.asarray(m)).astype(index) for m in jax.tree.leaves(tree)]
        affected = tuple(j for j, i in enumerate(selected) if i.size)
        if not affected:
            raise ValueError(f"refinement {name!r} selects no coordinate.")
        shape = (affected, tuple(selected[j].size for j in affected))
        groups.setdefault(shape, []).append(name)
        args[name] = tuple(selected[j] for j in affected)
    plans = []
    for (affected, counts), names in groups.items():
        starts = tuple(int(offsets[j]) for j in affected)
        spec = CompactRestriction(affected, counts, starts, dtype.name)
        plans.append(Plan(spec, tuple(names), {n: args[n] for n in names}))
    return plans
