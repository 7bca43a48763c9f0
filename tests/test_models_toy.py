"""The toy models: the TMS (exact loss, k-gons, their LLCs) and deep linear networks (DLNs)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import slt_jax as sj
from slt_jax.models import dln, tms

C = 6  # features of the TMS, the setting of Chen et al. 2023


def _quiet_llc(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return sj.estimate_llc(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Toy model of superposition
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "W, b, exact",
    [
        # Dead model: the loss is E‖x‖² = E μ² = 1/3.
        (np.zeros((2, C)), np.zeros(C), 1 / 3),
        # Constant outputs β: E‖x - β‖² = 1/3 - β + cβ²; at β = 1/(2c) this is 1/3 - 1/(4c).
        (np.zeros((2, C)), np.full(C, 1 / (2 * C)), 1 / 3 - 1 / (4 * C)),
        # c = 2, W = I: f(x) = x, no loss.
        (np.eye(2), np.zeros(2), 0.0),
        # c = 1, G = 2, b = -1/2: ∫₀^¼ μ² dμ + ∫_¼^1 (½ - μ)² dμ = 5/96.
        (np.array([[2**0.5], [0.0]]), np.array([-0.5]), 5 / 96),
        # c = 2, antipodal columns, b = ¼: per input ∫ ¼² + ∫₀^¼ (¼ - μ)² = 1/16 + 1/192.
        (np.array([[1.0, -1.0], [0.0, 0.0]]), np.full(2, 0.25), 13 / 192),
    ],
)
def test_tms_population_loss_closed_form_cases(W, b, exact):
    got = tms.population_loss(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32))
    assert abs(float(got) - exact) < 1e-6


def test_tms_data_model_and_sampled_loss_match_the_population_loss():
    n = 200_000
    x, y = tms.make_data(n, C, 0)
    x_np = np.asarray(x)
    np.testing.assert_array_equal(x_np, np.asarray(y))
    nonzero = np.count_nonzero(x_np, axis=1)
    assert nonzero.max() == 1 and nonzero.mean() > 0.999  # one feature (μ = 0 has prob ~0)
    counts = np.bincount(np.argmax(x_np, axis=1), minlength=C)
    assert np.all(np.abs(counts - n / C) < 5 * np.sqrt(n / C))  # uniform feature
    mu = x_np.sum(axis=1)  # U[0, 1]: mean 1/2 (sd 0.29/√n), mean square 1/3 (sd 0.30/√n)
    assert abs(mu.mean() - 1 / 2) < 5 * 0.29 / n**0.5
    assert abs((mu**2).mean() - 1 / 3) < 5 * 0.30 / n**0.5

    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(2, C)), 0.3 * rng.normal(size=C)
    model = tms.from_parameters(W, b)
    per_example = np.asarray(tms.per_example_loss(model(x), y), np.float64)
    exact = float(tms.population_loss(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)))
    assert abs(per_example.mean() - exact) < 4 * per_example.std() / n**0.5
    loss_fn, params = sj.nnx_loss(model, tms.per_example_loss)
    np.testing.assert_allclose(loss_fn(params, (x, y)), per_example.mean(), rtol=1e-4)


@pytest.mark.parametrize("k, num_positive", [(4, 0), (4, 2), (5, 0), (5, 1), (6, 0)])
def test_tms_kgons_are_critical_points(k, num_positive):
    point = tms.kgon(k, C, num_positive=num_positive, rotation=0.3)
    W, b = jnp.asarray(point.W, jnp.float32), jnp.asarray(point.b, jnp.float32)
    grad_fn = jax.grad(tms.population_loss, argnums=(0, 1))
    with jax.enable_x64(True):  # float64: critical to machine precision (~1e-16 measured)
        grads = grad_fn(jnp.asarray(point.W), jnp.asarray(point.b))
        assert max(float(jnp.max(jnp.abs(g))) for g in grads) < 1e-12
    # float32 (as the samplers see it): rounding W, b moves the point by ~6e-8·‖w‖ ≈ 1e-7,
    # changing the gradient by ≤ ‖H‖·1e-7 ≈ 2.5e-7 (‖H‖ ≈ 2), and the 36 closed-form terms
    # of size ≲ 0.3 add ~36·0.3·6e-8 ≈ 6e-7 of rounding (8e-8 measured).
    grads = grad_fn(W, b)
    assert max(float(jnp.max(jnp.abs(g))) for g in grads) < 1e-6
    # Not a vacuous bound: moving the length by 1% gives a gradient well above it.
    grads = grad_fn(1.01 * W, b)
    assert max(float(jnp.max(jnp.abs(g))) for g in grads) > 1e-3
    # The geometry: k equal columns at angles 2π/k apart, the rest zero.
    norms = np.linalg.norm(point.W, axis=0)
    np.testing.assert_allclose(norms[:k], point.length, rtol=1e-12)
    np.testing.assert_array_equal(norms[k:], 0.0)
    cosines = point.W[:, :k].T @ point.W[:, :k] / point.length**2
    np.testing.assert_allclose(cosines[0], np.cos(2 * np.pi * np.arange(k) / k), atol=1e-12)


def test_tms_kgon_losses_known_values_and_order():
    losses = {k: tms.kgon(k, C).loss for k in (4, 5, 6)}
    # 4-gon: l = 1, b* = 0 reconstructs its 4 features exactly; each dead one costs 1/3.
    assert tms.kgon(4, C).length == pytest.approx(1.0, abs=1e-12)
    assert losses[4] == pytest.approx((C - 4) / (3 * C), abs=1e-12)
    # The pentagon and hexagon of Chen et al. 2023 (c = 6).
    assert losses[5] == pytest.approx(0.06874, abs=5e-6)
    assert losses[6] == pytest.approx(0.04819, abs=5e-6)
    assert losses[4] > losses[5] > losses[6]  # more features represented, lower loss
    # A positive dead bias 1/(2c) lowers the loss by exactly 1/(4c²).
    gain = losses[5] - tms.kgon(5, C, num_positive=1).loss
    assert gain == pytest.approx(1 / (4 * C**2), abs=1e-12)


def test_tms_kgon_learning_coefficients():
    for k, num_positive in [(5, 0), (5, 1), (6, 0)]:
        lam = tms.kgon_learning_coefficient(k, C, num_positive=num_positive)
        assert lam == (3 * (k + num_positive) - 1) / 2
    assert tms.kgon_learning_coefficient(5, C) == 7.0
    assert tms.kgon_learning_coefficient(6, C) == 8.5
    with pytest.raises(ValueError, match="not twice differentiable"):
        tms.kgon_learning_coefficient(4, C)
    with pytest.raises(ValueError, match="saddle"):  # dead biases of both signs
        tms.kgon_learning_coefficient(5, 7, num_positive=1)


@pytest.mark.parametrize("k, localization", [(5, 300.0), (6, 10.0)])
def test_tms_sgld_llc_at_kgon_matches_the_quadratic_oracle(k, localization):
    """At a Morse–Bott minimum the SGLD expectation is the quadratic oracle of the Hessian's
    eigenvalues (theory.quadratic_oracle_llc: step-size and localization bias included) up
    to O(1/nβ) anharmonic terms, +0.03 to +0.06 here (mean over 6 seeds), hence 0.1 on top
    of 4 MCSE; the oracle tends to rank(H)/2 = λ as ε, γ/nβ → 0. The pentagon's dead column
    is flat only while |W_6|·|W_i| < |b*|, i.e. |W_6| < 0.24, hence γ = 300 there (prior sd
    0.06: P(|W_6| > 0.24) ≈ 2e-4)."""
    point = tms.kgon(k, C)
    eig = np.linalg.eigvalsh(tms.population_hessian(point.W, point.b))
    eig = np.where(eig > 1e-9 * eig.max(), eig, 0.0)  # exact zeros for the flat directions
    nbeta = 1e4
    step_size = 0.5 / (nbeta * eig.max())
    params = {"W": jnp.asarray(point.W, jnp.float32), "b": jnp.asarray(point.b, jnp.float32)}
    result = _quiet_llc(
        lambda p, batch: tms.population_loss(p["W"], p["b"]),
        params,
        jnp.zeros((4, 1)),  # the loss is the exact population loss: no data needed
        num_chains=16,
        num_steps=6_000,
        step_size=step_size,
        localization=localization,
        nbeta=nbeta,
        batch_size=4,
        diagnostic_every=0,
    )
    oracle = sj.theory.quadratic_oracle_llc(
        eig, nbeta=nbeta, localization=localization, step_size=step_size
    )
    assert abs(result.llc_mean - oracle) < 4 * result.llc_stderr + 0.1
    lam = tms.kgon_learning_coefficient(k, C)
    assert lam == np.sum(eig > 0) / 2
    assert abs(sj.theory.quadratic_oracle_llc(eig, nbeta=1e12, localization=1.0) - lam) < 1e-6


def test_tms_train_writes_a_checkpoint_set_the_factory_loads(tmp_path):
    steps = sj.examples.log_spaced_steps(300, 6)
    model, history = tms.train(
        C,
        n=512,
        num_steps=300,
        optimizer="adam",
        learning_rate=1e-2,
        checkpoint_dir=str(tmp_path),
        num_checkpoints=6,
    )
    loss_fn, data, like = tms.factory(C, n=512)
    checkpoints = sj.load_checkpoint_set(tmp_path, like=like)
    assert checkpoints.steps.tolist() == steps
    losses = [
        float(loss_fn(jax.tree.map(lambda a, i=i: a[i], checkpoints.params), data))
        for i in range(len(steps))
    ]
    assert losses[-1] < 0.7 * losses[0]  # training on the factory's data lowered its loss
    assert history["step"].tolist() == steps
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-5)  # the same loss, recorded
    final = jax.tree.leaves(jax.tree.map(lambda a: a[-1], checkpoints.params))
    for saved, held in zip(final, jax.tree.leaves(nnx.state(model, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(held))


@pytest.mark.slow
def test_tms_sgd_from_a_random_init_ends_at_a_kgon():
    """Seed 0 with the default schedule ends at the pentagon with one positive dead bias
    (the empirical minimum of n = 1000 samples: parameters within O(1/√n) of the k-gon's)."""
    model, _ = tms.train(C, seed=0)
    W, b = np.asarray(model.W[...], np.float64), np.asarray(model.b[...], np.float64)
    target = tms.kgon(5, C, num_positive=1)
    norms = np.linalg.norm(W, axis=0)
    dead = np.argmin(norms)
    alive = np.delete(np.arange(C), dead)
    assert norms[dead] < 0.05 and abs(b[dead] - 1 / (2 * C)) < 0.02
    np.testing.assert_allclose(norms[alive], target.length, atol=0.05)
    np.testing.assert_allclose(b[alive], target.bias, atol=0.05)
    angles = np.sort(np.arctan2(W[1, alive], W[0, alive]))
    gaps = np.diff(np.append(angles, angles[0] + 2 * np.pi))
    np.testing.assert_allclose(gaps, 2 * np.pi / 5, atol=0.1)
    loss = float(tms.population_loss(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)))
    assert abs(loss - target.loss) < 1e-3


