"""Every sampler of ``sampler=`` against known answers (DESIGN.md §2).

Tolerances: the exact-gradient Metropolis samplers (MALA, HMC, NUTS) have no step bias, so
they must hit the exact posterior value within the Monte-Carlo error. For the momentum
samplers on a quadratic the update is a linear Gaussian recursion, whose exact covariance
at every step follows from ``S_{t+1} = M S_t Mᵀ + Q``; the finite-run expectation of λ̂ is
computed from it. Adaptive ones (RMSProp-SGLD, SGNHT) get a band between the values of
their frozen-adaptation limits. Monte-Carlo error: 4 reported MCSE (the MCSE itself is
validated against the exact variance in ``test_known_answers.py``).
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_mc_close, quadratic_loss
from test_known_answers import monomial_target

import slt_jax as sj
from slt_jax import theory

H = np.array([1.0, 0.5, 0.1])
N = 1000
NBETA = N / np.log(N)
GAMMA = 10.0
DATA = jnp.zeros((N, 1))


@functools.cache
def _quadratic(h: tuple):
    """One loss function per curvature vector: runs that differ only in their arrays (step
    size, localization) reuse the compiled program instead of tracing it again."""
    return quadratic_loss(h)


def run(sampler, step_size, *, h=H, num_steps=3000, num_burnin=500, chains=8, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return sj.estimate_llc(
            _quadratic(tuple(map(float, h))),
            jnp.zeros(len(h)),
            DATA,
            num_chains=chains,
            num_steps=num_steps,
            num_burnin=num_burnin,
            step_size=step_size,
            localization=GAMMA,
            batch_size=100,
            sampler=sampler,
            **kw,
        )


def _momentum_covariance(a, *, step_size, friction, diffusion):
    """Per coordinate z = (w, p), the semi-implicit scheme p' = (1 − ξh) p − h A w + s ξ_t,
    w' = w + h p' (s = sqrt(2αh)): z' = M z + (h, 1) s ξ_t with
    M = [[1 − h²A, h(1 − ξh)], [−hA, 1 − ξh]], so Cov z_{t+1} = M Cov z_t Mᵀ + Q with
    Q = 2αh [[h², h], [h, 1]]."""
    h = step_size
    m = np.array([[1.0 - h * h * a, h * (1 - friction * h)], [-h * a, 1 - friction * h]])
    q = 2 * diffusion * h * np.array([[h * h, h], [h, 1.0]])
    return m, q


def momentum_oracle(h, *, step_size, friction, burnin, draws):
    """Exact finite-run mean of λ̂ for SGHMC on ½Σ h_i w_i², started at w* = 0, p = 0."""
    total = 0.0
    for hi in h:
        m, q = _momentum_covariance(
            NBETA * hi + GAMMA, step_size=step_size, friction=friction, diffusion=friction
        )
        s = np.zeros((2, 2))
        var = []
        for _ in range(burnin + draws):
            var.append(s[0, 0])
            s = m @ s @ m.T + q
        total += NBETA * hi / 2 * np.mean(var[burnin:])
    return total


def thermostat_oracle(h, *, step_size, diffusion):
    """SGNHT at its thermostat's fixed point: the friction ξ* at which the discrete chain's
    stationary kinetic energy per coordinate is the temperature 1 (what the thermostat
    enforces), and λ̂ from the stationary position variances at ξ*."""

    def stationary(xi):
        covs = []
        for hi in h:
            m, q = _momentum_covariance(
                NBETA * hi + GAMMA, step_size=step_size, friction=xi, diffusion=diffusion
            )
            covs.append(np.linalg.solve(np.eye(4) - np.kron(m, m), q.ravel()).reshape(2, 2))
        return np.array(covs)

    low, high = 1e-3, 1e4  # mean kinetic energy falls as the friction grows: bisect
    for _ in range(200):
        xi = np.sqrt(low * high)
        low, high = (xi, high) if stationary(xi)[:, 1, 1].mean() > 1 else (low, xi)
    return float(np.sum(NBETA * h / 2 * stationary(xi)[:, 0, 0])), xi


EXACT = theory.quadratic_oracle_llc(H, nbeta=NBETA, localization=GAMMA)


@pytest.mark.parametrize(
    "sampler, step_size",
    [("mala", 0.01), (sj.samplers.HMC(num_integration_steps=10), 0.02), ("nuts", 0.05)],
)
def test_metropolis_samplers_have_no_step_bias(sampler, step_size):
    """At a step where SGLD would be biased by ≈ 35%, the MH correction removes the bias.

    (HMC's trajectory, 10 × 0.02, is kept away from half the period 2π/√A of every
    coordinate: at a half period w² does not move and the chain cannot mix.)"""
    res = run(sampler, step_size, num_steps=2000)
    assert res.config.batch_size == N  # the whole data set every step
    sgld_bias = (
        theory.quadratic_oracle_llc(H, nbeta=NBETA, localization=GAMMA, step_size=0.01) / EXACT - 1
    )
    assert sgld_bias > 0.3
    assert_mc_close(res.llc_mean, res.llc_stderr, EXACT)
    acceptance = np.nanmean(res.mala_acceptance)
    assert 0.3 < acceptance < 1.0  # the samplers' own acceptance is recorded
    assert np.isnan(res.noise_norm).all()


@pytest.mark.parametrize("friction", [5.0, 50.0])
def test_sghmc_matches_its_exact_linear_recursion(friction):
    h_step = 0.02
    res = run(sj.samplers.SGHMC(friction=friction), h_step)
    expected = momentum_oracle(H, step_size=h_step, friction=friction, burnin=500, draws=2500)
    assert_mc_close(res.llc_mean, res.llc_stderr, expected)
    assert res.config.sampler == f"sghmc(friction={friction!r})"
    assert np.isnan(res.mala_acceptance).all()  # not a Langevin proposal
    assert np.isfinite(res.noise_norm).all()


def test_sghmc_moves_with_the_new_momentum():
    """The papers' semi-implicit step (w' = w + h p'), not explicit Euler (w' = w + h p):
    at h = 0.03, friction 10, curvature A = 4nβ + γ ≈ 590, explicit Euler is unstable
    (det M = 1 − αh + h²A ≈ 1.23 > 1) while the semi-implicit scheme is stable
    (αh < 2, h²A ≈ 0.53 < 2(2 − αh)) and matches its exact recursion."""
    h, step = np.array([4.0]), 0.03
    res = run(sj.samplers.SGHMC(friction=10.0), step, h=h, num_steps=3000, num_burnin=500)
    assert res.num_diverged == 0
    expected = momentum_oracle(h, step_size=step, friction=10.0, burnin=500, draws=2500)
    assert_mc_close(res.llc_mean, res.llc_stderr, expected)


def test_rmsprop_alpha_zero_is_allowed_and_out_of_range_is_not():
    res = run(sj.samplers.RMSPropSGLD(alpha=0.0), 1e-3, num_steps=200, num_burnin=50, chains=2)
    assert np.isfinite(res.llc_mean)
    for alpha in (1.0, -0.1, True):
        with pytest.raises((ValueError, TypeError), match="alpha"):
            run(sj.samplers.RMSPropSGLD(alpha=alpha), 1e-3, num_steps=20, num_burnin=5)


@pytest.mark.parametrize("diffusion", [5.0, 20.0])
def test_sgnht_matches_its_thermostat_fixed_point(diffusion):
    """With exact gradients the thermostat settles at the friction ξ* where the discrete
    kinetic energy is at temperature 1; SGNHT is then SGHMC with friction ξ* and injected
    noise 2αh, whose stationary variances are exact (a discrete Lyapunov equation)."""
    h_step = 0.005
    res = run(sj.samplers.SGNHT(diffusion=diffusion), h_step, num_steps=16_000, num_burnin=4000)
    expected, xi = thermostat_oracle(H, step_size=h_step, diffusion=diffusion)
    assert xi > diffusion  # the discrete scheme runs hot: the thermostat adds friction
    assert_mc_close(res.llc_mean, res.llc_stderr, expected)


def test_rmsprop_sgld_within_its_preconditioned_oracle_band():
    """With the preconditioner G frozen, preconditioned SGLD on a quadratic is SGLD with
    step εG: E[λ̂] = Σ nβh/(2A(1 − εGA/4)). RMSProp's G ≈ 1/sqrt(E g²) = 1/sqrt(A) at
    stationarity (g = −A w, Var w = 1/A); the band spans G ∈ [0, 2/sqrt(A)]."""
    eps = 0.02
    res = run("rmsprop_sgld", eps, num_steps=4000, num_burnin=1000)
    a = NBETA * H + GAMMA
    high = np.sum(NBETA * H / (2 * a * (1 - eps * 2 / np.sqrt(a) * a / 4)))
    assert res.llc_stderr < 0.05 * EXACT  # equilibrated (was 1e5 ± 7e4 with δ = 1e-5)
    assert EXACT - 4 * res.llc_stderr < res.llc_mean < high + 4 * res.llc_stderr
    # The gradient vanishes at w* (exact minimum): G starts at 1/δ, so the first moves have
    # noise sqrt(εG) = sqrt(0.2) at δ = 0.1 (loss ≲ 0.5) where δ = 1e-5 gave ≈ 45 (loss ~ 1e3).
    assert np.max(res.burnin_loss_trace[:, :10]) < 1.0
    assert np.nanmean(res.mala_acceptance) > 0.9  # preconditioned proposals are accurate


@pytest.mark.parametrize("sampler, step_size", [("mala", 5e-3), ("nuts", 0.05)])
def test_exact_samplers_on_a_singular_monomial(sampler, step_size):
    """K(w) = ½(w₁² + w₂⁴): the localized posterior's exact value by quadrature (λ → 3/4)."""
    nbeta, gamma = 200.0, 1.0

    def loss_fn(w, batch):
        del batch
        return 0.5 * (w[0] ** 2 + w[1] ** 4)

    res = sj.estimate_llc(
        loss_fn,
        jnp.zeros(2),
        jnp.zeros((10, 1)),
        num_chains=8,
        num_steps=4000,
        num_burnin=500,
        step_size=step_size,
        localization=gamma,
        nbeta=nbeta,
        sampler=sampler,
    )
    target = sum(monomial_target(p, nbeta=nbeta, gamma=gamma) for p in (2, 4))
    assert abs(target - theory.monomial_learning_coefficient((2, 4))) < 0.02
    assert_mc_close(res.llc_mean, res.llc_stderr, target)


