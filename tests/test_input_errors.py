"""Bad input gets a clear error, raised before anything is compiled (or, for what only a
run can show, named clearly): parameters, data, options, the loss, seeds, remainders."""

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
import slt_jax._src.engine.programs

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

    monkeypatch.setattr(slt_jax._src.engine.programs, "run_items", fail)


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


@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")
def test_fixed_shape_loss_works_when_batch_size_divides_n():
    res = sj.estimate_llc(fixed_shape_loss, W, make_data(64), **KW)
    assert np.isfinite(res.llc_mean)


def test_non_finite_loss_at_w_star_is_found_before_the_chains(no_chain_program):
    def bad(p, b):
        return loss(p, b) + jnp.log(0 * p["w"][0])

    with pytest.raises(FloatingPointError, match=r"L_n\(w\*\), is not finite \(-inf\)"):
        sj.estimate_llc(bad, W, make_data(64), **KW)
    with pytest.raises(FloatingPointError, match=r"loss at w\* over the data, L_n"):
        sj.estimate_refined_llc(bad, W, make_data(64), **KW)
    with pytest.raises(FloatingPointError, match=r"loss at w\* over the data, L_n"):
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
    assert not any("chains diverged" in m for m in messages), messages
    assert not any(issubclass(w.category, RuntimeWarning) for w in caught), messages


# --- corrupt checkpoint files ---------------------------------------------------------------

DAMAGE = {  # what happens to a file: garbage bytes, cut in half, emptied
    "garbage": lambda b: np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes(),
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
}


def _damaged_checkpoints(tmp_path, fmt, how, part="_METADATA", params=W):
    """Checkpoints at steps 1 and 2 in ``fmt``, the second damaged; its path (for orbax, the
    step directory, whose ``part`` files are damaged: ``_METADATA``, or ``data`` for every
    file of array data)."""
    root = tmp_path / "ckpts"
    sj.save_checkpoint(root, 1, params, format=fmt)
    path = sj.save_checkpoint(root, 2, params, format=fmt)
    if fmt == "orbax":
        files = [path / "_METADATA"] if part == "_METADATA" else list(path.rglob("d/*"))
    else:
        files = [path]
    assert files and all(f.is_file() for f in files)
    for f in files:
        f.write_bytes(DAMAGE[how](f.read_bytes()))
    return root, path


CORRUPT = [("safetensors", None), ("msgpack", None), ("orbax", "_METADATA"), ("orbax", "data")]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize(
    "fmt, part", CORRUPT, ids=["safetensors", "msgpack", "orbax", "orbax-data"]
)
def test_a_corrupt_checkpoint_file_is_named(no_chain_program, tmp_path, fmt, part, how):
    """A checkpoint its format's reader refuses is a ValueError naming it, raised when the set
    is opened: before anything is compiled."""
    root, path = _damaged_checkpoints(tmp_path, fmt, how, part)
    compiled = slt_jax._src.engine.programs.num_compiled()
    pattern = re.escape(f"{fmt} checkpoint {str(path)!r} is corrupt or truncated")
    with pytest.raises(ValueError, match=pattern):
        sj.load_checkpoint_set(root)
    with pytest.raises(ValueError, match=pattern):
        sj.estimate_llc_checkpoints(loss, root, make_data(64), progress=False, **KW)
    with pytest.raises(ValueError, match=pattern):
        sj.estimate_llc_checkpoints(loss, root, make_data(64), dry_run=True, **KW)
    assert slt_jax._src.engine.programs.num_compiled() == compiled


