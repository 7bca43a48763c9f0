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


def summarize(trace: ChainTrace, init_loss: float, config: LLCConfig) -> LLCResult:
    """Estimates and diagnostics of one group of chains (host arrays, leading axis:
    chains). Diverged chains are left out of every estimate and diagnostic; if all
    diverged, the estimates are NaN (the caller decides what to say)."""
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
        llc_stderr=stats.stderr,
        llc_per_chain=per_chain,
        loss_trace=np.asarray(trace.loss),
        llc_trace=values,
        burnin_loss_trace=np.asarray(trace.burnin_loss),
        init_loss=float(init_loss),
        rhat=stats.rhat,
        ess=stats.ess,
        diverged=diverged,
        mala_acceptance=np.asarray(trace.acceptance),
        weight_distance=np.asarray(trace.weight_distance),
        grad_norm=np.asarray(trace.grad_norm),
        noise_norm=np.asarray(trace.noise_norm),
        config=config,
    )
