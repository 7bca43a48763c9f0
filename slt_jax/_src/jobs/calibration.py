"""The result of a calibration: a grid of settings, each with its estimate, verdict and
reasons, the per-row step-size fits and the one setting recommended."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from slt_jax._src.config import resolve_nbeta
from slt_jax._src.jobs.assess import RowFit
from slt_jax._src.jobs.autogrid import Scales
from slt_jax._src.results import LLCResult


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
        (:class:`slt_jax._src.jobs.assess.RowFit`): the ε → 0 corrected estimate and the bias of
        each usable cell.
      coarse: for an automatic calibration, the coarse stage (a :class:`Calibration`); this
        object is the refined stage. ``None`` for a grid given by hand.
      refined: set instead of ``coarse`` when the refined stage verified nothing but the
        coarse stage did: this object is then the coarse stage, whose verified cell is the
        recommendation, and ``refined`` the stage that could not confirm it.
      scales: for an automatic calibration, the problem's scales measured before sampling
        (:class:`slt_jax._src.jobs.autogrid.Scales`).
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
        :mod:`slt_jax._src.jobs.assess` for the fit."""
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
        nbeta = resolve_nbeta(nbeta, self.results[0].config.num_examples)
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
        from slt_jax._src.plots import plot_calibration

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
