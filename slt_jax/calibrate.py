"""Choosing the sampler's step size, localization and ``nβ``: a grid in one compiled call,
every cell checked, one setting recommended only where it is shown to be unbiased.

Give the grid (``step_sizes``, ``localizations``) or let :func:`calibrate` choose it: from
the problem's scales it runs a coarse grid, then a refined grid around the best region (two
compiled chain programs), within a ``budget`` of chain-steps. How cells are judged is in
:mod:`slt_jax._assess`; how the automatic grid is placed, in :mod:`slt_jax._autogrid`.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from slt_jax import _data, _validation
from slt_jax._assess import RowFit, assess
from slt_jax._autogrid import Scales, coarse_axes, measure_scales, plan, refined_axes
from slt_jax.diagnostics import (
    ACCEPTANCE_BAND,
    LLCDiagnosticWarning,
    stationarity,
)
from slt_jax.grid import run_grid
from slt_jax.posterior import LossFn, default_nbeta
from slt_jax.result import LLCResult

PyTree = Any

#: The largest relative bias accepted, for the step size and for the localization each:
#: a cell is verified when both are shown (at 2 standard errors) to be below it.
BIAS_TOLERANCE = 0.05
#: A cell's trace rising between its halves by this many standard errors (and half the
#: tolerance) has not equilibrated.
EQUILIBRATION_Z = 2.0
#: The fewest steps per chain a calibration runs when it chooses the run length.
MIN_STEPS = 100
#: The budget of an automatic calibration when neither ``budget`` nor ``num_steps`` is
#: given (chain-steps over both stages).
DEFAULT_BUDGET = 2_000_000

__all__ = ["Calibration", "RowFit", "Scales", "calibrate"]


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A grid of sampler settings, each with its estimate, health verdict and reasons.

    Attributes:
      step_sizes, localizations, nbetas: the grid's axes (``nbetas`` resolved to numbers).
      results: one :class:`~slt_jax.LLCResult` per cell, in the order of
        ``itertools.product(step_sizes, localizations, nbetas)``.
      problems: per cell, ``{kind: reason}`` for every check it failed (empty: healthy).
        Kinds: those of :meth:`~slt_jax.LLCResult.health` and ``"step_bias"``.
        Kinds: those of :meth:`~slt_jax.LLCResult.health`, ``"step_bias"`` (the estimate
        is shown to move with the step size) and ``"localization_bias"`` (a weaker
        localization gives a clearly different estimate).
      recommended: the recommended setting as keyword arguments of
        :func:`~slt_jax.estimate_llc`, or ``None`` when no setting can be used.
      trusted: the recommended setting was verified (healthy, its step bias and its
        localization's shrinkage both shown below ``bias_tolerance``). ``False`` with a
        recommendation: the best setting available, whose checks could not all be made
        (the explanation says which; a warning was raised).
      explanation: why that setting (or why none), and what to run next if not trusted.
      next_grid: when not trusted, a concrete grid to run next (``step_sizes``,
        ``localizations``, ``num_steps``), else ``None``.
      verified: flat indices of the verified cells.
      fits: per row (localization × nβ, in grid order) the step-size fit
        (:class:`slt_jax.calibrate.RowFit`): the ε → 0 corrected estimate and the bias of
        each usable cell.
      coarse: for an automatic calibration, the coarse stage (a :class:`Calibration`); this
        object is the refined stage. ``None`` for a grid given by hand.
      refined: set instead of ``coarse`` when the refined stage verified nothing but the
        coarse stage did: this object is then the coarse stage, whose verified cell is the
        recommendation, and ``refined`` the stage that could not confirm it.
      scales: for an automatic calibration, the problem's scales measured before sampling
        (:class:`slt_jax.calibrate.Scales`).
    """

    step_sizes: np.ndarray
    localizations: np.ndarray
    nbetas: np.ndarray
    results: tuple[LLCResult, ...]
    problems: tuple[dict[str, str], ...]
    recommended: dict | None
    explanation: str
    trusted: bool = False
    next_grid: dict | None = None
    fits: tuple[RowFit, ...] = ()
    verified: tuple[int, ...] = ()
    coarse: Calibration | None = None
    refined: Calibration | None = None
    scales: Scales | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.step_sizes), len(self.localizations), len(self.nbetas))

    def _grid(self, values) -> np.ndarray:
        return np.asarray(values).reshape(self.shape)

    @property
    def llc_mean(self) -> np.ndarray:
        """``λ̂`` per cell, shape ``(step_sizes, localizations, nbetas)``."""
        return self._grid([r.llc_mean for r in self.results])

    @property
    def llc_stderr(self) -> np.ndarray:
        return self._grid([r.llc_stderr for r in self.results])

    @property
    def corrected_llc(self) -> np.ndarray:
        """The ε → 0 corrected estimate ``λ₀`` per row, shape ``(localizations, nbetas)``
        (NaN where fewer than two step sizes of the row were usable). See
        :mod:`slt_jax._assess` for the fit."""
        return np.asarray([f.intercept for f in self.fits]).reshape(self.shape[1:])

    @property
    def corrected_stderr(self) -> np.ndarray:
        """The Monte-Carlo standard error of :attr:`corrected_llc`."""
        return np.asarray([f.intercept_stderr for f in self.fits]).reshape(self.shape[1:])

    @property
    def num_chain_steps(self) -> int:
        """Chain-steps this calibration ran (both stages of an automatic one)."""
        own = sum(r.config.num_chains * r.config.num_steps for r in self.results)
        others = [c.num_chain_steps for c in (self.coarse, self.refined) if c is not None]
        return own + sum(others)

    def step_bias(self) -> tuple[float, float]:
        """The recommended cell's fitted step bias ``λ̂(ε) − λ₀`` and its standard error
        (NaN when it could not be fitted)."""
        if self.recommended is None:
            return float("nan"), float("nan")
        i = self.cell(**self.recommended)
        fit = self.fits[
            int(np.ravel_multi_index(np.unravel_index(i, self.shape)[1:], self.shape[1:]))
        ]
        return fit.bias.get(i, (float("nan"), float("nan")))

    @property
    def healthy(self) -> np.ndarray:
        """True for the cells that passed every check."""
        return self._grid([not p for p in self.problems])

    @property
    def mala_acceptance(self) -> np.ndarray:
        """Mean MALA acceptance per cell (NaN where the sampler has none)."""
        return self._grid([_nanmean(r.mala_acceptance[~r.diverged]) for r in self.results])

    def cell(self, step_size: float, localization: float, nbeta: float | None = None) -> int:
        """The flat index of the cell with this setting (each value must be on its axis, to
        a relative 1e-6; a zero localization matches exactly). ``nbeta=None`` is ``n/log n``,
        as in the grid's ``nbetas``."""
        if nbeta is None:
            nbeta = default_nbeta(self.results[0].config.num_examples)
        index = []
        for name, axis, value in zip(
            ("step_size", "localization", "nbeta"),
            (self.step_sizes, self.localizations, self.nbetas),
            (step_size, localization, nbeta),
            strict=True,
        ):
            i = int(np.argmin(np.abs(axis - value)))
            if not np.isclose(axis[i], value, rtol=1e-6, atol=0.0):
                raise ValueError(f"{name}={value!r} is not on the grid's axis {axis.tolist()}.")
            index.append(i)
        return int(np.ravel_multi_index(index, self.shape))

    def result(
        self, step_size: float, localization: float, nbeta: float | None = None
    ) -> LLCResult:
        """The :class:`~slt_jax.LLCResult` of one cell."""
        return self.results[self.cell(step_size, localization, nbeta)]

    def summary(self) -> str:
        """One row per cell: setting, λ̂ ± MCSE, R-hat, ESS, acceptance, verdict."""
        header = (
            f"{'step_size':>10}  {'gamma':>8}  {'nbeta':>9}  {'LLC':>9}  {'± MCSE':>8}  "
            f"{'R-hat':>6}  {'ESS':>7}  {'accept':>6}  verdict"
        )
        lines = [header, "-" * (len(header) + 20)]
        settings = itertools.product(self.step_sizes, self.localizations, self.nbetas)
        best = self.cell(**self.recommended) if self.recommended is not None else None
        for i, ((eps, gamma, nbeta), res, problems) in enumerate(
            zip(settings, self.results, self.problems, strict=True)
        ):
            accept = _nanmean(res.mala_acceptance[~res.diverged])
            verdict = ", ".join(problems) or ("verified" if i in self.verified else "ok")
            verdict += "  <- recommended" if i == best else ""
            lines.append(
                f"{eps:>10.3g}  {gamma:>8.3g}  {nbeta:>9.4g}  {res.llc_mean:>9.4f}  "
                f"{res.llc_stderr:>8.4f}  {res.rhat:>6.3f}  {res.ess:>7.1f}  {accept:>6.3f}  "
                f"{verdict}"
            )
        for fit in self.fits:
            if fit.fitted:
                lines.append(
                    f"ε → 0 at gamma={fit.localization:g}, nbeta={fit.nbeta:.4g}: "
                    f"{fit.intercept:.4f} ± {fit.intercept_stderr:.4f} (from {len(fit.cells)} "
                    "step sizes)"
                )
        lines += ["", self.explanation]
        if self.coarse is not None:
            lines = ["refined stage:", *lines, "", "coarse stage:", self.coarse.summary()]
        elif self.refined is not None:
            lines = ["coarse stage:", *lines, "", "refined stage:", self.refined.summary()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path=None):
        """A heatmap of ``λ̂`` over (step size × localization), one panel per ``nβ``, unhealthy
        cells hatched and named, the recommended cell outlined. See
        :func:`slt_jax.plots.plot_calibration`."""
        from slt_jax.plots import plot_calibration

        return plot_calibration(self, path)

    def to_xarray(self):
        """An ``xarray.Dataset`` over ``(step_size, localization, nbeta)``."""
        import xarray as xr

        dims = ("step_size", "localization", "nbeta")
        kinds = sorted({kind for p in self.problems for kind in p})
        variables = {
            "llc_mean": (dims, self.llc_mean),
            "llc_stderr": (dims, self.llc_stderr),
            "rhat": (dims, self._grid([r.rhat for r in self.results])),
            "ess": (dims, self._grid([r.ess for r in self.results])),
            "mala_acceptance": (dims, self.mala_acceptance),
            "healthy": (dims, self.healthy),
        }
        for kind in kinds:
            variables[f"problem_{kind}"] = (dims, self._grid([kind in p for p in self.problems]))
        coords = dict(step_size=self.step_sizes, localization=self.localizations, nbeta=self.nbetas)
        variables["corrected_llc"] = (dims[1:], self.corrected_llc)
        variables["corrected_stderr"] = (dims[1:], self.corrected_stderr)
        attrs = {
            "recommended": repr(self.recommended),
            "trusted": int(self.trusted),
            "explanation": self.explanation,
        }
        return xr.Dataset(variables, coords=coords, attrs=attrs)


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def calibrate(
    loss_fn: LossFn,
    params: PyTree,
    data: PyTree,
    *,
    step_sizes: Sequence[float] | None = None,
    localizations: Sequence[float] | None = None,
    nbetas: Sequence[float | None] = (None,),
    num_chains: int = 4,
    num_steps: int | None = None,
    num_burnin: int | None = None,
    batch_size: int = 256,
    estimator: str = "paired",
    sampler="sgld",
    diagnostic_every: int = 10,
    seed: int | jax.Array = 0,
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
    parameters; see :mod:`slt_jax._autogrid`), a coarse log grid is run around them with
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
    must be healthy (not wandering) — at least one of them. With a single localization given,
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
        budget = _validation.check_count("budget", budget, minimum=1)
    if num_steps is not None:
        num_steps = _validation.check_count("num_steps", num_steps, minimum=1)
    num_chains = _validation.check_count("num_chains", num_chains, minimum=1)
    key = _validation.resolve_key(seed)
    common = dict(
        num_burnin=num_burnin,
        batch_size=batch_size,
        estimator=estimator,
        sampler=sampler,
        diagnostic_every=diagnostic_every,
    )
    # Everything about the run (options, data, the loss on a minibatch) before compiling.
    _validation.check_params(params)
    first = {name: axis[0] for name, axis in axes.items()}
    config, _ = _validation.check_run(
        loss_fn,
        params,
        data,
        num_chains=num_chains,
        num_steps=num_steps or 1000,
        step_size=first.get("step_sizes", 1.0),
        localization=first.get("localizations", 1.0),
        nbeta=nbeta_axis[0],
        seed=key,
        **common,
    )
    if num_burnin is not None and num_steps is None:
        raise ValueError("`num_burnin` needs `num_steps` (the burn-in is part of the run).")
    judge = dict(
        acceptance_band=acceptance_band,
        tolerance=float(bias_tolerance),
        # one localization given: the user's choice, so only the step size is verified
        check_localization="localizations" not in axes or len(axes["localizations"]) > 1,
    )
    run = dict(
        loss_fn=loss_fn,
        params=params,
        data=data,
        nbetas=nbeta_axis,
        mesh=mesh,
        devices=devices,
        **common,
    )
    if "step_sizes" in axes and "localizations" in axes:
        grid_runs = len(axes["step_sizes"]) * len(axes["localizations"]) * len(nbeta_axis)
        steps = num_steps or max(1, (budget or DEFAULT_BUDGET) // (grid_runs * num_chains))
        if num_steps is None:
            run["num_burnin"] = steps // 2
        if budget is not None and grid_runs * num_chains * steps > budget:
            raise ValueError(
                f"`budget` = {budget} chain-steps is below what the grid needs: "
                f"{grid_runs} settings × {num_chains} chains × {steps} steps = "
                f"{grid_runs * num_chains * steps}."
            )
        # the given seed itself: each cell's chains are those of estimate_llc(seed=seed)
        if steps < MIN_STEPS:
            raise ValueError(
                f"`budget` = {budget or DEFAULT_BUDGET} chain-steps gives {steps} steps per "
                f"chain for {grid_runs} settings × {num_chains} chains; at least {MIN_STEPS} "
                "are needed: raise the budget or give num_steps."
            )
        cal = _stage(axes["step_sizes"], axes["localizations"], num_chains, steps, seed, run, judge)
    else:
        cal = _automatic(axes, num_chains, num_steps, budget, key, config, run, judge)
    if not cal.trusted:
        warnings.warn(f"calibrate: {cal.explanation}", LLCDiagnosticWarning, stacklevel=2)
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
        _validation.check_positive(name[:-1], value, allow_zero=name == "localizations")
    # None in nbetas is n/log n: compare it by that value.
    resolved = (
        axis if name != "nbetas" else [_default_nbeta(data) if v is None else v for v in axis]
    )
    if _repeats(resolved):
        raise ValueError(f"`{name}` repeats a value: {axis}; give each setting once.")
    return axis


def _stage(step_sizes, localizations, num_chains, num_steps, key, run, judge, **extra):
    """Run one grid (one compiled program) and judge it."""
    run = dict(run)
    nbetas = run.pop("nbetas")
    cells = [
        dict(step_size=eps, localization=gamma, nbeta=nbeta)
        for eps, gamma, nbeta in itertools.product(step_sizes, localizations, nbetas)
    ]
    results = run_grid(
        run.pop("loss_fn"),
        run.pop("params"),
        run.pop("data"),
        cells,
        common_keys=True,
        num_chains=num_chains,
        num_steps=num_steps,
        seed=key,
        **run,
    )
    shape = (len(step_sizes), len(localizations), len(nbetas))
    problems = [_cell_health(r, judge["acceptance_band"], judge["tolerance"]) for r in results]
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
        run = {**run, "num_burnin": stages.num_steps // 2}
    scales = measure_scales(
        run["loss_fn"], run["params"], run["data"], nbeta=nbeta, batch_size=config.batch_size
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
    eps_top, gamma_star = _centre(coarse, scales, judge["tolerance"])
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


def _centre(coarse: Calibration, scales: Scales, tolerance: float) -> tuple[float, float]:
    """The refined grid's largest step size and its localization.

    At the coarse stage's recommended localization: the largest healthy step size not
    shown to be biased, and no more than twice the step size where the fitted bias reaches
    the tolerance (when the fit's slope is significant). With nothing healthy: the largest
    step size whose chains were stable (not diverged, acceptance in the band), else a
    quarter of the smallest, at the middle localization (ten times the strongest when most
    cells wander).
    """
    if coarse.recommended is None:
        # Nothing healthy: below the largest step size whose chains were stable, at the
        # middle localization.
        stable = [
            r.config.step_size
            for r, p in zip(coarse.results, coarse.problems, strict=True)
            if not {"diverged", "acceptance", "init_loss"} & set(p)
        ]
        wandering = sum("wandering" in p for p in coarse.problems)
        gamma = float(np.median(coarse.localizations))
        if wandering > len(coarse.problems) / 2 and coarse.localizations.max() > 0:
            gamma = 10 * float(coarse.localizations.max())  # chains drift: localize more
        return (max(stable) if stable else coarse.step_sizes.min() / 4), gamma
    gamma = coarse.recommended["localization"]
    i = coarse.cell(**coarse.recommended)
    _, j, k = np.unravel_index(i, coarse.shape)
    row = [int(np.ravel_multi_index((a, j, k), coarse.shape)) for a in range(coarse.shape[0])]
    usable = [
        r
        for r in row
        if not (set(coarse.problems[r]) - {"step_bias", "localization_bias"})
        and "step_bias" not in coarse.problems[r]
    ]
    top = (
        max(coarse.results[r].config.step_size for r in usable)
        if usable
        else (coarse.recommended["step_size"])
    )
    fit = coarse.fits[int(np.ravel_multi_index((j, k), coarse.shape[1:]))]
    if fit.fitted and fit.slope > 0 and fit.intercept > 0:
        biggest = max(fit.bias, key=lambda c: coarse.results[c].config.step_size)
        bias, se = fit.bias[biggest]
        if bias > 2 * se:  # the slope is measured, not noise
            top = min(top, 2 * tolerance * fit.intercept / fit.slope)
    return float(top), gamma


def _default_nbeta(data) -> float | None:
    try:
        return default_nbeta(_data.num_examples(data))
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


def _cell_health(result: LLCResult, acceptance_band, tolerance: float) -> dict[str, str]:
    """The health checks of one cell, with the equilibration check at the calibration's
    tolerance: a trace whose halves differ by more than ``tolerance`` (and 3 standard
    errors) has not equilibrated well enough to measure a bias of that size."""
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