# --------------------------------------------------------------------------------------------
# Deep linear networks
# --------------------------------------------------------------------------------------------

WIDTHS = [(3, 2, 3), (5, 4, 5), (4, 3, 2, 5), (2, 5, 3)]


@pytest.mark.parametrize("widths", WIDTHS)
def test_dln_true_parameters_have_the_requested_rank(widths):
    for rank in range(min(widths) + 1):
        kernels = dln.true_parameters(widths, rank, jax.random.key(rank))
        assert [k.shape for k in kernels] == list(zip(widths[:-1], widths[1:], strict=True))
        matrix = np.asarray(dln.product(kernels), np.float64)
        assert matrix.shape == (widths[-1], widths[0])
        singular = np.linalg.svd(matrix, compute_uv=False)
        assert np.sum(singular > 1e-5) == rank
        assert np.all((singular[:rank] > 0.5 - 1e-5) & (singular[:rank] < 1.5 + 1e-5))
        for a, b in zip(kernels[:-1], kernels[1:], strict=True):  # balanced layers
            np.testing.assert_allclose(a.T @ a, b @ b.T, atol=1e-5)
    with pytest.raises(ValueError):
        dln.true_parameters(widths, min(widths) + 1, jax.random.key(0))


def test_dln_network_is_the_product_and_the_loss_at_the_truth_is_the_noise_level():
    widths, rank, noise, n = (4, 3, 5), 2, 0.5, 20_000
    truth = dln.true_parameters(widths, rank, jax.random.key(0))
    model = dln.DeepLinearNetwork.from_kernels(truth)
    x, y = dln.make_data(truth, n, jax.random.key(1), noise=noise)
    np.testing.assert_allclose(model(x), x @ dln.product(truth).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.matrix(), dln.product(truth), rtol=1e-6)
    # L_n(w*) = ½ mean ‖σ ε‖² = ½ σ² χ²_{n d_L} / n: mean ½σ² d_L, sd ½σ² √(2 d_L / n).
    loss_fn, params = sj.nnx_loss(model, dln.per_example_loss)
    mean, sd = 0.5 * noise**2 * widths[-1], 0.5 * noise**2 * (2 * widths[-1] / n) ** 0.5
    assert abs(float(loss_fn(params, (x, y))) - mean) < 4 * sd
    assert float(dln.population_loss(truth, dln.product(truth), noise)) == pytest.approx(mean)
    # Elsewhere the sampled loss estimates ½‖M(w) - M*‖² + ½σ²d_L.
    other = dln.DeepLinearNetwork(widths, rngs=nnx.Rngs(3))
    per_example = np.asarray(dln.per_example_loss(other(x), y), np.float64)
    kernels = [layer.kernel[...] for layer in other.layers]
    exact = float(dln.population_loss(kernels, dln.product(truth), noise))
    assert abs(per_example.mean() - exact) < 4 * per_example.std() / n**0.5


