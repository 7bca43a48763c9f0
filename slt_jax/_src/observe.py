"""What a chain observes besides its own loss, inside the compiled loop.

Every ``observe_every`` draws a chain evaluates, at its current parameter ``w_t``:

* the mean loss of each *observable* data set ``D_k`` (``φ_k(w_t) = L_{D_k}(w_t)``), kept
  as a trace (``K`` numbers per observation);
* the per-example losses ``ℓ_p(w_t)`` of a *probe* set of ``P`` examples (or, for a
  language model's loss with ``per_token=True``, its per-token losses ``ℓ_{p,t}(w_t)``,
  ``P·T`` of them, treated as ``P·T`` examples), folded into
  streaming moments (Welford's one-pass update): their means, variances and their
  covariances with the observables, and optionally with each other (the ``P × P`` loss
  kernel). Memory is ``O(P·K)`` (``O(P²)`` with the kernel) whatever the number of draws;
  the full ``(draws, P)`` trace is kept only on request.

The host-side estimators built on these moments (Bayesian influence, susceptibilities)
are in :mod:`slt_jax.influence`. :class:`Observe` plugs all of it into a chain through the
engine's :class:`~slt_jax._src.engine.interfaces.Observer` interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax._src import data as _data

PyTree = Any


class Observed(NamedTuple):
    """The data sets a chain observes (replicated on every device)."""

    observables: tuple[PyTree, ...] = ()  # K data sets, each a pytree like the data
    probe: PyTree = None  # P examples, or None


class Moments(NamedTuple):
    """Streaming moments of one chain's observations (``n`` of them so far)."""

    count: jax.Array  # ()
    probe_mean: jax.Array  # (P,) mean of ℓ_p
    observable_mean: jax.Array  # (K,) mean of φ_k
    probe_sq: jax.Array  # (P,) Σ (ℓ_p − mean)², Welford's M2
    observable_sq: jax.Array  # (K, K) Σ (φ − mean)(φ − mean)ᵀ
    cross: jax.Array  # (P, K) Σ (ℓ − mean)(φ − mean)ᵀ
    kernel: jax.Array  # (P, P) Σ (ℓ − mean)(ℓ − mean)ᵀ, or (0, 0) when not requested


def float_dtype():
    """The dtype of observations and their moments: JAX's default float (float32, or
    float64 under ``jax_enable_x64``), so observables keep the precision of the LLC."""
    return jnp.result_type(float)


def num_probe(observed: Observed) -> int:
    return 0 if observed.probe is None else _data.num_examples(observed.probe)


def init_moments(num_probe: int, num_observables: int, kernel: bool) -> Moments:
    p, k = num_probe, num_observables
    z = jnp.zeros
    size = p if kernel else 0
    return Moments(
        z(()),
        z((p,)),
        z((k,)),
        z((p,)),
        z((k, k)),
        z((p, k)),
        z((size, size)),
    )


def update_moments(m: Moments, probe: jax.Array, observables: jax.Array) -> Moments:
    """Fold one observation ``(ℓ, φ)`` into the moments (Welford; exact in one pass)."""
    count = m.count + 1
    d_probe = probe - m.probe_mean
    probe_mean = m.probe_mean + d_probe / count
    d_obs = observables - m.observable_mean
    observable_mean = m.observable_mean + d_obs / count
    after_probe = probe - probe_mean
    after_obs = observables - observable_mean
    kernel = m.kernel
    if kernel.size:
        kernel = kernel + jnp.outer(d_probe, after_probe)
    return Moments(
        count,
        probe_mean,
        observable_mean,
        m.probe_sq + d_probe * after_probe,
        m.observable_sq + jnp.outer(d_obs, after_obs),
        m.cross + jnp.outer(d_probe, after_obs),
        kernel,
    )


def _by_rows(fn, data: PyTree, chunk_size: int) -> jax.Array:
    """``fn(rows) -> (rows, ...)`` over all of ``data``, ``chunk_size`` rows at a time,
    flattened to one vector (``(n·...,)``)."""
    n = _data.num_examples(data)
    chunk_size = min(chunk_size, n)
    num_full, remainder = divmod(n, chunk_size)
    head = jax.tree.map(
        lambda x: x[: num_full * chunk_size].reshape(num_full, chunk_size, *x.shape[1:]), data
    )
    parts = [jax.lax.map(fn, head).reshape(-1)]
    if remainder:
        parts.append(fn(jax.tree.map(lambda x: x[num_full * chunk_size :], data)).reshape(-1))
    return jnp.concatenate(parts).astype(float_dtype())