def test_schedule_constant_equals_float_and_decay_changes_the_chain():
    optax = pytest.importorskip("optax")
    eps = 2e-3
    plain = run("sgld", eps, num_steps=400, num_burnin=100, chains=2)
    constant = run("sgld", optax.constant_schedule(eps), num_steps=400, num_burnin=100, chains=2)
    np.testing.assert_allclose(constant.llc_trace, plain.llc_trace, rtol=1e-5, atol=1e-6)
    assert constant.config.step_size_schedule.startswith("schedule 0.002 -> 0.002")
    decay = optax.exponential_decay(eps, transition_steps=400, decay_rate=0.01)
    decayed = run("sgld", decay, num_steps=400, num_burnin=100, chains=2)
    assert not np.allclose(decayed.llc_trace, plain.llc_trace)
    # Smaller steps late in the chain: less step bias, so a smaller estimate on average.
    assert decayed.llc_mean < plain.llc_mean
    assert "schedule" in decayed.summary()


def test_bad_sampler_options_fail_before_compiling():
    loss = quadratic_loss(H)
    with pytest.raises(ValueError, match="unknown sampler 'sgd'"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, sampler="sgd")
    with pytest.raises(TypeError, match="sampler"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, sampler=3)
    with pytest.raises(ValueError, match="friction"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, sampler=sj.samplers.SGHMC(friction=-1.0))
    with pytest.raises(ValueError, match="alpha"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, sampler=sj.samplers.RMSPropSGLD(alpha=1.0))
    with pytest.raises(ValueError, match="step size must be finite and > 0"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, step_size=lambda t: 1e-3 - 1e-5 * t)
    with pytest.raises(TypeError, match="schedule"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, step_size=lambda: 1.0)
    with pytest.raises(ValueError, match="diagnostic_every"):
        sj.estimate_llc(loss, jnp.zeros(3), DATA, diagnostic_every=-1)