@pytest.mark.parametrize("widths", [(3, 2, 3), (3, 2, 2, 3)])
def test_dln_gradient_vanishes_at_the_rank_zero_truth(widths):
    """At w* = 0 every layer's gradient is a product containing another (zero) layer, so the
    data loss is flat to first order for any data; with three layers, to second order too."""
    x, y = dln.make_data(np.ones((widths[-1], widths[0])), 256, jax.random.key(0))
    zeros = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    flat, unravel = ravel_pytree(zeros)

    def loss_of(v):
        return jnp.mean(dln.per_example_loss(x @ dln.product(unravel(v)).T, y))

    assert np.all(np.asarray(jax.jit(jax.grad(loss_of))(flat)) == 0.0)
    hessian = np.asarray(jax.jit(jax.hessian(loss_of))(flat))
    assert np.all(hessian == 0.0) == (len(widths) > 3)
    # The control: the same loss through the network's own forward pass, away from w* = 0.
    model = dln.DeepLinearNetwork(widths, rngs=nnx.Rngs(1))
    loss_fn, params = sj.nnx_loss(model, dln.per_example_loss)
    kernels = [layer.kernel[...] for layer in model.layers]
    assert float(loss_fn(params, (x, y))) == pytest.approx(float(loss_of(ravel_pytree(kernels)[0])))
    assert np.abs(np.asarray(jax.jit(jax.grad(loss_of))(ravel_pytree(kernels)[0]))).max() > 1e-2


