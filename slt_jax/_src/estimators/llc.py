r"""LLC estimators on recorded chains, and the summary of a group of chains.

For one chain with draws ``w_1 … w_T`` (after burn-in) and minibatches ``B_t``:

* ``"plain"`` (Lau et al. 2023, arXiv:2308.12108):

  .. math:: \hat\lambda = n\beta\,\Bigl(\tfrac1T\sum_t L_{B_t}(w_t) - L_n(w^*)\Bigr)

* ``"paired"`` (the default): the same quantity with the minibatch noise cancelled by
  evaluating ``w*`` on the same minibatch,

  .. math:: \hat\lambda = n\beta\,\tfrac1T\sum_t \bigl(L_{B_t}(w_t) - L_{B_t}(w^*)\bigr).

Both estimate ``nβ (E_p[L_n] − L_n(w*))`` because ``E[L_{B_t}(w*)] = L_n(w*)`` (up to an
O(b/n) effect of drawing minibatches without replacement within an epoch: ``w_t`` has
already seen the epoch's earlier batches, which ``B_t`` excludes). The plain one carries
the minibatch noise of ``L_{B_t}`` multiplied by ``nβ``, which at large ``n`` can be as
large as ``λ`` itself; the paired difference cancels most of it, at the cost of one extra
forward pass per recorded draw.

``L_n(w*)`` itself is the exact full-data mean, or (``init_loss_batches``) the mean of a
bounded sample of ``k`` minibatches, :func:`init_loss_estimate`, whose standard error
``se`` enters the plain estimator's standard error in quadrature,
``√(MCSE² + (nβ·se)²)``; the paired estimator does not use ``L_n(w*)``.
"""

from __future__ import annotations

import numpy as np

from slt_jax._src.config import ESTIMATORS, LLCConfig
from slt_jax._src.engine.interfaces import ChainTrace
from slt_jax._src.estimators import diagnostics
from slt_jax._src.results import LLCResult


def llc_trace(trace: ChainTrace, init_loss, nbeta, estimator: str):
    """Per-draw LLC values, shape ``(chains, draws)``; their mean over draws is ``λ̂``.

    Works on NumPy arrays (the host path, in float64) and on traced JAX arrays alike.
    """
    if estimator == "paired":
        return nbeta * (trace.loss - trace.reference_loss)
    if estimator == "plain":
        return nbeta * (trace.loss - init_loss)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}.")


def init_loss_estimate(batch_losses, num_examples: int, batch_size: int) -> tuple:
    r"""``L_n(w*)`` and its standard error from the losses ``m_1 … m_k`` of ``k`` minibatches
    of ``b`` examples drawn without replacement from the ``n`` (``batch_losses``: ``(..., k)``):

    .. math:: \hat L = \tfrac1k \sum_j m_j, \qquad
              \mathrm{se}^2 = \Bigl(1 - \tfrac{kb}{n}\Bigr)\,\frac{s_m^2}{k},

    ``s_m²`` the sample variance of the ``m_j`` (``ddof=1``). The ``k·b`` examples are a simple
    random sample split at random into batches, so ``E[s_m²] = S²/b`` (``S²``: the
    per-example variance over the data) and ``se²`` is unbiased for
    ``Var(L̂) = (1 − kb/n) S²/(kb)``, with the finite-population correction. One batch gives
    no standard error (NaN). Returns float64 arrays (or floats) of shape ``(...)``.

    Example:
      >>> mean, se = init_loss_estimate(np.array([1.0, 2.0, 3.0]), 300, 10)
      >>> float(mean), round(float(se), 4)
      (2.0, 0.5477)
    """
    m = np.asarray(batch_losses, np.float64)
    k = m.shape[-1]
    mean = m.mean(axis=-1)
    if k < 2:
        return mean, np.full_like(mean, np.nan)
    correction = max(0.0, 1.0 - k * batch_size / num_examples)
    return mean, np.sqrt(correction * m.var(axis=-1, ddof=1) / k)


def combined_stderr(mcse, init_loss_stderr, nbeta, estimator: str):
    """``llc_stderr``: the chains' Monte-Carlo error and, for the plain estimator, the
    sampled ``L_n(w*)``'s, in quadrature (``√(MCSE² + (nβ·se)²)``)."""
    if estimator == "plain":
        return np.hypot(mcse, nbeta * np.asarray(init_loss_stderr, np.float64))
    return mcse


def summarize(
    trace: ChainTrace, init_loss: float, config: LLCConfig, init_loss_stderr: float = 0.0
) -> LLCResult:
    """Estimates and diagnostics of one group of chains (host arrays, leading axis:
    chains). Diverged chains are left out of every estimate and diagnostic; if all
    diverged, the estimates are NaN (the caller decides what to say). ``init_loss_stderr``:
    that of a sampled ``L_n(w*)`` (0: exact), see :func:`combined_stderr`."""
    trace = trace._replace(
        loss=np.asarray(trace.loss, np.float64),
        reference_loss=np.asarray(trace.reference_loss, np.float64),
    )
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite draws: flagged below
        values = llc_trace(trace, float(init_loss), config.nbeta, config.estimator)
    diverged = np.asarray(trace.diverged) | ~np.all(np.isfinite(values), axis=1)
    per_chain = values.mean(axis=1)
    healthy = per_chain[~diverged]
    if healthy.size:
        stats = diagnostics.chain_diagnostics(values[~diverged])
    else:
        stats = diagnostics.ChainDiagnostics(np.nan, np.nan, np.nan)
    return LLCResult(
        llc_mean=float(healthy.mean()) if healthy.size else float("nan"),
        llc_std=float(healthy.std(ddof=1)) if healthy.size > 1 else float("nan"),
        llc_stderr=float(
            combined_stderr(stats.stderr, init_loss_stderr, config.nbeta, config.estimator)
        ),
        llc_per_chain=per_chain,
        loss_trace=np.asarray(trace.loss),
        llc_trace=values,
        burnin_loss_trace=np.asarray(trace.burnin_loss),
        init_loss=float(init_loss),
        init_loss_stderr=float(init_loss_stderr),
        rhat=stats.rhat,
        ess=stats.ess,
        diverged=diverged,
        mala_acceptance=np.asarray(trace.acceptance),
        weight_distance=np.asarray(trace.weight_distance),
        grad_norm=np.asarray(trace.grad_norm),
        noise_norm=np.asarray(trace.noise_norm),
        config=config,
    )
