"""``step_size="auto"`` escalates within its budget (jobs/escalate.py): the first setting
from the problem's scales, the moves from a stage's verdict, the run length it chooses,
and the error when the budget is spent."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_mc_close, quadratic_loss

import slt_jax as sj
from slt_jax import theory
from slt_jax._src.jobs import escalate
from slt_jax._src.jobs.autogrid import Scales

H = np.array([1.0, 0.5, 0.1, 2.0])
N = 1000
DATA = jnp.zeros((N, 1))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return fn(*args, **kwargs)


def test_first_setting_from_the_scales():
    """``ε₀ = 4δ/(Ā + γ₀)`` with Ā the noise-inclusive scale, ``γ₀ = c/r²`` from the loss's
    own radius (not from Ā: minibatch noise must not move the localization)."""
    quiet = Scales(num_params=4, nbeta=100.0, radius=0.1, curvature=100.0, gradient_noise=0.0)
    noisy = Scales(num_params=4, nbeta=100.0, radius=0.1, curvature=1e4, gradient_noise=9.9e3)
    eps, gamma = escalate.first_setting(quiet, None)
    assert gamma == pytest.approx(escalate.LOCALIZATION_FACTOR / 0.01, rel=1e-3)
    assert eps == pytest.approx(4 * escalate.STEP_BIAS_TARGET / (100.0 + gamma), rel=1e-3)
    eps_noisy, gamma_noisy = escalate.first_setting(noisy, None)
    assert gamma_noisy == gamma and eps_noisy < eps / 50
    # the first run length covers STEPS_PER_DIFFUSION diffusion times r²/ε (at least MIN_STEPS)
    assert escalate.first_length(noisy, eps_noisy) == pytest.approx(
        escalate.STEPS_PER_DIFFUSION * 0.01 / (eps_noisy / 2), rel=1e-3
    )
    assert escalate.first_length(quiet, 1.0) == escalate.MIN_STEPS
    # a given localization is kept
    assert escalate.first_setting(quiet, 3.0)[1] == 3.0


def test_auto_chooses_the_run_length_and_is_right_on_the_oracle():
    """No num_steps given: the estimate runs as long as its standard error needs (about
    SE_TARGET of λ̂), at least as long as the calibration's stage, and agrees with the
    quadratic oracle's exact expectation at the chosen setting."""
    res = _quiet(
        sj.estimate_llc, quadratic_loss(H), jnp.zeros(4), DATA, step_size="auto", batch_size=N
    )
    c = res.calibration
    assert res.config.num_steps != 1000 and res.config.num_burnin < res.config.num_steps
    assert res.llc_stderr < 2 * escalate.SE_TARGET * res.llc_mean
    expected = theory.quadratic_oracle_llc(
        H, nbeta=c.nbeta, localization=c.localization, step_size=c.step_size
    )
    assert abs(expected / 2.0 - 1) < 0.1
    assert_mc_close(res.llc_mean, res.llc_stderr, expected)
    # every stage's chain-steps are counted; the calibration costs at most ~4× the estimate
    final = res.config.num_chains * res.config.num_steps
    assert 0 < c.chain_steps <= 4 * final
    assert "Stages: (1)" in c.explanation


def test_a_fixed_run_length_is_kept():
    res = _quiet(
        sj.estimate_llc,
        quadratic_loss(H),
        jnp.zeros(4),
        DATA,
        step_size="auto",
        batch_size=N,
        num_steps=600,
        calibration_budget=100_000,
    )
    assert res.config.num_steps == 600 and res.calibration.chain_steps <= 100_000


def test_a_budget_too_small_for_the_needed_runs_raises_with_what_it_tried():
    """A step size far too large for a stiff direction diverges; the escalation halves it
    but the budget (two stages) runs out first: the error lists both stages."""

    def undefined(w, batch):  # defined only at w*: every chain diverges
        del batch
        return jnp.where(jnp.all(w == 0), 0.0, jnp.nan)

    with pytest.raises(sj.CalibrationError) as error:
        _quiet(
            sj.estimate_llc,
            undefined,
            jnp.zeros(2),
            DATA,
            step_size="auto",
            batch_size=N,
            num_steps=100,
            calibration_budget=2 * 8 * 100,
        )
    text = str(error.value)
    assert "(1) ε ∈" in text and "(2) ε ∈" in text and "would pass the budget of 1,600" in text
    # below the smallest stage (2 step sizes × 4 chains × 100 steps): an error naming the
    # minimum, before anything runs
    with pytest.raises(ValueError, match="below the minimum of 800"):
        sj.estimate_llc(
            quadratic_loss(H),
            jnp.zeros(4),
            DATA,
            step_size="auto",
            num_steps=100,
            calibration_budget=799,
        )


