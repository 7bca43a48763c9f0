"""How many times a public call traces the user's loss (each trace of a large model costs
seconds): a loss that counts the Python executions of its body.

The design's count, for a run checked once (``orchestrate.prepare_run``):

- one trace per minibatch shape the checks evaluate: ``batch_size`` rows, and the final
  ``n mod batch_size`` rows of an exact ``L_n(w*)``. The centre-loss program has the same
  shapes and reuses them (the run's loss is traced once per shape: ``jobs/traced.py``);
  checks repeated inside a run (auto → calibrate → grid) trace nothing;
- one for the calibration's scale probe (its evaluation set has its own number of rows);
- per compiled chain program, one trace per call site of the loss in a chain
  (:data:`CHAIN_SITES`: the gradient of the kernel's step, one for burn-in and draws, the paired
  estimator's loss at ``w*``, the diagnostics' extra gradient).
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CountingLoss

import slt_jax as sj
from slt_jax._src.engine import programs

#: Call sites of the loss in one chain program with the default options.
CHAIN_SITES = 3
#: Checked shapes: a minibatch (64 rows) and the last chunk of L_n(w*) (200 mod 64 = 8 rows).
CHECKS = 2
#: The calibration's scale probe (its evaluation rows).
PROBE = 1

RUN = dict(num_chains=2, num_steps=24, batch_size=64, seed=0)
FIXED = dict(step_size=1e-3, localization=1.0)


def regression(w, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


@pytest.fixture
def problem():
    x = np.linspace(-1.0, 1.0, 200, dtype=np.float32)[:, None]
    return jnp.array([2.0]), (x, 2.0 * x[:, 0])


def count(run):
    """``(traces of a fresh loss, chain programs compiled)`` by ``run(loss)``."""
    loss = CountingLoss(regression)
    compiled = programs.num_compiled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run(loss)
        except sj.CalibrationError:  # a tiny budget may verify nothing: the traces count
            pass
    return loss.traces, programs.num_compiled() - compiled


def test_estimate_llc_traces_the_loss_once_per_checked_shape_and_chain_site(problem):
    w, data = problem
    traces, compiled = count(lambda loss: sj.estimate_llc(loss, w, data, **RUN, **FIXED))
    assert compiled == 1
    assert traces <= CHECKS + CHAIN_SITES * compiled  # 8 before the run was checked once


def test_a_second_identical_call_traces_nothing(problem):
    w, data = problem
    loss = CountingLoss(regression)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sj.estimate_llc(loss, w, data, **RUN, **FIXED)
        first = loss.traces
        sj.estimate_llc(loss, w + 0.01, data, **{**RUN, "seed": 1}, **FIXED)
    assert loss.traces == first


def test_checkpoint_sweep_traces_as_one_estimate(problem):
    w, data = problem
    ckpts = [w, w + 1e-3]
    traces, compiled = count(
        lambda loss: sj.estimate_llc_checkpoints(
            loss, ckpts, data, **RUN, **FIXED, chunk_size=2, progress=False
        )
    )
    assert compiled == 1
    assert traces <= CHECKS + CHAIN_SITES * compiled


def test_auto_sweep_checks_once_then_traces_per_chain_program(problem):
    """step_size="auto" over 2 checkpoints: the checks of the sweep, the calibration and
    its grid stages are those of one prepared run (15 traces before)."""
    w, data = problem
    ckpts = [w, w + 1e-3]
    traces, compiled = count(
        lambda loss: sj.estimate_llc_checkpoints(
            loss,
            ckpts,
            data,
            **RUN,
            step_size="auto",
            calibration_budget=8 * 24 * 30,
            chunk_size=2,
            progress=False,
        )
    )
    assert 1 <= compiled <= 3  # the calibration's stages and the sweep
    assert traces <= CHECKS + PROBE + CHAIN_SITES * compiled


def test_calibrate_on_a_given_grid(problem):
    w, data = problem
    traces, compiled = count(
        lambda loss: sj.calibrate(
            loss,
            w,
            data,
            step_sizes=[1e-4, 1e-3],
            localizations=[1.0],
            num_chains=2,
            num_steps=24,
            batch_size=64,
        )
    )
    assert compiled == 1
    assert traces <= CHECKS + CHAIN_SITES * compiled


def test_refined_llc(problem):
    w, data = problem
    traces, compiled = count(
        lambda loss: sj.estimate_refined_llc(loss, w, data, {"all": "*"}, **RUN, **FIXED)
    )
    assert compiled == 1
    assert traces <= CHECKS + CHAIN_SITES * compiled
