"""An LLC estimate as a pure JAX function, to call inside a jitted training loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax._src import data as _data
from slt_jax._src import validation
from slt_jax._src.config import EXACT, LLCConfig, run_options
from slt_jax._src.engine import programs
from slt_jax._src.estimators.llc import llc_trace

PyTree = Any


class LLCEstimate(NamedTuple):
    """What :func:`llc_function` returns (JAX arrays, so it can live inside ``jit``)."""

    llc_mean: jax.Array  # () mean over non-diverged chains; NaN if all diverged
    llc_per_chain: jax.Array  # (chains,)
    init_loss: jax.Array  # () L_n(w*)
    num_diverged: jax.Array  # () int


@run_options(exclude=("seed", "diagnostic_every"), num_chains=4, num_steps=200)
def llc_function(
    loss_fn,
    *,
    config: LLCConfig,
) -> Callable[[jax.Array, PyTree, PyTree], LLCEstimate]:
    """A jittable ``llc(key, params, data) -> LLCEstimate`` with the sampler settings fixed.

    The same chains as :func:`~slt_jax.estimate_llc` (``estimate_llc(..., seed=key)`` gives
    the same ``llc_per_chain``), but as a pure function of arrays: call it inside your own
    ``jax.jit`` training step or ``lax.scan`` (e.g. under ``lax.cond`` every N steps)
    without leaving the compiled program. Diagnostics that need the host (R-hat, ESS,
    warnings) are left to :func:`~slt_jax.estimate_llc`.

    ``L_n(w*)`` follows ``init_loss_batches`` as there: exact, or the mean over the same
    sample of minibatches drawn with ``key`` (decided when traced, from ``n``).

    The options are checked when the function is built; the data-dependent ones
    (``batch_size <= n``, ``nbeta=None`` meaning ``n / log n``) when it is traced.

    Example:
      >>> import jax, jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 256)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> llc = jax.jit(sj.llc_function(loss, num_steps=100, step_size=1e-3, localization=1.0,
      ...                               batch_size=64))
      >>> llc(jax.random.key(0), jnp.array([2.0]), (x, y)).llc_per_chain.shape
      (4,)
    """
    # no host-side diagnostics here: do not pay for them
    config = dataclasses.replace(config, diagnostic_every=0)
    if isinstance(config.step_size, str):
        raise TypeError("llc_function takes a numeric step size or a schedule, not 'auto'.")
    # Check everything that does not depend on the data now, with a stand-in data size.
    dataclasses.replace(config, batch_size=1, seed=0).resolve(2)
    validation.check_count("batch_size", config.batch_size, minimum=1)

    def llc(key: jax.Array, params: PyTree, data: PyTree) -> LLCEstimate:
        if not (
            isinstance(key, jax.Array)
            and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.shape == ()
        ):
            raise TypeError(f"`key` must be one typed JAX key (jax.random.key(seed)), got {key!r}.")
        resolved, _ = dataclasses.replace(config, seed=0).resolve(_data.num_examples(data))
        # at trace time, on abstract values: a clear error instead of a raw one mid-trace
        validation.check_loss_fn(loss_fn, params, validation.batch_like(data, resolved.batch_size))
        static, arrays = resolved.static(), resolved.arrays()
        keys = jax.random.split(key, resolved.num_chains)
        # The same chain program and L_n(w*) as estimate_llc, traced in the caller's jit.
        trace = programs.chains(loss_fn, static, keys, params, data, arrays)
        init_loss = _init_loss(loss_fn, params, data, key, resolved)
        per_chain = llc_trace(trace, init_loss, resolved.nbeta, resolved.estimator).mean(axis=1)
        diverged = trace.diverged | ~jnp.isfinite(per_chain)
        healthy = jnp.sum(~diverged)
        mean = jnp.where(diverged, 0.0, per_chain).sum() / jnp.maximum(healthy, 1)
        return LLCEstimate(
            llc_mean=jnp.where(healthy > 0, mean, jnp.nan),
            llc_per_chain=per_chain,
            init_loss=init_loss,
            num_diverged=jnp.sum(diverged),
        )

    return llc


def _init_loss(loss_fn, params, data, key, config: LLCConfig) -> jax.Array:
    """``L_n(w*)`` as :func:`~slt_jax.estimate_llc` computes it with ``seed=key``: exact,
    or the mean over the same sample of minibatches (traced)."""
    if config.init_loss_batches == EXACT:
        return programs.full_loss(loss_fn, params, data, config.batch_size)
    n, b, k = config.num_examples, config.batch_size, config.init_loss_batches
    indices = _data.init_loss_indices(key, n, b, k)
    return jnp.mean(programs.batch_losses(loss_fn, params, data, indices))
