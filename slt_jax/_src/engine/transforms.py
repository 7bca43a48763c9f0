"""How the engine evaluates the user's loss: in microbatches, rematerialized, in a compute
dtype. Each is a transform of ``loss_fn(params, batch)`` with the same value, applied once
when the chain program is built (static options of :class:`~slt_jax.LLCConfig`).

* ``microbatch_size = m``: the minibatch of ``b`` rows is evaluated ``m`` rows at a time
  (``b/m`` microbatches in a ``lax.scan``) and its gradient accumulated, so only one
  microbatch's activations are alive at once. ``L_B`` is the mean over the batch, hence the
  mean of the (equal-sized) microbatch means: the value and the gradient are the whole
  batch's, to float rounding.
* ``remat=True``: the loss under ``jax.checkpoint``: activations are recomputed in the
  backward pass instead of stored.
* ``compute_dtype`` (e.g. ``"bfloat16"``): the parameters are cast to it for every loss
  evaluation; the chain itself stays in at least float32 (its small steps would be lost
  in bfloat16), and losses are recorded in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from slt_jax._src import data as _data

PyTree = Any


def microbatched(loss_fn, microbatch_size: int):
    """``loss_fn`` evaluated ``microbatch_size`` rows at a time, gradient accumulated."""

    def split(batch):
        b = _data.num_examples(batch)
        return jax.tree.map(
            lambda x: x.reshape(b // microbatch_size, microbatch_size, *x.shape[1:]), batch
        )

    def value(params, batch):
        parts = split(batch)
        return jnp.mean(jax.lax.map(lambda part: _data.wide(loss_fn(params, part)), parts))

    @jax.custom_vjp
    def loss(params, batch):
        return value(params, batch)

    def forward(params, batch):
        parts = split(batch)
        count = jax.tree.leaves(parts)[0].shape[0]

        def add(carry, part):
            total, grads = carry
            v, g = jax.value_and_grad(lambda p: _data.wide(loss_fn(p, part)))(params)
            return (total + v, jax.tree.map(jnp.add, grads, g)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        first = jax.tree.map(lambda x: x[0], parts)
        dtype = jax.eval_shape(lambda: _data.wide(loss_fn(params, first))).dtype
        (total, grads), _ = jax.lax.scan(add, (jnp.zeros((), dtype), zeros), parts)
        grads = jax.tree.map(lambda g: g / count, grads)
        return total / count, (grads, batch)

    def backward(residuals, cotangent):
        grads, batch = residuals
        zero_batch = jax.tree.map(_zero_cotangent, batch)
        return jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grads), zero_batch

    loss.defvjp(forward, backward)
    return loss


def _zero_cotangent(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return jnp.zeros(x.shape, jax.dtypes.float0)


def in_compute_dtype(loss_fn, dtype):
    """``loss_fn`` on the parameters cast to ``dtype`` (floating leaves only)."""
    dtype = jnp.dtype(dtype)

    def loss(params, batch):
        cast = jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
        )
        return loss_fn(cast, batch)

    return loss


def evaluation(loss_fn, *, microbatch_size=None, remat=False, compute_dtype=None):
    """The loss as the chain evaluates it (identity with every option off)."""
    if compute_dtype is not None:
        loss_fn = in_compute_dtype(loss_fn, compute_dtype)
    if remat:
        loss_fn = jax.checkpoint(loss_fn)
    if microbatch_size is not None:
        loss_fn = microbatched(loss_fn, microbatch_size)
    return loss_fn
