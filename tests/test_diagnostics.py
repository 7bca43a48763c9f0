"""The chain diagnostics against traces whose answers are known.

An AR(1) trace x_t = φ x_{t-1} + sqrt(1 - φ²) e_t with unit stationary variance has
integrated autocorrelation time (1 + φ) / (1 - φ): C chains of N draws carry
ESS = C N (1 - φ) / (1 + φ) and the standard error of their mean is 1 / sqrt(ESS). The
spread of the estimates over independent replicates (measured: 4% of the ESS for φ = 0,
17% for φ = 0.9, with 4 × 1000 draws) sets the tolerances: the mean over R replicates is
checked to 4 of its standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from slt_jax._src.estimators import diagnostics as d


def ar1(phi: float, chains: int, draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains)
    noise = rng.normal(size=(chains, draws)) * np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


@pytest.mark.parametrize("phi, rel_sd", [(0.0, 0.05), (0.9, 0.2)])
def test_ess_and_stderr_of_ar1(phi, rel_sd):
    replicates, chains, draws = 20, 4, 1000
    big = ar1(phi, replicates * chains, draws, seed=int(phi * 10))
    stats = [d.chain_diagnostics(big[r * chains : (r + 1) * chains]) for r in range(replicates)]
    ess = np.array([s.ess for s in stats])
    true_ess = chains * draws * (1 - phi) / (1 + phi)
    tol = 4 * rel_sd / np.sqrt(replicates)
    assert abs(ess.mean() / true_ess - 1) < tol
    stderr = np.array([s.stderr for s in stats])
    # se = sd / sqrt(ESS): relative error half that of the ESS, plus the sd's own (small).
    assert abs(stderr.mean() * np.sqrt(true_ess) - 1) < tol
    assert all(abs(s.rhat - 1) < 0.05 for s in stats)  # one stationary process


def test_rhat_sees_disagreeing_chains():
    x = ar1(0.5, 4, 500, seed=3)
    assert d.chain_diagnostics(x).rhat < d.RHAT_THRESHOLD
    x[:2] += 2.0  # two chains in another mode
    # Split into 8 half-chains, four at mean 0 and four at 2: their means have sample variance
    # 8/7 against a within-chain variance of 1, so R-hat ≈ sqrt(1 + 8/7) ≈ 1.46.
    assert d.chain_diagnostics(x).rhat == pytest.approx(np.sqrt(1 + 8 / 7), abs=0.1)


def test_constant_and_short_traces():
    c = d.chain_diagnostics(np.full((3, 50), 2.5))
    assert np.isnan(c.rhat) and c.ess == 150 and c.stderr == 0.0
    assert all(np.isnan(d.chain_diagnostics(np.ones((2, d.MIN_DRAWS - 1)))))
    assert all(np.isnan(d.stationarity(np.ones((2, 2 * d.MIN_DRAWS - 1)))))
    assert d.stationarity(np.full((2, 40), 1.0)).z == 0.0


def test_stationarity_z_is_a_standard_score():
    """On stationary traces z is ~N(0, 1): its spread over replicates is one (within the
    sampling error of a standard deviation from 60 draws, ±3 × 1/sqrt(120))."""
    for phi in (0.0, 0.8):
        z = np.array([d.stationarity(ar1(phi, 4, 400, seed=100 + s)).z for s in range(60)])
        assert abs(z.std() - 1) < 3 / np.sqrt(2 * len(z))
        assert np.abs(z).max() < d.STATIONARITY_Z  # P(|z| > 4) ≈ 6e-5 per trace


def test_stationarity_sees_a_trend():
    x = ar1(0.5, 4, 400, seed=7) + np.linspace(0, 3, 400)
    s = d.stationarity(x)
    assert s.second - s.first == pytest.approx(1.5, abs=0.3)
    assert s.z > d.STATIONARITY_Z  # measured 7.3: the trend within each half also inflates its se


def test_stationarity_undecidable_on_an_unstable_ess():
    """Seven draws per half from a short run, where numpyro's ESS of the second half is
    negative: the difference has no usable standard error, so z is NaN (not ±inf) and the
    trace is not called non-stationary on that basis."""
    trace = np.array(
        [
            [-17.95, -8.48, -15.25, -8.04, -8.32, -8.09, -15.2, -15.76, -24.67, -15.46, -32.66],
            [-1.3, -13.04, -8.34, -6.09, -11.53, -7.73, -25.15, -18.92, -19.14, -19.93, -17.39],
        ]
    )
    trace = np.concatenate(
        [trace, [[-13.27, -5.65, -33.44, -12.97], [-29.48, -12.01, -17.34, -15.64]]], axis=1
    )
    assert d.chain_diagnostics(trace[:, 7:14]).ess < 0
    s = d.stationarity(trace)
    assert s.second < s.first and np.isnan(s.z)
    problems = d.health_problems(
        llc_mean=1.0, rhat=1.0, ess=200.0, num_diverged=0, num_chains=2, llc_trace=trace + 40
    )
    assert "nonstationary" not in problems


def healthy(**overrides):
    trace = 5.0 + ar1(0.5, 4, 400, seed=11)
    kwargs = dict(
        llc_mean=float(trace.mean()),
        rhat=1.0,
        ess=800.0,
        num_diverged=0,
        num_chains=4,
        init_loss=0.3,
        llc_trace=trace,
        acceptance=np.full((4, 400), 0.95),
        weight_distance=1.0 + 0.1 * ar1(0.5, 4, 400, seed=12) ** 2,
    )
    return d.health_problems(**{**kwargs, **overrides})


def test_health_problems_each_kind():
    assert healthy() == {}
    trend = np.linspace(0, 4, 400)
    cases = {
        "init_loss": dict(init_loss=float("inf")),
        "diverged": dict(num_diverged=1),
        "rhat": dict(rhat=1.2),
        "ess": dict(ess=50.0),
        "negative": dict(llc_mean=-0.1),
        "acceptance": dict(acceptance=np.full((4, 400), 0.6)),
        "nonstationary": dict(llc_trace=5.0 + ar1(0.5, 4, 400, seed=11) + trend),
        "wandering": dict(weight_distance=1.0 + trend + 0.01 * ar1(0.5, 4, 400, seed=12)),
        "below_init": dict(
            llc_trace=np.concatenate([5 + ar1(0.5, 3, 400, 1), -3 + ar1(0.5, 1, 400, 2)])
        ),
    }
    for kind, override in cases.items():
        problems = healthy(**override)
        assert kind in problems, (kind, problems)
        assert problems[kind]  # an explanation, not an empty string
    assert "decrease step_size" in healthy(acceptance=np.full((4, 400), 0.6))["acceptance"]
    # A drift smaller than STATIONARITY_RELATIVE of the estimate is not flagged, however
    # many standard errors it spans (a long run resolves tiny, irrelevant drifts).
    tiny = 50.0 + 0.01 * ar1(0.0, 4, 4000, seed=5) + np.linspace(0, 0.5, 4000)
    assert "nonstationary" not in healthy(llc_mean=float(tiny.mean()), llc_trace=tiny)
