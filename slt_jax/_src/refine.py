r"""Weight refinements: which coordinates of ``w`` move in a weight-refined LLC.

A *weight-refined* LLC (Wang et al. 2024, "Differentiation and specialization of attention
heads via the refined local learning coefficient", arXiv:2410.02984) samples only a subset
``V`` of the coordinates; the others stay at ``w*``:

.. math::

    p_V(u) \propto \exp\bigl(-n\beta\,L_n(u, w^*_{\bar V})
        - \tfrac{\gamma}{2}\lVert u - w^*_V\rVert^2\bigr),\qquad
    \hat\lambda_V = n\beta\,\bigl(E_{p_V}[L_n] - L_n(w^*)\bigr).

A refinement is given by a *selector*, turned into a boolean *mask* pytree shaped like the
parameters by :func:`mask`:

* a glob pattern (or a list of them) on the leaf's path, written ``"blocks/0/attn/*"``:
  the path's keys joined by ``/`` (dict keys, attribute names, sequence indices);
* a predicate ``(path, leaf) -> bool | array``: ``True``/``False`` selects the whole leaf,
  a boolean array shaped like the leaf selects part of it;
* a mask pytree with the structure of the parameters: each leaf ``True``/``False`` or a
  boolean array shaped like the parameter leaf (e.g. one head inside a fused QKV weight);
* with ``layout=`` (:func:`mask`, :func:`masks`), component names of a language model
  (``"l0h1"``, ``"l0g0"``, ``"l1 mlp"``, ``"embed"``, lists of them): see
  :class:`slt_jax.refine.Layout` and :func:`slt_jax.refine.components`.

:func:`head_masks` builds one mask per attention head of fused weights.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.validation import path_string

PyTree = Any
Selector = str | Sequence[str] | Callable[[str, Any], Any] | PyTree


def leaf_paths(params: PyTree) -> list[str]:
    """The ``/``-joined path of every leaf of ``params``, in leaf order."""
    return [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _leaf_mask(value, leaf, where: str) -> np.ndarray:
    shape = np.shape(leaf)
    value = np.asarray(value)
    if value.dtype != np.bool_:
        raise TypeError(
            f"the refinement mask at {where or '<root>'} has dtype {value.dtype}; masks are "
            "boolean (True: the coordinate moves)."
        )
    try:
        return np.broadcast_to(value, shape).copy()
    except ValueError:
        raise ValueError(
            f"the refinement mask at {where or '<root>'} has shape {value.shape}, which does "
            f"not broadcast to the parameter's shape {shape}."
        ) from None


def mask(
    params: PyTree, selector: Selector, *, name: str = "refinement", layout: Any = None
) -> PyTree:
    """The boolean mask pytree (shaped like ``params``) that ``selector`` picks.

    With a ``layout`` (a :class:`slt_jax.refine.Layout`), a string selector (or list of
    them) that parses as component names (``"l0h1"``, ``"l1 mlp"``, ``"embed"``) is
    resolved through the layout instead of as glob patterns (a list that mixes names and
    patterns is an error); any other selector is read as without it.

    Raises:
      ValueError, TypeError: if the selector matches no coordinate, or a mask pytree does
        not match the parameters' structure or shapes.
    """
    if layout is not None and _is_strings(selector):
        strings = [selector] if isinstance(selector, str) else list(selector)
        names = [layout.parses(s) for s in strings]
        if all(names):
            return layout.mask(params, selector, name=name)
        if any(names):
            raise ValueError(
                f"refinement {name!r} mixes component names and glob patterns: {strings}; "
                "give a list of one kind (or combine their masks yourself)."
            )
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_string(p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    if isinstance(selector, str):
        selector = [selector]
    if isinstance(selector, Sequence) and all(isinstance(s, str) for s in selector):
        patterns = list(selector)
        masks = [
            _leaf_mask(any(fnmatch.fnmatchcase(p, pat) for pat in patterns), leaf, p)
            for p, leaf in zip(paths, leaves, strict=True)
        ]
        what = f"the pattern(s) {patterns}"
    elif callable(selector):
        masks = [
            _leaf_mask(selector(p, leaf), leaf, p) for p, leaf in zip(paths, leaves, strict=True)
        ]
        what = "the predicate"
    else:
        try:
            values = treedef.flatten_up_to(selector)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"refinement {name!r}: the mask pytree does not have the structure of the "
                f"parameters ({error})."
            ) from None
        masks = [_leaf_mask(v, leaf, p) for v, leaf, p in zip(values, leaves, paths, strict=True)]
        what = "the mask"
    if not any(m.any() for m in masks):
        raise ValueError(
            f"refinement {name!r}: {what} selects no coordinate; parameter paths are "
            f"{paths[:8]}{' …' if len(paths) > 8 else ''}."
        )
    return jax.tree.unflatten(treedef, masks)


def _is_strings(selector) -> bool:
    if isinstance(selector, str):
        return True
    return isinstance(selector, Sequence) and all(isinstance(s, str) for s in selector)


def masks(
    params: PyTree, refinements: Mapping[str, Selector], *, layout: Any = None
) -> dict[str, PyTree]:
    """``{name: mask}`` for a mapping of named selectors (``layout``: as for :func:`mask`)."""
    if not isinstance(refinements, Mapping) or not refinements:
        raise TypeError("`refinements` must be a non-empty mapping {name: selector}.")
    return {str(k): mask(params, v, name=str(k), layout=layout) for k, v in refinements.items()}


def num_selected(mask_tree: PyTree) -> int:
    """How many coordinates a mask selects."""
    return int(sum(np.count_nonzero(m) for m in jax.tree.leaves(mask_tree)))


def head_masks(
    params: PyTree,
    weights: Mapping[str, int],
    num_heads: int,
    *,
    prefix: str = "head",
) -> dict[str, PyTree]:
    """One refinement per attention head: ``{f"{prefix}{h}": mask}`` for ``h < num_heads``.

    Args:
      weights: ``{pattern: axis}``; every leaf whose path matches ``pattern`` is split into
        ``num_heads`` equal contiguous slices along ``axis`` (the head axis of a
        ``(d, H, d_head)`` weight, or a fused ``(d, H·d_head)`` axis whose heads are
        contiguous), and head ``h`` selects slice ``h`` of every such leaf. Every pattern
        must match some leaf. A GPT-2-style ``(d, 3·H·d_head)`` q/k/v weight is not of this
        form (head ``h`` is three separate slices): reshape it to ``(d, 3, H, d_head)``
        and use axis ``-2``, or build the masks yourself.
      num_heads: ``H``.

    Example: ``head_masks(params, {"layer0/attn/*": -2}, 4)`` for weights of shape
    ``(d_model, 4, d_head)``.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen, matched = [], set()
    for p, leaf in flat:
        path = path_string(p)
        hits = {pat: ax for pat, ax in weights.items() if fnmatch.fnmatchcase(path, pat)}
        matched.update(hits)
        axes = list(hits.values())
        if len(set(axes)) > 1:
            raise ValueError(f"leaf {path} matches patterns with different head axes {axes}.")
        axis = None
        if axes:
            ndim = np.ndim(leaf)
            if not (isinstance(axes[0], int | np.integer) and -ndim <= axes[0] < ndim):
                raise ValueError(
                    f"head axis {axes[0]!r} is not an axis of leaf {path} of shape "
                    f"{np.shape(leaf)}."
                )
            axis = int(axes[0]) % ndim
            if np.shape(leaf)[axis] % num_heads:
                raise ValueError(
                    f"leaf {path} of shape {np.shape(leaf)} cannot be split into {num_heads} "
                    f"heads along axis {axes[0]}."
                )
        chosen.append(axis)
    unmatched = [pat for pat in weights if pat not in matched]
    if unmatched:  # a typo would silently drop that weight from every head
        raise ValueError(
            f"no parameter path matches {unmatched}; paths look like "
            f"{[path_string(p) for p, _ in flat[:4]]}."
        )
    result = {}
    for h in range(num_heads):
        leaves = []
        for (_, leaf), axis in zip(flat, chosen, strict=True):
            m = np.zeros(np.shape(leaf), bool)
            if axis is not None:
                width = np.shape(leaf)[axis] // num_heads
                index = [slice(None)] * np.ndim(leaf)
                index[axis] = slice(h * width, (h + 1) * width)
                m[tuple(index)] = True
            leaves.append(m)
        result[f"{prefix}{h}"] = jax.tree.unflatten(treedef, leaves)
    return result


