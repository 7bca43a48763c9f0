"""Run many chains in one compiled program.

One chain is a ``lax.scan`` over steps; chains are ``vmap``-ped over their keys. The data
set stays on the device and minibatches are drawn inside the loop, so there is no host
round-trip per step. Static settings (the loss function, batch size, step counts) select
the compiled program; the numbers that a sweep may vary (step size, localization, nβ, the
centre ``w*``) are array arguments, so changing them never recompiles.

Keys: chain ``i`` is driven by ``keys[i]`` alone (split once into a minibatch key and a
noise key; the step ``t`` noise key is ``fold_in(noise_key, t)``), so chain ``i`` under
``vmap`` equals a single run with ``keys[i]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import _data, observe, refine
from slt_jax.kernels.langevin import langevin_acceptance
from slt_jax.posterior import (
    LossFn,
    half_square_distance,
    localized_logdensity_grad,
    sampling_dtype,
    tree_all_finite,
    tree_norm,
)
from slt_jax.samplers import SGLD, Sampler, resolve_sampler

PyTree = Any

ESTIMATORS = ("paired", "plain")


@dataclasses.dataclass(frozen=True)
class ChainConfig:
    """The static part of a run: changing any field compiles a new program."""

    batch_size: int
    num_burnin: int
    num_draws: int
    estimator: str = "paired"
    sampler: Sampler = SGLD()
    #: ``schedule(t)`` multiplies the step size at step ``t`` (an optax schedule); None: 1.
    schedule: Callable | None = None
    #: Record the chain diagnostics every this many draws (0: never).
    diagnostic_every: int = 0
    #: Evaluate the observables and the probe set every this many draws (0: never).
    observe_every: int = 0
    #: Keep the probe's ``P × P`` loss covariance (memory ``P²`` per chain).
    probe_kernel: bool = False
    #: Keep the probe's full ``(P, observations)`` loss trace, not only its moments.
    probe_trace: bool = False

    @property
    def num_diagnostics(self) -> int:
        every = self.diagnostic_every
        return -(-self.num_draws // every) if every else 0

    @property
    def num_observations(self) -> int:
        every = self.observe_every
        return -(-self.num_draws // every) if every else 0


class SamplerSettings(NamedTuple):
    """The numeric settings of a sampler, passed as arrays (varied without recompiling)."""

    step_size: jax.Array
    localization: jax.Array
    nbeta: jax.Array


class ChainTrace(NamedTuple):
    """What the compiled loop records, per chain (leading axis: chains)."""

    loss: jax.Array  # (draws,) minibatch loss L_B(w_t) at each draw
    reference_loss: jax.Array  # (draws,) L_B(w*) on the same minibatch (paired), else (0,)
    burnin_loss: jax.Array  # (burnin,) minibatch loss during burn-in
    diverged: jax.Array  # () bool: loss or parameters became non-finite
    # Every `diagnostic_every` draws, shape (num_diagnostics,):
    acceptance: jax.Array  # MALA acceptance probability of the move from w_t
    weight_distance: jax.Array  # ‖w_t − w*‖
    grad_norm: jax.Array  # ‖∇log p(w_t)‖
    noise_norm: jax.Array  # ‖injected noise‖ of the move from w_t
    # Every `observe_every` draws (see slt_jax.observe); empty without observed data:
    observations: jax.Array = None  # (K, num_observations) observable losses φ_k(w_t)
    observed_at_center: jax.Array = None  # (K,) φ_k(w*)
    probe_at_center: jax.Array = None  # (P,) per-example probe losses at w*
    moments: observe.Moments | None = None  # streaming moments of (ℓ, φ)
    probe_trace: jax.Array = None  # (P, num_observations) if config.probe_trace


DIAGNOSTICS = ("acceptance", "weight_distance", "grad_norm", "noise_norm")


def chain_config(config) -> ChainConfig:
    """The static part of an :class:`~slt_jax.LLCConfig`."""
    return ChainConfig(
        config.batch_size,
        config.num_burnin,
        config.num_draws,
        config.estimator,
        resolve_sampler(config.sampler),
        config.schedule,
        config.diagnostic_every,
    )


def sampler_settings(config) -> SamplerSettings:
    """The array part of an :class:`~slt_jax.LLCConfig`."""
    step_size = 1.0 if config.schedule is not None else config.step_size
    return SamplerSettings(
        *(jnp.float32(v) for v in (step_size, config.localization, config.nbeta))
    )


def _measure(loss_fn, config, center, settings, kernel_info, state, new_state, batch, eps, mask):
    """The chain diagnostics of one move (one extra gradient for a Langevin sampler).

    Under a weight refinement ``mask`` they are those of the selected coordinates."""
    position = refine.restrict(mask, state.position, center)
    proposal = refine.restrict(mask, new_state.position, center)
    kernel_info = kernel_info._replace(
        logdensity_grad=refine.zero_outside(mask, kernel_info.logdensity_grad),
        noise=refine.zero_outside(mask, kernel_info.noise),
    )
    nan = jnp.float32(jnp.nan)
    if config.sampler.langevin:
        logdensity_grad = localized_logdensity_grad(
            loss_fn, center, nbeta=settings.nbeta, localization=settings.localization
        )
        proposal_loss, proposal_grad = logdensity_grad(proposal, batch)

        def logdensity(loss, w):
            return -settings.nbeta * loss - settings.localization * half_square_distance(w, center)

        acceptance = langevin_acceptance(
            position=position,
            proposal=proposal,
            logdensity=logdensity(kernel_info.loss, position),
            proposal_logdensity=logdensity(proposal_loss, proposal),
            grad=kernel_info.logdensity_grad,
            proposal_grad=proposal_grad,
            step_size=eps,
            preconditioner=kernel_info.preconditioner,
        )
    else:
        acceptance = kernel_info.acceptance
    noise = nan if kernel_info.noise is None else tree_norm(kernel_info.noise)
    values = (
        acceptance,
        tree_norm(jax.tree.map(lambda w, c: w - c, position, center)),
        tree_norm(kernel_info.logdensity_grad),
        noise,
    )
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


def run_chain(
    loss_fn: LossFn,
    config: ChainConfig,
    key: jax.Array,
    center: PyTree,
    data: PyTree,
    settings: SamplerSettings,
    mask: PyTree | None = None,
    observed: observe.Observed | None = None,
) -> ChainTrace:
    """One chain started at ``center``: burn-in, then ``num_draws`` recorded steps.

    ``mask`` (a boolean pytree like ``center``, see :mod:`slt_jax.refine`) restricts the
    chain to the selected coordinates: the loss reads the others from ``center``, and a
    stochastic-gradient sampler's moves are projected back onto the selected coordinates
    after every step, so noise and localization act on those alone. A Metropolis sampler
    (whose projected moves would break detailed balance) samples the unselected
    coordinates as free Gaussian dummies, which never reach the loss. ``observed`` data
    sets are evaluated every ``config.observe_every`` draws (:mod:`slt_jax.observe`).
    """
    model_loss_fn = loss_fn
    loss_fn = refine.restricted_loss(loss_fn, mask, center)
    kernel = config.sampler.build(
        loss_fn, center, nbeta=settings.nbeta, localization=settings.localization
    )
    project = mask is not None and not config.sampler.full_batch
    batch_key, key = jax.random.split(key)
    paired = config.estimator == "paired"
    every, num_diag = config.diagnostic_every, config.num_diagnostics
    observed = observed if observed is not None else observe.Observed()
    observe_every, num_obs = config.observe_every, config.num_observations
    num_observables, num_probe = len(observed.observables), observe.num_probe(observed)

    def observe_at(position):
        params = jax.tree.map(lambda w, c: w.astype(c.dtype), position, center)
        return observe.evaluate(model_loss_fn, params, observed, config.batch_size)

    def batch_at(t):
        if config.sampler.full_batch:
            return data
        return _data.minibatch(batch_key, t, data, config.batch_size)

    def step(carry, t, record):
        state, diverged, diagnostics, observations = carry
        batch = batch_at(t)
        eps = settings.step_size
        if config.schedule is not None:
            eps = eps * jnp.asarray(config.schedule(t), jnp.float32)
        new_state, info = kernel.step(jax.random.fold_in(key, t), state, batch, eps)
        if project:
            new_state = new_state._replace(
                position=refine.restrict(mask, new_state.position, center)
            )
        finite = jnp.isfinite(info.loss) & tree_all_finite(new_state.position)
        out = _wide(info.loss)  # a bf16/f16 loss is recorded in float32 (see _data.wide)
        if record:
            out = (out, _wide(loss_fn(center, batch))) if paired else out
            draw = t - config.num_burnin
            if num_diag:

                def measure(d):
                    values = _measure(
                        loss_fn,
                        config,
                        center,
                        settings,
                        info,
                        state,
                        new_state,
                        batch,
                        eps,
                        mask,
                    )
                    return d.at[:, draw // every].set(values)

                # The predicate depends on the step only (not on the chain), so under vmap
                # this stays a branch: the extra gradient is paid on diagnostic steps only.
                diagnostics = jax.lax.cond(draw % every == 0, measure, lambda d: d, diagnostics)
            if num_obs:

                def take_observation(o):
                    trace, moments, probe_trace = o
                    phi, ell = observe_at(refine.restrict(mask, state.position, center))
                    column = draw // observe_every
                    trace = trace.at[:, column].set(phi)
                    if moments is not None:
                        moments = observe.update_moments(moments, ell, phi)
                    if probe_trace is not None:
                        probe_trace = probe_trace.at[:, column].set(ell)
                    return trace, moments, probe_trace

                observations = jax.lax.cond(
                    draw % observe_every == 0, take_observation, lambda o: o, observations
                )
        return (new_state, diverged | ~finite, diagnostics, observations), out

    start = jax.tree.map(lambda c: c.astype(sampling_dtype(c.dtype)), center)
    diagnostics = jnp.full((len(DIAGNOSTICS), num_diag), jnp.nan, jnp.float32)
    probing = num_obs > 0 and num_probe > 0
    observations = (
        jnp.full((num_observables, num_obs), jnp.nan, observe.float_dtype()),
        observe.init_moments(num_probe, num_observables, config.probe_kernel) if probing else None,
        jnp.full((num_probe, num_obs), jnp.nan, observe.float_dtype())
        if probing and config.probe_trace
        else None,
    )
    carry = (kernel.init(start, batch_at(0)), jnp.asarray(False), diagnostics, observations)
    burnin_steps = jnp.arange(config.num_burnin)
    draw_steps = jnp.arange(config.num_burnin, config.num_burnin + config.num_draws)
    carry, burnin_loss = jax.lax.scan(lambda c, t: step(c, t, False), carry, burnin_steps)
    carry, records = jax.lax.scan(lambda c, t: step(c, t, True), carry, draw_steps)
    loss, reference = records if paired else (records, jnp.zeros((0,), records.dtype))
    observed_trace, moments, probe_trace = carry[3]
    if num_obs:
        observed_at_center, probe_at_center = observe_at(center)
    else:
        observed_at_center = probe_at_center = jnp.zeros((0,), observe.float_dtype())
    return ChainTrace(
        loss,
        reference,
        burnin_loss,
        carry[1],
        *carry[2],
        observations=observed_trace,
        observed_at_center=observed_at_center,
        probe_at_center=probe_at_center,
        moments=moments,
        probe_trace=probe_trace,
    )


def _wide(x: jax.Array) -> jax.Array:
    return _data.wide(jnp.asarray(x))


def _run_chains(loss_fn, config, keys, center, data, settings):
    init_loss = _data.dataset_mean(lambda b: loss_fn(center, b), data, config.batch_size)
    chains = jax.vmap(run_chain, in_axes=(None, None, 0, None, None, None))
    return chains(loss_fn, config, keys, center, data, settings), init_loss


#: ``run_chains(loss_fn, config, keys, center, data, settings) -> (ChainTrace, init_loss)``.
#: All chains in one jit-compiled program; ``init_loss`` is the full-data loss at ``center``,
#: evaluated ``batch_size`` examples at a time.
run_chains = jax.jit(_run_chains, static_argnames=("loss_fn", "config"))


def checkpoint_keys(key: jax.Array, steps, num_chains: int) -> jax.Array:
    """``(checkpoints, chains)`` keys: the checkpoint at training step ``s`` owns
    ``split(fold_in(key, s), chains)``, whatever else is in the set or how it is chunked."""
    steps = np.asarray(steps, np.int64)
    if steps.size and (steps.min() < 0 or steps.max() >= 2**32):
        raise ValueError(
            f"checkpoint steps must be in [0, 2**32) (each step seeds its chains' keys); got "
            f"{steps.min()} ... {steps.max()}."
        )
    steps = jnp.asarray(steps.astype(np.uint32))
    return jax.vmap(lambda s: jax.random.split(jax.random.fold_in(key, s), num_chains))(steps)
