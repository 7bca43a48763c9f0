"""Calibration: one compiled program per grid, verdicts, a recommendation that is verified
(or says why not) and right on known answers; the automatic grid from the problem's scales
in two stages; ``step_size="auto"`` in every entry point."""

import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sweep_factory
from conftest import CountingLoss, assert_mc_close, quadratic_loss
from test_known_answers import _dln_data, _dln_loss

import slt_jax as sj
from slt_jax import theory
from slt_jax._src.engine import programs as sharding
from slt_jax._src.estimators.diagnostics import localization_elasticity
from slt_jax._src.jobs import assess as _assess
from slt_jax._src.jobs import autogrid as _autogrid

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
    # The weakest localization has none weaker to check it against: verified only where its
    # own draws show its effect small (d log λ̂/d log γ ≈ −0.002 at γ = 0.1).
    for i in range(5):
        flat = int(np.ravel_multi_index((i, 0, 0), cal.shape))
        if flat in cal.verified:
            e, se = localization_elasticity(cal.results[flat])
            assert abs(e) + 2 * se < 0.05
    # Too-small steps do not equilibrate in 3000 steps: flagged, not recommended.
    assert all(cal.problems[int(np.ravel_multi_index((0, j, 0), cal.shape))] for j in range(4))
    text = cal.summary()
    assert "Recommended: step_size=" in text and "verdict" in text and "verified" in text
    fig = cal.plot(tmp_path / "cal.png")
    assert (tmp_path / "cal.png").read_bytes()[:4] == b"\x89PNG"
    # Every unhealthy cell hatched, the recommended one outlined in red at its place.
    ax = fig.axes[0]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == sum(bool(p) for p in cal.problems)
    (outline,) = [p for p in ax.patches if not p.get_fill()]
    i, j, _ = np.unravel_index(cal.cell(**rec), cal.shape)
    assert outline.get_xy() == (i - 0.5, j - 0.5)
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
    singular set). A verified cell must land in the band. On this grid at 10,000 steps the
    weak localizations' small steps are still drifting (nonstationary) and their large steps
    cannot be checked against a healthy smaller one, so no cell can be verified: then the
    pick must be marked untrusted, warned about, and the next grid must go to smaller steps
    and longer runs (the automatic grid does land in the band:
    test_autocalibrate_known.py::test_deep_linear_networks_at_the_origin)."""
    widths, n = (5, 4, 5), 100_000
    lam, m = theory.dln_learning_coefficient(widths, 0)
    params = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=False)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sj.LLCDiagnosticWarning)
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
    beta = 1 / np.log(n)
    center = lam - (m - 1) / np.log(n * beta)

    def in_band(result):
        band = 3 * np.sqrt(lam * beta / 2) + 4 * result.llc_stderr
        return abs(result.llc_mean - center) < band

    for i in cal.verified:  # whatever the grid, no biased cell is ever verified
        assert in_band(cal.results[i]), (i, cal.results[i].llc_mean, center)
    best = cal.result(**cal.recommended)
    if cal.trusted:
        assert in_band(best), (cal.recommended, best.llc_mean, center)
    else:
        messages = [
            str(w.message) for w in caught if issubclass(w.category, sj.LLCDiagnosticWarning)
        ]
        assert any("calibrate: Not verified" in text for text in messages), messages
        assert "No setting of the grid was shown" in cal.explanation
        smaller = max(cal.next_grid["step_sizes"]) < cal.recommended["step_size"]
        assert smaller and cal.next_grid["num_steps"] > 10_000, cal.next_grid


# ---- the automatic calibration and step_size='auto' ---------------------------------------


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return fn(*args, **kwargs)


def test_scales_of_a_quadratic_match_its_curvature():
    """For L = ½ Σ h_i w_i² (exact gradients) E‖nβ∇L‖²/d at the typical set is
    nβ Σh_i²/Σh_i (the probe's radius makes nβ·ΔL = d/2 along each direction); the
    curvature scale is that up to the spread of the random directions."""
    scales = _autogrid.measure_scales(
        quadratic_loss(H), jnp.zeros(4), DATA, nbeta=NBETA, batch_size=N
    )
    expected = NBETA * np.sum(H**2) / np.sum(H)
    assert scales.num_params == 4 and scales.gradient_noise == 0.0
    assert expected / 3 < scales.curvature < 3 * expected
    assert scales.step_size == pytest.approx(0.4 / scales.curvature)
    eps, gammas = _autogrid.coarse_axes(scales)
    assert len(eps) == 5 and eps == sorted(eps) and eps[3] == pytest.approx(scales.step_size, 1e-2)
    assert len(gammas) == 4 and gammas == sorted(gammas)


def test_step_fit_recovers_a_known_line_and_its_error():
    """Three cells on λ̂(ε) = 2 + 100·ε plus common noise: the intercept is 2 and its
    standard error is the combined trace's (the shared noise cancels in differences)."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4, 2000))

    class Cell:
        def __init__(self, eps):
            self.config = sj.LLCConfig(4, 2000, 0, eps, 1.0, 100.0, 10, 100, "paired", "sgld", 0)
            self.llc_trace = 2 + 100 * eps + noise + 0.01 * rng.normal(size=noise.shape)
            self.llc_mean = float(self.llc_trace.mean())
            self.llc_stderr = float(self.llc_trace.std() / np.sqrt(self.llc_trace.size))
            self.diverged = np.zeros(4, bool)

    cells = [Cell(e) for e in (1e-3, 2e-3, 4e-3)]
    fit = _assess.fit_row(cells, [0, 1, 2], 1.0, 100.0, 0.05)
    assert fit.fitted and fit.cells == (0, 1, 2)
    # common noise: the slope is exact to the independent part (0.01 per draw)
    assert fit.slope == pytest.approx(100.0, rel=0.05)
    assert fit.intercept == pytest.approx(cells[0].llc_mean - 100 * 1e-3, abs=1e-3)
    bias, se = fit.bias[2]
    assert bias == pytest.approx(0.4, abs=0.01) and se < 0.01 < cells[2].llc_stderr


def test_automatic_grid_on_the_quadratic_oracle_is_two_programs_and_right():
    """No step size by hand: two compiled chain programs within the budget; the
    recommended cell's exact expectation is within 5% of λ = d/2 and its estimate agrees
    with it; the ε → 0 corrected estimate agrees with the oracle at ε = 0."""
    before = sharding.num_compiled()
    cal = _quiet(
        sj.calibrate, quadratic_loss(H), jnp.zeros(4), DATA, batch_size=N, budget=1_000_000
    )
    assert sharding.num_compiled() == before + 2
    assert cal.num_chain_steps <= 1_000_000 and cal.trusted
    coarse, refined = (cal.coarse, cal) if cal.coarse is not None else (cal, cal.refined)
    assert coarse.shape == (5, 4, 1) and refined.shape == (3, 3, 1)
    rec = cal.recommended
    expected = theory.quadratic_oracle_llc(
        H, nbeta=rec["nbeta"], localization=rec["localization"], step_size=rec["step_size"]
    )
    assert abs(expected / 2.0 - 1) < 0.05, (rec, expected)
    best = cal.result(**rec)
    assert_mc_close(best.llc_mean, best.llc_stderr, expected)
    row = np.ravel_multi_index(np.unravel_index(cal.cell(**rec), cal.shape)[1:], cal.shape[1:])
    fit = cal.fits[int(row)]
    at_zero = theory.quadratic_oracle_llc(H, nbeta=rec["nbeta"], localization=rec["localization"])
    assert_mc_close(fit.intercept, fit.intercept_stderr, at_zero)
    assert cal.corrected_llc.shape == cal.shape[1:]
    ds = cal.to_xarray()
    assert ds["corrected_llc"].dims == ("localization", "nbeta")
    assert "coarse stage:" in cal.summary() and "refined stage:" in cal.summary()
    every = [*coarse.results, *refined.results]
    assert cal.num_chain_steps == sum(r.config.num_chains * r.config.num_steps for r in every)


def test_budget_and_grid_errors_before_compiling():
    loss = quadratic_loss(H)
    before = sharding.num_compiled()
    with pytest.raises(ValueError, match="below the minimum of 4000 .*num_steps=100"):
        sj.calibrate(loss, jnp.zeros(4), DATA, batch_size=N, num_steps=100, budget=3999)
    with pytest.raises(ValueError, match="below the minimum of 4000 for an automatic"):
        sj.calibrate(loss, jnp.zeros(4), DATA, batch_size=N, budget=1999)
    with pytest.raises(ValueError, match="below what the grid needs"):
        sj.calibrate(
            loss,
            jnp.zeros(4),
            DATA,
            step_sizes=[1e-3],
            localizations=[1.0],
            num_steps=100,
            budget=100,
        )
    with pytest.raises(ValueError, match="gives 10 steps per chain.*at least 100"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[1e-3], localizations=[1.0], budget=40)
    with pytest.raises(ValueError, match="`localizations` is empty"):
        sj.calibrate(loss, jnp.zeros(4), DATA, localizations=[])
    with pytest.raises(ValueError, match="localization"):
        sj.calibrate(loss, jnp.zeros(4), DATA, localizations=[-1.0])
    with pytest.raises(ValueError, match="step_size"):
        sj.calibrate(loss, jnp.zeros(4), DATA, step_sizes=[0.0])
    with pytest.raises(ValueError, match="num_burnin"):
        sj.calibrate(loss, jnp.zeros(4), DATA, num_burnin=10)
    assert sharding.num_compiled() == before


def test_an_unverifiable_recommendation_warns_and_says_why():
    """γ = 30 shrinks λ̂ (nβ·h = 14.5 for h = 0.1) and γ = 1, the weakest, has nothing
    weaker to check it against and, with no diagnostics recorded, no draws of ‖w − w*‖ to
    read its effect from: the recommendation is not trusted, the explanation says why, a
    warning is raised, and the next grid goes weaker. With the draws recorded, its own
    elasticity checks it."""
    grid = dict(step_sizes=[2e-3, 4e-3, 8e-3], localizations=[1.0, 30.0], num_steps=500)
    with pytest.warns(sj.LLCDiagnosticWarning, match="calibrate: Not verified"):
        cal = sj.calibrate(
            quadratic_loss(H), jnp.zeros(4), DATA, batch_size=N, diagnostic_every=0, **grid
        )
    assert cal.recommended is not None and not cal.trusted
    assert cal.recommended["localization"] == 1.0
    assert "its localization was not checked: no weaker localization" in cal.explanation
    assert cal.next_grid and min(cal.next_grid["localizations"]) < 1.0
    cal = _quiet(sj.calibrate, quadratic_loss(H), jnp.zeros(4), DATA, batch_size=N, **grid)
    assert cal.recommended["localization"] == 1.0
    assert "no weaker localization" not in cal.explanation  # its own draws checked it


def test_the_localization_elasticity_of_one_run_matches_the_quadratic_oracle():
    """``d log λ̂/d log γ`` read from one run's draws, ``−(γ/2)·Cov(nβL, ‖w − w*‖²)/λ̂``,
    against the oracle's ``−Σ ½γA_i/(A_i + γ)² / Σ ½A_i/(A_i + γ)`` (``A = nβh``) where it
    is about −0.006, −0.2 and −0.6: a wrong sign or factor shows at the two strong ones,
    whose standard errors are a few percent of them."""
    curvature = NBETA * H

    def run(gamma, **options):
        return _quiet(
            sj.estimate_llc,
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            step_size=2e-4,
            localization=gamma,
            batch_size=N,
            **options,
        )

    for gamma in (0.3, 10.0, 100.0):
        result = run(gamma, num_chains=4, num_steps=20_000, diagnostic_every=5, seed=3)
        e, se = localization_elasticity(result)
        share = curvature / (curvature + gamma)
        expected = -np.sum(share * gamma / (curvature + gamma)) / np.sum(share)
        assert np.isfinite(se) and se < 0.1 * abs(expected) + 0.01, (gamma, e, se)
        # 4 standard errors and the step bias (εA/4 ≤ 1.5 %) of the variances it reads
        assert abs(e - expected) < 4 * se + 0.03 * abs(expected), (gamma, e, se, expected)
    # No distances recorded: nothing to read it from.
    result = run(1.0, num_chains=2, num_steps=400, diagnostic_every=0)
    assert np.isnan(localization_elasticity(result)).all()


def test_one_given_localization_is_the_users_choice():
    """Only the step size is verified; the explanation says the localization was given."""
    cal = _quiet(
        sj.calibrate,
        quadratic_loss(H),
        jnp.zeros(4),
        DATA,
        localizations=[1.0],
        batch_size=N,
        num_steps=4000,
        budget=800_000,
    )
    assert cal.trusted, cal.explanation
    assert "the localization is the one given (not checked)" in cal.explanation


def test_estimate_llc_auto_runs_at_the_calibrated_setting():
    before = sharding.num_compiled()
    res = _quiet(
        sj.estimate_llc,
        quadratic_loss(H),
        jnp.zeros(4),
        DATA,
        step_size="auto",
        batch_size=N,
        num_steps=4000,
        calibration_budget=800_000,
    )
    # num_steps fixed: every stage of the escalation is one program (the settings are
    # array arguments), then the run
    assert sharding.num_compiled() == before + 2
    c = res.calibration
    assert isinstance(c, sj.CalibrationRecord)
    assert (res.config.step_size, res.config.localization) == (c.step_size, c.localization)
    expected = theory.quadratic_oracle_llc(
        H, nbeta=c.nbeta, localization=c.localization, step_size=c.step_size
    )
    assert abs(expected / 2.0 - 1) < 0.05
    assert_mc_close(res.llc_mean, res.llc_stderr, expected)
    assert c.corrected_llc is not None and np.isfinite(res.llc_corrected)
    assert "calibration" in res.summary() and "ε → 0 corrected" in res.summary()
    assert c.chain_steps <= 800_000 and "sj.calibrate" not in c.explanation or not c.trusted
    again = sj.LLCResult.from_xarray(res.to_xarray())
    assert again.calibration == c
    # A fixed localization is kept; only the step size is calibrated.
    fixed = _quiet(
        sj.estimate_llc,
        quadratic_loss(H),
        jnp.zeros(4),
        DATA,
        step_size="auto",
        localization=3.0,
        batch_size=N,
        num_steps=1000,
        calibration_budget=300_000,
    )
    assert fixed.config.localization == 3.0 == fixed.calibration.localization


def test_auto_options_are_checked_before_compiling():
    loss = quadratic_loss(H)
    before = sharding.num_compiled()
    with pytest.raises(TypeError, match="got str 'automatic'.*'auto'"):
        sj.estimate_llc(loss, jnp.zeros(4), DATA, step_size="automatic")
    with pytest.raises(TypeError, match="`localization` must be a number, got str"):
        sj.estimate_llc(loss, jnp.zeros(4), DATA, step_size="auto", localization="weak")
    with pytest.raises(ValueError, match="needs step_size='auto'"):
        sj.estimate_llc(loss, jnp.zeros(4), DATA, localization="auto")
    with pytest.raises(ValueError, match="not a\\s+schedule"):
        sj.estimate_llc(loss, jnp.zeros(4), DATA, step_size=lambda t: 1e-3, localization="auto")
    with pytest.raises(ValueError, match="below the minimum"):
        sj.estimate_llc(
            loss, jnp.zeros(4), DATA, step_size="auto", batch_size=N, calibration_budget=10
        )
    with pytest.raises(ValueError, match="need step_size='auto'"):
        sj.estimate_llc_checkpoints(loss, [jnp.zeros(4)], DATA, calibrate_on=0, progress=False)
    with pytest.raises(ValueError, match="calibrate_on=7 is not a step"):
        sj.estimate_llc_checkpoints(
            loss, [jnp.zeros(4)], DATA, step_size="auto", calibrate_on=7, progress=False
        )
    assert sharding.num_compiled() == before


def test_no_usable_setting_is_a_calibration_error():
    """A loss undefined away from ``w*``: every chain of every stage diverges, the
    escalation shrinks the step size until the budget is spent, then raises with what it
    tried. (A steep but finite loss, ``Σ exp(40 w²)`` at ``nβ = 1e6``, is well posed: the
    escalation finds a step size for it, where the fixed grid before it raised.)"""

    def undefined(w, batch):
        del batch
        return jnp.where(jnp.all(w == 0), 0.0, jnp.nan)

    with pytest.raises(sj.CalibrationError, match="(?s)Tried: \\(1\\).*\\(2\\).*Run next"):
        _quiet(
            sj.estimate_llc,
            undefined,
            jnp.zeros(2),
            DATA,
            step_size="auto",
            batch_size=N,
            num_steps=200,
            calibration_budget=200 * 60,
            nbeta=1e6,
        )

    def exploding(w, batch):
        del batch
        return jnp.sum(jnp.exp(40.0 * w**2))

    res = _quiet(
        sj.estimate_llc,
        exploding,
        jnp.zeros(2),
        DATA,
        step_size="auto",
        batch_size=N,
        num_steps=200,
        calibration_budget=200 * 60,
        nbeta=1e6,
    )
    assert np.isfinite(res.llc_mean) and res.calibration.chain_steps <= 200 * 60


def _fitted_snapshots():
    """Three snapshots at (and within 1e-3 of) the least-squares fit: local minima."""
    x, y = sweep_factory.data()
    fit = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0].astype(np.float32)
    snapshots = [{"w": fit[:3] + d, "b": fit[3:] - d} for d in (1e-3, 0.0, -1e-3)]
    return snapshots, [5, 50, 500], (x, y)


