"""The engine: vmap equals a loop, determinism, one compilation, minibatches, divergence."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CountingLoss, chain_program

import slt_jax as sj
from slt_jax._src import data as _data
from slt_jax._src.engine import programs as sharding

SETTINGS = dict(step_size=1e-3, localization=1.0, nbeta=300.0)


def test_chain_under_vmap_equals_single_run(linear_regression):
    loss_fn, w, data = linear_regression
    config = dict(batch_size=100, num_burnin=30, num_steps=100, **SETTINGS)
    keys = jax.random.split(jax.random.key(3), 5)
    together, _ = chain_program(loss_fn, keys, w, data, **config)
    for i in range(5):
        alone, _ = chain_program(loss_fn, keys[i : i + 1], w, data, **config)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(together), strict=True):
            np.testing.assert_allclose(a[0], b[i], rtol=2e-5, atol=1e-6)


def test_same_seed_same_result_other_seed_differs(linear_regression):
    loss_fn, w, data = linear_regression
    kw = dict(num_chains=2, num_steps=60, batch_size=50, step_size=1e-3, localization=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        a = sj.estimate_llc(loss_fn, w, data, seed=7, **kw)
        b = sj.estimate_llc(loss_fn, w, data, seed=7, **kw)
        c = sj.estimate_llc(loss_fn, w, data, seed=8, **kw)
    np.testing.assert_array_equal(a.llc_trace, b.llc_trace)
    assert not np.allclose(a.llc_trace, c.llc_trace)


def test_one_compilation_per_shape(linear_regression):
    fn, w, data = linear_regression
    loss_fn = CountingLoss(fn)
    kw = dict(num_chains=3, num_steps=40, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        sj.estimate_llc(loss_fn, w, data, **kw)
        traced = loss_fn.traces
        compiled = sharding.num_compiled()
        assert traced > 0
        # New seed, step size, localization, nβ and centre: same program, no new trace.
        sj.estimate_llc(
            loss_fn, w, data, seed=1, step_size=3e-4, localization=7.0, nbeta=50.0, **kw
        )
        sj.estimate_llc(loss_fn, w + 0.01, data, seed=2, **kw)
        # At most the (uncompiled) eval_shape validation pass may re-trace.
        assert loss_fn.traces <= traced + 2
        assert sharding.num_compiled() == compiled
        # A new shape (more chains) compiles again: the counter does see compilation.
        sj.estimate_llc(loss_fn, w, data, **{**kw, "num_chains": 4})
        assert loss_fn.traces > traced + 2
        assert sharding.num_compiled() == compiled + 1


def test_minibatches_cover_each_epoch_without_replacement():
    n, b = 23, 5  # 4 batches an epoch, 3 examples left out of each epoch
    data = jnp.arange(n)
    step_batch = jax.jit(lambda t: _data.minibatch(jax.random.key(0), t, data, b))
    seen = np.stack([step_batch(t) for t in range(12)]).reshape(3, 4 * b)  # three epochs
    for epoch in seen:
        assert len(set(epoch.tolist())) == 4 * b  # no repeats within an epoch
    assert not np.array_equal(seen[0], seen[1])  # a fresh permutation each epoch


@pytest.mark.parametrize("n", [2, 3, 7, 64, 100, 1797, 4097])
def test_permuted_indices_is_a_permutation(n):
    for seed in range(3):
        perm = _data.permuted_indices(jax.random.key(seed), jnp.arange(n), n)
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_permuted_indices_are_uniform():
    """Where element 0 lands, over 4000 keys, is uniform on [0, n) (chi-square, n - 1 dof)."""
    n, keys = 10, 4000
    first = jax.vmap(lambda k: _data.permuted_indices(k, jnp.arange(n), n)[0])(
        jax.random.split(jax.random.key(0), keys)
    )
    counts = np.bincount(np.asarray(first), minlength=n)
    chi2 = np.sum((counts - keys / n) ** 2 / (keys / n))
    assert chi2 < 27.9  # the 0.999 quantile of chi-square with 9 degrees of freedom


def test_full_batch_uses_all_data_in_order():
    data = {"x": jnp.arange(7.0)}
    batch = _data.minibatch(jax.random.key(0), jnp.int32(3), data, 7)
    np.testing.assert_array_equal(batch["x"], data["x"])


@pytest.mark.parametrize("chunk", [1, 4, 7, 10, 50])
def test_dataset_mean_is_exact_for_any_chunk(chunk):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(37, 3)), jnp.float32)
    got = jax.jit(lambda d: _data.dataset_mean(lambda b: jnp.mean(b**2), d, chunk))(x)
    np.testing.assert_allclose(got, np.mean(np.asarray(x) ** 2), rtol=1e-5)


def _cliff_loss(w, batch):
    """½ w² until |w| > 0.25, then NaN: chains that wander out diverge."""
    del batch
    return jnp.where(jnp.abs(w[0]) > 0.25, jnp.nan, 0.5 * w[0] ** 2)


@pytest.mark.filterwarnings("ignore:effective sample size")
def test_diverged_chains_are_flagged_and_excluded():
    data = jnp.zeros((100, 1))
    kw = dict(
        num_chains=16,
        num_steps=400,
        num_burnin=100,
        batch_size=100,
        step_size=1e-3,
        localization=0.0,
        nbeta=100.0,
    )
    with pytest.warns(sj.LLCDiagnosticWarning, match="chains diverged"):
        res = sj.estimate_llc(_cliff_loss, jnp.zeros(1), data, **kw)
    # Stationary sd of w is about 0.1, so some but not all chains cross 0.25 (2.5 sd) in 400 steps.
    assert 0 < res.num_diverged < 16
    bad_traces = ~np.all(np.isfinite(res.loss_trace), axis=1)
    np.testing.assert_array_equal(
        res.diverged, bad_traces | ~np.all(np.isfinite(res.burnin_loss_trace), axis=1)
    )
    assert np.isfinite(res.llc_mean)
    np.testing.assert_allclose(res.llc_mean, res.llc_per_chain[~res.diverged].mean())


def test_all_chains_diverging_is_flagged_with_a_clear_warning_not_raised():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sj.estimate_llc(
            _cliff_loss,
            jnp.zeros(1),
            jnp.zeros((100, 1)),
            num_chains=4,
            num_steps=200,
            batch_size=100,
            step_size=1.0,
            localization=0.0,
        )
    assert res.diverged.all() and res.num_diverged == 4
    assert np.isnan(res.llc_mean) and np.isnan(res.llc_stderr)
    assert res.loss_trace.shape == (4, 150)  # the traces are kept for inspection
    messages = [str(w.message) for w in caught if w.category is sj.LLCDiagnosticWarning]
    assert len(messages) == 1 and "all 4 chains diverged" in messages[0]
    assert "smaller step_size" in messages[0]
    assert "diverged" in res.summary()


def test_parameters_going_non_finite_are_caught():
    """The loss stays finite (0) while its gradient drives w to inf: only the parameter
    check can flag the chain."""

    @jax.custom_jvp
    def flat_but_pushing(w):
        return 0.0 * jnp.sum(w)

    flat_but_pushing.defjvp(
        lambda primals, tangents: (flat_but_pushing(primals[0]), -1e38 * jnp.sum(tangents[0]))
    )

    def loss_fn(w, batch):
        return flat_but_pushing(w) + 0.0 * jnp.mean(batch)

    # One step: its loss is evaluated at the finite start, the step then sends w to inf.
    trace, _ = chain_program(
        loss_fn,
        jax.random.split(jax.random.key(0), 2),
        jnp.ones(2),
        jnp.zeros((10, 1)),
        batch_size=10,
        num_burnin=0,
        num_steps=1,
        **SETTINGS,
    )
    assert np.isfinite(trace.loss).all()  # the loss never saw a problem
    assert trace.diverged.all()  # the parameters did


def test_a_non_finite_loss_at_w_star_is_its_own_error():
    def loss_fn(w, batch):
        return -jnp.mean(jnp.log(batch[:, 0] * w[0]))  # log 0 at w* = 0

    with pytest.raises(FloatingPointError, match=r"L_n\(w\*\), is not finite"):
        sj.estimate_llc(
            loss_fn, jnp.zeros(1), jnp.ones((20, 1)), num_chains=2, num_steps=20, batch_size=10
        )
