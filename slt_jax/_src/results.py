"""The result of an LLC estimate: a pytree of arrays plus its (static) configuration and,
for ``step_size="auto"``, the record of its calibration.

A result over a checkpoint set has a leading checkpoint axis on every array field and the
training ``steps``; :meth:`LLCResult.to_xarray` labels the axes (``checkpoint``, ``chain``,
``draw``, ``burnin_draw``) for xarray / netCDF users.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax
import numpy as np

from slt_jax._src.config import LLCConfig
from slt_jax._src.estimators.diagnostics import ACCEPTANCE_BAND, health_problems
from slt_jax._src.io import export
from slt_jax._src.version import __version__

# Each field's named axes after the optional leading checkpoint axis.
_DIMS = {
    "llc_mean": (),
    "llc_std": (),
    "llc_stderr": (),
    "llc_per_chain": ("chain",),
    "loss_trace": ("chain", "draw"),
    "llc_trace": ("chain", "draw"),
    "burnin_loss_trace": ("chain", "burnin_draw"),
    "init_loss": (),
    "init_loss_stderr": (),
    "rhat": (),
    "ess": (),
    "diverged": ("chain",),
    "mala_acceptance": ("chain", "diagnostic_draw"),
    "weight_distance": ("chain", "diagnostic_draw"),
    "grad_norm": ("chain", "diagnostic_draw"),
    "noise_norm": ("chain", "diagnostic_draw"),
}


@dataclasses.dataclass(frozen=True)
class CalibrationRecord:
    """How an automatic step size (``step_size="auto"``) was chosen (static: not a leaf).

    Attributes:
      step_size, localization, nbeta: the chosen setting.
      trusted: the calibration verified it (step bias and localization shrinkage both shown
        below its tolerance); ``False``: the best available setting, with a warning.
      explanation: the calibration's reasons (and what to run next if not trusted).
      table: the calibration's table (:meth:`slt_jax.Calibration.summary`).
      reference_llc: the calibration's own estimate at the chosen setting.
      corrected_llc, corrected_stderr: its ε → 0 corrected estimate (the step-size fit of
        the chosen row) and standard error; ``None`` where it could not be fitted.
      step_bias, step_bias_stderr: ``reference_llc − corrected_llc`` and its standard error.
      chain_steps: chain-steps the calibration ran.
      calibrate_on: the training step of the checkpoint it ran on (a checkpoint sweep).
      budget: the calibration's budget of chain-steps as given (``None``: the default).
    """

    step_size: float
    localization: float
    nbeta: float
    trusted: bool
    explanation: str
    table: str
    reference_llc: float
    corrected_llc: float | None = None
    corrected_stderr: float | None = None
    step_bias: float | None = None
    step_bias_stderr: float | None = None
    chain_steps: int = 0
    calibrate_on: int | None = None
    budget: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> CalibrationRecord:
        return cls(**fields)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LLCResult:
    """An LLC estimate with its traces and diagnostics.

    Attributes:
      llc_mean: ``λ̂``, the mean over non-diverged chains of ``llc_per_chain``.
      llc_std: standard deviation of ``llc_per_chain`` across non-diverged chains.
      llc_stderr: standard error of ``llc_mean``: the Monte-Carlo error from the effective
        sample size and, for the plain estimator with a sampled ``L_n(w*)``, ``nβ ·
        init_loss_stderr``, in quadrature.
      llc_per_chain: ``(chains,)`` per-chain estimates; those of diverged chains (see
        ``diverged``) are usually NaN or inf but may be finite (a chain that failed on its
        last move) and are left out of every estimate.
      loss_trace: ``(chains, draws)`` minibatch losses ``L_B(w_t)`` after burn-in.
      llc_trace: ``(chains, draws)`` per-draw LLC values; ``llc_per_chain`` is their mean.
      burnin_loss_trace: ``(chains, burnin)`` minibatch losses during burn-in.
      init_loss: ``L_n(w*)``, the full-data loss at the centre: exact, or the mean over a
        bounded sample of minibatches (``config.init_loss_batches``, see
        :attr:`init_loss_batches`).
      init_loss_stderr: the standard error of ``init_loss`` (0 when exact; NaN for a
        sample of one batch).
      rhat: split R-hat of ``llc_trace`` over non-diverged chains.
      ess: effective sample size of ``llc_trace`` over non-diverged chains.
      diverged: ``(chains,)`` bool, a chain whose loss or parameters became non-finite.
      mala_acceptance: ``(chains, k)``, every ``config.diagnostic_every`` draws: for SGLD and
        RMSProp-SGLD, the Metropolis-Hastings acceptance probability the move would have had
        as a MALA proposal on the same minibatch (≳ 0.9 is healthy, Lau et al. 2023); for
        MALA, HMC and NUTS, their own acceptance probability; NaN for SGHMC and SGNHT.
      weight_distance: ``(chains, k)`` ``‖w_t − w*‖`` at the same draws.
      grad_norm: ``(chains, k)`` ``‖∇log p(w_t)‖`` (the localized, tempered gradient).
      noise_norm: ``(chains, k)`` the norm of the Gaussian noise the move injected (NaN for
        the Metropolis samplers).
      config: the settings of the run (:class:`LLCConfig`).
      steps: ``(checkpoints,)`` training steps, for a result over a checkpoint set (every
        other array field then has a leading checkpoint axis); ``None`` otherwise.
      calibration: for ``step_size="auto"``, how the setting was chosen
        (:class:`CalibrationRecord`); ``None`` otherwise.
    """

    llc_mean: float
    llc_std: float
    llc_stderr: float
    llc_per_chain: np.ndarray
    loss_trace: np.ndarray
    llc_trace: np.ndarray
    burnin_loss_trace: np.ndarray
    init_loss: float
    rhat: float
    ess: float
    diverged: np.ndarray
    mala_acceptance: np.ndarray
    weight_distance: np.ndarray
    grad_norm: np.ndarray
    noise_norm: np.ndarray
    config: LLCConfig = dataclasses.field(metadata=dict(static=True))
    steps: np.ndarray | None = None
    calibration: CalibrationRecord | None = dataclasses.field(
        default=None, metadata=dict(static=True)
    )
    init_loss_stderr: float = 0.0

    @property
    def init_loss_batches(self) -> int | str:
        """How ``init_loss`` was computed: ``"exact"`` (every example) or the number of
        minibatches of ``config.batch_size`` it is the mean of."""
        return self.config.init_loss_batches or "exact"  # an unresolved config: None

    @property
    def llc_mcse(self):
        """The chains' Monte-Carlo standard error of ``llc_mean`` alone (without the sampled
        ``L_n(w*)``'s error, which differences between results sharing it cancel)."""
        if self.config.estimator != "plain":
            return self.llc_stderr
        init = self.config.nbeta * np.asarray(self.init_loss_stderr, np.float64)
        se = np.sqrt(np.maximum(0.0, np.square(self.llc_stderr) - np.square(init)))
        return se if np.ndim(se) else float(se)

    @property
    def llc_corrected(self):
        r"""``λ̂`` with the step bias the calibration fitted removed (``step_size="auto"``):
        ``λ̂ · λ₀/λ̂_cal``, where ``λ₀`` is the calibration's ε → 0 estimate and ``λ̂_cal``
        its estimate at the chosen step size (the relative bias measured on the calibration
        checkpoint, applied to every checkpoint of a sweep). NaN without such a fit."""
        factor, _ = self._correction()
        return (
            np.asarray(self.llc_mean) * factor
            if np.ndim(self.llc_mean)
            else (float(self.llc_mean * factor))
        )

    @property
    def llc_corrected_stderr(self):
        """The standard error of :attr:`llc_corrected`: this run's and the fit's combined."""
        factor, factor_se = self._correction()
        se = np.hypot(np.asarray(self.llc_stderr) * factor, np.asarray(self.llc_mean) * factor_se)
        return se if np.ndim(se) else float(se)

    def _correction(self) -> tuple[float, float]:
        c = self.calibration
        if c is None or c.corrected_llc is None or not c.reference_llc:
            return float("nan"), float("nan")
        return c.corrected_llc / c.reference_llc, (c.step_bias_stderr or 0.0) / abs(c.reference_llc)

    @property
    def num_diverged(self) -> int | np.ndarray:
        """Diverged chains (per checkpoint, for a result over a checkpoint set)."""
        total = np.sum(self.diverged, axis=-1)
        return int(total) if np.ndim(total) == 0 else total

    def health(self, acceptance_band: tuple[float, float] = ACCEPTANCE_BAND) -> dict[str, str]:
        """Diagnostics of this (single) estimate out of their healthy range, by kind:
        ``init_loss``, ``diverged``, ``rhat``, ``ess``, ``negative``, ``acceptance``,
        ``nonstationary``, ``below_init``, ``wandering`` (empty when healthy). See
        :func:`slt_jax._src.estimators.diagnostics.health_problems`."""
        if self.steps is not None:
            raise ValueError("health() is per estimate; use result.checkpoint(k).health().")
        healthy = ~np.asarray(self.diverged)
        return health_problems(
            llc_mean=self.llc_mean,
            rhat=self.rhat,
            ess=self.ess,
            num_diverged=self.num_diverged,
            num_chains=self.config.num_chains,
            init_loss=self.init_loss,
            llc_trace=np.asarray(self.llc_trace)[healthy],
            acceptance=np.asarray(self.mala_acceptance)[healthy],
            weight_distance=np.asarray(self.weight_distance)[healthy],
            acceptance_band=acceptance_band,
        )

    @property
    def wbic(self):
        r"""The (localized) WBIC, ``E_β[n L_n(w)]`` at this run's ``β = nβ / n``:

        .. math:: \mathrm{WBIC} = n L_n(w^*) + \hat\lambda\, n / (n\beta),

        from the same draws as ``λ̂`` (Watanabe 2013, JMLR 14; at the default
        ``nβ = n / log n`` it is ``n L_n(w*) + λ̂ log n``)."""
        n = self.config.num_examples
        return n * np.asarray(self.init_loss) + np.asarray(self.llc_mean) * n / self.config.nbeta

    @property
    def wbic_stderr(self):
        """The standard error of :attr:`wbic`. With the plain estimator ``L_n(w*)`` cancels
        (``WBIC = n · mean_t L_{B_t}(w_t)``): the chains' Monte-Carlo error only; with the
        paired one, ``n · init_loss_stderr`` is added in quadrature."""
        n, nbeta = self.config.num_examples, self.config.nbeta
        se = np.asarray(self.llc_mcse) * n / nbeta
        if self.config.estimator != "plain":
            se = np.hypot(se, n * np.asarray(self.init_loss_stderr, np.float64))
        return se

    def checkpoint(self, k: int) -> LLCResult:
        """The single-checkpoint result at index ``k`` of a result over checkpoints."""
        if self.steps is None:
            raise ValueError("this result is not over checkpoints (steps is None).")
        return jax.tree.map(lambda x: x[k], dataclasses.replace(self, steps=None))

    def to_xarray(self):
        """An ``xarray.Dataset`` with named axes; the configuration is in its attributes."""
        import xarray as xr

        lead = () if self.steps is None else ("checkpoint",)
        variables = {
            name: (lead + dims, np.asarray(getattr(self, name))) for name, dims in _DIMS.items()
        }
        coords = {} if self.steps is None else {"step": ("checkpoint", np.asarray(self.steps))}
        attrs = {
            "config": json.dumps(self.config.to_dict()),
            "slt_jax_version": __version__,
        }
        if self.calibration is not None:
            attrs["calibration"] = json.dumps(self.calibration.to_dict())
        return xr.Dataset(variables, coords=coords, attrs=attrs)

    def to_zarr(self, path) -> None:
        """:meth:`to_xarray` written to a Zarr store; ``LLCResult.from_xarray(
        xarray.open_zarr(path))`` reads it back. Needs ``pip install "slt-jax[lm]"``."""
        export.to_zarr(self.to_xarray(), path)

    def to_netcdf(self, path) -> None:
        """:meth:`to_xarray` written to a netCDF-4 file; ``LLCResult.from_xarray(
        xarray.open_dataset(path))`` reads it back."""
        export.to_netcdf(self.to_xarray(), path)

    @classmethod
    def from_xarray(cls, dataset) -> LLCResult:
        """The inverse of :meth:`to_xarray`."""
        config = LLCConfig(**json.loads(dataset.attrs["config"]))
        calibration = None
        if "calibration" in dataset.attrs:
            calibration = CalibrationRecord.from_dict(json.loads(dataset.attrs["calibration"]))
        fields = {name: np.asarray(dataset[name].values) for name in _DIMS if name in dataset}
        if "init_loss_stderr" not in fields:  # written before sampled L_n(w*): exact
            fields["init_loss_stderr"] = np.zeros_like(fields["init_loss"])
        fields["diverged"] = fields["diverged"].astype(bool)
        if "step" in dataset.coords:
            steps = np.asarray(dataset["step"].values)
            return cls(**fields, config=config, steps=steps, calibration=calibration)
        scalars = {name: float(fields[name]) for name, dims in _DIMS.items() if dims == ()}
        return cls(**{**fields, **scalars}, config=config, calibration=calibration)

    def summary(self) -> str:
        """A short human-readable table of the estimate and its diagnostics."""
        if self.steps is not None:
            return checkpoint_table(self)
        c = self.config
        rows = [
            ("LLC", f"{self.llc_mean:.4f} ± {self.llc_stderr:.4f} ({self._stderr_text()})"),
            ("std across chains", f"{self.llc_std:.4f}"),
            ("per chain", np.array2string(np.asarray(self.llc_per_chain), precision=3)),
            ("init loss L_n(w*)", self._init_loss_text()),
            ("R-hat", f"{self.rhat:.4f}"),
            ("ESS", f"{self.ess:.1f}"),
            ("diverged chains", f"{self.num_diverged} / {c.num_chains}"),
            *self._diagnostic_rows(),
            ("WBIC", f"{self.wbic:.6g} ± {self.wbic_stderr:.3g}"),
            ("health", "; ".join(self.health()) or "ok"),
            *self._calibration_rows(),
            (
                "settings",
                f"{c.sampler}, estimator={c.estimator}, step_size={self._step_text()}, "
                f"localization={c.localization:g}, nbeta={c.nbeta:.4g}",
            ),
            (
                "",
                f"chains={c.num_chains}, steps={c.num_steps} (burn-in {c.num_burnin}), "
                f"batch_size={c.batch_size}, n={c.num_examples}",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def _stderr_text(self) -> str:
        if self.config.estimator == "plain" and self.init_loss_batches != "exact":
            return "MCSE and the L_n(w*) sample's"
        return "MCSE"

    def _init_loss_text(self) -> str:
        k = self.init_loss_batches
        if k == "exact":
            return f"{self.init_loss:.6g} (exact, all {self.config.num_examples} examples)"
        return (
            f"{self.init_loss:.6g} ± {self.init_loss_stderr:.3g} (sampled: {k} batches of "
            f"{self.config.batch_size})"
        )

    def _calibration_rows(self) -> list[tuple[str, str]]:
        c = self.calibration
        if c is None:
            return []
        rows = [
            (
                "calibration",
                f"step_size='auto': {'verified' if c.trusted else 'NOT verified'} "
                f"({c.chain_steps} chain-steps)",
            )
        ]
        if c.corrected_llc is not None:
            rows.append(
                ("ε → 0 corrected", f"{self.llc_corrected:.4f} ± {self.llc_corrected_stderr:.4f}")
            )
        return rows

    def _step_text(self) -> str:
        c = self.config
        return c.step_size_schedule if c.step_size_schedule else f"{c.step_size:g}"

    def _diagnostic_rows(self) -> list[tuple[str, str]]:
        """Mean (min to max over chains) of each recorded chain diagnostic."""
        healthy = ~np.asarray(self.diverged)
        rows = []
        names = {
            "mala_acceptance": "MALA acceptance",
            "weight_distance": "‖w − w*‖",
            "grad_norm": "‖∇log p‖",
            "noise_norm": "‖noise‖",
        }
        for field, label in names.items():
            values = np.asarray(getattr(self, field))[healthy]
            if values.size == 0 or not np.isfinite(values).any():
                continue
            per_chain = np.nanmean(values, axis=1)
            rows.append(
                (
                    label,
                    f"{np.nanmean(values):.4g} (chains {np.nanmin(per_chain):.4g} to "
                    f"{np.nanmax(per_chain):.4g})",
                )
            )
        return rows

    def __str__(self) -> str:
        return self.summary()


def stack_results(results: Sequence[LLCResult], steps: Sequence[int]) -> LLCResult:
    """One result over checkpoints from per-checkpoint results (same configuration)."""
    configs = {r.config for r in results}
    if len(configs) != 1:
        raise ValueError("results with different configurations cannot be stacked.")
    stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *results)
    return dataclasses.replace(stacked, steps=np.asarray(steps, np.int64))


def concat_results(results: Sequence[LLCResult]) -> LLCResult:
    """Join results over checkpoint sets along the checkpoint axis, sorted by step."""
    joined = jax.tree.map(lambda *leaves: np.concatenate(leaves), *results)
    order = np.argsort(joined.steps, kind="stable")
    return jax.tree.map(lambda x: x[order], joined)


def checkpoint_table(result: LLCResult) -> str:
    """One row per checkpoint: step, λ̂ ± MCSE, spread across chains, R-hat, ESS, diverged."""
    c = result.config
    header = (
        f"{'step':>10}  {'LLC':>10}  {'± MCSE':>8}  {'std':>8}  {'R-hat':>6}  {'ESS':>7}  "
        f"{'div':>5}  flags"
    )
    lines = [header, "-" * (len(header) + 12)]
    for k, step in enumerate(np.asarray(result.steps)):
        one = result.checkpoint(k)
        lines.append(
            f"{int(step):>10}  {one.llc_mean:>10.4f}  {one.llc_stderr:>8.4f}  "
            f"{one.llc_std:>8.4f}  {one.rhat:>6.3f}  {one.ess:>7.1f}  "
            f"{one.num_diverged:>2}/{c.num_chains:<2}  {' '.join(one.health())}"
        )
    lines.append(
        "flags: rhat > 1.1, ess < 100, negative estimate, diverged chains, init_loss not "
        "finite, MALA acceptance < 0.9, nonstationary trace, chains below L_n(w*), chains "
        "wandering away from w*"
    )
    lines.append(
        f"{c.sampler}, estimator={c.estimator}, "
        f"step_size={c.step_size_schedule or format(c.step_size, 'g')}, "
        f"localization={c.localization:g}, nbeta={c.nbeta:.4g}, chains={c.num_chains}, "
        f"steps={c.num_steps} (burn-in {c.num_burnin}), batch_size={c.batch_size}, "
        f"n={c.num_examples}"
    )
    return "\n".join(lines)
