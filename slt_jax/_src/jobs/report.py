"""What a job tells the user about its results: one wording per failure kind.

Kinds: ``init_loss`` (``L_n(w*)`` not finite: the LLC is undefined there), ``all
diverged`` (every chain of a group diverged: its estimate is NaN, the traces are kept) and
the health problems of :meth:`slt_jax.LLCResult.health` (``diverged``, ``rhat``, ``ess``,
``negative``, ``acceptance``, ``nonstationary``, ``below_init``, ``wandering``). A single
estimate warns once per kind; a result with many groups prefixes each warning with the
group (a refinement); a checkpoint sweep groups the warnings by kind and names the steps.
Warnings point at the user's line (:func:`slt_jax._src.userwarn.warn`).
"""

from __future__ import annotations

import numpy as np

from slt_jax._src.estimators import diagnostics
from slt_jax._src.estimators.diagnostics import LLCDiagnosticWarning
from slt_jax._src.userwarn import warn as warn_user


def center_not_finite(label: str, value: float) -> str:
    return diagnostics.center_not_finite(value, label) + "."


def all_diverged(config) -> str:
    return (
        f"all {config.num_chains} chains diverged (the loss or the parameters became "
        f"non-finite) at step_size={config.step_size:g}, so the estimate is NaN (the traces "
        "are kept); try a smaller step_size or a larger localization."
    )


def problems(result) -> dict[str, str]:
    """Every failure of one (single) result, by kind."""
    if not np.isfinite(result.init_loss):
        return {"init_loss": center_not_finite("", result.init_loss)}
    if np.asarray(result.diverged).all():
        return {"all diverged": all_diverged(result.config)}
    return result.health()


def warn(result, *, prefix: str = "") -> None:
    """One warning per kind of failure of one result (``prefix``: which group)."""
    for message in problems(result).values():
        warn_user(f"{prefix}{message}", LLCDiagnosticWarning)


def warn_over_checkpoints(result, *, prefix: str = "") -> None:
    """One warning per kind of failure across a checkpoint sweep, naming the steps
    (``prefix``: which group, e.g. a refinement)."""
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for k, step in enumerate(result.steps):
        for kind, message in problems(result.checkpoint(k)).items():
            by_kind.setdefault(kind, []).append((int(step), message))
    for hits in by_kind.values():
        steps = ", ".join(str(s) for s, _ in hits[:10]) + (" …" if len(hits) > 10 else "")
        warn_user(
            f"{prefix}{len(hits)} of {len(result.steps)} checkpoints (steps {steps}); "
            + (f"at step {hits[0][0]}: " if len(hits) > 1 else "")
            + hits[0][1],
            LLCDiagnosticWarning,
        )
