"""Calibration: one compiled program for the grid, verdicts, and a recommendation that is
right on known answers."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CountingLoss, assert_mc_close, quadratic_loss
from test_known_answers import _dln_data, _dln_loss

import slt_jax as sj
from slt_jax import sharding, theory

H = np.array([1.0, 0.5, 0.1, 2.0])
N = 1000
NBETA = N / np.log(N)
DATA = jnp.zeros((N, 1))


def test_recommended_setting_on_the_quadratic_oracle_has_small_bias(tmp_path):
    """The grid spans step biases from 0.1% to 25% and localization shrinkage from 0.3% to
    40%; the recommended cell is verified, its exact expectation (theory) is within 5% of
    λ = d/2, and its estimate agrees with that expectation within 4 MCSE."""
    cal = sj.calibrate(
        quadratic_loss(H),
        jnp.zeros(4),
        DATA,
        step_sizes=[1e-5, 2.5e-4, 5e-4, 1e-3, 3e-3],
        localizations=[0.1, 1.0, 10.0, 100.0],
        num_chains=4,
        num_steps=3000,
        batch_size=N,
    )
    assert cal.llc_mean.shape == (5, 4, 1) and cal.recommended is not None and cal.trusted
    rec = cal.recommended
    expected = theory.quadratic_oracle_llc(
        H, nbeta=rec["nbeta"], localization=rec["localization"], step_size=rec["step_size"]
    )
    true = theory.regular_learning_coefficient(4)
    assert abs(expected / true - 1) < 0.05, (rec, expected)
    best = cal.result(**rec)
    assert_mc_close(best.llc_mean, best.llc_stderr, expected)
    # The largest step has ≈ 10-25% step bias: never verified, and the recommendation is
    # smaller; γ = 10 and 100 shrink λ̂ by 12% and 50%: the weaker localization shows it.
    for j in range(4):
        assert int(np.ravel_multi_index((4, j, 0), cal.shape)) not in cal.verified
        assert (
            "localization_bias" in cal.problems[int(np.ravel_multi_index((2, j, 0), cal.shape))]
            or j < 2
        )
    assert rec["step_size"] < 3e-3 and rec["localization"] <= 1.0
    # The weakest localization has none weaker to check it against: never verified.
    assert not any(
        int(np.ravel_multi_index((i, 0, 0), cal.shape)) in cal.verified for i in range(5)
    )
    # Too-small steps do not equilibrate in 3000 steps: flagged, not recommended.
    assert all(cal.problems[int(np.ravel_multi_index((0, j, 0), cal.shape))] for j in range(4))
    text = cal.summary()
    assert "Recommended: step_size=" in text and "verdict" in text and "verified" in text
    cal.plot(tmp_path / "cal.png")
    assert (tmp_path / "cal.png").stat().st_size > 10_000
    ds = cal.to_xarray()
    assert ds["llc_mean"].dims == ("step_size", "localization", "nbeta")
    assert bool(
        ds["healthy"].sel(step_size=rec["step_size"], localization=rec["localization"]).all()
    )
    # The recommendation is ready to use.
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.LLCDiagnosticWarning)
        sj.estimate_llc(quadratic_loss(H), jnp.zeros(4), DATA, batch_size=N, num_steps=3000, **rec)


def test_grid_is_one_program_and_each_cell_equals_estimate_llc():
    loss = CountingLoss(quadratic_loss(H))
    kw = dict(num_chains=3, num_steps=300, batch_size=100, seed=5)
    before = sharding.num_compiled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        cal = sj.calibrate(
            loss,
            jnp.zeros(4),
            DATA,
            step_sizes=[1e-4, 1e-3],
            localizations=[1.0, 10.0],
            nbetas=[None, 50.0],
            **kw,
        )
        assert sharding.num_compiled() == before + 1
        again = sj.calibrate(
            loss,
            jnp.zeros(4),
            DATA,
            step_sizes=[2e-4, 3e-3],
            localizations=[5.0, 7.0],
            nbetas=[20.0, 60.0],
            **kw,
        )
        assert sharding.num_compiled() == before + 1  # new values, same program
        assert not np.allclose(again.llc_mean, cal.llc_mean)
        np.testing.assert_allclose(cal.nbetas, [NBETA, 50.0])
        for eps, gamma, nbeta in [(1e-4, 10.0, None), (1e-3, 1.0, 50.0)]:
            alone = sj.estimate_llc(
                loss, jnp.zeros(4), DATA, step_size=eps, localization=gamma, nbeta=nbeta, **kw
            )
            cell = cal.result(eps, gamma, nbeta or NBETA)
            np.testing.assert_allclose(cell.llc_per_chain, alone.llc_per_chain, rtol=2e-4)
            assert cell.config == alone.config


def test_diverging_and_unhealthy_cells_get_verdicts_not_crashes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        cal = sj.calibrate(
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            step_sizes=[1e-3, 0.5],  # εA ≫ 4 at 0.5: every chain diverges
            localizations=[10.0],
            num_chains=4,
            num_steps=2000,
            batch_size=N,
        )
    assert "diverged" in cal.problems[1] and not cal.healthy[1, 0, 0]
    # The one healthy cell is the best there is, but nothing could check its biases.
    assert cal.recommended == dict(step_size=1e-3, localization=10.0, nbeta=pytest.approx(NBETA))
    assert not cal.trusted and "Not verified" in cal.explanation
    assert "the only healthy step size of its row" in cal.explanation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        hopeless = sj.calibrate(
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            step_sizes=[0.5, 1.0],
            localizations=[10.0],
            num_chains=2,
            num_steps=200,
            batch_size=N,
        )
    assert hopeless.recommended is None and not hopeless.trusted
    assert "No setting can be trusted" in hopeless.explanation
    assert "diverged (2 cells)" in hopeless.explanation
    # ... and what to run next: smaller step sizes than any that diverged.
    assert max(hopeless.next_grid["step_sizes"]) < 0.5
    assert "Run next: sj.calibrate(" in hopeless.explanation


def test_chains_that_leave_a_non_minimum_are_flagged_below_init():
    """w* = 1 on L = ½w² is not a minimum: with weak localization the chains slide down."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        cal = sj.calibrate(
            quadratic_loss([1.0]),
            jnp.ones(1),
            DATA,
            step_sizes=[1e-3],
            localizations=[1.0],
            num_chains=4,
            num_steps=2000,
            batch_size=N,
        )
    assert {"below_init", "negative"} <= set(cal.problems[0])


