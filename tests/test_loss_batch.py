"""``loss_batch``: the recorded loss read on the step's minibatch or on an independent one.

Minibatches drawn without replacement make the step's minibatch depend on the chain's past,
which biases the step-minibatch λ̂ upward (:func:`slt_jax.theory.quadratic_selection_bias`);
an independent minibatch removes it. Checked: the chain's path does not depend on the
option (only the record does), the loss is read at the point the step starts from, streamed
data draw the same independent minibatches, and on a linear regression the difference of
the two estimates on the same paths matches the first-order theory while the independent
estimate sits in the oracle's band.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import theory

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
pytestmark = pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")


def regression(n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + rng.normal(size=n)).astype(np.float32)
    w = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    return x, y, w


def loss_fn(w, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


X, Y, W = regression(256, 3)
KW = dict(num_chains=3, num_steps=80, step_size=1e-3, localization=1.0, batch_size=16)


@pytest.mark.parametrize("estimator", ["plain", "paired"])
def test_the_path_is_the_same_only_the_record_moves(estimator):
    kw = dict(KW, estimator=estimator, diagnostic_every=5)
    step = sj.estimate_llc(loss_fn, jnp.asarray(W, jnp.float32), (X, Y), **kw)
    indep = sj.estimate_llc(
        loss_fn, jnp.asarray(W, jnp.float32), (X, Y), loss_batch="independent", **kw
    )
    assert indep.config.loss_batch == "independent" and step.config.loss_batch == "step"
    for name in ("weight_distance", "grad_norm", "burnin_loss_trace"):
        np.testing.assert_array_equal(getattr(step, name), getattr(indep, name), err_msg=name)
    assert not np.allclose(step.loss_trace, indep.loss_trace)


def test_identical_examples_read_the_same_loss_at_the_step_start():
    """Every minibatch of identical examples has the same loss, so the independent record
    equals the step's to the bit: it is read at the same point (before the move)."""
    x, y = np.repeat(X[:1], 256, 0), np.repeat(Y[:1], 256, 0)
    w = jnp.asarray(W, jnp.float32)
    step = sj.estimate_llc(loss_fn, w, (x, y), estimator="plain", **KW)
    indep = sj.estimate_llc(loss_fn, w, (x, y), estimator="plain", loss_batch="independent", **KW)
    np.testing.assert_array_equal(step.loss_trace, indep.loss_trace)


def test_exact_gradients_resolve_to_the_step_batch():
    w = jnp.asarray(W, jnp.float32)
    res = sj.estimate_llc(loss_fn, w, (X, Y), loss_batch="independent", **{**KW, "batch_size": 256})
    assert res.config.loss_batch == "step"
    with pytest.raises(ValueError, match="unknown loss_batch 'fresh'"):
        sj.estimate_llc(loss_fn, w, (X, Y), loss_batch="fresh", **KW)


def test_streamed_data_draw_the_same_independent_minibatches():
    w = jnp.asarray(W, jnp.float32)
    kw = dict(KW, loss_batch="independent", estimator="paired")
    memory = sj.estimate_llc(loss_fn, w, (X, Y), **kw)
    for device_bytes in (2 * 2 * 3 * 16 * 16 * 3, 2**26):  # 3-step blocks, and one block
        source = sj.HostDataset([(X[i], Y[i]) for i in range(len(X))], device_bytes=device_bytes)
        streamed = sj.estimate_llc(loss_fn, w, source, **kw)
        np.testing.assert_allclose(streamed.loss_trace, memory.loss_trace, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.llc_mean, memory.llc_mean, rtol=1e-5)


def test_the_independent_minibatch_removes_the_selection_bias():
    """Linear regression, d = 6, n = 512, b = 8 (64 steps per epoch, 55 epochs): the
    step-minibatch λ̂ minus the independent one on the same 16 paths has the first-order
    bias of theory.quadratic_selection_bias (its omitted terms are of the relative size of
    the minibatch gradient noise, δ = εnβ²h_max/(4b), allowed on top of 4 Monte-Carlo
    errors of the difference); the independent λ̂ is in the oracle's minibatch band."""
    n, d, b, eps, gamma = 512, 6, 8, 2e-4, 1.0
    x, y, w = regression(n, d, seed=1)
    nbeta = n / np.log(n)
    kw = dict(
        num_chains=16, num_steps=3600, num_burnin=400, step_size=eps, localization=gamma,
        batch_size=b, estimator="plain", diagnostic_every=0, seed=3,
    )  # fmt: skip
    w32 = jnp.asarray(w, jnp.float32)
    step = sj.estimate_llc(loss_fn, w32, (x, y), **kw)
    indep = sj.estimate_llc(loss_fn, w32, (x, y), loss_batch="independent", **kw)
    diff = np.asarray(step.llc_per_chain) - np.asarray(indep.llc_per_chain)
    diff_se = diff.std(ddof=1) / np.sqrt(len(diff))
    x64 = x.astype(np.float64)
    hessian = x64.T @ x64 / n
    grads = -(y - x64 @ w)[:, None] * x64
    known = dict(nbeta=nbeta, localization=gamma, step_size=eps, num_examples=n, batch_size=b)
    predicted = theory.quadratic_selection_bias(hessian, grads.T @ grads / n, **known)
    h = np.linalg.eigvalsh(hessian)
    delta = eps * nbeta**2 * h.max() / (4 * b)
    assert predicted > 5 * diff_se  # the effect is there to be seen
    assert abs(diff.mean() - predicted) < 4 * diff_se + delta * predicted, (
        diff.mean(), predicted, diff_se, delta,
    )  # fmt: skip
    oracle = theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps)
    low, high = oracle - 4 * indep.llc_stderr, oracle * (1 + delta) + 4 * indep.llc_stderr
    assert low < indep.llc_mean < high, (indep.llc_mean, low, high)
