"""In-context linear regression (slt_jax.models.icl): data, Bayesian baselines, transformer,
training, and the LLC factory.

Batch sizes and model shapes are shared between tests so that JAX compiles each function
once per file (compilation, not arithmetic, dominates the time on a CPU).
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax import dynamics
from slt_jax.examples import log_spaced_steps
from slt_jax.models import icl

SMALL = dict(d_model=32, d_mlp=32)  # the test transformer: 2 layers, 4 heads, narrower
N = 512  # sequences in every probe batch


@pytest.fixture(scope="module")
def probe():
    """``N`` sequences with Gaussian tasks."""
    return icl.sample(jax.random.key(99), N)


def test_data_shapes_token_layout_and_noise_level(probe):
    k, d, s2 = icl.NUM_EXAMPLES, icl.DIM, icl.NOISE_VARIANCE
    xs, ys, ts = probe
    assert xs.shape == (N, k, d) and ys.shape == (N, k) and ts.shape == (N, d)
    toks = icl.tokens(xs, ys)
    assert toks.shape == (N, 2 * k, d + 1)
    np.testing.assert_array_equal(toks[:, 0::2, 1:], xs)  # x-tokens (0, x_k)
    np.testing.assert_array_equal(toks[:, 0::2, 0], 0.0)
    np.testing.assert_array_equal(toks[:, 1::2, 0], ys)  # y-tokens (y_k, 0)
    np.testing.assert_array_equal(toks[:, 1::2, 1:], 0.0)
    # The true task's predictor leaves the noise: its loss is σ² up to Monte-Carlo error
    # (the mean of N·K squared N(0, σ²) draws has standard deviation σ²·sqrt(2/(N·K))).
    true_loss = float(icl.per_example_loss(jnp.einsum("bkd,bd->bk", xs, ts), ys).mean())
    assert abs(true_loss - s2) < 5 * s2 * np.sqrt(2 / (N * k))
    # The zero predictor costs E[(t·x)²] + σ² = D + σ², up to 5 standard errors.
    zero = np.asarray(icl.per_example_loss(jnp.zeros_like(ys), ys))
    assert abs(zero.mean() - (d + s2)) < 5 * zero.std() / np.sqrt(N)
    assert not np.allclose(icl.sample(jax.random.key(98), N).xs, xs)


def test_finite_task_diversity_draws_from_the_task_set():
    tasks = icl.task_set(8, seed=7)
    np.testing.assert_array_equal(tasks, icl.task_set(8, seed=7))
    assert not np.allclose(tasks, icl.task_set(8, seed=8))
    ts = icl.sample(jax.random.key(1), N, tasks=tasks).tasks
    matches = np.all(np.asarray(ts)[:, None, :] == np.asarray(tasks)[None], axis=-1)
    assert np.all(matches.sum(1) == 1)  # every sequence's task is one of the set
    counts = matches.sum(0)  # Binomial(N, 1/8): mean 64, standard deviation 7.5
    assert np.all(np.abs(counts - N / 8) < 5 * np.sqrt(N / 8 * 7 / 8))
    with pytest.raises(ValueError):
        icl.task_set(0)


def _ridge_brute_force(xs, ys, noise_variance, prior_variance):
    """Posterior mean of t per sequence and prefix, in float64, one solve at a time."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    out = np.zeros(ys.shape)
    for b in range(xs.shape[0]):
        for k in range(xs.shape[1]):
            x, y = xs[b, :k], ys[b, :k]
            precision = np.eye(xs.shape[2]) / prior_variance + x.T @ x / noise_variance
            out[b, k] = xs[b, k] @ np.linalg.solve(precision, x.T @ y / noise_variance)
    return out


def test_ridge_is_the_gaussian_posterior_mean():
    xs, ys, _ = icl.sample(jax.random.key(2), 8)
    for prior_variance in (1.0, 0.3):
        got = icl.ridge_predictions(xs, ys, prior_variance=prior_variance)
        want = _ridge_brute_force(xs, ys, icl.NOISE_VARIANCE, prior_variance)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(icl.ridge_predictions(xs, ys)[:, 0], 0.0)  # no context


def test_ridge_with_a_flat_prior_is_least_squares():
    xs, ys, _ = icl.sample(jax.random.key(3), 8)
    got = np.asarray(icl.ridge_predictions(xs, ys, prior_variance=1e8))
    x64, y64 = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    d = xs.shape[-1]
    for b in range(xs.shape[0]):
        for k in range(d + 2, xs.shape[1]):  # enough examples for a well-posed fit
            t_ols = np.linalg.lstsq(x64[b, :k], y64[b, :k], rcond=None)[0]
            np.testing.assert_allclose(got[b, k], x64[b, k] @ t_ols, rtol=1e-3, atol=1e-3)