@pytest.mark.parametrize("name", sorted(sj.samplers.SAMPLERS))
def test_descriptions_round_trip(name):
    spec = sj.samplers.resolve_sampler(name)
    assert sj.samplers.resolve_sampler(spec.describe()) == spec
    changed = {
        "sghmc": sj.samplers.SGHMC(friction=3.5),
        "rmsprop_sgld": sj.samplers.RMSPropSGLD(alpha=0.9, eps=1e-3),
        "hmc": sj.samplers.HMC(num_integration_steps=3),
    }.get(name)
    if changed is not None:
        assert sj.samplers.resolve_sampler(changed.describe()) == changed


def test_langevin_acceptance_equals_blackjax_mala():
    """The diagnostic's formula is MALA's: compare with BlackJAX's own acceptance."""
    import blackjax

    h = jnp.array([3.0, 0.5, 40.0])
    center = jnp.array([0.1, -0.2, 0.05])
    nbeta, gamma, eps = 20.0, 2.0, 0.02

    def logdensity(w):
        return -nbeta * 0.5 * jnp.sum(h * w**2) - gamma * 0.5 * jnp.sum((w - center) ** 2)

    mala = blackjax.mala(logdensity, eps / 2)

    @jax.jit  # one program for the five seeds (op by op, each operation compiles alone)
    def both(seed):
        state = mala.init(center + 0.1 * seed)
        key = jax.random.key(seed)
        new_state, info = mala.step(key, state)
        # Recreate the proposal BlackJAX made (its first split key drives the proposal).
        key_proposal, _ = jax.random.split(key)
        noise = jax.random.normal(key_proposal, (3,))
        proposal = state.position + eps / 2 * state.logdensity_grad + jnp.sqrt(eps) * noise
        value, grad = jax.value_and_grad(logdensity)(proposal)
        ours = sj.kernels.langevin_acceptance(
            position=state.position,
            proposal=proposal,
            logdensity=state.logdensity,
            proposal_logdensity=value,
            grad=state.logdensity_grad,
            proposal_grad=grad,
            step_size=eps,
        )
        return ours, info.acceptance_rate

    for seed in range(5):
        ours, theirs = both(seed)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_diagnostics_of_sgld():
    """Recorded every `diagnostic_every` draws; the noise norm² is ε·d on average, the
    acceptance falls as the step grows, the distance and gradient norms match theory."""
    d = 200
    h = np.full(d, 1.0)
    small = run("sgld", 1e-4, h=h, num_steps=1100, num_burnin=100, chains=4, diagnostic_every=20)
    big = run("sgld", 2e-2, h=h, num_steps=1100, num_burnin=100, chains=4, diagnostic_every=20)
    assert small.mala_acceptance.shape == (4, 50)
    assert np.nanmean(small.mala_acceptance) > np.nanmean(big.mala_acceptance)
    assert np.nanmean(small.mala_acceptance) > 0.99
    for res, eps in ((small, 1e-4), (big, 2e-2)):
        noise_sq = np.mean(res.noise_norm**2)
        assert abs(noise_sq / (eps * d) - 1) < 0.05  # mean of 200 × 200 squared normals
    # At stationarity E‖w − w*‖² = Σ Var w_i = d / (A (1 − εA/4)).
    a = NBETA + GAMMA
    expected = d / (a * (1 - 2e-2 * a / 4))
    assert abs(np.mean(big.weight_distance[:, 10:] ** 2) / expected - 1) < 0.1
    assert np.all(big.grad_norm > 0)
    assert "MALA acceptance" in big.summary()
    off = run("sgld", 1e-4, h=h, num_steps=200, num_burnin=100, chains=2, diagnostic_every=0)
    assert off.mala_acceptance.shape == (2, 0)


