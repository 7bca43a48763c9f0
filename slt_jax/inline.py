"""An LLC estimate as a pure JAX function, to call inside a jitted training loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax import _data, _validation, estimators
from slt_jax.engine import _run_chains, chain_config, sampler_settings
from slt_jax.posterior import LossFn

PyTree = Any


class LLCEstimate(NamedTuple):
    """What :func:`llc_function` returns (JAX arrays, so it can live inside ``jit``)."""

    llc_mean: jax.Array  # () mean over non-diverged chains; NaN if all diverged
    llc_per_chain: jax.Array  # (chains,)
    init_loss: jax.Array  # () L_n(w*)
    num_diverged: jax.Array  # () int


def llc_function(
    loss_fn: LossFn,
    *,
    num_chains: int = 4,
    num_steps: int = 200,
    num_burnin: int | None = None,
    step_size: float = 1e-4,
    localization: float = 100.0,
    nbeta: float | None = None,
    batch_size: int = 256,
    estimator: str = "paired",
    sampler="sgld",
) -> Callable[[jax.Array, PyTree, PyTree], LLCEstimate]:
    """A jittable ``llc(key, params, data) -> LLCEstimate`` with the sampler settings fixed.

    The same chains as :func:`~slt_jax.estimate_llc` (``estimate_llc(..., seed=key)`` gives
    the same ``llc_per_chain``), but as a pure function of arrays: call it inside your own
    ``jax.jit`` training step or ``lax.scan`` (e.g. under ``lax.cond`` every N steps)
    without leaving the compiled program. Diagnostics that need the host (R-hat, ESS,
    warnings) are left to :func:`~slt_jax.estimate_llc`.

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
    options = dict(
        num_chains=num_chains,
        num_steps=num_steps,
        num_burnin=num_burnin,
        step_size=step_size,
        localization=localization,
        nbeta=nbeta,
        estimator=estimator,
        sampler=sampler,
        diagnostic_every=0,  # no host-side diagnostics here: do not pay for them
        seed=None,
    )
    # Check everything that does not depend on the data now, with a stand-in data size.
    _validation.resolve_config(**options, batch_size=1, num_examples=2)
    batch_size = _validation.check_count("batch_size", batch_size, minimum=1)

    def llc(key: jax.Array, params: PyTree, data: PyTree) -> LLCEstimate:
        if not (
            isinstance(key, jax.Array)
            and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.shape == ()
        ):
            raise TypeError(f"`key` must be one typed JAX key (jax.random.key(seed)), got {key!r}.")
        config = _validation.resolve_config(
            **options, batch_size=batch_size, num_examples=_data.num_examples(data)
        )
        # at trace time, on abstract values: a clear error instead of a raw one mid-trace
        _validation.check_loss_fn(loss_fn, params, _validation.batch_like(data, batch_size))
        keys = jax.random.split(key, config.num_chains)
        trace, init_loss = _run_chains(
            loss_fn, chain_config(config), keys, params, data, sampler_settings(config)
        )
        per_chain = estimators.llc_trace(trace, init_loss, config.nbeta, estimator).mean(axis=1)
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
