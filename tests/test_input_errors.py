"""Input problems found up front: before the chain program is compiled, or named clearly."""

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
import slt_jax.sharding

KW = dict(num_chains=2, num_steps=20, step_size=1e-3, localization=10.0, batch_size=16)
W = {"w": jnp.array([1.0, -1.0, 0.5], jnp.float32)}


def make_data(n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -1.0, 0.5], np.float32)).astype(np.float32)


def loss(p, b):
    return 0.5 * jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def fixed_shape_loss(p, b):  # only works on batches of exactly 16 rows
    return 0.5 * jnp.mean((b[0].reshape(16, 3) @ p["w"] - b[1].reshape(16)) ** 2)


@pytest.fixture
def no_chain_program(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the chain program must not run")

    monkeypatch.setattr(slt_jax.sharding, "run_items", fail)


def test_remainder_chunk_of_the_full_data_loss_is_checked_up_front(no_chain_program):
    # n = 70, b = 16: L_n(w*) needs loss_fn on a final chunk of 70 mod 16 = 6 rows.
    with pytest.raises(ValueError, match=r"loss_fn failed on a batch of 6 rows.*divides 70"):
        sj.estimate_llc(fixed_shape_loss, W, make_data(70), **KW)
    with pytest.raises(ValueError, match=r"batch of 6 rows"):
        sj.estimate_llc_checkpoints(fixed_shape_loss, [W, W], make_data(70), progress=False, **KW)


def test_remainder_chunk_of_an_observable_is_checked(no_chain_program):
    with pytest.raises(ValueError, match=r"observable 'held_out'.*6 rows"):
        sj.estimate_refined_llc(
            fixed_shape_loss, W, make_data(64), observables={"held_out": make_data(70)}, **KW
        )


@pytest.mark.filterwarnings("ignore::slt_jax.diagnostics.LLCDiagnosticWarning")
def test_fixed_shape_loss_works_when_batch_size_divides_n():
    res = sj.estimate_llc(fixed_shape_loss, W, make_data(64), **KW)
    assert np.isfinite(res.llc_mean)


def test_non_finite_loss_at_w_star_is_found_before_the_chains(no_chain_program):
    def bad(p, b):
        return loss(p, b) + jnp.log(0 * p["w"][0])

    with pytest.raises(FloatingPointError, match=r"loss at w\* over the data is -inf"):
        sj.estimate_llc(bad, W, make_data(64), **KW)
    with pytest.raises(FloatingPointError, match=r"loss at w\* over the data"):
        sj.estimate_refined_llc(bad, W, make_data(64), **KW)
    with pytest.raises(FloatingPointError, match=r"loss at w\* over the data"):
        sj.estimate_llc_two_temperature(bad, W, make_data(64), nbetas=(5.0, 10.0), **KW)


def test_checkpoint_with_non_finite_loss_at_w_star_is_named():
    def inf_beyond(p, b):  # L_n(w*) = inf at the checkpoint of step 7
        return jnp.where(p["w"][0] > 1.5, jnp.inf, loss(p, b))

    checkpoints = [W, {"w": W["w"] + 1.0}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sj.estimate_llc_checkpoints(
            inf_beyond, checkpoints, make_data(64), steps=[3, 7], progress=False, **KW
        )
    assert np.isinf(res.init_loss[1]) and np.isnan(res.llc_mean[1])
    messages = [str(w.message) for w in caught]
    assert any("(steps 7)" in m and "L_n(w*), is not finite" in m for m in messages), messages
    assert not any("every chain diverged" in m for m in messages), messages
    assert not any(issubclass(w.category, RuntimeWarning) for w in caught), messages


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(step_size=True), TypeError, r"`step_size` must be a number, got bool"),
        (dict(step_size="1e-3"), TypeError, r"`step_size` must be a number, got str"),
        (dict(localization=np.bool_(True)), TypeError, r"`localization` must be a number"),
        (dict(nbeta="10"), TypeError, r"`nbeta` must be a number, got str"),
        (dict(step_size=1e-50), ValueError, r"`step_size` = 1e-50 underflows float32"),
        (dict(localization=1e-45), ValueError, r"`localization` = 1e-45 underflows float32"),
        (dict(nbeta=1e40), ValueError, r"`nbeta` = 1e\+40 overflows float32"),
        (dict(sampler=sj.samplers.SGHMC(friction=1e39)), ValueError, r"friction` = .* overflows"),
    ],
)
def test_float_options_are_real_float32_numbers(no_chain_program, options, error, message):
    with pytest.raises(error, match=message):
        sj.estimate_llc(loss, W, make_data(64), **{**KW, **options})


def test_float_options_accept_numpy_and_jax_scalars(no_chain_program):
    with pytest.raises(AssertionError, match="must not run"):  # validation passed
        sj.estimate_llc(
            loss, W, make_data(64), **{**KW, "step_size": np.float32(1e-3), "nbeta": jnp.array(5.0)}
        )


@pytest.mark.parametrize(
    "spec, why",
    [
        ("sghmc(5.0)", "1 positional argument(s)"),
        ("sghmc(friction=", "it does not parse"),
        ("sghmc(friction=x)", "the value of 'friction' is not a literal"),
        ("sghmc(friction=5.0) + sgld(", "it does not parse"),
        ("sghmc(**{'friction': 5.0})", "'**' is not an option"),
        ("sghmc(friction=1.0, friction=2.0)", "option 'friction' is given twice"),
    ],
)
def test_a_bad_sampler_spec_string_is_named(no_chain_program, spec, why):
    message = re.escape(f"bad sampler spec {spec!r}: {why}")
    with pytest.raises(ValueError, match=message):
        sj.samplers.resolve_sampler(spec)
    with pytest.raises(ValueError, match=message):
        sj.estimate_llc(loss, W, make_data(64), **{**KW, "sampler": spec})
    assert sj.samplers.resolve_sampler("sghmc(friction=5.0)") == sj.samplers.SGHMC(friction=5.0)