def test_dmmse_with_one_task_predicts_that_task():
    tasks = icl.task_set(1, seed=4)
    xs, ys, _ = icl.sample(jax.random.key(4), 8)  # whatever the data, the posterior is {t}
    got = icl.dmmse_predictions(xs, ys, tasks)
    np.testing.assert_allclose(got, jnp.einsum("bkd,d->bk", xs, tasks[0]), rtol=1e-5, atol=1e-6)


def test_dmmse_matches_a_brute_force_posterior():
    tasks = icl.task_set(8, seed=5)
    xs, ys, _ = icl.sample(jax.random.key(5), 8)  # the posterior is defined for any data
    got = np.asarray(icl.dmmse_predictions(xs, ys, tasks))
    x64, y64, t64 = (np.asarray(a, np.float64) for a in (xs, ys, tasks))
    s2 = icl.NOISE_VARIANCE
    for b in range(x64.shape[0]):
        for k in range(x64.shape[1]):
            log_lik = np.array(
                [-np.sum((y64[b, :k] - x64[b, :k] @ t) ** 2) / (2 * s2) for t in t64]
            )
            post = np.exp(log_lik - log_lik.max())
            post /= post.sum()
            want = sum(p * (x64[b, k] @ t) for p, t in zip(post, t64, strict=True))
            assert abs(got[b, k] - want) < 1e-4


def test_dmmse_over_many_gaussian_tasks_approaches_ridge():
    # Self-normalized importance sampling: dMMSE over M draws from the prior N(0, I) is a
    # Monte-Carlo estimate of the ridge posterior mean. A large noise keeps the posterior
    # broad so that M = 50 000 draws give it to a few hundredths (mean squared Monte-Carlo
    # error 0.0005 to 0.004 over seeds), far closer than ridge with the wrong prior (≈ 0.5).
    s2 = 4.0
    xs, ys, _ = icl.sample(jax.random.key(6), 8, noise_variance=s2)
    ridge = icl.ridge_predictions(xs, ys, noise_variance=s2)
    tasks = jax.random.normal(jax.random.key(7), (50_000, icl.DIM))
    dmmse = icl.dmmse_predictions(xs, ys, tasks, noise_variance=s2)
    assert float(icl.distance_to(dmmse, ridge)) < 0.01
    wrong_prior = icl.ridge_predictions(xs, ys, noise_variance=s2, prior_variance=0.25)
    assert float(icl.distance_to(wrong_prior, ridge)) > 0.1


def test_transformer_is_causal(probe):
    model = icl.ICLTransformer(rngs=nnx.Rngs(0), **SMALL)
    xs, ys = np.asarray(probe.xs), np.asarray(probe.ys)
    base = np.asarray(icl.predict(model, xs, ys))
    assert base.shape == (N, icl.NUM_EXAMPLES)
    for j in (0, 5, 15):
        # Changing y_j (token 2j+1) leaves the predictions of y_1..y_j alone, moves later ones.
        ys_moved = ys.copy()
        ys_moved[:, j] += 3.0
        moved = np.asarray(icl.predict(model, xs, ys_moved))
        np.testing.assert_array_equal(moved[:, : j + 1], base[:, : j + 1])
        if j < icl.NUM_EXAMPLES - 1:
            assert np.all(moved[:, j + 1 :] != base[:, j + 1 :])
        # Changing x_j changes the prediction of y_j itself, never earlier ones.
        xs_moved = xs.copy()
        xs_moved[:, j] += 1.0
        moved = np.asarray(icl.predict(model, xs_moved, ys))
        np.testing.assert_array_equal(moved[:, :j], base[:, :j])
        assert np.all(moved[:, j] != base[:, j])


