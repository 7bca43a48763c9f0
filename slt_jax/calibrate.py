"""Choosing the sampler's step size, localization and ``nβ``: a grid in one compiled call,
every cell checked, one setting recommended with its reasons."""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from slt_jax import _data
from slt_jax.diagnostics import ACCEPTANCE_BAND, chain_diagnostics
from slt_jax.grid import run_grid
from slt_jax.posterior import LossFn, default_nbeta
from slt_jax.result import LLCResult

PyTree = Any

#: A step size's estimate is biased when it differs from the smallest healthy step size's
#: by more than this fraction (and by more than 3 standard errors of the difference).
BIAS_TOLERANCE = 0.1


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A grid of sampler settings, each with its estimate, health verdict and reasons.

    Attributes:
      step_sizes, localizations, nbetas: the grid's axes (``nbetas`` resolved to numbers).
      results: one :class:`~slt_jax.LLCResult` per cell, in the order of
        ``itertools.product(step_sizes, localizations, nbetas)``.
      problems: per cell, ``{kind: reason}`` for every check it failed (empty: healthy).
        Kinds: those of :meth:`~slt_jax.LLCResult.health` and ``"step_bias"``.
      recommended: the recommended setting as keyword arguments of
        :func:`~slt_jax.estimate_llc` (``None`` when no cell is healthy).
      explanation: why that setting (or why none).
    """

    step_sizes: np.ndarray
    localizations: np.ndarray
    nbetas: np.ndarray
    results: tuple[LLCResult, ...]
    problems: tuple[dict[str, str], ...]
    recommended: dict | None
    explanation: str

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
        for (eps, gamma, nbeta), res, problems in zip(
            settings, self.results, self.problems, strict=True
        ):
            accept = _nanmean(res.mala_acceptance[~res.diverged])
            lines.append(
                f"{eps:>10.3g}  {gamma:>8.3g}  {nbeta:>9.4g}  {res.llc_mean:>9.4f}  "
                f"{res.llc_stderr:>8.4f}  {res.rhat:>6.3f}  {res.ess:>7.1f}  {accept:>6.3f}  "
                f"{'ok' if not problems else ', '.join(problems)}"
            )
        lines += ["", self.explanation]
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
        attrs = {"recommended": repr(self.recommended), "explanation": self.explanation}
        return xr.Dataset(variables, coords=coords, attrs=attrs)


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def calibrate(
    loss_fn: LossFn,
    params: PyTree,
    data: PyTree,
    *,
    step_sizes: Sequence[float],
    localizations: Sequence[float] = (100.0,),
    nbetas: Sequence[float | None] = (None,),
    num_chains: int = 4,
    num_steps: int = 1000,
    num_burnin: int | None = None,
    batch_size: int = 256,
    estimator: str = "paired",
    sampler="sgld",
    diagnostic_every: int = 10,
    seed: int = 0,
    acceptance_band: tuple[float, float] = ACCEPTANCE_BAND,
    bias_tolerance: float = BIAS_TOLERANCE,
    mesh=None,
    devices=None,
) -> Calibration:
    r"""Run every (step size, localization, ``nβ``) of a grid and recommend one.

    All ``G = len(step_sizes)·len(localizations)·len(nbetas)`` settings × ``num_chains``
    chains run as one vmapped compiled program (the settings are array arguments; one
    compilation). Every cell's chain ``i`` uses the same key (common random numbers: the
    same minibatches and noise draws), so differences between cells are measured from the
    per-draw differences of their traces, with far less noise than either estimate.

    Each cell is checked (:meth:`~slt_jax.LLCResult.health` plus the step-size bias):

    * ``diverged``: chains with non-finite loss or parameters;
    * ``rhat``: split R-hat > 1.1; ``ess``: effective sample size < 100;
    * ``acceptance``: mean MALA acceptance of the moves outside ``acceptance_band``;
    * ``negative``: ``λ̂ < 0``; ``below_init``: a chain settled below ``L_n(w*)``;
    * ``nonstationary``: the first and second halves of the draws disagree;
    * ``wandering``: the chains are still moving away from ``w*`` (``‖w − w*‖`` grows);
    * ``init_loss``: ``L_n(w*)`` is not finite, so the estimate is undefined;
    * ``step_bias``: the estimate still moves with ``ε``. Against the smallest step size
      ``ε₀`` that passed the other checks (same localization and ``nβ``), the bias at
      ``ε`` is estimated as ``(λ̂(ε) − λ̂(ε₀))·ε/(ε − ε₀)`` (SGLD's Euler scheme is biased at
      first order in ``ε``, as the quadratic oracle of :mod:`slt_jax.theory` shows); it is
      flagged above ``bias_tolerance`` of ``λ̂(ε₀)`` and 3 standard errors.

    The recommendation, among the healthy cells: the weakest localization (least
    shrinkage of ``λ̂``), then ``nβ = n/log n`` if it is in the grid (else the first
    ``nβ`` given), then the largest step size (the best-mixing chains that are still
    unbiased by the checks above).

    Args:
      step_sizes, localizations, nbetas: the grid (``None`` in ``nbetas``: ``n/log n``).
      acceptance_band: the healthy range of the mean MALA acceptance.
      bias_tolerance: the largest relative step-size bias accepted.
      Other arguments: as in :func:`~slt_jax.estimate_llc`.

    Returns:
      A :class:`Calibration`: ``cal.recommended`` are keyword arguments for
      :func:`~slt_jax.estimate_llc`; ``print(cal)`` shows the table; ``cal.plot(path)``
      the heatmap.

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 512)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> cal = sj.calibrate(loss, jnp.array([2.0]), (x, y), step_sizes=[1e-4, 1e-3, 1e-2],
      ...                    localizations=[1.0], num_steps=2000, batch_size=64)
      >>> cal.llc_mean.shape
      (3, 1, 1)
      >>> sorted(cal.recommended)
      ['localization', 'nbeta', 'step_size']
    """
    axes = []
    for name, axis in zip(
        ("step_sizes", "localizations", "nbetas"), (step_sizes, localizations, nbetas), strict=True
    ):
        if isinstance(axis, str) or not isinstance(axis, Iterable):
            raise TypeError(f"`{name}` must be a sequence of values, got {axis!r}.")
        axis = list(axis)
        if not axis:
            raise ValueError(f"`{name}` is empty.")
        # None in nbetas is n/log n: compare it by that value.
        resolved = (
            axis if name != "nbetas" else [_default_nbeta(data) if v is None else v for v in axis]
        )
        if _repeats(resolved):
            raise ValueError(f"`{name}` repeats a value: {axis}; give each setting once.")
        axes.append(axis)
    low, high = acceptance_band
    if not 0 <= low <= high <= 1:
        raise ValueError(f"`acceptance_band` must be 0 <= low <= high <= 1, got {acceptance_band}.")
    if isinstance(bias_tolerance, bool) or not isinstance(bias_tolerance, numbers.Real):
        raise TypeError(f"`bias_tolerance` must be a number, got {bias_tolerance!r}.")
    if not 0 < bias_tolerance:
        raise ValueError(f"`bias_tolerance` must be > 0, got {bias_tolerance}.")
    cells = [
        dict(step_size=eps, localization=gamma, nbeta=nbeta)
        for eps, gamma, nbeta in itertools.product(*axes)
    ]
    results = run_grid(
        loss_fn,
        params,
        data,
        cells,
        common_keys=True,
        mesh=mesh,
        devices=devices,
        num_chains=num_chains,
        num_steps=num_steps,
        num_burnin=num_burnin,
        batch_size=batch_size,
        estimator=estimator,
        sampler=sampler,
        diagnostic_every=diagnostic_every,
        seed=seed,
    )
    shape = tuple(len(axis) for axis in axes)
    resolved_nbetas = np.asarray([r.config.nbeta for r in results]).reshape(shape)[0, 0, :]
    problems = [_cell_health(r, acceptance_band) for r in results]
    _step_bias(results, problems, shape, bias_tolerance)
    default_nbeta = next(
        (r.config.nbeta for r, c in zip(results, cells, strict=True) if c["nbeta"] is None),
        None,
    )
    recommended, explanation = _recommend(
        results, problems, resolved_nbetas, default_nbeta, bias_tolerance
    )
    return Calibration(
        step_sizes=np.asarray(axes[0], np.float64),
        localizations=np.asarray(axes[1], np.float64),
        nbetas=np.asarray(resolved_nbetas, np.float64),
        results=tuple(results),
        problems=tuple(problems),
        recommended=recommended,
        explanation=explanation,
    )


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


def _cell_health(result: LLCResult, acceptance_band) -> dict[str, str]:
    problems = result.health(acceptance_band)
    if np.asarray(result.diverged).all():
        problems["diverged"] = "every chain diverged; use a smaller step_size"
    return problems


def _step_bias(results, problems, shape, tolerance) -> None:
    """Flag the cells whose estimate moved with the step size (in place)."""
    index = np.arange(len(results)).reshape(shape)
    for j, k in itertools.product(range(shape[1]), range(shape[2])):
        row = [i for i in index[:, j, k] if not problems[i]]  # ascending order of ε given
        row.sort(key=lambda i: results[i].config.step_size)
        if len(row) < 2:
            continue
        ref = results[row[0]]
        for i in row[1:]:
            res = results[i]
            eps, eps_ref = res.config.step_size, ref.config.step_size
            # SGLD's Euler scheme is biased at first order in ε: extrapolate the difference
            # from the smallest healthy step size to ε → 0.
            scale = eps / (eps - eps_ref)
            bias = (res.llc_mean - ref.llc_mean) * scale
            se = _difference_stderr(res, ref) * scale
            if abs(bias) > 3 * se and abs(bias) > tolerance * abs(ref.llc_mean):
                problems[i]["step_bias"] = (
                    f"λ̂ = {res.llc_mean:.4g} against {ref.llc_mean:.4g} at the smallest healthy"
                    f" step size {eps_ref:g}: an estimated step bias of "
                    f"{100 * bias / abs(ref.llc_mean):+.0f}% ({bias / se:+.1f} standard errors,"
                    " extrapolated at first order in ε)"
                )


def _difference_stderr(a: LLCResult, b: LLCResult) -> float:
    """The standard error of ``λ̂_a − λ̂_b``. The cells share their chains' keys (the same
    minibatches and noise draws), so the per-draw difference of their traces carries the
    error of the difference, which is far smaller than that of either estimate."""
    both = ~(np.asarray(a.diverged) | np.asarray(b.diverged))
    if both.any() and np.shape(a.llc_trace) == np.shape(b.llc_trace):
        difference = np.asarray(a.llc_trace)[both] - np.asarray(b.llc_trace)[both]
        stderr = chain_diagnostics(difference).stderr
        if np.isfinite(stderr):
            return float(stderr)
    return float(np.hypot(a.llc_stderr, b.llc_stderr))


def _recommend(results, problems, nbetas, default_nbeta, tolerance):
    healthy = [i for i, p in enumerate(problems) if not p]
    if not healthy:
        counts: dict[str, int] = {}
        for p in problems:
            for kind in p:
                counts[kind] = counts.get(kind, 0) + 1
        common = ", ".join(
            f"{k} ({v} cells)" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
        )
        return None, (
            f"No setting passed every check (most common problems: {common}). Widen the "
            "grid: smaller step sizes for divergence, acceptance or step bias; more steps "
            "or chains for R-hat, ESS or a drifting trace; stronger localization for chains "
            "that fall below L_n(w*)."
        )
    preferred_nbeta = default_nbeta if default_nbeta is not None else nbetas[0]

    def rank(i):
        c = results[i].config
        return (c.localization, abs(c.nbeta - preferred_nbeta), -c.step_size)

    best = min(healthy, key=rank)
    c, res = results[best].config, results[best]
    recommended = dict(step_size=c.step_size, localization=c.localization, nbeta=c.nbeta)
    same_row = [
        i
        for i in healthy
        if results[i].config.localization == c.localization and results[i].config.nbeta == c.nbeta
    ]
    smallest = min(same_row, key=lambda i: results[i].config.step_size)
    compare = (
        " It is also the smallest healthy step size at this localization and nβ, so no"
        " smaller one could measure its step bias: add a smaller step size to check it."
    )
    if smallest != best:
        ref = results[smallest]
        compare = (
            f" Against the smallest healthy step size {ref.config.step_size:g} (λ̂ ="
            f" {ref.llc_mean:.4g}) its estimated step bias is below {tolerance:.0%} (or 3"
            " standard errors), and it mixes faster."
        )
    explanation = (
        f"Recommended: step_size={c.step_size:g}, localization={c.localization:g}, "
        f"nbeta={c.nbeta:.4g}: λ̂ = {res.llc_mean:.4g} ± {res.llc_stderr:.2g}. "
        f"{len(healthy)} of {len(problems)} settings passed every check; among them this has "
        "the weakest localization (least shrinkage of λ̂), the preferred nβ "
        f"({preferred_nbeta:.4g}), and the largest step size.{compare}"
    )
    return recommended, explanation
