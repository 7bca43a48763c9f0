"""From recorded chains to an :class:`~slt_jax.LLCResult`: estimates and diagnostics."""

from __future__ import annotations

import warnings

import numpy as np

from slt_jax import diagnostics, estimators
from slt_jax.engine import ChainTrace
from slt_jax.result import LLCConfig, LLCResult


def summarize(trace: ChainTrace, init_loss: float, config: LLCConfig) -> LLCResult:
    """Estimates and diagnostics of one set of chains (host arrays, leading axis: chains).

    Diverged chains are left out of every estimate and diagnostic. If all diverged, the
    estimates are NaN (the caller decides whether that is an error).
    """
    trace = trace._replace(
        loss=np.asarray(trace.loss, np.float64),
        reference_loss=np.asarray(trace.reference_loss, np.float64),
    )
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite draws: flagged below
        llc_trace = estimators.llc_trace(trace, float(init_loss), config.nbeta, config.estimator)
    diverged = np.asarray(trace.diverged) | ~np.all(np.isfinite(llc_trace), axis=1)
    llc_per_chain = llc_trace.mean(axis=1)
    healthy = llc_per_chain[~diverged]
    if healthy.size:
        stats = diagnostics.chain_diagnostics(llc_trace[~diverged])
    else:
        stats = diagnostics.ChainDiagnostics(np.nan, np.nan, np.nan)
    return LLCResult(
        llc_mean=float(healthy.mean()) if healthy.size else float("nan"),
        llc_std=float(healthy.std(ddof=1)) if healthy.size > 1 else float("nan"),
        llc_stderr=stats.stderr,
        llc_per_chain=llc_per_chain,
        loss_trace=np.asarray(trace.loss),
        llc_trace=llc_trace,
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


def warn_if_unhealthy(result: LLCResult) -> None:
    """Emit one warning for each diagnostic of one estimate that is out of range."""
    for problem in result.health().values():
        warnings.warn(problem, diagnostics.LLCDiagnosticWarning, stacklevel=3)


def warn_over_checkpoints(result: LLCResult) -> None:
    """One warning per kind of problem across a checkpoint sweep, naming the steps."""
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for k, step in enumerate(result.steps):
        one = result.checkpoint(k)
        problems = one.health()
        if not np.isfinite(one.init_loss):
            problems = {
                "init_loss": "the loss at w* over the data, L_n(w*), is not finite, so the LLC "
                "is undefined there and the estimate is NaN; check loss_fn at these parameters"
            }
        elif one.diverged.all():
            problems = {
                "all diverged": "every chain diverged, the estimate is NaN; try a smaller step_size"
            }
        for kind, message in problems.items():
            by_kind.setdefault(kind, []).append((int(step), message))
    for hits in by_kind.values():
        steps = ", ".join(str(s) for s, _ in hits[:10]) + (" …" if len(hits) > 10 else "")
        warnings.warn(
            f"{len(hits)} of {len(result.steps)} checkpoints (steps {steps}); "
            + (f"at step {hits[0][0]}: " if len(hits) > 1 else "")
            + hits[0][1],
            diagnostics.LLCDiagnosticWarning,
            stacklevel=3,
        )
