"""Flax adapters: the loss they build is the hand-written one, and the LLC through them is too."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import slt_jax as sj


def _squared_error(outputs, targets):
    return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x @ rng.normal(size=(3, 2)) + rng.normal(size=(400, 2))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def _fit_nnx_linear(data):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x, y = data
    design = np.c_[np.asarray(x), np.ones(len(x))]
    coef = np.linalg.lstsq(design, np.asarray(y), rcond=None)[0]
    model.kernel[...] = jnp.asarray(coef[:3])
    model.bias[...] = jnp.asarray(coef[3])
    return model


def test_nnx_adapter_loss_and_llc_match_hand_written(regression_data):
    model = _fit_nnx_linear(regression_data)
    loss_fn, params = sj.nnx_loss(model, _squared_error)

    def by_hand(p, batch):
        x, y = batch
        return jnp.mean(_squared_error(x @ p["kernel"] + p["bias"], y))

    plain = {"kernel": model.kernel[...], "bias": model.bias[...]}
    np.testing.assert_allclose(
        loss_fn(params, regression_data), by_hand(plain, regression_data), rtol=1e-6
    )
    kw = dict(num_chains=4, num_steps=600, step_size=1e-4, localization=10.0, batch_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        a = sj.estimate_llc(loss_fn, params, regression_data, **kw)
        b = sj.estimate_llc(by_hand, plain, regression_data, **kw)
    # Same pytree leaves in the same order (bias, kernel), same keys: the same chains.
    np.testing.assert_allclose(a.llc_trace, b.llc_trace, rtol=1e-4, atol=1e-4)
    # A regular model with d = 3·2 + 2 = 8 parameters: λ close to d/2.
    assert abs(a.llc_mean - sj.theory.regular_learning_coefficient(8)) < 1.0


def test_nnx_adapter_holds_non_parameter_state_fixed():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(4, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, use_running_average=True, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.linear(x))

    model = Net(nnx.Rngs(0))
    model.norm.use_running_average = False  # left in training mode by the user
    model.norm.mean[...] = jnp.array([0.5, -1.0, 2.0])
    loss_fn, params = sj.nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    assert all(
        "mean" not in jax.tree_util.keystr(p) and "var" not in jax.tree_util.keystr(p)
        for p, _ in leaves
    )
    x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
    model.eval()  # the adapter evaluates in inference mode: running statistics
    expected = optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    model.train()
    np.testing.assert_allclose(loss_fn(params, (x, y)), expected, rtol=1e-6)
    # The sampler runs through it (no mutation of batch statistics inside the trace) and
    # the user's model is left as it was.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_llc(
            loss_fn,
            params,
            (jnp.ones((64, 4)), jnp.zeros(64, jnp.int32)),
            num_chains=2,
            num_steps=40,
            batch_size=16,
        )
    assert np.isfinite(res.llc_mean) and model.norm.use_running_average is False
    np.testing.assert_array_equal(model.norm.mean[...], jnp.array([0.5, -1.0, 2.0]))
    # Only the linear layer's parameters when a narrower filter is given.
    _, linear_only = sj.nnx_loss(
        model,
        optax.softmax_cross_entropy_with_integer_labels,
        wrt=nnx.All(nnx.Param, nnx.PathContains("linear")),
    )
    assert sum(leaf.size for leaf in jax.tree.leaves(linear_only)) == 4 * 3 + 3


def test_linen_adapter_matches_hand_written(regression_data):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.tanh(nn.Dense(5)(x)))

    module = Net()
    variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
    loss_fn, params = sj.linen_loss(module, variables, _squared_error)
    x, y = regression_data
    expected = jnp.mean(_squared_error(module.apply(variables, x), y))
    np.testing.assert_allclose(loss_fn(params, (x, y)), expected, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_llc(loss_fn, params, (x, y), num_chains=2, num_steps=100, batch_size=50)
    assert res.llc_per_chain.shape == (2,) and np.isfinite(res.llc_mean)


def test_per_example_loss_must_be_per_example(regression_data):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    loss_fn, params = sj.nnx_loss(model, lambda out, y: jnp.mean((out - y) ** 2))
    with pytest.raises(ValueError, match="one loss per example"):
        sj.estimate_llc(loss_fn, params, regression_data, batch_size=10)


def test_load_mnist_idx_reads_the_idx_format(tmp_path):
    import gzip

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    head = lambda magic, dims: b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))  # noqa: E731
    with gzip.open(tmp_path / "img.gz", "wb") as f:
        f.write(head(0x803, images.shape) + images.tobytes())
    (tmp_path / "lab").write_bytes(head(0x801, labels.shape) + labels.tobytes())
    x, y = sj.examples.load_mnist_idx(tmp_path / "img.gz", tmp_path / "lab")
    assert x.shape == (7, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, images.reshape(7, -1) / 255.0, rtol=1e-6)
    assert y.tolist() == labels.tolist()
    with pytest.raises(ValueError, match="magic number"):
        sj.examples.load_mnist_idx(tmp_path / "lab", tmp_path / "lab")