def test_head_masks_split_the_fused_attention_kernels():
    params = nnx.state(icl.ICLTransformer(rngs=nnx.Rngs(0), **SMALL), nnx.Param)
    qkv_size = np.size(params["blocks"][0]["attn"]["qkv"])
    for layer in range(2):
        masks = sj.refine.head_masks(params, {f"blocks/{layer}/attn/qkv": -2}, 4)
        assert len(masks) == 4
        picked = [np.asarray(m["blocks"][layer]["attn"]["qkv"]) for m in masks.values()]
        assert all(p.sum() == qkv_size // 4 for p in picked)
        assert all(sj.refine.num_selected(m) == qkv_size // 4 for m in masks.values())
        np.testing.assert_array_equal(sum(p.astype(int) for p in picked), 1)  # a partition
        # Head h selects qkv[:, :, h, :] (query, key and value of one head).
        np.testing.assert_array_equal(picked[2][:, :, 2, :], True)
        np.testing.assert_array_equal(picked[2][:, :, [0, 1, 3], :], False)
    heads = icl.head_refinements(params)
    assert sorted(heads) == [f"layer{i}/head{h}" for i in range(2) for h in range(4)]
    out_size = np.size(params["blocks"][1]["attn"]["out"])
    for mask in heads.values():
        assert sj.refine.num_selected(mask) == (qkv_size + out_size) // 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("icl_checkpoints")
    model, history = icl.train(
        None,
        num_steps=300,
        batch_size=32,
        learning_rate=3e-3,
        seed=0,
        checkpoint_dir=str(directory),
        num_checkpoints=6,
        **SMALL,
    )
    assert history["step"].tolist() == list(range(300)) and history["loss"].shape == (300,)
    assert np.all(np.isfinite(history["loss"]))
    # per-step batch losses are noisy; their means over the first and last 50 steps fall
    assert history["loss"][-50:].mean() < 0.8 * history["loss"][:50].mean()
    return model, directory


@pytest.fixture(scope="module")
def factory_output():
    return icl.factory(num_tasks=8, n=N, seed=0, **SMALL)


def test_short_training_learns_in_context(trained, probe):
    model, _ = trained
    xs, ys, _ = probe
    initial = icl.ICLTransformer(rngs=nnx.Rngs(0), **SMALL)  # train(seed=0)'s initialisation
    before = float(icl.per_example_loss(icl.predict(initial, xs, ys), ys).mean())
    after = float(icl.per_example_loss(icl.predict(model, xs, ys), ys).mean())
    zero = float(icl.per_example_loss(jnp.zeros_like(ys), ys).mean())  # ≈ D + σ² = 4.125
    ridge = float(icl.per_example_loss(icl.ridge_predictions(xs, ys), ys).mean())
    # Without context nothing beats predicting 0 under N(0, I) tasks: a loss well below the
    # zero predictor's is in-context learning. Ridge (Bayes-optimal) bounds it from below.
    assert after < 0.8 * zero and after < before - 1.0
    assert after > ridge


def test_checkpoints_feed_essential_dynamics(trained, probe, factory_output):
    model, directory = trained
    like = factory_output[2]  # factory(**SMALL)'s template fits train(**SMALL)'s checkpoints
    checkpoints = sj.load_checkpoint_set(directory, like=like)
    assert list(checkpoints.steps) == log_spaced_steps(300, 6)
    probe_tokens = icl.tokens(probe.xs, probe.ys)
    rows = dynamics.features(icl.apply_fn, checkpoints, probe_tokens)
    assert rows.shape == (len(checkpoints), N * icl.NUM_EXAMPLES)
    # Loaded without a template (plain nested dicts), apply_fn reads them the same way.
    plain = sj.load_checkpoint_set(directory)
    np.testing.assert_array_equal(dynamics.features(icl.apply_fn, plain, probe_tokens), rows)
    np.testing.assert_allclose(rows[-1], np.ravel(icl.predict(model, *probe[:2])), atol=1e-5)
    first = icl.ICLTransformer(rngs=nnx.Rngs(0), **SMALL)  # step 0 is the initialisation
    np.testing.assert_allclose(rows[0], np.ravel(icl.predict(first, *probe[:2])), atol=1e-5)


@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")  # 12 steps from init
def test_factory_runs_estimate_llc(factory_output):
    loss_fn, data, like = factory_output
    tokens, ys = data
    assert tokens.shape == (N, 2 * icl.NUM_EXAMPLES, icl.DIM + 1) and ys.shape == (N, 16)
    # The data come from train(num_tasks=8)'s distribution: every sequence is fitted by one
    # of task_set(8) up to the noise (residual mean square ≈ σ² = 0.125; others are ≳ 1).
    xs = np.asarray(tokens[:, 0::2, 1:])
    fits = np.einsum("bkd,md->bmk", xs, np.asarray(icl.task_set(8)))
    best = np.min(np.mean((fits - ys[:, None, :]) ** 2, axis=-1), axis=-1)
    assert np.all(best < 0.4) and abs(np.mean(best) - icl.NOISE_VARIANCE) < 0.03
    result = sj.estimate_llc(
        loss_fn,
        like,
        data,
        num_chains=2,
        num_steps=12,
        batch_size=32,
        step_size=1e-5,
        localization=100.0,
        diagnostic_every=0,
    )
    assert np.isfinite(result.llc_mean) and np.isfinite(result.init_loss)
    assert not np.any(result.diverged)


def test_docstring_example():
    result = doctest.testmod(icl, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
