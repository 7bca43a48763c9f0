"""Equinox adapter: the loss it builds is the hand-written one, gradients flow, and the LLC
through it is right on a regular model."""

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_mc_close

import slt_jax as sj
from slt_jax import theory
from slt_jax._src.io.adapters import eqx_loss

eqx = pytest.importorskip("equinox")


def _squared_error(outputs, targets):
    return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)


@pytest.fixture
def mlp_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = rng.normal(size=(64, 2)).astype(np.float32)
    model = eqx.nn.MLP(3, 2, width_size=8, depth=2, key=jax.random.key(0))
    return model, (jnp.asarray(x), jnp.asarray(y))


def _mlp_by_hand(layers, x):
    """``eqx.nn.MLP`` written out: ReLU between affine layers, none after the last."""
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def test_loss_and_gradient_match_hand_computation(mlp_data):
    model, (x, y) = mlp_data
    loss_fn, params = eqx_loss(model, _squared_error)
    leaves = jax.tree.leaves(params)
    assert len(leaves) == 6 and all(isinstance(a, jax.Array) for a in leaves)  # W, b × 3
    layers = [(layer.weight, layer.bias) for layer in model.layers]
    by_hand = lambda ls: jnp.mean(0.5 * jnp.sum((_mlp_by_hand(ls, x) - y) ** 2, -1))  # noqa: E731
    np.testing.assert_allclose(loss_fn(params, (x, y)), by_hand(layers), rtol=1e-6)
    grads = jax.jit(jax.grad(loss_fn))(params, (x, y))
    want = jax.grad(by_hand)(layers)
    for layer, (gw, gb) in zip(grads.layers, want, strict=True):
        np.testing.assert_allclose(layer.weight, gw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.bias, gb, rtol=1e-5, atol=1e-6)


def test_batched_model_and_filter_spec(mlp_data):
    model, (x, y) = mlp_data

    class Batched(eqx.Module):  # takes the whole batch itself
        mlp: eqx.nn.MLP

        def __call__(self, inputs):
            return jax.vmap(self.mlp)(inputs)

    loss_fn, params = eqx_loss(model, _squared_error)
    batched_fn, batched_params = eqx_loss(Batched(model), _squared_error, batched=True)
    np.testing.assert_allclose(batched_fn(batched_params, (x, y)), loss_fn(params, (x, y)))
    # only the last layer moves: the others are held fixed like the static fields
    spec = jax.tree.map(lambda _: False, model)
    spec = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), spec, (True, True))
    last_fn, last = eqx_loss(model, _squared_error, filter_spec=spec)
    assert [a.shape for a in jax.tree.leaves(last)] == [(2, 8), (2,)]
    np.testing.assert_allclose(last_fn(last, (x, y)), loss_fn(params, (x, y)), rtol=1e-6)
    with pytest.raises(ValueError, match="selects no array"):
        eqx_loss(model, _squared_error, filter_spec=lambda leaf: False)
    with pytest.raises(ValueError, match="one loss per example"):
        bad_fn, _ = eqx_loss(model, lambda out, t: jnp.sum((out - t) ** 2))
        bad_fn(params, (x, y))


def test_inference_mode_turns_dropout_off(mlp_data):
    model, (x, y) = mlp_data
    noisy = eqx.nn.Sequential([eqx.nn.Dropout(0.5), eqx.nn.Lambda(model)])
    loss_fn, params = eqx_loss(noisy, _squared_error)
    plain_fn, plain = eqx_loss(model, _squared_error)
    np.testing.assert_allclose(loss_fn(params, (x, y)), plain_fn(plain, (x, y)), rtol=1e-6)
    train_fn, train = eqx_loss(noisy, _squared_error, inference=False)
    with pytest.raises(RuntimeError, match="key"):  # Dropout in training mode wants a key
        train_fn(train, (x, y))


def test_missing_equinox_names_the_extra(monkeypatch, mlp_data):
    monkeypatch.setitem(sys.modules, "equinox", None)
    with pytest.raises(ImportError, match=r'pip install "slt-jax\[equinox\]"'):
        eqx_loss(mlp_data[0], _squared_error)


def test_estimate_llc_runs_on_an_mlp(mlp_data):
    model, data = mlp_data
    loss_fn, params = eqx_loss(model, _squared_error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_llc(
            loss_fn, params, data, num_chains=2, num_steps=50, step_size=1e-4, batch_size=32
        )
    assert np.isfinite(res.llc_mean) and res.llc_trace.shape == (2, 50 - res.config.num_burnin)


def test_linear_regression_through_eqx_is_regular():
    """y = x·w0 + b0 + N(0, 1) fit by an ``eqx.nn.Linear`` (d = 4 + 1) at its OLS solution.

    The loss is exactly quadratic, ½(w − ŵ)ᵀĤ(w − ŵ) + const with Ĥ = [x 1]ᵀ[x 1]/n, so
    with full-batch (exact) gradients λ̂ is the quadratic oracle (localization and step
    bias included, about d/2 = 2.5); the band is 4 reported standard errors."""
    rng = np.random.default_rng(0)
    n, d_in = 2000, 4
    x = rng.normal(size=(n, d_in)).astype(np.float32)
    y = (x @ rng.normal(size=d_in) + 0.3 + rng.normal(size=n)).astype(np.float32)
    design = np.c_[x, np.ones(n)].astype(np.float64)
    coef = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
    model = eqx.nn.Linear(d_in, "scalar", key=jax.random.key(0))
    model = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        model,
        (jnp.asarray(coef[None, :d_in], jnp.float32), jnp.asarray(coef[d_in], jnp.float32)),
    )
    loss_fn, params = eqx_loss(model, lambda out, t: 0.5 * (out - t) ** 2)
    nbeta, gamma, eps = n / np.log(n), 1.0, 5e-4
    res = sj.estimate_llc(
        loss_fn,
        params,
        (jnp.asarray(x), jnp.asarray(y)),
        num_chains=8,
        num_steps=3000,
        num_burnin=500,
        step_size=eps,
        localization=gamma,
        batch_size=n,
    )
    h = np.linalg.eigvalsh(design.T @ design / n)
    oracle = theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps)
    assert abs(oracle - theory.regular_learning_coefficient(d_in + 1)) < 0.1
    assert_mc_close(res.llc_mean, res.llc_stderr, oracle)
