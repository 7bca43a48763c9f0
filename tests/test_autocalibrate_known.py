"""No step size chosen by hand: the automatic calibration's recommended estimate on models
with a known learning coefficient (slow; run with ``-m slow``).

Each test calls ``sj.calibrate`` with no grid (its default budget) and checks the
recommended cell's estimate ``λ̂ ± se``:

* within 15% of the known ``λ`` (the product's accuracy target) up to two Monte-Carlo
  standard errors, which must be small enough to tell (``se < 10%`` of ``λ``);
* where the finite-``nβ`` value of the posterior is known exactly (quadrature, the
  quadratic oracle), within ``4·se`` plus the biases the calibration verified bounded:
  ``bias_tolerance`` for the step size and for the localization each;
* for the deep linear network, within Watanabe's band around Aoyagi's ``λ``
  (``λ − (m−1)/log nβ ± 3·sqrt(λβ/2)``, the fluctuation over data sets of the tempered
  posterior mean, plus ``4·se``), as in ``test_known_answers``.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from test_known_answers import _dln_data, _dln_loss, monomial_target

import slt_jax as sj
from slt_jax import theory
from slt_jax._src.jobs.calibrate import BIAS_TOLERANCE
from slt_jax.models import tms

pytestmark = pytest.mark.slow


def _calibrate(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        cal = sj.calibrate(*args, **kwargs)
    print(cal)
    assert cal.recommended is not None, cal.explanation
    return cal, cal.result(**cal.recommended)


def _assert_within(best, lam, *, target=None):
    assert best.llc_stderr < 0.1 * lam, (best.llc_mean, best.llc_stderr)
    assert abs(best.llc_mean - lam) < 0.15 * lam + 2 * best.llc_stderr, (best.llc_mean, lam)
    if target is not None:
        extra = 2 * BIAS_TOLERANCE * target
        assert abs(best.llc_mean - target) < 4 * best.llc_stderr + extra, (best.llc_mean, target)


def test_regular_linear_regression(linear_regression):
    loss_fn, w_ols, (x, y) = linear_regression
    cal, best = _calibrate(loss_fn, w_ols, (x, y), batch_size=500)
    rec = cal.recommended
    h = np.linalg.eigvalsh(np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / len(x))
    target = theory.quadratic_oracle_llc(h, nbeta=rec["nbeta"], localization=rec["localization"])
    _assert_within(best, theory.regular_learning_coefficient(4), target=target)


@pytest.mark.parametrize("powers, nbeta", [((2, 4), 200.0), ((2, 2, 4, 6), 1000.0)])
def test_sums_of_monomials(powers, nbeta):
    p = jnp.asarray(powers)
    cal, best = _calibrate(
        lambda w, batch: 0.5 * jnp.sum(w**p),
        jnp.zeros(len(powers)),
        jnp.zeros((100, 1)),
        nbetas=[nbeta],
        batch_size=100,
    )
    gamma = cal.recommended["localization"]
    target = sum(monomial_target(q, nbeta=nbeta, gamma=gamma) for q in powers)
    _assert_within(best, theory.monomial_learning_coefficient(powers), target=target)


def test_normal_crossing():
    """K(w) = ½ (w₁ w₂²)²: λ = min(1/2, 1/4) = 1/4 (multiplicity 1), at nβ = 1e4."""
    nbeta = 1e4
    cal, best = _calibrate(
        lambda w, batch: 0.5 * (w[0] * w[1] ** 2) ** 2,
        jnp.zeros(2),
        jnp.zeros((100, 1)),
        nbetas=[nbeta],
        batch_size=100,
    )
    lam, _ = theory.normal_crossing_learning_coefficient([1, 2])
    _assert_within(best, lam)


@pytest.mark.parametrize("k, num_positive", [(6, 0), (5, 0)])
def test_tms_kgons(k, num_positive):
    """The hexagon (λ = 8.5) and the pentagon (λ = 7) on the exact population loss at
    nβ = 1e4; the exact value at ε → 0 is the quadratic oracle of the Hessian (+0.03 to
    +0.06 of anharmonic terms, see test_models_toy), 0.1 on top."""
    c = 6
    point = tms.kgon(k, c, num_positive=num_positive)
    params = {"W": jnp.asarray(point.W, jnp.float32), "b": jnp.asarray(point.b, jnp.float32)}
    cal, best = _calibrate(
        lambda p, batch: tms.population_loss(p["W"], p["b"]),
        params,
        jnp.zeros((4, 1)),
        nbetas=[1e4],
        batch_size=4,
    )
    eig = np.linalg.eigvalsh(tms.population_hessian(point.W, point.b))
    eig = np.where(eig > 1e-9 * eig.max(), eig, 0.0)
    target = 0.1 + theory.quadratic_oracle_llc(
        eig, nbeta=1e4, localization=cal.recommended["localization"]
    )
    lam = tms.kgon_learning_coefficient(k, c, num_positive=num_positive)
    _assert_within(best, lam, target=target)


@pytest.mark.parametrize("widths", [(5, 4, 5), (3, 2, 3)])
def test_deep_linear_networks_at_the_origin(widths):
    n = 100_000
    lam, m = theory.dln_learning_coefficient(widths, 0)
    params = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=False)]
    cal, best = _calibrate(_dln_loss, params, _dln_data(widths, n, seed=0), batch_size=500)
    beta = 1 / np.log(n)
    center = lam - (m - 1) / np.log(n * beta)
    band = 3 * np.sqrt(lam * beta / 2) + 4 * best.llc_stderr
    assert abs(best.llc_mean - center) < band, (cal.recommended, best.llc_mean, center, band)
    _assert_within(best, lam)