def test_checkpoints_auto_calibrates_once_and_resumes(tmp_path, monkeypatch):
    snapshots, steps, (x, y) = _fitted_snapshots()
    kw = dict(
        steps=steps,
        num_chains=2,
        num_steps=400,
        batch_size=64,
        step_size="auto",
        calibration_budget=400 * 60,
        progress=False,
        chunk_size=2,
    )
    out = tmp_path / "res"
    res = _quiet(
        sj.estimate_llc_checkpoints,
        sweep_factory.loss_fn,
        snapshots,
        (x, y),
        out=out,
        calibrate_on=steps[1],
        **kw,
    )
    c = res.calibration
    assert c.calibrate_on == steps[1] and res.config.step_size == c.step_size
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["step_size"] == c.step_size
    assert manifest["calibration_request"] == {
        "calibrate_on": steps[1],
        "budget": 400 * 60,
        "localization": "auto",
        "nbeta": None,
    }
    loaded = sj.load_results(out)
    assert loaded.calibration == c and np.isfinite(loaded.llc_corrected).all() == (
        c.corrected_llc is not None
    )
    # Resuming reuses the stored calibration: calibrate is not called again.
    (out / "chunk-00001.nc").unlink()
    calibrate_module = sys.modules["slt_jax._src.jobs.calibrate"]

    def refuse(*args, **kwargs):
        raise AssertionError("calibrated again on resume")

    monkeypatch.setattr(calibrate_module, "calibrate", refuse)
    again = _quiet(
        sj.estimate_llc_checkpoints,
        sweep_factory.loss_fn,
        snapshots,
        (x, y),
        out=out,
        calibrate_on=steps[1],
        **kw,
    )
    np.testing.assert_array_equal(again.llc_mean, res.llc_mean)
    # A different request (here nβ) on the same directory is refused before calibrating.
    with pytest.raises(ValueError, match="calibration_request"):
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn,
            snapshots,
            (x, y),
            out=out,
            calibrate_on=steps[1],
            nbeta=20.0,
            **kw,
        )
    # Without out=, the default checkpoint is the last.
    monkeypatch.undo()
    last = _quiet(sj.estimate_llc_checkpoints, sweep_factory.loss_fn, snapshots, (x, y), **kw)
    assert last.calibration.calibrate_on == steps[-1]


