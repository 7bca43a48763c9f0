"""Choosing the sampler's step size, localization and ``nβ``: a grid in one compiled call,
every cell checked, one setting recommended only where it is shown to be unbiased.

Give the grid (``step_sizes``, ``localizations``) or let :func:`calibrate` choose it: from
the problem's scales it runs a coarse grid, then a refined grid around the best region (two
compiled chain programs), within a ``budget`` of chain-steps. How cells are judged is in
:mod:`slt_jax._src.jobs.assess`; how the automatic grid is placed, in
:mod:`slt_jax._src.jobs.autogrid`; the result is a :class:`Calibration`.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from slt_jax._src import data as _data
from slt_jax._src import validation
from slt_jax._src.config import LLCConfig, resolve_nbeta, run_options
from slt_jax._src.estimators.diagnostics import ACCEPTANCE_BAND, LLCDiagnosticWarning
from slt_jax._src.jobs import orchestrate
from slt_jax._src.jobs.assess import assess, cell_health
from slt_jax._src.jobs.auto import stand_in
from slt_jax._src.jobs.autogrid import (
    coarse_axes,
    measure_scales,
    plan,
    refined_axes,
    refined_centre,
)
from slt_jax._src.jobs.calibration import Calibration
from slt_jax._src.jobs.grid import run_grid
from slt_jax._src.userwarn import warn as warn_user

PyTree = Any

#: The largest relative bias accepted, for the step size and for the localization each:
#: a cell is verified when both are shown (at 2 standard errors) to be below it.
BIAS_TOLERANCE = 0.05
#: The fewest steps per chain a calibration runs when it chooses the run length.
MIN_STEPS = 100
#: The budget of an automatic calibration when neither ``budget`` nor ``num_steps`` is
#: given (chain-steps over both stages).
DEFAULT_BUDGET = 2_000_000


@run_options(exclude=("step_size", "localization", "nbeta"), num_chains=4, num_steps=None)
def calibrate(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    config: LLCConfig,
    step_sizes: Sequence[float] | None = None,
    localizations: Sequence[float] | None = None,
    nbetas: Sequence[float | None] = (None,),
    acceptance_band: tuple[float, float] = ACCEPTANCE_BAND,
    bias_tolerance: float = BIAS_TOLERANCE,
    budget: int | None = None,
    mesh=None,
    devices=None,
) -> Calibration:
    r"""Choose the step size and localization: run a grid of settings and recommend one
    only where its estimate is shown to be free of step-size and localization bias.

    **The grid.** Given ``step_sizes`` and ``localizations``, all ``G`` settings (× ``nbetas``)
    × ``num_chains`` chains run as one vmapped compiled program (the settings are array
    arguments). Left out (``None``), the grid is automatic: the problem's scales are measured
    first (``nβ``, the minibatch gradients at typical distances from ``w*``, the number of
    parameters; see :mod:`slt_jax._src.jobs.autogrid`), a coarse log grid is run around them with
    half the chains, then a refined grid around its best cell: two compiled programs. Every
    cell's chain ``i`` uses the same key (common random numbers), so differences between
    cells are measured from the per-draw differences of their traces, with far less noise
    than either estimate.

    **The checks.** Each cell gets the health checks of :meth:`~slt_jax.LLCResult.health`
    (``diverged``, ``rhat``, ``ess``, ``acceptance`` outside ``acceptance_band``,
    ``negative``, ``below_init``, ``nonstationary``, ``wandering``, ``init_loss``; R-hat, ESS
    or standard error not finite counts as ``ess``), and two equilibration checks at the
    calibration's tolerance: chains start at ``w*``, so an unfinished relaxation shows as a
    rising trace, and a cell whose LLC trace (``nonstationary``: by more than half of
    ``bias_tolerance``, at 2 standard errors) or ‖w − w*‖ (``wandering``: by more than
    ``bias_tolerance``, at 3) rises between the halves of its draws has not equilibrated.
    On the healthy cells of each row (one localization and ``nβ``):

    .. math:: \hat\lambda(\varepsilon) \approx \lambda_0 + s\,\varepsilon

    is fitted through the (at most three) smallest healthy step sizes: SGLD's Euler scheme
    and its minibatch noise are biased at first order in ``ε`` (the quadratic oracle of
    :mod:`slt_jax.theory`: ``E[λ̂] = Σ c_i/(1 − εA_i/4)``). ``λ₀`` is the ε → 0 corrected
    estimate (:attr:`Calibration.corrected_llc`, with its standard error) and
    ``λ̂(ε) − λ₀`` each cell's step bias.

    **The recommendation.** A cell is *verified* when it is healthy and both biases are shown
    below ``bias_tolerance`` (the estimate plus 2 standard errors): its step bias, from the
    fit of its row (so a row needs two healthy step sizes), and the shrinkage of its
    localization, against every weaker localization at the same step size, whose chains
    must be healthy (not wandering) — at least one of them; the weakest localization of the
    grid, which has none, by its own draws: its elasticity ``d log λ̂/d log γ =
    −(γ/2)·Cov(nβ L_n, ‖w − w*‖²)/λ̂``, the first-order shrinkage, shown below the tolerance
    (it needs the diagnostics, ``diagnostic_every > 0``). With a single localization given,
    it is the user's choice and only the step size is verified. The recommendation is the
    verified cell with the weakest localization, then the largest step size. If none is
    verified, the best healthy cell is recommended with
    ``trusted=False``, a warning and an explanation of what could not be checked; if no
    cell is healthy, ``recommended`` is ``None``. Either way ``next_grid`` and the
    explanation give a concrete grid to run next.

    Args:
      step_sizes, localizations: the grid's axes, or ``None`` to choose them.
      nbetas: ``nβ`` values (``None``: ``n/log n``); give the one you will use.
      num_chains: chains per cell (an automatic grid: half as many, at least 2, on the coarse
        stage; at least 4 on the refined one).
      num_steps: steps per chain, burn-in included; it should be the run length you will
        estimate with (equilibration depends on it). ``None``: as many as ``budget`` allows,
        half of them burn-in (chains started at ``w*`` take long to equilibrate in singular
        models).
      budget: the most chain-steps to spend (both stages); default: what the grid needs at
        ``num_steps``, or :data:`DEFAULT_BUDGET` when ``num_steps`` is ``None``. Too small a
        budget for the smallest automatic plan is an error naming the minimum.
      acceptance_band: the healthy range of the mean MALA acceptance.
      bias_tolerance: the largest relative step-size bias, and localization shrinkage,
        accepted.
      Other arguments: as in :func:`~slt_jax.estimate_llc`.

    Returns:
      A :class:`Calibration`: ``cal.recommended`` are keyword arguments for
      :func:`~slt_jax.estimate_llc`; ``print(cal)`` shows the table; ``cal.plot(path)``
      the heatmap.

    Raises:
      ValueError, TypeError: on bad input (an empty, repeated or non-positive axis, a
        schedule on the grid, a budget below the minimum), before anything is compiled.

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 512)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> cal = sj.calibrate(loss, jnp.array([2.0]), (x, y), step_sizes=[1e-4, 1e-3, 1e-2],
      ...                    localizations=[1.0], num_steps=2000, batch_size=64)
      >>> cal.llc_mean.shape
      (3, 1, 1)
      >>> auto = sj.calibrate(loss, jnp.array([2.0]), (x, y), batch_size=64, budget=200_000)
      >>> auto.coarse.shape, auto.shape  # 5 × 4 coarse cells, then 3 × 3 refined
      ((5, 4, 1), (3, 3, 1))
      >>> best = auto.result(**auto.recommended)  # a regular model with d = 1: λ = 1/2
      >>> bool(abs(best.llc_mean - 0.5) < 0.1)
      True
    """
    prepare = lambda checked: orchestrate.prepare_run(  # noqa: E731
        loss_fn, params, data, checked, mesh=mesh, devices=devices
    )
    return run_calibration(
        prepare,
        data,
        config,
        step_sizes=step_sizes,
        localizations=localizations,
        nbetas=nbetas,
        acceptance_band=acceptance_band,
        bias_tolerance=bias_tolerance,
        budget=budget,
    )


def run_calibration(
    prepare,
    data: PyTree,
    config: LLCConfig,
    *,
    step_sizes: Sequence[float] | None = None,
    localizations: Sequence[float] | None = None,
    nbetas: Sequence[float | None] = (None,),
    acceptance_band: tuple[float, float] = ACCEPTANCE_BAND,
    bias_tolerance: float = BIAS_TOLERANCE,
    budget: int | None = None,
) -> Calibration:
    """:func:`calibrate` on a run that ``prepare(stand_in)`` gives, checked with the
    calibration's stand-in configuration: :func:`~slt_jax._src.jobs.orchestrate.prepare_run`
    (a public call checks it), or the ``with_config`` of a run already prepared (``step_size=
    "auto"``: taken as checked). Its options are checked here, before anything compiles."""
    axes = {
        name: _check_axis(name, axis, data)
        for name, axis in (("step_sizes", step_sizes), ("localizations", localizations))
        if axis is not None
    }
    nbeta_axis = _check_axis("nbetas", nbetas, data)
    low, high = acceptance_band
    if not 0 <= low <= high <= 1:
        raise ValueError(f"`acceptance_band` must be 0 <= low <= high <= 1, got {acceptance_band}.")
    if isinstance(bias_tolerance, bool) or not isinstance(bias_tolerance, numbers.Real):
        raise TypeError(f"`bias_tolerance` must be a number, got {bias_tolerance!r}.")
    if not 0 < bias_tolerance:
        raise ValueError(f"`bias_tolerance` must be > 0, got {bias_tolerance}.")
    if budget is not None:
        budget = validation.check_count("budget", budget, minimum=1)
    num_steps, num_burnin = config.num_steps, config.num_burnin
    if num_steps is not None:
        num_steps = validation.check_count("num_steps", num_steps, minimum=1)
    if num_burnin is not None and num_steps is None:
        raise ValueError("`num_burnin` needs `num_steps` (the burn-in is part of the run).")
    num_chains = validation.check_count("num_chains", config.num_chains, minimum=1)
    seed = config.seed
    # Everything about the run (options, data, the loss on a minibatch) before compiling.
    first = {name: axis[0] for name, axis in axes.items()}
    prepared = prepare(
        stand_in(
            config,
            step_size=first.get("step_sizes", 1.0),
            localization=first.get("localizations", 1.0),
            num_steps=num_steps or 1000,
            nbeta=nbeta_axis[0],
        )
    )
    resolved, key = prepared.config, prepared.key
    judge = dict(
        acceptance_band=acceptance_band,
        tolerance=float(bias_tolerance),
        # one localization given: the user's choice, so only the step size is verified
        check_localization="localizations" not in axes or len(axes["localizations"]) > 1,
    )
    run = dict(prepared=prepared, nbetas=nbeta_axis, config=config)
    if "step_sizes" in axes and "localizations" in axes:
        grid_runs = len(axes["step_sizes"]) * len(axes["localizations"]) * len(nbeta_axis)
        steps = num_steps or max(1, (budget or DEFAULT_BUDGET) // (grid_runs * num_chains))
        if num_steps is None:
            run["config"] = dataclasses.replace(config, num_burnin=steps // 2)
        if budget is not None and grid_runs * num_chains * steps > budget:
            raise ValueError(
                f"`budget` = {budget} chain-steps is below what the grid needs: "
                f"{grid_runs} settings × {num_chains} chains × {steps} steps = "
                f"{grid_runs * num_chains * steps}."
            )
        if num_steps is None and steps < MIN_STEPS:  # the budget chose the run length
            raise ValueError(
                f"`budget` = {budget or DEFAULT_BUDGET} chain-steps gives {steps} steps per "
                f"chain for {grid_runs} settings × {num_chains} chains; at least {MIN_STEPS} "
                "are needed: raise the budget or give num_steps."
            )
        # the given seed itself: each cell's chains are those of estimate_llc(seed=seed)
        cal = _stage(axes["step_sizes"], axes["localizations"], num_chains, steps, seed, run, judge)
    else:
        cal = _automatic(axes, num_chains, num_steps, budget, key, resolved, run, judge)
    if not cal.trusted:
        warn_user(f"calibrate: {cal.explanation}", LLCDiagnosticWarning)
    return cal


def _check_axis(name: str, axis, data) -> list:
    if isinstance(axis, str) or not isinstance(axis, Iterable):
        raise TypeError(f"`{name}` must be a sequence of values, got {axis!r}.")
    axis = list(axis)
    if not axis:
        raise ValueError(f"`{name}` is empty.")
    if name == "step_sizes" and any(callable(v) for v in axis):
        raise TypeError("a grid takes numeric step sizes, not schedules.")
    for value in axis:
        if value is None and name == "nbetas":
            continue
        validation.check_positive(name[:-1], value, allow_zero=name == "localizations")
    # None in nbetas is n/log n: compare it by that value.
    resolved = axis if name != "nbetas" else [_resolved_nbeta(v, data) for v in axis]
    if _repeats(resolved):
        raise ValueError(f"`{name}` repeats a value: {axis}; give each setting once.")
    return axis


def run_stage(
    prepared,
    config: LLCConfig,
    step_sizes,
    localizations,
    num_chains: int,
    num_steps: int,
    seed,
    *,
    nbeta=None,
    tolerance: float = BIAS_TOLERANCE,
    check_localization: bool = True,
    acceptance_band: tuple[float, float] = ACCEPTANCE_BAND,
) -> Calibration:
    """One judged grid (one compiled program) on a ``prepared`` run taken as checked: the
    stage of the escalating calibration of ``step_size="auto"``
    (:mod:`slt_jax._src.jobs.escalate`); ``config`` gives the other options (its
    ``num_burnin`` included)."""
    run = dict(prepared=prepared, nbetas=[nbeta], config=config)
    judge = dict(
        acceptance_band=acceptance_band,
        tolerance=float(tolerance),
        check_localization=check_localization,
    )
    return _stage(step_sizes, localizations, num_chains, num_steps, seed, run, judge)


def _stage(step_sizes, localizations, num_chains, num_steps, seed, run, judge, **extra):
    """Run one grid (one compiled program) and judge it."""
    nbetas = run["nbetas"]
    cells = [
        dict(step_size=eps, localization=gamma, nbeta=nbeta)
        for eps, gamma, nbeta in itertools.product(step_sizes, localizations, nbetas)
    ]
    config = dataclasses.replace(
        run["config"], num_chains=num_chains, num_steps=num_steps, seed=seed
    )
    results = run_grid(run["prepared"], cells, config=config, common_keys=True)
    shape = (len(step_sizes), len(localizations), len(nbetas))
    problems = [cell_health(r, judge["acceptance_band"], judge["tolerance"]) for r in results]
    verdict = assess(
        results,
        problems,
        shape,
        judge["tolerance"],
        check_localization=judge["check_localization"],
    )
    resolved_nbetas = np.asarray([r.config.nbeta for r in results]).reshape(shape)[0, 0, :]
    recommended = None
    if verdict.recommended is not None:
        c = results[verdict.recommended].config
        recommended = dict(step_size=c.step_size, localization=c.localization, nbeta=c.nbeta)
    return Calibration(
        step_sizes=np.asarray(step_sizes, np.float64),
        localizations=np.asarray(localizations, np.float64),
        nbetas=np.asarray(resolved_nbetas, np.float64),
        results=tuple(results),
        problems=verdict.problems,
        recommended=recommended,
        explanation=verdict.explanation,
        trusted=verdict.trusted,
        next_grid=verdict.next_grid,
        fits=verdict.fits,
        verified=verdict.verified,
        **extra,
    )


def _automatic(axes, num_chains, num_steps, budget, key, config, run, judge) -> Calibration:
    """Measure the scales, run the coarse grid, then the refined grid around its best cell."""
    nbetas = run["nbetas"]
    nbeta = config.nbeta  # the first nβ of the axis, resolved
    stages = plan(
        budget,
        num_steps,
        num_chains,
        num_eps=len(axes["step_sizes"]) if "step_sizes" in axes else None,
        num_gamma=len(axes["localizations"]) if "localizations" in axes else None,
        num_nbetas=len(nbetas),
        default_budget=DEFAULT_BUDGET,
    )
    if num_steps is None:  # the run length is the calibration's: equilibrate for half of it
        run = {
            **run,
            "config": dataclasses.replace(run["config"], num_burnin=stages.num_steps // 2),
        }
    prepared = run["prepared"]
    scales = measure_scales(
        prepared.loss_fn, prepared.params, prepared.data, nbeta=nbeta, batch_size=config.batch_size
    )
    eps1, gamma1 = coarse_axes(scales, stages.coarse[:2])
    eps1 = axes.get("step_sizes", eps1)
    gamma1 = axes.get("localizations", gamma1)
    coarse = _stage(
        eps1,
        gamma1,
        stages.coarse[2],
        stages.num_steps,
        jax.random.fold_in(key, 1),
        run,
        judge,
        scales=scales,
    )
    eps_top, gamma_star = refined_centre(coarse, scales, judge["tolerance"])
    eps2, gamma2 = refined_axes(eps_top, gamma_star, stages.refined[0], stages.refined[1])
    eps2 = axes.get("step_sizes", eps2)
    gamma2 = axes.get("localizations", gamma2)
    refined = _stage(
        eps2,
        gamma2,
        stages.refined[2],
        stages.num_steps,
        jax.random.fold_in(key, 2),
        run,
        judge,
        coarse=coarse,
        scales=scales,
    )
    if refined.trusted or not coarse.trusted:
        return refined
    # The refined stage could not confirm, but the coarse stage verified a cell on its own
    # evidence: that is the recommendation, the refined stage kept beside it.
    return dataclasses.replace(
        coarse,
        refined=dataclasses.replace(refined, coarse=None),
        explanation=(
            f"{coarse.explanation} (From the coarse stage: the refined stage verified nothing: "
            f"{refined.explanation})"
        ),
    )


def _resolved_nbeta(nbeta, data) -> float | None:
    try:
        return resolve_nbeta(nbeta, _data.num_examples(data))
    except (ValueError, TypeError):
        return None  # bad data: reported by the run's own checks


def _repeats(axis: list) -> bool:
    """Whether a grid axis gives a setting twice (numbers by value, anything else, such as
    a schedule, by identity)."""

    def key(v):
        if v is None or callable(v) or np.ndim(v) != 0:
            return ("id", id(v))
        try:
            return ("value", float(v))
        except (TypeError, ValueError):
            return ("id", id(v))

    keys = [key(v) for v in axis]
    return len(set(keys)) < len(keys)
