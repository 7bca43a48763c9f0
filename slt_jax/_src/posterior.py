r"""The localized, tempered posterior around a trained parameter.

.. math::

    p(w) \propto \exp\bigl(-n\beta\,L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2\bigr)

``nβ`` is the inverse temperature times the number of examples (default ``n / log n``, the
WBIC temperature), ``γ`` the localization strength and ``w*`` the centre (a checkpoint).
With a minibatch loss ``L_B`` in place of ``L_n`` the gradient below is the stochastic
gradient used by SGLD (Welling & Teh 2011; Lau et al. 2023, arXiv:2308.12108).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]
#: ``(position, batch) -> (loss, grad log p)``: one forward and one backward pass.
LogDensityGrad = Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]]


def localized_logdensity_grad(
    loss_fn: LossFn, center: PyTree, *, nbeta: jax.Array, localization: jax.Array
) -> LogDensityGrad:
    r"""The minibatch loss and the gradient of the localized log density.

    Returns ``fn(position, batch) -> (L_B(position), g)`` with

    .. math:: g = -\bigl(n\beta\,\nabla L_B(w) + \gamma\,(w - w^*)\bigr).

    The loss comes from the same forward pass as the gradient (``jax.value_and_grad``).
    ``position`` may be held in a wider float type than ``center`` (see
    :func:`sampling_dtype`); it is cast to each leaf's dtype in ``center`` before
    ``loss_fn`` sees it, and the gradient comes back in the wider type.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over the batch.
      center: ``w*``, a pytree with the structure of ``params``.
      nbeta: ``nβ``, a scalar (may be a traced array).
      localization: ``γ``, a scalar (may be a traced array).
    """

    def loss_in_model_dtype(position, batch):
        cast = jax.tree.map(lambda w, c: w.astype(c.dtype), position, center)
        return loss_fn(cast, batch)

    value_and_grad = jax.value_and_grad(loss_in_model_dtype)

    def fn(position: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
        loss, grad = value_and_grad(position, batch)
        logdensity_grad = jax.tree.map(
            lambda g, w, c: -(nbeta * g + localization * (w - c)).astype(w.dtype),
            grad,
            position,
            center,
        )
        return loss, logdensity_grad

    return fn


def localized_logdensity(
    loss_fn: LossFn, center: PyTree, *, nbeta: jax.Array, localization: jax.Array
) -> Callable[[PyTree, PyTree], jax.Array]:
    """``fn(position, batch) -> log p(position)`` (up to a constant) on ``batch``:
    ``-nβ·L_B(w) - γ/2·‖w - w*‖²``, the loss seen in the model's dtype as above."""

    def fn(position: PyTree, batch: PyTree) -> jax.Array:
        cast = jax.tree.map(lambda w, c: w.astype(c.dtype), position, center)
        loss = loss_fn(cast, batch)
        loss = loss.astype(jnp.promote_types(loss.dtype, jnp.float32))
        return -nbeta * loss - localization * half_square_distance(position, center)

    return fn


def loss_from_logdensity(logdensity, position, center, *, nbeta, localization):
    """Invert :func:`localized_logdensity`: the loss at ``position``."""
    return -(logdensity + localization * half_square_distance(position, center)) / nbeta


def half_square_distance(position: PyTree, center: PyTree) -> jax.Array:
    """``½‖w - w*‖²`` over every leaf."""
    return 0.5 * tree_sum(jax.tree.map(lambda w, c: jnp.sum((w - c) ** 2), position, center))


def tree_sum(tree: PyTree) -> jax.Array:
    """The sum of the (scalar) leaves of ``tree``."""
    leaves = jax.tree.leaves(tree)
    return jnp.sum(jnp.stack(leaves)) if leaves else jnp.asarray(0.0)


#: Terms per node of :func:`accurate_sum`'s summation tree.
SUM_BLOCK = 16


