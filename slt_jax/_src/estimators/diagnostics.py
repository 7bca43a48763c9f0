"""Chain diagnostics: split R-hat, effective sample size and Monte-Carlo standard error.

R-hat and ESS come from numpyro (``split_gelman_rubin``, ``effective_sample_size``: Gelman et
al., *Bayesian Data Analysis*, 3rd ed., §11.4-11.5); they are computed on the per-draw LLC
trace of the chains that did not diverge. For the ``"plain"`` estimator that trace is an
affine function of the loss trace, so its R-hat and ESS are those of the loss trace.

The standard error of the pooled mean is ``sd / sqrt(ESS)``, with ``sd`` the standard
deviation of all pooled draws: the Monte-Carlo error of ``λ̂`` accounting for the
autocorrelation within chains and the disagreement between them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

RHAT_THRESHOLD = 1.1
MIN_ESS = 100.0
MIN_DRAWS = 4
#: The healthy range of the mean MALA acceptance probability of the moves (Lau et al. 2023
#: found SGLD settings with acceptance ≈ 0.9 and above to give reliable estimates).
ACCEPTANCE_BAND = (0.9, 1.0)
#: A trace is non-stationary when its first and second halves differ by more than this many
#: standard errors *and* by more than this fraction of the estimate.
STATIONARITY_Z = 4.0
STATIONARITY_RELATIVE = 0.1
#: A chain's loss fell below L_n(w*) when its second-half LLC mean is this many standard
#: errors below zero.
BELOW_INIT_Z = 3.0


class LLCDiagnosticWarning(UserWarning):
    """A diagnostic of an LLC estimate is out of its healthy range."""


def center_not_finite(value: float, where: str = "") -> str:
    """The one wording of a loss that is not finite at ``w*`` (an error before the chains
    run, or a flagged checkpoint of a sweep)."""
    place = f" ({where})" if where else ""
    return (
        f"the loss at w* over the data, L_n(w*), is not finite ({value}){place}: the LLC is "
        "undefined there; check loss_fn at these parameters (e.g. a log of 0)"
    )


class ChainDiagnostics(NamedTuple):
    rhat: float
    ess: float
    stderr: float


def chain_diagnostics(trace: np.ndarray) -> ChainDiagnostics:
    """R-hat, ESS and the standard error of the mean of ``trace`` (chains, draws)."""
    trace = np.asarray(trace, np.float64)
    if trace.shape[1] < MIN_DRAWS:
        return ChainDiagnostics(np.nan, np.nan, np.nan)
    sd = float(np.std(trace))
    if sd == 0.0:  # a constant trace: no Monte-Carlo error, nothing to diagnose
        return ChainDiagnostics(np.nan, float(trace.size), 0.0)
    rhat = float(split_gelman_rubin(trace))
    ess = float(effective_sample_size(trace))
    stderr = sd / np.sqrt(ess) if ess > 0 else np.nan  # numpyro's ESS can be <= 0 on tiny runs
    return ChainDiagnostics(rhat, ess, stderr)


class Stationarity(NamedTuple):
    first: float  # mean of the first half of the draws (all chains)
    second: float  # mean of the second half
    z: float  # (second - first) / its standard error


def stationarity(trace: np.ndarray) -> Stationarity:
    """Compare the first and second halves of ``trace`` (chains, draws), pooled over chains;
    each half's standard error comes from its own effective sample size."""
    trace = np.asarray(trace, np.float64)
    half = trace.shape[1] // 2
    if half < MIN_DRAWS or trace.shape[0] == 0:
        return Stationarity(np.nan, np.nan, np.nan)
    first, second = trace[:, :half], trace[:, half : 2 * half]
    se = np.hypot(chain_diagnostics(first).stderr, chain_diagnostics(second).stderr)
    diff = second.mean() - first.mean()
    if not np.isfinite(se):  # an ESS too unstable to use (tiny halves): drift is undecidable
        z = np.nan
    else:
        z = diff / se if se > 0 else (0.0 if diff == 0 else np.inf * np.sign(diff))
    return Stationarity(float(first.mean()), float(second.mean()), float(z))


