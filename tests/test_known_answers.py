"""LLC estimates against known answers (DESIGN.md §2).

Every tolerance is derived, not tuned: the Monte-Carlo error comes either from the exact
variance of the chain (quadratic oracle) or from the reported MCSE, which the oracle test
validates against that exact variance; systematic terms (step size, localization,
minibatch noise) are computed from theory and added to the band explicitly.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_mc_close, quadratic_loss

import slt_jax as sj
from slt_jax import theory


def oracle_finite_run(h, *, nbeta, gamma, eps, burnin, draws):
    """Exact mean and sd of one chain's λ̂ for L = ½ Σ h_i w_i², full batch, started at w*.

    Coordinate i is the AR(1) chain w_{t+1} = ρ w_t + N(0, ε), ρ = 1 - εA/2, w_0 = 0, so
    Var w_t = v (1 - ρ^{2t}), Cov(w_s, w_t) = ρ^{|t-s|} Var w_min(s,t), and for Gaussians
    Cov(w_s², w_t²) = 2 Cov(w_s, w_t)². The estimate averages nβ·½ h w_t² over the draws.
    """
    t = np.arange(burnin, burnin + draws)
    mean, var = 0.0, 0.0
    for hi in h:
        a = nbeta * hi + gamma
        rho = 1 - eps * a / 2
        v = eps / (1 - rho**2)
        var_t = v * (1 - rho ** (2 * t))
        scale = nbeta * hi / 2
        mean += scale * var_t.mean()
        lag = np.abs(t[:, None] - t[None, :])
        cov = rho**lag * np.minimum(var_t[:, None], var_t[None, :])
        var += scale**2 * 2 * np.sum(cov**2) / draws**2
    return mean, np.sqrt(var)


@pytest.mark.parametrize("estimator", ["paired", "plain"])
def test_quadratic_oracle_including_step_size_bias(estimator):
    h = np.array([1.0, 0.5, 0.1])
    n, gamma, eps, chains, steps, burnin = 1000, 10.0, 5e-3, 8, 2000, 200
    nbeta = n / np.log(n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.LLCDiagnosticWarning)  # a healthy run: no warnings
        res = sj.estimate_llc(
            quadratic_loss(h),
            jnp.zeros(3),
            jnp.zeros((n, 1)),
            num_chains=chains,
            num_steps=steps,
            num_burnin=burnin,
            step_size=eps,
            localization=gamma,
            batch_size=n,
            estimator=estimator,
        )
    mean, sd_chain = oracle_finite_run(
        h, nbeta=nbeta, gamma=gamma, eps=eps, burnin=burnin, draws=steps - burnin
    )
    sd = sd_chain / np.sqrt(chains)
    stationary = theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps)
    assert abs(mean - stationary) < 0.5 * sd  # burn-in long enough to be stationary
    assert abs(res.llc_mean - mean) < 4 * sd
    # The test has the power to see the step-size bias: the ε → 0 value is far outside.
    exact_posterior = theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma)
    assert abs(exact_posterior - mean) > 8 * sd
    # The reported MCSE agrees with the exact Monte-Carlo error (ESS estimates from 14,400
    # autocorrelated draws are good to a few tens of percent).
    assert 0.6 < res.llc_stderr / sd < 1.6
    assert res.loss_trace.shape == res.llc_trace.shape == (chains, steps - burnin)
    assert res.init_loss == 0.0 and not res.diverged.any()


def test_linear_regression_is_regular_with_minibatches(linear_regression):
    """λ = d/2 up to localization and step bias (oracle with Ĥ = XᵀX/n) and minibatch noise."""
    loss_fn, w_ols, (x, y) = linear_regression
    n, d = x.shape
    nbeta, gamma, eps, b = n / np.log(n), 1.0, 5e-4, 500
    res = sj.estimate_llc(
        loss_fn,
        w_ols,
        (x, y),
        num_chains=8,
        num_steps=3000,
        num_burnin=500,
        step_size=eps,
        localization=gamma,
        batch_size=b,
    )
    oracle, delta, (low, high) = minibatch_band(
        x, nbeta=nbeta, gamma=gamma, eps=eps, b=b, stderr=res.llc_stderr
    )
    assert delta < 0.05
    assert low < res.llc_mean < high, (res.llc_mean, low, high)
    assert abs(oracle - theory.regular_learning_coefficient(d)) < 0.1  # the band is about d/2


def minibatch_band(x, *, nbeta, gamma, eps, b, stderr):
    """The band for λ̂ of a well-specified linear regression (σ = 1) at its OLS fit.

    With exact gradients λ̂ is the quadratic oracle with h = eig(XᵀX/n). Minibatch gradient
    noise at ŵ has covariance ≈ σ² Ĥ / b, so each step adds (ε/2)² nβ² h_i / b of variance on
    top of ε: the stationary variance, hence λ̂, grows by at most the factor (1 + δ_i).
    """
    x = np.asarray(x, np.float64)
    h = np.linalg.eigvalsh(x.T @ x / len(x))
    oracle = theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps)
    delta = eps * nbeta**2 * h.max() / (4 * b)
    return oracle, delta, (oracle - 4 * stderr, oracle * (1 + delta) + 4 * stderr)


def monomial_target(p, *, nbeta, gamma):
    """E[nβ·½ w^p] under exp(-nβ·½ w^p - γ/2 w²), by quadrature on a fine grid."""
    scale = (2 / nbeta) ** (1 / p)
    w = np.linspace(-12 * scale, 12 * scale, 200_001)
    log_density = -nbeta * 0.5 * w**p - 0.5 * gamma * w**2
    weight = np.exp(log_density - log_density.max())
    return float(np.sum(nbeta * 0.5 * w**p * weight) / np.sum(weight))


def test_sum_of_monomials():
    """K(w) = ½(w₁² + w₂⁴): λ = 1/2 + 1/4, from exact gradients."""
    powers, nbeta, gamma, eps = (2, 4), 200.0, 1.0, 2e-4

    def loss_fn(w, batch):
        del batch
        return 0.5 * (w[0] ** 2 + w[1] ** 4)

    res = sj.estimate_llc(
        loss_fn,
        jnp.zeros(2),
        jnp.zeros((100, 1)),
        num_chains=16,
        num_steps=32_000,
        num_burnin=2_000,
        step_size=eps,
        localization=gamma,
        nbeta=nbeta,
        batch_size=100,
    )
    target = sum(monomial_target(p, nbeta=nbeta, gamma=gamma) for p in powers)
    # Localization shrinks λ only slightly at γ = 1 ≪ nβ.
    assert abs(target - theory.monomial_learning_coefficient(powers)) < 0.02
    # Step bias bound: that of a quadratic with the largest curvature the chains visit
    # (nβ·(p-1)p/2·w^{p-2} at w = 3 posterior sd), relative (εA/4)/(1 - εA/4) per term.
    bias = 0.0
    for p in powers:
        sd = np.sqrt(monomial_target(p, nbeta=nbeta, gamma=gamma) * 2 / nbeta) ** (2 / p)
        curvature = nbeta * (p - 1) * p / 2 * (3 * sd) ** (p - 2) + gamma
        rel = eps * curvature / 4
        bias += monomial_target(p, nbeta=nbeta, gamma=gamma) * rel / (1 - rel)
    assert_mc_close(res.llc_mean, res.llc_stderr, target, extra=bias)


def test_paired_estimator_cuts_minibatch_variance():
    """At large n the plain estimator's spread is nβ × minibatch noise; the paired one's is not.

    The draws see m = draws·b examples without replacement (less than one epoch), so the
    plain estimate's minibatch part has sd nβ·sd(ℓ_j)·sqrt((1 − m/n)/m), where ℓ_j is the
    per-example loss at w*. The paired difference cancels it; what is left scales with
    |w − w*| ~ 1/√nβ.
    """
    rng = np.random.default_rng(1)
    n, d, b, draws = 100_000, 2, 100, 800
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.ones(d) + rng.normal(size=n)).astype(np.float32)
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    per_example = 0.5 * (x @ w - y) ** 2

    def loss_fn(w, batch):
        return 0.5 * jnp.mean((batch[0] @ w - batch[1]) ** 2)

    kw = dict(
        num_chains=16,
        num_steps=1000,
        num_burnin=1000 - draws,
        step_size=1e-5,
        localization=1.0,
        batch_size=b,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        paired = sj.estimate_llc(loss_fn, jnp.asarray(w), (x, y), estimator="paired", **kw)
        plain = sj.estimate_llc(loss_fn, jnp.asarray(w), (x, y), estimator="plain", **kw)
    nbeta, m = n / np.log(n), draws * b
    predicted = nbeta * per_example.std() * np.sqrt((1 - m / n) / m)
    assert predicted > 5  # much larger than λ = 1: the regime the paired estimator is for
    # The sd of 16 chains is within a factor 2 of the truth with probability > 0.998
    # (15·s²/σ² is chi-square with 15 dof: P(< 15/4) ≈ 0.0015, P(> 60) < 1e-6).
    assert predicted / 2 < plain.llc_std < predicted * 2
    assert paired.llc_std < plain.llc_std / 10
    # At this ε the minibatch noise inflates λ̂ well above d/2 (δ ≈ 1.9); the band predicts it.
    _, delta, (low, high) = minibatch_band(
        x, nbeta=nbeta, gamma=1.0, eps=1e-5, b=b, stderr=paired.llc_stderr
    )
    assert delta > 1 and low < paired.llc_mean < high, (paired.llc_mean, low, high)


def _dln_data(widths, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, widths[0])).astype(np.float32)
    y = rng.normal(size=(n, widths[-1])).astype(np.float32)  # truth f ≡ 0: rank 0
    return jnp.asarray(x), jnp.asarray(y)


def _dln_loss(params, batch):
    x, y = batch
    for w in params:
        x = x @ w
    return 0.5 * jnp.mean(jnp.sum((x - y) ** 2, axis=1))


@pytest.mark.slow
def test_deep_linear_network_at_origin_matches_aoyagi():
    """Widths (5, 4, 5), rank 0, w* = 0: λ = 8 (Aoyagi & Watanabe 2005; Aoyagi 2024).

    Band: Watanabe's WBIC theorem (2010, JMLR 11; 2013, JMLR 14) gives at β = 1/log n
    nβ(E_β[L_n] − L_n(w0)) = λ + U_n·sqrt(λβ/2) + o(1) with U_n asymptotically standard
    normal over data sets, and a multiplicity-m correction −(m−1)/log(nβ); add 4 MCSE.
    """
    widths, n = (5, 4, 5), 100_000
    lam, m = theory.dln_learning_coefficient(widths, 0)
    data = _dln_data(widths, n, seed=0)
    params = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=False)]
    res = sj.estimate_llc(
        _dln_loss,
        params,
        data,
        num_chains=8,
        num_steps=6000,
        num_burnin=1000,
        step_size=2e-5,
        localization=1.0,
        batch_size=500,
    )
    beta = 1 / np.log(n)
    nbeta = n * beta
    center = lam - (m - 1) / np.log(nbeta)
    band = 3 * np.sqrt(lam * beta / 2) + 4 * res.llc_stderr
    assert abs(res.llc_mean - center) < band, (res.llc_mean, center, band)
    assert res.rhat < 1.1
