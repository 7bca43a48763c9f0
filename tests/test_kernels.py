"""Exact properties of the SGLD kernel and the engine's update rule."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import chain_program, quadratic_loss

from slt_jax._src.config import Arrays
from slt_jax._src.posterior import localized_logdensity_grad
from slt_jax.kernels import sgld


def _settings(step_size, localization, nbeta):
    return Arrays(*(jnp.float32(v) for v in (step_size, localization, nbeta)))


def test_noiseless_sgld_is_localized_gradient_descent():
    h = np.array([1.0, 0.3, 2.0])
    target = np.array([0.5, -1.0, 0.2])

    def loss_fn(w, batch):
        return 0.5 * jnp.sum(h * (w - target) ** 2)

    center = jnp.array([0.1, 0.2, -0.3])
    eps, gamma, nbeta = 1e-3, 5.0, 40.0
    grad = localized_logdensity_grad(loss_fn, center, nbeta=nbeta, localization=gamma)
    kernel = sgld(grad, temperature=0.0)
    state = kernel.init(center, None)
    w = np.asarray(center, np.float64)
    for t in range(50):
        state, info = kernel.step(jax.random.key(t), state, None, eps)
        np.testing.assert_allclose(info.loss, 0.5 * np.sum(h * (w - target) ** 2), rtol=1e-5)
        w = w - eps / 2 * (nbeta * h * (w - target) + gamma * (w - np.asarray(center)))
    np.testing.assert_allclose(state.position, w, rtol=1e-5, atol=1e-7)


def test_zero_step_size_does_not_move():
    center = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}

    def loss_fn(p, batch):
        return jnp.sum(p["a"] ** 3) + jnp.sum(jnp.sin(p["b"])) * jnp.mean(batch)

    data = jnp.linspace(0.0, 1.0, 10)
    trace, init_loss = chain_program(
        loss_fn,
        jax.random.split(jax.random.key(0), 3),
        center,
        data,
        arrays=_settings(0.0, 1.0, 10.0),  # a zero step size: no entry point takes one
        batch_size=4,
        num_burnin=5,
        num_steps=25,
    )
    # w never moves, so L_B(w_t) - L_B(w*) is exactly zero on every draw.
    np.testing.assert_array_equal(trace.loss, trace.reference_loss)
    assert not trace.diverged.any()


def test_one_step_noise_has_variance_step_size():
    """Flat loss, no localization: w_1 - w_0 ~ N(0, ε I) exactly (the devinterp convention)."""
    eps = 0.01
    grad = localized_logdensity_grad(
        lambda w, b: 0.0 * jnp.sum(w), jnp.zeros(1000), nbeta=1.0, localization=0.0
    )
    kernel = sgld(grad)

    def move(key):
        return kernel.step(key, kernel.init(jnp.zeros(1000), None), None, eps)[0].position

    moves = jax.vmap(move)(jax.random.split(jax.random.key(1), 20))
    m = moves.size  # 20,000 independent normals
    var = float(jnp.mean(moves**2))
    # The sample variance of m normals has relative sd sqrt(2/m) = 1%: allow 5 sd.
    assert abs(var / eps - 1) < 5 * np.sqrt(2 / m)
    assert abs(float(jnp.mean(moves))) < 5 * np.sqrt(eps / m)


def test_quadratic_oracle_transient_matches_langevin_recursion():
    """The recorded loss of the first draws follows E[w_t²] = v (1 - ρ^{2t}) from w* (n = 0)."""
    h, eps, gamma, nbeta = 1.0, 0.01, 0.0, 100.0
    a = nbeta * h + gamma
    rho = 1 - eps * a / 2
    v = eps / (1 - rho**2)
    chains = 4000
    trace, _ = chain_program(
        quadratic_loss([h]),
        jax.random.split(jax.random.key(2), chains),
        jnp.zeros(1),
        jnp.zeros((1, 1)),
        arrays=_settings(eps, gamma, nbeta),  # γ = 0 exactly, as the recursion has it
        batch_size=1,
        num_burnin=0,
        num_steps=30,
        estimator="plain",
        nbeta=nbeta,
    )
    t = np.arange(30)
    expected = 0.5 * h * v * (1 - rho ** (2 * t))
    observed = np.asarray(trace.loss).mean(axis=0)
    # Var of ½h w² for Gaussian w is ½ h² Var(w)²; the mean over chains has sd below.
    sd = np.sqrt(0.5 * h**2 * (v * (1 - rho ** (2 * t))) ** 2 / chains)
    assert np.all(np.abs(observed - expected) <= 5 * sd + 1e-12)