def test_the_run_length_is_chosen_only_where_num_steps_was_left():
    """``num_steps`` left at its default (in Python or on the command line) is the
    calibration's to choose; the same number given, or a burn-in given, is kept."""
    import argparse
    import dataclasses

    from slt_jax._src import cli
    from slt_jax._src.jobs.auto import length_is_free

    assert length_is_free(sj.LLCConfig())
    assert length_is_free(dataclasses.replace(sj.LLCConfig(), num_chains=2))
    assert not length_is_free(sj.LLCConfig(num_steps=1000))
    assert not length_is_free(sj.LLCConfig(num_burnin=100))
    parser = argparse.ArgumentParser()
    cli._add_sampler_options(parser)
    left, given = parser.parse_args([]), parser.parse_args(["--steps", "1000"])
    assert left.num_steps == given.num_steps == 1000
    assert length_is_free(sj.LLCConfig(num_steps=left.num_steps))
    assert not length_is_free(sj.LLCConfig(num_steps=given.num_steps))
    assert type(given.num_steps) is int


# --------------------------------------------------------------- the moves, on judged stages


def _stage(means, problems, *, gammas=(1.0,), step_sizes=(1e-4, 2e-4), sd=0.2, seed=0):
    """A judged stage as :func:`escalate._next_move` reads it: cells over
    ``(step_sizes, gammas, 1)`` with λ̂ ``means[a][j]`` (4 chains × 400 draws of independent
    noise ``sd`` per draw) and the problem kinds ``problems[a][j]``."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    results, kinds = [], []
    for a, eps in enumerate(step_sizes):
        for j, gamma in enumerate(gammas):
            trace = means[a][j] + sd * rng.normal(size=(4, 400))
            trace -= trace.mean() - means[a][j]
            results.append(
                SimpleNamespace(
                    llc_mean=float(means[a][j]),
                    llc_stderr=float(sd / np.sqrt(trace.size)),
                    llc_trace=trace,
                    diverged=np.zeros(4, bool),
                    config=SimpleNamespace(step_size=eps, localization=gamma),
                )
            )
            kinds.append(dict.fromkeys(problems[a][j], "…"))
    return SimpleNamespace(
        shape=(len(step_sizes), len(gammas), 1), results=results, problems=kinds, fits=()
    )


def _move(cal, *, left=(), first=False):
    return escalate._next_move(cal, 2e-4, 1.0, False, False, True, set(left), first)


def test_disagreeing_chains_with_too_few_draws_run_longer_not_more_localized():
    # rhat beside ess: a run too short to judge, so four times the steps at the same γ
    short = _stage([[5.0], [5.0]], [[("rhat", "ess")], [("rhat", "ess")]])
    assert _move(short) == (2e-4, 1.0, 4.0, False)
    # rhat with enough draws (from the second stage on): the chains leave w*'s basin
    apart = _stage([[5.0], [5.0]], [[("rhat",)], [()]])
    assert _move(apart) == (2e-4, 10.0, 1.0, False)
    assert _move(apart, first=True) == (2e-4, 1.0, 4.0, False)  # the first stage: longer
    drift = _stage([[5.0], [5.0]], [[("wandering", "ess")], [()]])
    assert _move(drift, first=True) == (2e-4, 10.0, 1.0, False)  # ‖w − w*‖ grows: always


def test_a_shrinkage_shown_by_the_cells_own_draws_moves_to_a_weaker_localization():
    """``localization_bias`` at γ (its elasticity shown beyond the tolerance) → γ/10, the
    same steps; where γ/10 was left (its chains wandered), γ is kept, unverified."""
    shrunk = _stage([[5.0], [5.0]], [[("localization_bias",)], [("localization_bias",)]])
    assert _move(shrunk) == (2e-4, 0.1, 1.0, False)
    assert _move(shrunk, left={0.1}) is None
