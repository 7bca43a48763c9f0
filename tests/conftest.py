import jax
import jax.numpy as jnp
import numpy as np
import pytest


class CountingLoss:
    """A loss function that counts how often JAX traces it (to detect recompilation)."""

    def __init__(self, fn):
        self.fn = fn
        self.traces = 0

    def __call__(self, params, batch):
        self.traces += 1
        return self.fn(params, batch)


def quadratic_loss(curvatures):
    """L(w) = ½ Σ h_i w_i², independent of the batch (exact gradients)."""
    h = jnp.asarray(curvatures, jnp.float32)

    def loss_fn(w, batch):
        del batch
        return 0.5 * jnp.sum(h * w**2)

    return loss_fn


@pytest.fixture
def linear_regression():
    """A well-specified linear regression: y = x·w0 + N(0, 1); returns (loss_fn, w_ols, data)."""
    rng = np.random.default_rng(0)
    n, d = 2000, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    w0 = rng.normal(size=d).astype(np.float32)
    y = (x @ w0 + rng.normal(size=n)).astype(np.float32)
    w_ols = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)[0]

    def loss_fn(w, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((xb @ w - yb) ** 2)

    return loss_fn, jnp.asarray(w_ols, jnp.float32), (jnp.asarray(x), jnp.asarray(y))


@pytest.fixture(autouse=True)
def _no_x64():
    assert not jax.config.jax_enable_x64


def assert_mc_close(value, stderr, target, *, extra=0.0, max_rel_stderr=0.1):
    """``|value − target| < 4·stderr + extra``, with the Monte-Carlo error itself bounded:
    a run whose standard error is a large fraction of the target (a chain that never
    equilibrated) would otherwise pass any comparison."""
    assert np.isfinite(stderr) and stderr < max_rel_stderr * abs(target), (
        f"standard error {stderr} is not below {max_rel_stderr} × |{target}|: the test "
        "cannot tell a right value from a wrong one"
    )
    assert abs(value - target) < 4 * stderr + extra, (value, target, stderr, extra)
