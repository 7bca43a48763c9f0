"""What a judged grid is turned into: the recommendation (verified, or the best that could
not be checked, or none), its explanation, and a concrete grid to run next.

:mod:`slt_jax._src.jobs.assess` does the judging; this module only chooses and words.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from slt_jax._src.estimators.diagnostics import localization_elasticity

#: The problem kinds the step-size and localization checks add to a cell's health.
STEP_BIAS = "step_bias"
SHRINKAGE = "localization_bias"
#: Confidence multiple of the standard error in "shown to be below tolerance".
CONFIDENCE = 2.0


def rank(results, i):
    """The preference among verified cells: the weakest localization, then the largest
    step size."""
    c = results[i].config
    return (c.localization, -c.step_size)


def _fallback_rank(results, by_row, shape, i):
    """Unverified candidates: measured bias first (smallest upper bound relative to the
    ε → 0 value), then the weakest localization and the largest step size."""
    fit = by_row[np.unravel_index(i, shape)[1:]]
    if fit.fitted and i in fit.bias and fit.intercept > 0:
        bias, se = fit.bias[i]
        bound = (abs(bias) + CONFIDENCE * se) / fit.intercept
    else:
        bound = np.inf
    return (bound, *rank(results, i))


@dataclasses.dataclass(frozen=True)
class Judged:
    """A grid with its checks done: what :func:`_recommend` chooses from."""

    results: Any
    problems: list
    usable: list
    fits: list
    by_row: dict
    shape: tuple
    index: np.ndarray
    verified: tuple
    step_ok: set
    shrink_unknown: dict
    tolerance: float
    check_localization: bool


def recommend(grid: Judged):
    results, problems, usable, by_row = grid.results, grid.problems, grid.usable, grid.by_row
    shape, verified, step_ok, tolerance = grid.shape, grid.verified, grid.step_ok, grid.tolerance
    shrink_unknown = grid.shrink_unknown
    total = len(results)
    if verified:
        best = verified[0]
        return (
            best,
            True,
            _verified_text(
                results,
                best,
                by_row,
                shape,
                tolerance,
                len(verified),
                total,
                grid.check_localization,
            ),
            None,
        )
    # Nothing verified: the best candidate whose checks could not be made (grid edges, noise).
    step_unchecked = [
        i
        for i in range(total)
        if usable[i]
        and i not in step_ok
        and STEP_BIAS not in problems[i]
        and SHRINKAGE not in problems[i]
    ]
    candidates = [i for i in step_ok if SHRINKAGE not in problems[i]]
    if not candidates:
        candidates = step_unchecked
    next_grid = suggest_next(results, problems, usable)
    if candidates:
        best = min(candidates, key=lambda i: _fallback_rank(results, by_row, shape, i))
        c = results[best].config
        reasons = []
        if best not in step_ok:
            fit = by_row[np.unravel_index(best, shape)[1:]]
            if fit.fitted and best in fit.bias:
                bias, se = fit.bias[best]
                reasons.append(
                    f"its step bias ({bias:+.3g} ± {se:.2g} against the ε → 0 value "
                    f"{fit.intercept:.4g}) is not shown below {tolerance:.0%}"
                )
            else:
                reasons.append(
                    "it is the only healthy step size of its row, so its step bias was not measured"
                )
        if best in shrink_unknown:
            reasons.append(f"its localization was not checked: {shrink_unknown[best]}")
        return (
            best,
            False,
            (
                f"Not verified: step_size={c.step_size:g}, localization={c.localization:g}, "
                f"nbeta={c.nbeta:.4g} gives λ̂ = {results[best].llc_mean:.4g} ± "
                f"{results[best].llc_stderr:.2g}, the best of the settings that passed the health "
                f"checks, but {'; and '.join(reasons)}. No setting of the grid was shown to be "
                f"free of step-size and localization bias. Run next: {describe_grid(next_grid)}."
            ),
            next_grid,
        )
    counts: dict[str, int] = {}
    for p in problems:
        for kind in p:
            counts[kind] = counts.get(kind, 0) + 1
    common = ", ".join(f"{k} ({v} cells)" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (
        None,
        False,
        (
            f"No setting can be trusted: none passed every check (most common problems: {common}). "
            f"Run next: {describe_grid(next_grid)}."
        ),
        next_grid,
    )


def _verified_text(results, best, by_row, shape, tolerance, num_verified, total, localization):
    c, res = results[best].config, results[best]
    fit = by_row[np.unravel_index(best, shape)[1:]]
    bias, se = fit.bias[best]
    checks = (
        "step bias and localization shrinkage both shown" if localization else "step bias shown"
    )
    weaker = any(r.config.localization < c.localization for r in results)
    if not localization:
        gamma = "the localization is the one given (not checked)."
    elif weaker:
        gamma = (
            "every weaker, healthy localization at the same step size gives the same λ̂ "
            "within the tolerance."
        )
    else:
        e, e_se = localization_elasticity(res)
        gamma = (
            f"its own draws put the localization's effect, d log λ̂/d log γ = {e:+.3f} ± "
            f"{e_se:.2g}, below the tolerance (−(γ/2)·Cov(nβ L_n, ‖w − w*‖²)/λ̂)."
        )
    return (
        f"Recommended: step_size={c.step_size:g}, localization={c.localization:g}, "
        f"nbeta={c.nbeta:.4g}: λ̂ = {res.llc_mean:.4g} ± {res.llc_stderr:.2g}. "
        f"{num_verified} of {total} settings were verified (healthy, {checks} below "
        f"{tolerance:.0%}); this one has the weakest localization and the largest step size "
        f"among them. Its step bias against the ε → 0 fit ({fit.intercept:.4g} ± "
        f"{fit.intercept_stderr:.2g}) is {bias:+.3g} ± {se:.2g}; {gamma}"
    )


def suggest_next(results, problems, usable) -> dict:
    """A concrete grid to run next, from the pattern of failures."""
    step_sizes = sorted({r.config.step_size for r in results})
    localizations = sorted({r.config.localization for r in results})
    num_steps = results[0].config.num_steps
    kinds = {kind for p in problems for kind in p}
    healthy_eps = sorted({results[i].config.step_size for i in range(len(results)) if usable[i]})
    unstable = {"diverged", "acceptance"}
    stable_eps = sorted(
        {
            results[i].config.step_size
            for i, p in enumerate(problems)
            if not unstable & set(p) and "init_loss" not in p
        }
    )
    new_steps = num_steps
    if not healthy_eps:
        if not stable_eps:  # unstable everywhere: much smaller steps
            low = step_sizes[0]
            eps = [low / 64, low / 16, low / 4]
        else:  # stable but too short to equilibrate or to measure: longer runs
            top = stable_eps[-1]
            eps = [top / 4, top / 2, top]
            new_steps = 4 * num_steps
    else:
        low = healthy_eps[0]
        # biased down to the smallest healthy step: smaller ones, which equilibrate slower
        eps = [low / 8, low / 4, low / 2, low]
        if low == step_sizes[0] or {"nonstationary", "ess", "rhat"} & kinds:
            new_steps = 4 * num_steps
    if {"wandering"} & kinds or SHRINKAGE in kinds:
        new_steps = max(new_steps, 4 * num_steps)
    gammas = localizations
    wandering_rows = {
        results[i].config.localization for i, p in enumerate(problems) if "wandering" in p
    }
    if wandering_rows and len(wandering_rows) == len(localizations):
        strongest = localizations[-1]
        if strongest > 0:
            gammas = [strongest * 10, strongest * 100]
        else:  # no localization at all: start at small fractions of nβ
            nbeta = results[0].config.nbeta
            gammas = [nbeta * 1e-4, nbeta * 1e-3, nbeta * 1e-2]
    elif localizations[0] > 0:  # a weaker localization checks the weakest one's shrinkage
        gammas = sorted({localizations[0] / 10, *localizations})
    return dict(
        step_sizes=[float(f"{e:.3g}") for e in eps],
        localizations=[float(f"{g:.3g}") for g in gammas],
        num_steps=int(new_steps),
    )


def describe_grid(grid: dict | None) -> str:
    if not grid:
        return "nothing"
    return (
        f"sj.calibrate(..., step_sizes={grid['step_sizes']}, localizations="
        f"{grid['localizations']}, num_steps={grid['num_steps']})"
    )