def per_example_losses(loss_fn, params: PyTree, data: PyTree, chunk_size: int) -> jax.Array:
    """``(n,)`` losses of each example of ``data`` alone: ``loss_fn`` on batches of one
    example, vmapped ``chunk_size`` examples at a time."""

    def one(example):
        return loss_fn(params, jax.tree.map(lambda x: x[None], example))

    return _by_rows(jax.vmap(one), data, chunk_size)


def per_token_losses(loss_fn, params: PyTree, data: PyTree, chunk_size: int) -> jax.Array:
    """``(n·T,)`` per-token losses ``ℓ_{p,t}`` of a language model's loss (one with a
    ``per_token(params, batch) -> (B, T)``: :func:`slt_jax._src.lm.next_token_loss`),
    example-major (``p·T + t``), ``chunk_size`` examples at a time."""
    return _by_rows(lambda rows: loss_fn.per_token(params, rows), data, chunk_size)


def evaluate(loss_fn, params: PyTree, observed: Observed, chunk_size: int, per_token=False):
    """``(φ, ℓ)`` at ``params``: ``(K,)`` observable losses and the probe's losses, ``(P,)``
    per example or (``per_token``) ``(P·T,)`` per token."""
    phis = [
        _data.dataset_mean(lambda b: loss_fn(params, b), data, chunk_size)
        for data in observed.observables
    ]
    phi = jnp.stack(phis).astype(float_dtype()) if phis else jnp.zeros((0,), float_dtype())
    if observed.probe is None:
        return phi, jnp.zeros((0,), float_dtype())
    losses = per_token_losses if per_token else per_example_losses
    return phi, losses(loss_fn, params, observed.probe, chunk_size)


class Observations(NamedTuple):
    """An :class:`Observe` plug-in's outputs, per chain (:attr:`ChainTrace.observed`)."""

    observations: jax.Array  # (K, num_observations) observable losses φ_k(w_t)
    observed_at_center: jax.Array  # (K,) φ_k(w*)
    probe_at_center: jax.Array  # (P,) probe losses at w* (P = examples × T per token)
    moments: Moments | None  # streaming moments of (ℓ, φ), with a probe
    probe_trace: jax.Array | None  # (P, num_observations) if asked for


@dataclasses.dataclass(frozen=True)
class Observe:
    """The observer plug-in: observable losses and probe moments every ``every`` draws.

    Static (it selects the program); the data sets come at run time as an
    :class:`Observed` (replicated on every device). With ``per_token`` (a language
    model's loss, which has ``per_token``) the probe's observation is its ``(P, T)`` matrix
    of per-token losses, flattened example-major into ``num_probe = P·T`` entries: every
    moment, kernel and trace below is then per token.
    """

    every: int
    num_observables: int
    num_probe: int
    probe_kernel: bool = False
    probe_trace: bool = False
    per_token: bool = False

    def bind(self, loss_fn, batch_size: int, num_draws: int, observed: Observed):
        return _Bound(self, loss_fn, batch_size, -(-num_draws // self.every), observed)


class _Bound:
    def __init__(self, spec: Observe, loss_fn, batch_size, num_observations, observed):
        self.spec, self.loss_fn, self.batch_size = spec, loss_fn, batch_size
        self.every = spec.every
        self.num_observations, self.observed = num_observations, observed
        self.probing = spec.num_probe > 0

    def init(self):
        s, dtype = self.spec, float_dtype()
        trace = jnp.full((s.num_observables, self.num_observations), jnp.nan, dtype)
        moments = (
            init_moments(s.num_probe, s.num_observables, s.probe_kernel) if self.probing else None
        )
        probes = None
        if self.probing and s.probe_trace:
            probes = jnp.full((s.num_probe, self.num_observations), jnp.nan, dtype)
        return trace, moments, probes

    def observe(self, state, params, column):
        trace, moments, probes = state
        phi, ell = evaluate(
            self.loss_fn, params, self.observed, self.batch_size, self.spec.per_token
        )
        trace = trace.at[:, column].set(phi)
        if moments is not None:
            moments = update_moments(moments, ell, phi)
        if probes is not None:
            probes = probes.at[:, column].set(ell)
        return trace, moments, probes

    def finish(self, state, center):
        trace, moments, probes = state
        at_center, probe_at_center = evaluate(
            self.loss_fn, center, self.observed, self.batch_size, self.spec.per_token
        )
        return Observations(trace, at_center, probe_at_center, moments, probes)
