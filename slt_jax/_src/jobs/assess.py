r"""How a grid of sampler settings is judged: step-size fits, localization checks, and the
one setting recommended (or none), with its reasons and what to run next.

For one row of the grid (a localization ``γ`` and an ``nβ``) the estimate of an equilibrated
SGLD chain moves with the step size at first order (the Euler scheme's bias and the extra
variance of minibatch gradients both grow like ``ε``; the quadratic oracle of
:mod:`slt_jax.theory` shows it exactly: ``E[λ̂] = Σ c_i/(1 − εA_i/4) ≈ Σ c_i (1 + εA_i/4)``), so

.. math:: \hat\lambda(\varepsilon) \approx \lambda_0 + s\,\varepsilon .

The usable cells of the row with the smallest step sizes (at most three) give ``λ₀``, the
ε → 0 corrected estimate, by least squares; every usable cell's step bias is then
``λ̂(ε) − λ₀``. Each of these is a fixed linear combination of cell estimates, and the cells
share their chains' keys (common random numbers), so its standard error is the Monte-Carlo
standard error of the same combination of the cells' per-draw traces: far smaller than
the cells' own errors combined.

A cell is *verified* when (1) it passed every health check, (2) its row has at least two usable
step sizes, so that the fit measured its bias, and that bias is shown to be small:
``|bias| + 2·se < tolerance·λ₀``, and (3) its localization is shown not to shrink the
estimate: a weaker localization's cell at the same step size is healthy (in particular its
chains do not wander) and agrees, ``|λ̂(γ) − λ̂(γ')| + 2·se < tolerance·λ̂(γ')``; where no
weaker localization is in the grid, the cell's own elasticity
(:func:`~slt_jax._src.estimators.diagnostics.localization_elasticity`, the first-order
shrinkage against ``γ → 0``) is shown small, ``|e| + 2·se < tolerance``. The
recommendation is the verified cell with the weakest localization, then the largest step
size (the best-mixing chains that are still shown unbiased).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from slt_jax._src.estimators.diagnostics import (
    chain_diagnostics,
    localization_elasticity,
    stationarity,
)
from slt_jax._src.jobs.advice import (
    CONFIDENCE,
    SHRINKAGE,
    STEP_BIAS,
    Judged,
    rank,
    recommend,
    suggest_next,  # noqa: F401 (part of this module's interface)
)

#: At most this many of a row's smallest usable step sizes enter its linear fit.
FIT_POINTS = 3
#: A cell's LLC trace rising between its halves by this many standard errors (and half
#: the tolerance) has not equilibrated.
EQUILIBRATION_Z = 2.0


@dataclasses.dataclass(frozen=True)
class RowFit:
    """The step-size fit of one row (one localization and ``nβ``) of a grid.

    Attributes:
      localization, nbeta: the row.
      cells: flat indices of the cells in the fit, ascending step size.
      intercept, intercept_stderr: ``λ₀``, the ε → 0 corrected estimate, and its
        Monte-Carlo standard error (NaN without a fit: fewer than two usable cells).
      slope: ``s`` of ``λ̂(ε) ≈ λ₀ + s·ε`` (NaN without a fit).
      bias: ``{cell: (λ̂ − λ₀, standard error)}`` for every usable cell of the row.
    """

    localization: float
    nbeta: float
    cells: tuple[int, ...]
    intercept: float
    intercept_stderr: float
    slope: float
    bias: dict

    @property
    def fitted(self) -> bool:
        return len(self.cells) >= 2


@dataclasses.dataclass(frozen=True)
class Assessment:
    """What :func:`assess` concludes about a grid."""

    problems: tuple[dict, ...]  # per cell, {kind: reason} (step_bias, localization_bias added)
    fits: tuple[RowFit, ...]  # per row (localization × nβ, in grid order)
    verified: tuple[int, ...]  # flat indices of the fully verified cells
    recommended: int | None  # flat index, or None
    trusted: bool  # the recommended cell is verified
    explanation: str
    next_grid: dict | None  # a concrete grid to run next (None when trusted)


def combined_stderr(results, weights) -> float:
    """The Monte-Carlo standard error of ``Σ wᵢ λ̂ᵢ`` over cells that share chain keys,
    from the same combination of their per-draw LLC traces (chains that diverged in any of
    the cells left out); the independent-cells bound where the traces cannot be combined."""
    traces = [np.asarray(r.llc_trace, np.float64) for r in results]
    pairs = zip(weights, results, strict=True)
    bound = float(np.sqrt(sum((w * r.llc_stderr) ** 2 for w, r in pairs)))
    if len({t.shape for t in traces}) != 1:
        return bound
    healthy = ~np.any([np.asarray(r.diverged) for r in results], axis=0)
    if healthy.sum() < 1:
        return bound
    combined = sum(w * t[healthy] for w, t in zip(weights, traces, strict=True))
    stderr = chain_diagnostics(combined).stderr
    return float(stderr) if np.isfinite(stderr) else bound


def _line_weights(x: np.ndarray) -> np.ndarray:
    """Rows: the weights of the least-squares intercept and slope of ``y ≈ a + s·x``."""
    design = np.stack([np.ones_like(x), x], axis=1)
    return np.linalg.pinv(design)  # (2, len(x))


def fit_row(results, cells, localization, nbeta, tolerance) -> RowFit:
    """The step-size fit of one row from its usable ``cells`` (any order)."""
    cells = sorted(cells, key=lambda i: results[i].config.step_size)
    nan = float("nan")
    if len(cells) < 2:
        return RowFit(localization, nbeta, tuple(cells), nan, nan, nan, {})
    used = cells[:FIT_POINTS]
    if len(used) == 3 and not _linear(results, used, tolerance):
        used = used[:2]
    eps = np.asarray([results[i].config.step_size for i in used], np.float64)
    # Step sizes span decades: fit in units of the largest so the weights are well scaled.
    weights = _line_weights(eps / eps.max())
    values = np.asarray([results[i].llc_mean for i in used])
    intercept = float(weights[0] @ values)
    slope = float(weights[1] @ values) / eps.max()
    fitted = [results[i] for i in used]
    intercept_se = combined_stderr(fitted, weights[0])
    bias = {}
    for i in cells:
        # λ̂_i − λ₀: the cell itself minus the intercept's combination of the fitted cells.
        members = fitted + ([results[i]] if i not in used else [])
        w = list(-weights[0]) + ([1.0] if i not in used else [])
        if i in used:
            w[used.index(i)] += 1.0
        bias[i] = (float(results[i].llc_mean - intercept), combined_stderr(members, w))
    return RowFit(localization, nbeta, tuple(used), intercept, intercept_se, slope, bias)


def _linear(results, three, tolerance) -> bool:
    """Whether the middle of three cells lies on the line through the outer two (within
    3 standard errors or half the tolerance)."""
    eps = [results[i].config.step_size for i in three]
    t = (eps[1] - eps[0]) / (eps[2] - eps[0])
    weights = [-(1 - t), 1.0, -t]
    residual = sum(w * results[i].llc_mean for w, i in zip(weights, three, strict=True))
    se = combined_stderr([results[i] for i in three], weights)
    scale = abs(results[three[0]].llc_mean)
    return abs(residual) <= max(3 * se, 0.5 * tolerance * scale)


def assess(
    results, base_problems, shape, tolerance: float, *, check_localization: bool = True
) -> Assessment:
    """Judge a grid (``results`` in ``itertools.product(step_sizes, localizations,
    nbetas)`` order, ``shape`` its axis lengths) and recommend one cell.

    ``check_localization=False``: the localization is the user's choice (one given value),
    so only the step size is verified."""
    problems = [dict(p) for p in base_problems]
    index = np.arange(len(results)).reshape(shape)
    usable = [not p for p in base_problems]
    fits, by_row = [], {}
    for j, k in itertools.product(range(shape[1]), range(shape[2])):
        row = [int(i) for i in index[:, j, k] if usable[i]]
        first = results[int(index[0, j, k])].config
        fit = fit_row(results, row, first.localization, first.nbeta, tolerance)
        fits.append(fit)
        by_row[j, k] = fit
    # (2) the step size: shown unbiased against a smaller usable step size of the row.
    step_ok = set()
    for fit in fits:
        if not fit.fitted:
            continue
        for i, (bias, se) in fit.bias.items():
            if abs(bias) + CONFIDENCE * se < tolerance * abs(fit.intercept) and fit.intercept > 0:
                step_ok.add(i)
            elif abs(bias) > CONFIDENCE * se and abs(bias) > tolerance * abs(fit.intercept):
                problems[i][STEP_BIAS] = (
                    f"λ̂ = {results[i].llc_mean:.4g} against {fit.intercept:.4g}, the row's "
                    f"step-size fit extrapolated to ε → 0: a step bias of "
                    f"{100 * bias / abs(fit.intercept):+.0f}% ({bias / se:+.1f} standard errors)"
                )
    # (3) the localization: shown not to shrink λ̂ against a weaker one at the same step size.
    shrink_ok, shrink_unknown = set(), {}
    for i in range(len(results)):
        if not usable[i]:
            continue
        a, j, k = np.unravel_index(i, shape)
        if not check_localization:
            shrink_ok.add(i)
            continue
        verdict = _localization_check(results, base_problems, index, a, j, k, tolerance)
        if verdict is True:
            shrink_ok.add(i)
        elif isinstance(verdict, str):
            shrink_unknown[i] = verdict
        else:  # shown to shrink
            problems[i][SHRINKAGE] = verdict[1]
    verified = tuple(sorted(step_ok & shrink_ok, key=lambda i: rank(results, i)))
    grid = Judged(
        results,
        problems,
        usable,
        fits,
        by_row,
        shape,
        index,
        verified,
        step_ok,
        shrink_unknown,
        tolerance,
        check_localization,
    )
    recommended, trusted, explanation, next_grid = recommend(grid)
    return Assessment(
        problems=tuple(problems),
        fits=tuple(fits),
        verified=verified,
        recommended=recommended,
        trusted=trusted,
        explanation=explanation,
        next_grid=next_grid,
    )


#: Problems of a weaker localization's cell that still leave its estimate usable as a
#: rough reference: a difference far beyond the tolerance is then shrinkage all the same.
_ROUGH = {"nonstationary", "wandering", "ess", "rhat", "acceptance", STEP_BIAS}


def _localization_check(results, base_problems, index, a, j, k, tolerance):
    """True: every weaker localization's healthy cell at this step size agrees (there is at
    least one); a string: why it cannot be checked; a tuple ``(False, reason)``: a weaker
    localization gives a clearly different λ̂.

    Comparing with every weaker level (not only the nearest) keeps shrinkage from adding up
    unseen: γ = 100 agreeing with γ = 10 says nothing if γ = 10 is itself 10% below γ = 1.
    """
    here = results[int(index[a, j, k])]
    weaker = sorted(
        (
            int(index[a, jj, k])
            for jj in range(index.shape[1])
            if results[int(index[a, jj, k])].config.localization < here.config.localization
        ),
        key=lambda i: -results[i].config.localization,
    )
    if not weaker:
        return _elasticity_check(here, tolerance)
    agreeing, unknown = 0, None
    for other_index in weaker:
        other = results[other_index]
        problems = set(base_problems[other_index])
        difference = here.llc_mean - other.llc_mean
        se = combined_stderr([here, other], [1.0, -1.0])
        scale = abs(other.llc_mean)
        shrinks = (
            np.isfinite(difference)
            and abs(difference) > CONFIDENCE * se
            and abs(difference) > (tolerance if not problems else 4 * tolerance) * scale
        )
        if shrinks and problems <= _ROUGH:
            flagged = ", ".join(sorted(problems))
            caveat = f" (whose own chains are flagged: {flagged})" if problems else ""
            return (
                False,
                f"λ̂ = {here.llc_mean:.4g} against {other.llc_mean:.4g} at the weaker "
                f"localization {other.config.localization:g}{caveat}, same step size: the "
                f"localization changes the estimate by {100 * difference / scale:+.0f}% "
                f"({difference / se:+.1f} standard errors)",
            )
        if problems:
            unknown = unknown or (
                f"the weaker localization {other.config.localization:g} at this step size is "
                f"not healthy ({', '.join(sorted(problems))}), so the shrinkage cannot be "
                "measured against it"
            )
        elif abs(difference) + CONFIDENCE * se < tolerance * scale:
            agreeing += 1
        else:
            unknown = unknown or (
                f"against the weaker localization {other.config.localization:g} the "
                f"difference ({difference:+.3g} ± {se:.2g}) is too noisy to show it below "
                f"{tolerance:.0%}"
            )
    if agreeing and unknown is None:
        return True
    return unknown


def _elasticity_check(here, tolerance):
    """The localization check of a cell with no weaker localization beside it: its own
    elasticity (:func:`localization_elasticity`) shown below the tolerance (True), shown
    above it (``(False, reason)``), or neither (a string)."""
    e, se = localization_elasticity(here)
    if not (np.isfinite(e) and np.isfinite(se)):
        return "no weaker localization in the grid"
    if abs(e) + CONFIDENCE * se < tolerance:
        return True
    if abs(e) > tolerance and abs(e) > CONFIDENCE * se:
        return (
            False,
            f"its own draws give d log λ̂/d log γ = {e:+.3f} ± {se:.2g} at localization "
            f"{here.config.localization:g}: at first order the localization changes the "
            f"estimate by {100 * e:+.0f}% against none",
        )
    return (
        f"its localization's effect, d log λ̂/d log γ = {e:+.3f} ± {se:.2g} from its own "
        f"draws, is too noisy to show it below {tolerance:.0%} (no weaker localization in "
        "the grid)"
    )


def cell_health(result, acceptance_band, tolerance: float) -> dict[str, str]:
    """The health checks of one cell (:meth:`~slt_jax.LLCResult.health`), with R-hat, ESS
    or standard error not finite counting as ``ess``, and two equilibration checks at the
    calibration's tolerance: chains start at ``w*``, so an unfinished relaxation shows as a
    rising LLC trace (``nonstationary``: by half the tolerance at 2 standard errors) or a
    growing ‖w − w*‖ (``wandering``: by the tolerance at 3)."""
    problems = result.health(acceptance_band)
    if np.asarray(result.diverged).all():
        problems["diverged"] = "every chain diverged; use a smaller step_size"
        return problems
    if not all(np.isfinite(v) for v in (result.rhat, result.ess, result.llc_stderr)):
        problems.setdefault(
            "ess",
            "too few draws to measure R-hat, the effective sample size or the standard error "
            "(they are not finite); run more steps",
        )
    if "nonstationary" not in problems:
        trace = np.asarray(result.llc_trace)[~np.asarray(result.diverged)]
        halves = stationarity(trace)
        scale = max(abs(halves.first), abs(halves.second))
        # Chains start at w*, where the loss is lowest: an unfinished relaxation shows as a
        # rising trace, so the test is one-sided (2 standard errors).
        rise = halves.second - halves.first
        if halves.z > EQUILIBRATION_Z and rise > 0.5 * tolerance * scale:
            problems["nonstationary"] = (
                f"the LLC trace still rises: first half {halves.first:.4g}, second half "
                f"{halves.second:.4g} ({halves.z:+.1f} standard errors, more than half the "
                f"tolerance {tolerance:.0%}); the chains have not equilibrated at this step "
                "size in this many steps"
            )
    distance = np.asarray(result.weight_distance)[~np.asarray(result.diverged)]
    if "wandering" not in problems and distance.size and np.isfinite(distance).all():
        # ‖w − w*‖ is dominated by the softest directions, the slowest to relax: a trace that
        # has not equilibrated there shows it first (the LLC trace, dominated by the stiff
        # directions, may not).
        halves = stationarity(distance)
        # The softest direction dominates ‖w − w*‖ but may carry little of λ̂: a growth of
        # the tolerance (about half of it in λ̂ when one soft direction lags) at 3 standard
        # errors.
        if halves.z > 3 and halves.second > (1 + tolerance) * halves.first:
            problems["wandering"] = (
                f"the chains are still spreading: mean ‖w − w*‖ grew from {halves.first:.4g} "
                f"to {halves.second:.4g} between the halves of the draws ({halves.z:+.1f} "
                "standard errors); the slowest directions have not equilibrated in this many "
                "steps at this step size and localization"
            )
    return problems
