"""What every sampler must satisfy: each registered one, and a user's own spec defined here.

A spec (``sj.samplers.Sampler``) plugs into the configuration and the engine as an object,
so a sampler that is not in the registry runs like one that is. The properties:

* **quadratic oracle**: on ``L(w) = ½ Σ h_i w_i²`` the localized posterior is Gaussian and
  ``E[λ̂] = Σ nβh_i / (2 A_i)``, ``A_i = nβh_i + γ`` (``d/2`` as ``γ → 0``: a regular model);
  a finite step moves it by a known amount for the Langevin samplers (DESIGN.md §2), by the
  exact linear recursion for SGHMC, inside a band for RMSProp-SGLD, not at all for the
  Metropolis samplers. Tolerance: 4 Monte-Carlo standard errors (conftest.assert_mc_close).
* **noise-free limit**: with the noise hook returning zeros, a stochastic-gradient sampler
  is its deterministic update on the localized loss (gradient descent, preconditioned or
  with momentum), compared with that update computed here in float64.
* **zero step**: no noise at a zero step size, no move (every sampler).
* **pytrees**: a nested dict of parameters keeps its structure, shapes and dtypes.
* **one compilation per shape**: a second run with other step size, localization and seed
  compiles nothing.
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_mc_close
from test_samplers import momentum_oracle

import slt_jax as sj
from slt_jax import theory
from slt_jax._src.engine import programs

N = 1000
NBETA = N / np.log(N)
GAMMA = 10.0  # as test_samplers (momentum_oracle reads its nβ and γ)
H = np.ones(4)  # L(w) = ½‖w‖² over the 4 coordinates of PARAMS: a regular model
PARAMS = {"a": jnp.zeros(2), "b": {"c": jnp.zeros((1, 2))}}
DATA = jnp.zeros((N, 1))


@dataclasses.dataclass(frozen=True)
class ScaledSGLD(sj.samplers.Sampler):
    """A user's sampler, not registered: SGLD whose every step is ``scale·ε``,

    ``w ← w + (scale·ε)/2·∇log p + N(0, scale·ε)``; its acceptance diagnostic is the MALA
    acceptance at that step (the hook, overridden)."""

    scale: float = 0.5
    name = "scaled_sgld"
    langevin = True

    def build(self, loss_fn, center, *, nbeta, localization, noise=None):
        grad = sj.kernels.localized_logdensity_grad(
            loss_fn, center, nbeta=nbeta, localization=localization
        )
        inner = sj.kernels.sgld(grad, noise=noise)

        def step(key, state, batch, step_size):
            return inner.step(key, state, batch, self.scale * step_size)

        return sj.kernels.Kernel(inner.init, step)

    def acceptance(self, *args, step_size, **kwargs):
        return super().acceptance(*args, step_size=self.scale * step_size, **kwargs)


SPECS = [cls() for cls in sj.samplers.SAMPLERS.values()] + [ScaledSGLD()]
IDS = [spec.name for spec in SPECS]
STOCHASTIC = [s for s in SPECS if not s.full_batch]


def loss_fn(params, batch):
    del batch
    leaves = jax.tree.leaves(params)
    return 0.5 * sum(jnp.sum(w**2) for w in leaves)


def oracle(spec, step_size, *, burnin, draws):
    """``(target, extra)``: the value λ̂ must hit within 4 MCSE (+ ``extra``)."""
    exact = theory.quadratic_oracle_llc(H, nbeta=NBETA, localization=GAMMA)
    if spec.full_batch:  # Metropolis-Hastings: no step bias
        return exact, 0.0
    if spec.name == "sgld":
        return theory.quadratic_oracle_llc(
            H, nbeta=NBETA, localization=GAMMA, step_size=step_size
        ), 0.0
    if isinstance(spec, ScaledSGLD):
        return theory.quadratic_oracle_llc(
            H, nbeta=NBETA, localization=GAMMA, step_size=spec.scale * step_size
        ), 0.0
    if spec.name == "sghmc":
        return momentum_oracle(
            H, step_size=step_size, friction=spec.friction, burnin=burnin, draws=draws
        ), 0.0
    if spec.name == "rmsprop_sgld":  # frozen G in [0, 2/sqrt(A)]: SGLD at step εG
        a = NBETA * H + GAMMA
        high = np.sum(NBETA * H / (2 * a * (1 - step_size * 2 / np.sqrt(a) * a / 4)))
        return (exact + high) / 2, (high - exact) / 2
    if spec.name == "sgnht":  # SGHMC at the thermostat's fixed point (test_samplers)
        from test_samplers import thermostat_oracle

        return thermostat_oracle(H, step_size=step_size, diffusion=spec.diffusion)[0], 0.0
    raise AssertionError(f"no oracle for {spec.name}: add one here with the sampler")


#: Step sizes in each sampler's own units (ε, or the time step h), and run lengths.
STEPS = {
    "sgld": 2e-3,
    "scaled_sgld": 4e-3,
    "rmsprop_sgld": 0.02,
    "sghmc": 0.02,
    "sgnht": 0.01,
    "mala": 0.01,
    "hmc": 0.02,
    "nuts": 0.05,
}


#: Run lengths (steps, burn-in) other than (1200, 300): the thermostat settles slowly.
LENGTHS = {"sgnht": (6000, 2000), "nuts": (600, 150)}


def estimate(spec, step_size, *, num_steps=2000, num_burnin=500, seed=0, localization=GAMMA):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return sj.estimate_llc(
            loss_fn,
            PARAMS,
            DATA,
            sampler=spec,
            num_chains=8,
            num_steps=num_steps,
            num_burnin=num_burnin,
            step_size=step_size,
            localization=localization,
            nbeta=NBETA,
            batch_size=100,
            seed=seed,
        )


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_quadratic_oracle_and_one_compilation(spec):
    steps, burnin = LENGTHS.get(spec.name, (1200, 300))
    step_size = STEPS[spec.name]
    before = programs.num_compiled()
    res = estimate(spec, step_size, num_steps=steps, num_burnin=burnin)
    assert programs.num_compiled() == before + 1
    # Other step size, localization and seed: the same program (arrays, not static).
    estimate(spec, step_size / 2, num_steps=steps, num_burnin=burnin, seed=1, localization=3.0)
    assert programs.num_compiled() == before + 1
    target, extra = oracle(spec, step_size, burnin=burnin, draws=steps - burnin)
    assert abs(theory.quadratic_oracle_llc(H, nbeta=NBETA, localization=0.0) - 2.0) < 1e-12
    assert_mc_close(res.llc_mean, res.llc_stderr, target, extra=extra)
    assert res.config.sampler == spec and res.config.to_dict()["sampler"] == spec.describe()
    loaded = type(res).from_xarray(res.to_xarray())  # holds the description, a string
    assert loaded.config.sampler == spec.describe() and loaded.config == res.config
    if spec.name in sj.samplers.SAMPLERS:  # registered: rebuilt by name
        assert loaded.config.static().sampler == spec
    if spec.langevin or spec.full_batch:  # the acceptance diagnostic each one provides
        assert 0.3 < np.nanmean(res.mala_acceptance) <= 1.0
    else:
        assert np.isnan(res.mala_acceptance).all()


def noise_free(spec, w, step_size, num_steps):
    """The deterministic update of each stochastic-gradient sampler, in float64."""
    a = NBETA * 1.0 + GAMMA  # every coordinate: g = -(nβ·w + γ·w)
    p, v, xi = np.zeros_like(w), np.zeros_like(w), getattr(spec, "diffusion", None)
    for t in range(1, num_steps + 1):
        g = -a * w
        if spec.name == "sgld":
            w = w + step_size / 2 * g
        elif isinstance(spec, ScaledSGLD):
            w = w + spec.scale * step_size / 2 * g
        elif spec.name == "rmsprop_sgld":
            v = spec.alpha * v + (1 - spec.alpha) * g * g
            # 1 − α^t as the kernel rounds it (float32: ≈ 6e-4 relative at α = 0.9999)
            correction = float(np.float32(1) - np.float32(spec.alpha) ** np.float32(t))
            precond = 1 / (spec.eps + np.sqrt(v / correction))
            w = w + step_size / 2 * precond * g
        elif spec.name == "sghmc":
            p = (1 - spec.friction * step_size) * p + step_size * g
            w = w + step_size * p
        elif spec.name == "sgnht":
            p = (1 - xi * step_size) * p + step_size * g
            w = w + step_size * p
            xi = xi + step_size * (np.mean(p * p) - 1)
        else:
            raise AssertionError(f"no noise-free update for {spec.name}: add it here")
    return w


def _kernel(spec, **kw):
    return spec.build(
        loss_fn, jax.tree.map(jnp.zeros_like, PARAMS), nbeta=NBETA, localization=GAMMA, **kw
    )


START = {"a": jnp.array([0.3, -0.2]), "b": {"c": jnp.array([[0.1, 0.05]])}}


@pytest.mark.parametrize("spec", STOCHASTIC, ids=[s.name for s in STOCHASTIC])
def test_noise_free_limit_is_the_deterministic_update(spec):
    zeros = lambda key, position: jax.tree.map(jnp.zeros_like, position)  # noqa: E731
    kernel = _kernel(spec, noise=zeros)
    step_size, num_steps = STEPS[spec.name], 5
    state = kernel.init(START, None)
    for t in range(num_steps):
        state, info = kernel.step(jax.random.key(t), state, None, jnp.float32(step_size))
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    expected = noise_free(spec, flat(START).astype(np.float64), step_size, num_steps)
    assert np.abs(expected).max() > 1e-3  # the update moved: a real comparison
    np.testing.assert_allclose(flat(state.position), expected, rtol=2e-5, atol=1e-7)
    noise = [np.abs(np.asarray(x)).max() for x in jax.tree.leaves(info.noise)]
    assert max(noise) < 1e-6  # what the step reports (a difference of positions: rounding)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_zero_step_does_not_move_and_pytrees_keep_their_shapes(spec):
    kernel = _kernel(spec)
    data = DATA if spec.full_batch else DATA[:100]
    state = kernel.init(START, data)
    new, info = jax.jit(kernel.step)(jax.random.key(0), state, data, jnp.float32(0.0))
    assert jax.tree.structure(new.position) == jax.tree.structure(START)
    for old, moved, grad in zip(
        jax.tree.leaves(START),
        jax.tree.leaves(new.position),
        jax.tree.leaves(info.logdensity_grad),
        strict=True,
    ):
        assert moved.shape == old.shape == grad.shape and moved.dtype == old.dtype
        np.testing.assert_array_equal(moved, old)
    assert np.shape(info.loss) == () and np.shape(info.acceptance) == ()


def test_a_user_spec_is_kept_checked_and_described():
    config, _ = sj.LLCConfig(sampler=ScaledSGLD(scale=2)).resolve(num_examples=N)
    assert config.sampler == ScaledSGLD(scale=2.0) and isinstance(config.sampler.scale, float)
    assert config.sampler == "scaled_sgld(scale=2.0)"  # compares equal to its description
    assert config.to_dict()["sampler"] == "scaled_sgld(scale=2.0)"
    assert config.static().sampler is config.sampler
    with pytest.raises(ValueError, match="scaled_sgld.scale"):
        sj.LLCConfig(sampler=ScaledSGLD(scale=-1.0)).resolve(num_examples=N)
    assert "scaled_sgld" not in sj.samplers.SAMPLERS  # it ran without being registered

    @dataclasses.dataclass(frozen=True)
    class Weighted(ScaledSGLD):
        weights: list = dataclasses.field(default_factory=list)  # unhashable

    with pytest.raises(TypeError, match="not hashable"):
        sj.LLCConfig(sampler=Weighted()).resolve(num_examples=N)
