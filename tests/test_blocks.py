"""Chains of a runtime length (engine/blocks.py): the same chains as one scan, and one
compilation for runs of every length; the calibration's stages run that way."""

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax._src.engine import programs
from slt_jax._src.jobs import escalate, grid, orchestrate

FIELDS = (
    "loss_trace",
    "llc_trace",
    "burnin_loss_trace",
    "diverged",
    "mala_acceptance",
    "weight_distance",
    "grad_norm",
    "noise_norm",
)


def _regression(n=600, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + rng.normal(size=n)).astype(np.float32)
    w = jnp.asarray(np.linalg.lstsq(x, y, rcond=None)[0], jnp.float32)

    def loss_fn(w, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((yb - xb @ w) ** 2)

    return loss_fn, w, (jnp.asarray(x), jnp.asarray(y))


PROBLEM = _regression()  # one loss function: a compiled program is cached per loss


def _grid(config, block_steps):
    loss_fn, w, data = PROBLEM
    prepared = orchestrate.prepare_run(loss_fn, w, data, config)
    prepared = dataclasses.replace(prepared, block_steps=block_steps)
    cells = [dict(step_size=2e-4, localization=1.0, nbeta=None)]
    cells.append(dict(step_size=1e-4, localization=10.0, nbeta=None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return grid.run_grid(prepared, cells, config=config, common_keys=True)


@pytest.mark.parametrize(
    "options",
    [
        dict(num_steps=300, num_burnin=100, diagnostic_every=7),  # 3 blocks, the last part used
        dict(num_steps=50, num_burnin=0, diagnostic_every=0, estimator="plain"),  # < one block
        dict(num_steps=128, num_burnin=127, diagnostic_every=1),  # one draw, blocks exact
        dict(num_steps=200, num_burnin=50, loss_batch="independent"),
        dict(num_steps=150, num_burnin=30, chain_layout="map", chain_batch=2),
        dict(num_steps=150, num_burnin=30, sampler="mala", diagnostic_every=5),
    ],
)
def test_blocks_give_the_chains_of_one_scan(options):
    config = sj.LLCConfig(step_size=1e-4, num_chains=3, batch_size=64, seed=3, **options)
    scan, blocked = _grid(config, 0), _grid(config, 64)
    for a, b in zip(scan, blocked, strict=True):
        for field in FIELDS:
            x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
            assert x.shape == y.shape, field
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=field)
        assert float(a.llc_mean) == pytest.approx(float(b.llc_mean), rel=1e-6)


def test_one_compilation_serves_runs_of_every_length():
    base = dict(step_size=1e-4, num_chains=3, batch_size=64, seed=1, diagnostic_every=4)
    _grid(sj.LLCConfig(num_steps=200, num_burnin=80, **base), 64)
    compiled = programs.num_compiled()
    lengths = [(333, 100), (64, 0), (1000, 500)]
    for steps, burnin in lengths:
        (result, _) = _grid(sj.LLCConfig(num_steps=steps, num_burnin=burnin, **base), 64)
        assert result.llc_trace.shape == (3, steps - burnin)
        assert result.mala_acceptance.shape == (3, -(-(steps - burnin) // 4))
    assert programs.num_compiled() == compiled  # no new program for any of the lengths
    _grid(sj.LLCConfig(num_steps=333, num_burnin=100, **base), 0)
    assert programs.num_compiled() == compiled + 1  # one scan: its length compiled in


def test_the_calibrations_stages_compile_once(monkeypatch):
    """``step_size="auto"``: however many stages of whatever lengths, the chains compile
    twice (the stages' init and block programs) plus the estimate's own program."""
    loss_fn, w, data = _regression(n=2000, d=4, seed=2)
    stages = []
    real = escalate._describe
    monkeypatch.setattr(
        escalate,
        "_describe",
        lambda cal, eps, gamma, steps: stages.append(steps) or real(cal, eps, gamma, steps),
    )
    before = programs.num_compiled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        sj.estimate_llc(
            loss_fn,
            w,
            data,
            step_size="auto",
            batch_size=100,
            num_chains=2,
            seed=0,
            calibration_budget=150_000,
        )
    assert len(set(stages)) >= 2, stages  # stages of different lengths ran
    assert programs.num_compiled() - before == 3, stages
