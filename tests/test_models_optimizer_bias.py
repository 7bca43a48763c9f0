"""The optimizer-bias experiment: Entropy-SGD's inner Gibbs mean, and the four optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax.models import optimizer_bias as ob


def test_gibbs_mean_is_the_gaussian_mean_within_its_exact_monte_carlo_error():
    """f(w) = ½ Σ a_i w_i²: the measure ∝ exp(-[f(w') + γ/2 |w' - x|²]/τ) is Gaussian with
    mean γx/(a + γ). The inner chain is an exact AR(1) per coordinate (linear drift, so no
    discretisation bias in the mean), and the variance of its exponential average is known in
    closed form; 256 independent estimates must centre on the mean within 4 standard errors
    and spread as the formula says."""
    a = jnp.array([0.5, 4.0, 20.0])
    x = jnp.array([1.0, -2.0, 3.0])
    gamma, tau, eta, alpha, steps = 2.0, 1e-2, 0.02, 0.01, 3000

    def estimate(key):
        return ob.gibbs_mean(
            lambda w, k: a * w,
            x,
            key,
            steps=steps,
            step_size=eta,
            coupling=gamma,
            temperature=tau,
            average=alpha,
        )

    mus = np.asarray(jax.vmap(estimate)(jax.random.split(jax.random.key(0), 256)))
    target = np.asarray(gamma * x / (a + gamma))
    rho = 1 - eta * np.asarray(a + gamma)
    stationary = 2 * eta * tau / (1 - rho**2)
    q = 1 - alpha
    ema_var = alpha**2 * stationary / (1 - q**2) * (1 + q * rho) / (1 - q * rho)
    se = np.sqrt(ema_var / len(mus))
    assert np.all(np.abs(mus.mean(0) - target) < 4 * se), (mus.mean(0), target, se)
    # sample variance of 256 draws: relative sd sqrt(2/255) ≈ 0.09, so ±35% is > 3.8 sd
    np.testing.assert_allclose(mus.var(0, ddof=1), ema_var, rtol=0.35)


def test_an_outer_step_with_unit_rate_moves_to_the_gibbs_mean():
    a, gamma, x = 3.0, 1.0, jnp.array([2.0])
    kwargs = dict(inner_steps=4000, inner_step_size=0.01, coupling=gamma, temperature=1e-6)
    new = ob.entropy_sgd_step(
        lambda w, k: a * w, x, jax.random.key(1), learning_rate=1 / gamma, average=0.01, **kwargs
    )
    np.testing.assert_allclose(np.asarray(new), gamma * 2.0 / (a + gamma), atol=1e-3)
    half = ob.entropy_sgd_step(
        lambda w, k: a * w, x, jax.random.key(1), learning_rate=0.5, average=0.01, **kwargs
    )
    np.testing.assert_allclose(np.asarray(half), 2.0 - 0.5 * (2.0 - np.asarray(new)), atol=1e-5)


@pytest.mark.parametrize("optimizer", ob.OPTIMIZERS)
def test_every_optimizer_learns_digits_on_the_same_gradient_budget(optimizer):
    train, test = ob.split()
    model, history = ob.train(
        optimizer, data=train, test=test, widths=(64, 16, 10), num_gradients=400, num_records=4
    )
    per_step = 5 if optimizer == "entropy-sgd" else 1  # Entropy-SGD: 5 inner gradients a step
    assert history["step"][-1] == 400 // per_step
    np.testing.assert_array_equal(history["gradients"], history["step"] * per_step)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["test_accuracy"][-1] > 0.7 > history["test_accuracy"][0]
    assert ob.accuracy(model, test) == pytest.approx(history["test_accuracy"][-1])
    if optimizer == "sgd":  # the factory's loss and template are those of train's model
        loss_fn, data, like = ob.factory(train, widths=(64, 16, 10))
        params = sj.nnx_loss(model, ob.per_example_loss)[1]
        assert jax.tree.structure(params) == jax.tree.structure(like)
        assert float(loss_fn(params, data)) == pytest.approx(history["loss"][-1], rel=1e-5)


def test_split_and_input_errors():
    (xtr, ytr), (xte, yte) = ob.split(test_fraction=0.25, seed=3)
    assert len(xtr) + len(xte) == 1797 and len(xte) == 449
    x, y = sj.examples.load_digits()
    rows = np.concatenate([np.c_[xtr, ytr], np.c_[xte, yte]])  # a partition of the data
    np.testing.assert_array_equal(rows[np.lexsort(rows.T)], np.c_[x, y][np.lexsort(np.c_[x, y].T)])
    with pytest.raises(ValueError, match="optimizer"):
        ob.train("rmsprop")
    with pytest.raises(ValueError, match="both `data` and `test`"):
        ob.train("sgd", data=(xtr, ytr))
    with pytest.raises(ValueError, match="inner_steps"):
        ob.train("entropy-sgd", data=(xtr, ytr), test=(xte, yte), num_gradients=3)
    with pytest.raises(ValueError, match="test_fraction"):
        ob.split(test_fraction=1.0)