def accurate_sum(x) -> jax.Array:
    r"""The sum of all elements of ``x``, in its float type, with a rounding error that
    grows with ``log n`` rather than ``n``.

    The elements are summed in blocks of :data:`SUM_BLOCK`, the block sums again in
    blocks, and so on (a tree of ``K = ⌈log_16 n⌉`` levels), so

    .. math:: |\hat S - S| \le K\,(16 - 1)\,u \sum_i |x_i|

    (``u`` the unit roundoff, ``2^{-24}`` in float32): ``≤ 120 u Σ|x_i|`` up to
    ``n = 16^8 ≈ 4·10^9`` elements, whatever order a backend sums a flat array in.

    Args:
      x: an array (any shape; an empty one sums to 0).
    Returns:
      A scalar of ``x``'s dtype.

    Example:
      >>> float(accurate_sum(jnp.ones(1000, jnp.float32)))
      1000.0
    """
    x = jnp.ravel(jnp.asarray(x))
    if x.size == 0:
        return jnp.zeros((), x.dtype)
    while x.size > 1:
        pad = -x.size % SUM_BLOCK
        x = jnp.pad(x, (0, pad)) if pad else x
        x = jnp.sum(x.reshape(-1, SUM_BLOCK), axis=1)
    return x.reshape(())


def tree_accurate_sum(tree: PyTree) -> jax.Array:
    """The sum of all elements of all leaves: :func:`accurate_sum` per leaf, the leaf sums
    combined in float64 when JAX's x64 mode is on, else by :func:`accurate_sum` again."""
    sums = [accurate_sum(x) for x in jax.tree.leaves(tree)]
    if not sums:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.result_type(*sums)
    if jax.config.jax_enable_x64:
        return jnp.sum(jnp.stack([s.astype(jnp.float64) for s in sums])).astype(dtype)
    return accurate_sum(jnp.stack([s.astype(dtype) for s in sums]))


def localized_logdensity_change(
    loss, proposal_loss, position, proposal, center, *, nbeta, localization
) -> jax.Array:
    r"""``log p(w') − log p(w)`` of the localized tempered posterior, without cancellation.

    .. math::

        -n\beta\,(L(w') - L(w)) - \gamma \sum_i d_i\,(d_i/2 + (w - w^*)_i),
        \qquad d = w' - w,

    which equals ``−nβ(L' − L) − γ/2(‖w' − w*‖² − ‖w − w*‖²)`` exactly, but sums small
    terms (:func:`tree_accurate_sum`) instead of subtracting two sums of ``P`` large ones.
    The rounding left is that of the loss values: ``nβ`` times their error.

    Args:
      loss, proposal_loss: ``L(w)`` and ``L(w')`` (on the same minibatch).
      position, proposal, center: ``w``, ``w'`` and ``w*`` (pytrees alike).
      nbeta, localization: ``nβ`` and ``γ``.
    Returns:
      A float32 (or wider) scalar.

    Example:
      >>> w = jnp.zeros(2)
      >>> float(localized_logdensity_change(1.0, 0.5, w, w + 1, w, nbeta=2.0, localization=1.0))
      0.0
    """
    loss, proposal_loss = jnp.asarray(loss), jnp.asarray(proposal_loss)
    wide = jnp.promote_types(jnp.result_type(loss, proposal_loss), jnp.float32)
    loss_change = proposal_loss.astype(wide) - loss.astype(wide)

    def term(new, old, c):
        d = new - old
        return d * (d / 2 + (old - c.astype(old.dtype)))

    return -nbeta * loss_change - localization * tree_accurate_sum(
        jax.tree.map(term, proposal, position, center)
    )


def tree_norm(tree: PyTree) -> jax.Array:
    """The Euclidean norm of all elements of all leaves."""
    return jnp.sqrt(tree_sum(jax.tree.map(lambda x: jnp.sum(jnp.square(x)), tree)))


def sampling_dtype(dtype) -> jnp.dtype:
    """The float type a chain is held in: the parameter's own, but at least float32.

    SGLD's drift ``ε/2·∇log p`` is often far below bfloat16's or float16's resolution
    (about 4e-3 relative for bfloat16), so chains for low-precision parameters are held in
    float32 and cast back to the parameter's dtype for every evaluation of the loss.
    """
    return jnp.promote_types(dtype, jnp.float32)


def tree_all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
