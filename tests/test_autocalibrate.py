"""The automatic calibration: a grid from the problem's scales, two stages, a recommendation
that is verified (or says why not), and ``step_size="auto"`` in every entry point."""

import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sweep_factory
from conftest import assert_mc_close, quadratic_loss

import slt_jax as sj
from slt_jax import _assess, _autogrid, sharding, theory

H = np.array([1.0, 0.5, 0.1, 2.0])
N = 1000
NBETA = N / np.log(N)
DATA = jnp.zeros((N, 1))


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
    weaker to check it against: the recommendation is not trusted, the explanation says
    why, a warning is raised, and the next grid goes weaker."""
    with pytest.warns(sj.LLCDiagnosticWarning, match="Not verified"):
        cal = sj.calibrate(
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            localizations=[1.0, 30.0],
            batch_size=N,
            num_steps=2000,
        )
    assert cal.recommended is not None and not cal.trusted
    assert cal.recommended["localization"] == 1.0
    assert "its localization was not checked: no weaker localization" in cal.explanation
    assert cal.next_grid and min(cal.next_grid["localizations"]) < 1.0
    # An explicit grid warns the same way.
    with pytest.warns(sj.LLCDiagnosticWarning, match="calibrate: Not verified"):
        sj.calibrate(
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            step_sizes=[2e-3, 4e-3, 8e-3],
            localizations=[1.0, 30.0],
            batch_size=N,
            num_steps=500,
        )


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
    assert sharding.num_compiled() == before + 3  # two calibration stages, then the run
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
    """Every chain of every cell diverges (a loss that explodes): nothing to recommend."""

    def exploding(w, batch):
        del batch
        return jnp.sum(jnp.exp(40.0 * w**2))

    with pytest.raises(sj.CalibrationError, match="Run next"):
        _quiet(
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
    calibrate_module = sys.modules["slt_jax.calibrate"]

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