def test_cli_step_size_auto(tmp_path, capsys):
    from slt_jax.__main__ import main

    snapshots, steps, _ = _fitted_snapshots()
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(tmp_path / "ckpts", step, snapshot)
    args = [
        "llc",
        str(tmp_path / "ckpts"),
        "--model",
        "sweep_factory:factory",
        "--out",
        str(tmp_path / "res"),
        "--steps",
        "400",
        "--chains",
        "2",
        "--batch-size",
        "64",
        "--step-size",
        "auto",
        "--calibration-budget",
        "2.4e4",
        "--no-progress",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        main(args)
    out = capsys.readouterr().out
    assert "step_size auto (calibrated on step 500" in out
    assert json.loads((tmp_path / "res" / "manifest.json").read_text())["calibration"]
    with pytest.raises(SystemExit) as exit:
        main([*args[:-3], "--calibration-budget", "10", "--out", str(tmp_path / "other")])
    assert exit.value.code == 2 and "below the minimum" in capsys.readouterr().err


def test_keys_of_the_calibration_are_apart_from_the_estimate():
    """The calibration's chains never reuse the estimate's keys (a correlated check)."""
    key = jax.random.key(0)
    calibration = jax.random.fold_in(key, 0x5CA1)
    for stage in (1, 2):
        stage_keys = jax.random.split(jax.random.fold_in(calibration, stage), 4)
        run_keys = jax.random.split(key, 8)
        a = np.asarray(jax.random.key_data(stage_keys))
        b = np.asarray(jax.random.key_data(run_keys))
        assert not (a[:, None] == b[None]).all(-1).any()