def test_dln_sgld_llc_minimally_singular_matches_aoyagi_and_the_oracle():
    """With r = min width the true set is the GL(r) orbit of w*, a manifold, and Aoyagi's λ
    is rank(H)/2 (minimally singular); SGLD then has the quadratic oracle as its expectation
    up to O(1/nβ) (6 seeds: within ±0.04 of it)."""
    widths, rank = (3, 2, 3), 2
    truth = dln.true_parameters(widths, rank, jax.random.key(0))
    target = dln.product(truth)
    flat, unravel = ravel_pytree(truth)
    hessian = jax.jit(jax.hessian(lambda v: dln.population_loss(unravel(v), target)))(flat)
    eig = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
    eig = np.where(eig > 1e-4 * eig.max(), eig, 0.0)  # float32 zeros are ~1e-7
    lam, multiplicity = sj.theory.dln_learning_coefficient(widths, rank)
    assert (lam, multiplicity) == (np.sum(eig > 0) / 2, 1)

    nbeta, localization = 1e4, 100.0
    step_size = 0.5 / (nbeta * eig.max())
    result = _quiet_llc(
        lambda p, batch: dln.population_loss(p, target),
        list(truth),
        jnp.zeros((4, 1)),
        num_chains=16,
        num_steps=6_000,
        step_size=step_size,
        localization=localization,
        nbeta=nbeta,
        batch_size=4,
        diagnostic_every=0,
    )
    oracle = sj.theory.quadratic_oracle_llc(
        eig, nbeta=nbeta, localization=localization, step_size=step_size
    )
    assert abs(result.llc_mean - oracle) < 4 * result.llc_stderr + 0.05