def test_calibrate_validates_before_compiling():
    loss = quadratic_loss(H)
    with pytest.raises(ValueError, match="step_sizes"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[])
    with pytest.raises(ValueError, match="step_size"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3, -1.0])
    with pytest.raises(ValueError, match="acceptance_band"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3], acceptance_band=(0.9, 0.5))
    with pytest.raises(ValueError, match="bias_tolerance"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3], bias_tolerance=0.0)
    with pytest.raises(TypeError, match="schedules"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3, lambda t: 1e-3 + 0 * t])
    before = sharding.num_compiled()
    for name in ("step_sizes", "localizations", "nbetas"):  # a repeated setting
        axes = dict(step_sizes=[1e-3], localizations=[1.0], nbetas=[None])
        axes[name] = [axes[name][0], 2.0, axes[name][0]]
        with pytest.raises(ValueError, match=f"`{name}` repeats a value"):
            sj.calibrate(loss, jnp.zeros(4), DATA, **axes)
    with pytest.raises(ValueError, match="`nbetas` repeats a value"):  # None is n/log n
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3], nbetas=[None, NBETA])
    with pytest.raises(TypeError, match="step_sizes"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=1e-3)
    with pytest.raises(TypeError, match="bias_tolerance"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3], bias_tolerance="x")
    assert sharding.num_compiled() == before


def test_cells_are_found_by_exact_setting_including_zero_localization():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        cal = sj.calibrate(
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            step_sizes=[1e-3, 2e-3],
            localizations=[0.0, 10.0],
            num_chains=2,
            num_steps=100,
            batch_size=N,
        )
    for i, (eps, gamma) in enumerate([(1e-3, 0.0), (1e-3, 10.0), (2e-3, 0.0), (2e-3, 10.0)]):
        assert cal.cell(eps, gamma, NBETA) == i
        config = cal.result(eps, gamma, NBETA).config
        assert (config.step_size, config.localization) == (eps, gamma)
    with pytest.raises(ValueError, match="localization=1.0 is not on the grid"):
        cal.cell(1e-3, 1.0, NBETA)
    # nbeta=None (the grid's default axis) is n/log n, as in `nbetas`.
    assert cal.cell(2e-3, 10.0, None) == cal.cell(2e-3, 10.0) == 3
    assert cal.result(1e-3, 0.0) is cal.results[0]


@pytest.mark.slow
def test_recommended_setting_on_a_deep_linear_network_lands_in_the_aoyagi_band():
    """Widths (5, 4, 5), rank 0, w* = 0: λ = 8; band as in test_known_answers.

    Here λ̂ grows with ε at every γ (strong step bias, and chains drifting along the
    singular set); the checks must keep the biased cells out of the recommendation."""
    widths, n = (5, 4, 5), 100_000
    lam, m = theory.dln_learning_coefficient(widths, 0)
    params = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        cal = sj.calibrate(
            _dln_loss,
            params,
            _dln_data(widths, n, seed=0),
            step_sizes=[5e-6, 1e-5, 2e-5, 4e-5],
            localizations=[1.0, 10.0, 100.0],
            num_chains=8,
            num_steps=10_000,
            num_burnin=2000,
            batch_size=500,
        )
    print(cal)
    assert cal.recommended is not None
    best = cal.result(**cal.recommended)
    beta = 1 / np.log(n)
    center = lam - (m - 1) / np.log(n * beta)
    band = 3 * np.sqrt(lam * beta / 2) + 4 * best.llc_stderr
    assert abs(best.llc_mean - center) < band, (cal.recommended, best.llc_mean, center, band)
