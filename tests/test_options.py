"""Options declared once: ``sj.Auto`` for the step size, ``sj.Placement`` for the memory and
layout options, and the command line's flags generated from ``LLCConfig``'s fields."""

import argparse
import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax._src import cli
from slt_jax._src.config import OPTIONS, PLACEMENT

N = 256
DATA = jnp.zeros((N, 1))


def loss_fn(w, batch):
    return 0.5 * jnp.sum(w**2) + 0.0 * jnp.mean(batch)


KW = dict(num_chains=2, num_steps=40, step_size=1e-3, localization=1.0, batch_size=32)


# -- sj.Auto -----------------------------------------------------------------------------


def test_bad_auto_values_fail_when_built():
    with pytest.raises(ValueError, match=r"`Auto.budget` must be >= 1, got 0"):
        sj.Auto(budget=0)
    for bad in (True, 2.5, "1000"):
        with pytest.raises(TypeError, match="`Auto.budget` must be an int or None"):
            sj.Auto(budget=bad)
    with pytest.raises(TypeError, match="`Auto.on_step` must be an int or None"):
        sj.Auto(on_step="last")
    assert sj.Auto(budget=np.int64(5000)).budget == 5000
    assert sj.Auto(budget=5000).keywords() == {"calibration_budget": 5000, "calibrate_on": None}


def _error(fn, *args, **kwargs):
    with pytest.raises(Exception) as caught:
        fn(*args, **kwargs)
    return type(caught.value), str(caught.value)


def test_auto_is_the_string_and_its_keywords():
    """``sj.Auto(budget=b)`` reaches the calibration as ``"auto"`` with
    ``calibration_budget=b`` (a budget below the minimum: the same error, before compiling)."""
    kw = {k: v for k, v in KW.items() if k != "step_size"}
    new = _error(sj.estimate_llc, loss_fn, jnp.zeros(2), DATA, step_size=sj.Auto(budget=10), **kw)
    old = _error(
        sj.estimate_llc, loss_fn, jnp.zeros(2), DATA, step_size="auto", calibration_budget=10, **kw
    )
    assert new == old and "below the minimum" in new[1]
    config = sj.LLCConfig(step_size=sj.Auto(budget=10), **kw)
    assert _error(sj.estimate_llc, loss_fn, jnp.zeros(2), DATA, config=config) == old


def test_auto_on_step_chooses_the_checkpoint_of_a_sweep():
    snapshots = [jnp.zeros(2), jnp.ones(2) * 0.1]
    kw = {k: v for k, v in KW.items() if k != "step_size"}
    sweep = sj.estimate_llc_checkpoints
    new = _error(sweep, loss_fn, snapshots, DATA, step_size=sj.Auto(on_step=7), **kw)
    old = _error(sweep, loss_fn, snapshots, DATA, step_size="auto", calibrate_on=7, **kw)
    assert new == old and "calibrate_on=7 is not a step" in new[1]


def test_auto_errors_name_what_is_wrong():
    kw = {k: v for k, v in KW.items() if k != "step_size"}
    with pytest.raises(TypeError, match=r"estimate_llc does not take sj.Auto\(on_step=...\)"):
        sj.estimate_llc(loss_fn, jnp.zeros(2), DATA, step_size=sj.Auto(on_step=3), **kw)
    with pytest.raises(TypeError, match="budget is given twice"):
        sj.estimate_llc(
            loss_fn,
            jnp.zeros(2),
            DATA,
            step_size=sj.Auto(budget=100),
            calibration_budget=200,
            **kw,
        )
    with pytest.raises(TypeError, match="calibrated by the entry point"):
        sj.LLCConfig(step_size=sj.Auto()).resolve(num_examples=N)


# -- sj.Placement --------------------------------------------------------------------------