def chains_below_init(trace: np.ndarray) -> np.ndarray:
    """Indices of the chains whose second-half LLC mean is significantly negative: their
    loss settled below ``L(w*)``, so ``w*`` is not a local minimum at this temperature."""
    trace = np.asarray(trace, np.float64)
    half = trace[:, trace.shape[1] // 2 :]
    if half.shape[1] < MIN_DRAWS:
        return np.zeros(0, int)
    below = []
    for i, chain in enumerate(half):
        sd = chain.std()
        ess = float(effective_sample_size(chain[None])) if sd > 0 else np.nan
        stderr = sd / np.sqrt(ess) if np.isfinite(ess) and ess >= 1 else sd  # guard: ESS ≥ 1
        if chain.mean() < -BELOW_INIT_Z * stderr:
            below.append(i)
    return np.asarray(below, int)


def health_problems(
    *,
    llc_mean: float,
    rhat: float,
    ess: float,
    num_diverged: int,
    num_chains: int,
    init_loss: float = 0.0,
    llc_trace: np.ndarray | None = None,
    acceptance: np.ndarray | None = None,
    acceptance_band: tuple[float, float] = ACCEPTANCE_BAND,
    weight_distance: np.ndarray | None = None,
) -> dict[str, str]:
    """Each diagnostic out of its healthy range, as ``{kind: explanation}``.

    Kinds: ``"init_loss"``, ``"diverged"``, ``"rhat"``, ``"ess"``, ``"negative"``, and,
    given the per-draw LLC trace of the chains that did not diverge, ``"nonstationary"``
    and ``"below_init"``; given the MALA acceptance probabilities, ``"acceptance"``; given
    ``‖w − w*‖`` along the chains, ``"wandering"`` (still moving away from ``w*``).
    """
    problems = {}
    if not np.isfinite(init_loss):
        problems["init_loss"] = center_not_finite(init_loss)
    if num_diverged:
        problems["diverged"] = (
            f"{num_diverged} of {num_chains} chains diverged (non-finite loss or parameters) "
            "and were excluded from the estimate; consider a smaller step_size"
        )
    if np.isfinite(rhat) and rhat > RHAT_THRESHOLD:
        problems["rhat"] = (
            f"R-hat = {rhat:.3f} > {RHAT_THRESHOLD}: the chains disagree; run longer, burn in "
            "longer, or use a smaller step_size"
        )
    if np.isfinite(ess) and ess < MIN_ESS:
        problems["ess"] = (
            f"effective sample size {ess:.1f} < {MIN_ESS:.0f}: the standard error is "
            "unreliable; run more steps or chains"
        )
    if llc_mean < 0:
        problems["negative"] = (
            f"negative LLC estimate ({llc_mean:.4g}): the chains found lower loss than w*, "
            "which is then not a local minimum at this temperature; increase localization, "
            "decrease step_size, or train w* further"
        )
    if acceptance is not None and np.isfinite(acceptance).any():
        mean = float(np.nanmean(acceptance))
        low, high = acceptance_band
        if not low <= mean <= high:
            advice = "decrease step_size" if mean < low else "the step_size can be larger"
            problems["acceptance"] = (
                f"mean MALA acceptance {mean:.3f} is outside [{low}, {high}]: {advice}"
            )
    if llc_trace is not None and np.size(llc_trace):
        halves = stationarity(llc_trace)
        scale = max(abs(halves.first), abs(halves.second))
        if abs(halves.z) > STATIONARITY_Z and abs(halves.second - halves.first) > (
            STATIONARITY_RELATIVE * scale
        ):
            problems["nonstationary"] = (
                f"the LLC trace drifts: first half {halves.first:.4g}, second half "
                f"{halves.second:.4g} ({halves.z:+.1f} standard errors); burn in longer, or "
                "use a larger step_size so the chains equilibrate"
            )
    if weight_distance is not None and np.isfinite(weight_distance).all():
        halves = stationarity(weight_distance)
        if halves.z > STATIONARITY_Z and halves.second > (1 + STATIONARITY_RELATIVE) * halves.first:
            problems["wandering"] = (
                f"the chains are still moving away from w*: mean ‖w − w*‖ grew from "
                f"{halves.first:.4g} to {halves.second:.4g} between the halves of the draws "
                f"({halves.z:+.1f} standard errors); the estimate depends on the run length. "
                "Increase localization, or run longer until the distance levels off"
            )
    if llc_trace is not None and np.size(llc_trace):
        below = chains_below_init(llc_trace)
        if below.size:
            problems["below_init"] = (
                f"{below.size} chain(s) settled at a loss below L_n(w*) (second-half LLC "
                f"more than {BELOW_INIT_Z:g} standard errors below 0): w* is not a local "
                "minimum here; increase localization or train w* further"
            )
    return problems


def localization_elasticity(result) -> tuple[float, float]:
    r"""How the localization moves one cell's estimate, from its own draws: the elasticity
    ``e = d log λ̂ / d log γ`` and its Monte-Carlo standard error (NaN, NaN where the cell
    recorded no distances or has no localization).

    For the localized tempered posterior ``π_γ ∝ exp(−nβ L_n − γ/2 ‖w − w*‖²)``,
    differentiating under the integral gives ``dE[nβ L_n]/dγ = −½ Cov(nβ L_n, ‖w − w*‖²)``,
    so

    .. math:: e = -\frac{\gamma}{2}\,\frac{\mathrm{Cov}(nβ(L_n − L_n(w^*)),\,
       \lVert w − w^*\rVert^2)}{\hat\lambda},

    read from the LLC trace at the draws that recorded ``‖w − w*‖`` (within-chain
    covariance; the standard error is the product series' own, autocorrelation included).
    At first order the shrinkage of ``λ̂`` against ``γ → 0`` is ``−e`` (for a quadratic,
    ``e = −Σ_i ½γA_i/(A_i + γ)² / λ̂ ≈ −γ/A``). The identity holds for equilibrated
    chains: chains still spreading (``wandering``) raise both together and read as a
    shrinkage, never as its absence."""
    c = result.config
    every = int(c.diagnostic_every or 0)
    gamma = float(c.localization or 0.0)
    nan = (float("nan"), float("nan"))
    if every <= 0 or gamma <= 0:
        return nan
    distance = np.asarray(result.weight_distance, np.float64)
    if distance.ndim != 2 or distance.shape[1] < 8:
        return nan
    healthy = ~np.asarray(result.diverged)
    trace = np.asarray(result.llc_trace, np.float64)[healthy][:, ::every]
    rho = distance[healthy] ** 2
    k = min(trace.shape[1], rho.shape[1])
    trace, rho = trace[:, :k], rho[:, :k]
    if trace.size == 0 or not (np.isfinite(trace).all() and np.isfinite(rho).all()):
        return nan
    mean = float(trace.mean())
    if not mean > 0:
        return nan
    product = (trace - trace.mean(1, keepdims=True)) * (rho - rho.mean(1, keepdims=True))
    stderr = float(chain_diagnostics(product).stderr)
    scale = 0.5 * gamma / mean
    return -scale * float(product.mean()), scale * stderr