@pytest.mark.slow
def test_dln_sgld_llc_at_rank_zero_matches_aoyagi():
    """Widths (5, 4, 5) at w* = 0: Aoyagi's λ = 8 (the DESIGN.md example).

    There K(w) = ½‖W₂W₁‖² is homogeneous of degree 4, so u = (nβ)^{1/4} w turns the SGLD
    chain with (nβ, γ, ε) into the one with (1, γ/√(nβ), ε√(nβ)): the estimate depends on
    s = nβ/γ² only and reaches λ as s → ∞. Measured with this program (ε = 0.02γ/nβ):
    7.60 ± 0.05 at s = 1e2, 7.84 ± 0.05 at 1e3, a deficit falling like s^-0.4, so ≈ 0.07
    at s = 1e4 (two seeds there: 7.98 ± 0.03, 7.88 ± 0.04); the step (εA ≈ 0.02) adds at
    most ~1%. Hence the window [λ - 0.15, λ + 0.1] widened by 4 MCSE.
    """
    widths, rank = (5, 4, 5), 0
    truth = dln.true_parameters(widths, rank, jax.random.key(0))
    target = dln.product(truth)
    result = _quiet_llc(
        lambda p, batch: dln.population_loss(p, target),
        list(truth),
        jnp.zeros((4, 1)),
        num_chains=8,
        num_steps=500_000,
        step_size=2e-6,
        localization=1.0,
        nbeta=1e4,
        batch_size=4,
        diagnostic_every=0,
    )
    lam, _ = sj.theory.dln_learning_coefficient(widths, rank)
    assert lam == 8.0
    tolerance = 4 * result.llc_stderr
    assert lam - 0.15 - tolerance < result.llc_mean < lam + 0.1 + tolerance


def test_dln_train_writes_a_checkpoint_set_the_factory_loads(tmp_path):
    widths, rank, n = (3, 2, 3), 1, 2048
    steps = sj.examples.log_spaced_steps(400, 5)
    model, history = dln.train(
        widths,
        rank=rank,
        n=n,
        num_steps=400,
        optimizer="adam",
        learning_rate=2e-2,
        checkpoint_dir=str(tmp_path),
        num_checkpoints=5,
    )
    loss_fn, data, like = dln.factory(widths, rank=rank, n=n)
    checkpoints = sj.load_checkpoint_set(tmp_path, like=like)
    assert checkpoints.steps.tolist() == steps
    first, last = (jax.tree.map(lambda a, i=i: a[i], checkpoints.params) for i in (0, -1))
    # From the small init (loss ≈ ½(‖M*‖² + d_L)) to near the noise level ½·d_L = 1.5.
    assert float(loss_fn(last, data)) < 1.6 < float(loss_fn(first, data))
    assert history["step"].tolist() == steps
    np.testing.assert_allclose(
        history["loss"][[0, -1]], [loss_fn(first, data), loss_fn(last, data)], rtol=1e-5
    )
    for saved, held in zip(
        jax.tree.leaves(last), jax.tree.leaves(nnx.state(model, nnx.Param)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(held))


def test_checkpoint_schedule_takes_explicit_steps_and_always_the_end():
    schedule = sj.examples.checkpoint_schedule
    assert schedule(100, 4) == sorted(set(sj.examples.log_spaced_steps(100, 4)) | {100})
    assert schedule(100, 4, [50, 10, 10, 0]) == [0, 10, 50, 100]
    with pytest.raises(ValueError, match=r"\[101\]"):
        schedule(100, 4, [5, 101])