def test_placement_is_the_flat_options_grouped():
    grouped = sj.LLCConfig(placement=sj.Placement(microbatch_size=8, chain_layout="map"))
    assert grouped == sj.LLCConfig(microbatch_size=8, chain_layout="map")
    assert sj.Placement.of(grouped) == sj.Placement(microbatch_size=8, chain_layout="map")
    assert grouped.to_dict() == sj.LLCConfig(microbatch_size=8, chain_layout="map").to_dict()
    assert PLACEMENT == tuple(f.name for f in dataclasses.fields(sj.Placement))
    for field in dataclasses.fields(sj.Placement):  # one declaration: same defaults
        assert getattr(sj.LLCConfig(), field.name) == field.default
    with pytest.raises(TypeError, match="`microbatch_size` is given twice"):
        sj.LLCConfig(microbatch_size=4, placement=sj.Placement(microbatch_size=8))
    with pytest.raises(TypeError, match="must be an sj.Placement"):
        sj.LLCConfig(placement={"remat": True})


@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")  # short chains
def test_placement_keyword_of_the_entry_points():
    flat = sj.estimate_llc(loss_fn, jnp.zeros(2), DATA, microbatch_size=16, **KW)
    grouped = sj.estimate_llc(
        loss_fn, jnp.zeros(2), DATA, placement=sj.Placement(microbatch_size=16), **KW
    )
    assert grouped.config == flat.config and grouped.config.microbatch_size == 16
    np.testing.assert_array_equal(grouped.llc_trace, flat.llc_trace)
    with pytest.raises(TypeError, match="given twice"):
        sj.estimate_llc(
            loss_fn, jnp.zeros(2), DATA, microbatch_size=8,
            placement=sj.Placement(microbatch_size=16), **KW,
        )  # fmt: skip
    with pytest.raises(ValueError, match="`chain_layout` must be one of"):
        sj.estimate_llc(loss_fn, jnp.zeros(2), DATA, placement=sj.Placement(chain_layout="scan"))
    assert "placement" in inspect.signature(sj.estimate_llc).parameters


# -- the command line ---------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser()
    cli._add_sampler_options(parser)
    return parser


def test_every_run_option_is_a_flag_with_the_configuration_default():
    kwargs = cli._sampler_kwargs(_parser().parse_args([]))
    defaults = sj.LLCConfig()
    for name in OPTIONS:
        assert kwargs[name] == getattr(defaults, name), name
    assert kwargs["calibration_budget"] is None and kwargs["calibrate_on"] is None


def test_flags_keep_their_names_and_parse_as_before():
    args = _parser().parse_args(
        "--chains 3 --steps 50 --burnin 5 --step-size auto --localization 2 --nbeta 9.5 "
        "--batch-size 8 --estimator plain --sampler sghmc(friction=5.0) --seed 4 "
        "--diagnostic-every 0 --microbatch-size 4 --remat --compute-dtype bfloat16 "
        "--chain-layout map --chain-batch 2 --init-loss-batches exact "
        "--calibration-budget 2.4e4 --calibrate-on 100 --chunk-size 2 --memory-budget 1GB "
        "--no-progress".split()
    )
    kwargs = cli._sampler_kwargs(args)
    expected = dict(
        num_chains=3, num_steps=50, num_burnin=5, step_size="auto", localization=2.0,
        nbeta=9.5, batch_size=8, estimator="plain", sampler="sghmc(friction=5.0)", seed=4,
        diagnostic_every=0, microbatch_size=4, remat=True, compute_dtype="bfloat16",
        chain_layout="map", chain_batch=2, init_loss_batches="exact",
        calibration_budget=24000, calibrate_on=100, chunk_size=2, memory_budget=10**9,
        progress=False,
    )  # fmt: skip
    assert {k: kwargs[k] for k in expected} == expected
    for bad in (["--chain-layout", "scan"], ["--step-size", "fast"], ["--chains", "x"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)


def test_the_sampler_help_comes_from_the_registry():
    @dataclasses.dataclass(frozen=True)
    class Warm(sj.samplers.SGLD):
        name = "warm_sgld_cli"

    sj.samplers.register(Warm)
    try:
        help = _parser().format_help()
        for name in sj.samplers.SAMPLERS:
            assert name in help
        assert "sghmc(friction=10.0)" in help
    finally:
        del sj.samplers.SAMPLERS["warm_sgld_cli"]