def test_wbic_and_two_temperature_on_the_oracle():
    """E_β[n L] = n·λ_o(nβ)/nβ exactly for the oracle (L(w*) = 0), at each temperature."""
    res = run("sgld", 1e-3)
    lam = theory.quadratic_oracle_llc(H, nbeta=NBETA, localization=GAMMA, step_size=1e-3)
    assert_mc_close(res.wbic, res.wbic_stderr, N * lam / NBETA)
    nbetas = (NBETA / 2, 2 * NBETA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        tt = sj.estimate_llc_two_temperature(
            quadratic_loss(H),
            jnp.zeros(3),
            DATA,
            nbetas=nbetas,
            step_size=1e-3,
            localization=GAMMA,
            num_chains=8,
            num_steps=3000,
            batch_size=100,
        )
    e = [
        theory.quadratic_oracle_llc(H, nbeta=b, localization=GAMMA, step_size=1e-3) / b
        for b in nbetas
    ]
    expected = (e[0] - e[1]) / (1 / nbetas[0] - 1 / nbetas[1])
    assert_mc_close(tt.llc, tt.llc_stderr, expected)
    assert [r.config.nbeta for r in tt.results] == list(nbetas)
    with pytest.raises(ValueError, match="must differ"):
        sj.estimate_llc_two_temperature(quadratic_loss(H), jnp.zeros(3), DATA, nbetas=(5.0, 5.0))


def _relative_bias(sampler, step_size, a):
    """Stationary (A·Var w − 1) of a stochastic-gradient sampler on ½A w² with exact
    gradients: its relative bias on a quadratic of curvature A."""
    if sampler.name == "rmsprop_sgld":  # SGLD with step εG, G ≤ 2/√(E g²) = 2/√A
        eff = step_size * 2 / np.sqrt(a)
        return (eff * a / 4) / (1 - eff * a / 4)

    def var(xi, diffusion):
        m, q = _momentum_covariance(a, step_size=step_size, friction=xi, diffusion=diffusion)
        return np.linalg.solve(np.eye(4) - np.kron(m, m), q.ravel()).reshape(2, 2)

    if sampler.name == "sghmc":
        return a * var(sampler.friction, sampler.friction)[0, 0] - 1
    alpha, low, high = sampler.diffusion, 1e-3, 1e4  # SGNHT: at the thermostat's fixed point
    for _ in range(200):
        xi = np.sqrt(low * high)
        low, high = (xi, high) if var(xi, alpha)[1, 1] > 1 else (low, xi)
    return a * var(xi, alpha)[0, 0] - 1


@pytest.mark.parametrize(
    "sampler, step_size",
    [
        (sj.samplers.RMSPropSGLD(), 2e-3),
        (sj.samplers.SGHMC(friction=20.0), 2e-3),
        (sj.samplers.SGNHT(diffusion=20.0), 2e-3),
    ],
)
def test_stochastic_gradient_samplers_on_a_singular_monomial(sampler, step_size):
    """K(w) = ½(w₁² + w₂⁴) (λ → 3/4): the exact localized value by quadrature, plus each
    term's step bias bounded by that of a quadratic with the largest curvature the chains
    visit (nβ·(p−1)p/2·w^{p−2} at 3 posterior sd, as for SGLD in test_known_answers)."""
    nbeta, gamma = 200.0, 1.0

    def loss_fn(w, batch):
        del batch
        return 0.5 * (w[0] ** 2 + w[1] ** 4)

    res = sj.estimate_llc(
        loss_fn,
        jnp.zeros(2),
        jnp.zeros((10, 1)),
        num_chains=8,
        num_steps=16_000,
        num_burnin=2000,
        step_size=step_size,
        localization=gamma,
        nbeta=nbeta,
        batch_size=10,
        sampler=sampler,
    )
    target, bias = 0.0, 0.0
    for p in (2, 4):
        value = monomial_target(p, nbeta=nbeta, gamma=gamma)
        sd = np.sqrt(value * 2 / nbeta) ** (2 / p)
        curvature = nbeta * (p - 1) * p / 2 * (3 * sd) ** (p - 2) + gamma
        target += value
        bias += value * abs(_relative_bias(sampler, step_size, curvature))
    assert bias < 0.3 * target  # a meaningful test: the bound is well below λ
    assert_mc_close(res.llc_mean, res.llc_stderr, target, extra=bias)