def test_an_empty_flax_training_checkpoint_is_named(tmp_path):
    """``flax.training.checkpoints`` files have no suffix; an empty ``checkpoint_<step>`` is
    still recognised as one, and reported, rather than skipped."""
    from flax import serialization

    (tmp_path / "checkpoint_1").write_bytes(serialization.to_bytes(W))
    (tmp_path / "checkpoint_2").write_bytes(b"")
    (tmp_path / "checkpoint_3").write_bytes(serialization.to_bytes(W)[:10])
    with pytest.raises(ValueError, match=r"checkpoint_2' is corrupt or truncated.*empty"):
        sj.load_checkpoint_set(tmp_path)
    (tmp_path / "checkpoint_2").unlink()
    with pytest.raises(ValueError, match=r"checkpoint_3' is corrupt or truncated.*incomplete"):
        sj.load_checkpoint_set(tmp_path)


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack", "orbax"])
def test_the_command_line_names_a_corrupt_checkpoint(tmp_path, capsys, fmt):
    import sweep_factory

    from slt_jax.__main__ import main

    params = sweep_factory.checkpoints(1)[0][0]
    root, path = _damaged_checkpoints(tmp_path, fmt, "truncated", params=params)
    argv = ["llc", str(root), "--model", "sweep_factory:factory", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--steps", "20", "--chains", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err, err
    assert err.startswith("slt-jax: error: ") and f"{str(path)!r} is corrupt or truncated" in err
    assert not (tmp_path / "o").exists()


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


# ---- parameters, data, options, loss and seed of a plain estimate ----------------------


def linear_loss(w, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


W3 = jnp.zeros(3)
DATA50 = (jnp.ones((50, 3)), jnp.ones(50))


@pytest.mark.parametrize(
    "params, message",
    [
        (jnp.array([0.0, jnp.nan, 1.0]), r"params leaf <root> contains non-finite"),
        ({"w": jnp.array([0.0, jnp.inf, 1.0])}, r"\['w'\] contains non-finite"),
        ({}, "no array leaves"),
    ],
)
def test_bad_params(no_chain_program, params, message):
    with pytest.raises(ValueError, match=message):
        sj.estimate_llc(linear_loss, params, DATA50)


def test_integer_params(no_chain_program):
    with pytest.raises(TypeError, match="floating-point"):
        sj.estimate_llc(linear_loss, jnp.zeros(3, jnp.int32), DATA50)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            (jnp.ones((50, 3)), jnp.ones(49)),
            r"different first-axis lengths \(\[0\]: 50, \[1\]: 49\)",
        ),
        ((jnp.ones((50, 3)), jnp.float32(1.0)), "is a scalar"),
        ((), "no array leaves"),
        ((jnp.ones((0, 3)), jnp.ones(0)), "no examples"),
    ],
)
def test_bad_data(no_chain_program, data, message):
    with pytest.raises(ValueError, match=message):
        sj.estimate_llc(linear_loss, W3, data, batch_size=1)


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(batch_size=0), ValueError, "batch_size` must be >= 1"),
        (dict(batch_size=-3), ValueError, "batch_size` must be >= 1"),
        (dict(batch_size=51), ValueError, r"larger than the data set \(50 examples\)"),
        (dict(batch_size=2.5), TypeError, "batch_size` must be an integer"),
        (dict(step_size=0.0), ValueError, "step_size` must be finite and > 0"),
        (dict(step_size=-1e-4), ValueError, "step_size` must be finite and > 0"),
        (dict(step_size=float("nan")), ValueError, "step_size` must be finite"),
        (dict(localization=-1.0), ValueError, "localization` must be finite and >= 0"),
        (dict(nbeta=0.0), ValueError, "nbeta` must be finite and > 0"),
        (dict(num_steps=100, num_burnin=100), ValueError, "must be smaller than `num_steps`"),
        (dict(num_steps=100, num_burnin=150), ValueError, "must be smaller than `num_steps`"),
        (dict(num_steps=0), ValueError, "num_steps` must be >= 1"),
        (dict(num_chains=0), ValueError, "num_chains` must be >= 1"),
        (dict(estimator="magic"), ValueError, "unknown estimator 'magic'"),
    ],
)
def test_bad_options(no_chain_program, options, error, message):
    with pytest.raises(error, match=message):
        sj.estimate_llc(linear_loss, W3, DATA50, **{"batch_size": 10, **options})


def test_loss_not_scalar(no_chain_program):
    def per_example(w, batch):
        return 0.5 * (batch[0] @ w - batch[1]) ** 2

    with pytest.raises(ValueError, match=r"must return a scalar .* returned \(10,\)"):
        sj.estimate_llc(per_example, W3, DATA50, batch_size=10)


def test_loss_that_fails_on_a_batch(no_chain_program):
    def wrong_shapes(w, batch):
        return jnp.mean(batch[0] @ jnp.ones(7))

    with pytest.raises(
        ValueError, match=r"failed on a minibatch with leaf shapes \(\(10, 3\), \(10,\)\)"
    ):
        sj.estimate_llc(wrong_shapes, W3, DATA50, batch_size=10)


def test_integer_loss(no_chain_program):
    with pytest.raises(TypeError, match="floating-point scalar"):
        sj.estimate_llc(lambda w, b: jnp.sum(b[0] > 0), W3, DATA50, batch_size=10)


def test_default_nbeta_needs_two_examples(no_chain_program):
    with pytest.raises(ValueError, match="at least 2 examples"):
        sj.estimate_llc(linear_loss, W3, (np.ones((1, 3)), np.ones(1)), batch_size=1)


@pytest.mark.parametrize(
    "seed, error, message",
    [
        (-1, ValueError, r"in \[0, 2\*\*32\)"),
        (2**32, ValueError, "larger seeds would collide"),
        (True, TypeError, "integer or a JAX key"),
        (1.5, TypeError, "integer or a JAX key"),
        (jnp.arange(2), TypeError, "typed key"),
    ],
)
def test_bad_seed(no_chain_program, seed, error, message):
    with pytest.raises(error, match=message):
        sj.estimate_llc(linear_loss, W3, DATA50, batch_size=10, seed=seed)


def test_non_finite_data(no_chain_program):
    x = np.ones((50, 3), np.float32)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"data leaf \[0\] contains non-finite"):
        sj.estimate_llc(linear_loss, W3, (x, np.ones(50, np.float32)), batch_size=10)