# ---- inside the compiled loop ------------------------------------------------------------


def restrict(mask_tree: PyTree | None, position: PyTree, center: PyTree) -> PyTree:
    """``position`` on the selected coordinates, ``center`` elsewhere (identity if no mask)."""
    if mask_tree is None:
        return position
    return jax.tree.map(
        lambda m, w, c: jnp.where(m, w, c.astype(w.dtype)), mask_tree, position, center
    )


def zero_outside(mask_tree: PyTree | None, tree: PyTree) -> PyTree:
    """``tree`` with the unselected coordinates set to 0 (identity if no mask)."""
    if mask_tree is None or tree is None:
        return tree
    return jax.tree.map(lambda m, x: jnp.where(m, x, jnp.zeros((), x.dtype)), mask_tree, tree)


class MaskRestriction:
    """The restriction plug-in of a weight refinement: each chain's mask (a boolean pytree
    like the parameters) is its argument, so one program serves every refinement.
    Implements the engine's :class:`~slt_jax._src.engine.interfaces.Restriction`."""

    def bind(self, mask_tree: PyTree) -> _BoundMask:
        return _BoundMask(mask_tree)

    def __eq__(self, other) -> bool:
        return isinstance(other, MaskRestriction)

    def __hash__(self) -> int:
        return hash(MaskRestriction)


class _BoundMask:
    projects = True  # the position is a full copy: moves are put back onto the mask
    noise = None  # the kernel's own draw over the full position

    def __init__(self, mask_tree: PyTree):
        self.mask = mask_tree

    def origin(self, center):
        return center

    def params(self, position, center):
        return restrict(self.mask, position, center)

    def loss(self, loss_fn, center):
        """``loss_fn`` of the selected coordinates (the others read from ``center``): its
        gradient vanishes outside the mask."""
        return lambda position, batch: loss_fn(restrict(self.mask, position, center), batch)

    def restrict(self, position, center):
        return restrict(self.mask, position, center)

    def select(self, tree):
        return zero_outside(self.mask, tree)
