"""Weight- and data-refined LLCs, observables, Bayesian influence and susceptibilities.

Known answers and how the tolerances are derived:

* **Quadratic loss** ``½ Σ h_i w_i²`` with exact gradients: SGLD's stationary law is Gaussian
  with per-coordinate variance ``1/(A_i(1 − εA_i/4))``, ``A_i = nβh_i + γ``
  (:func:`slt_jax.theory.quadratic_oracle_llc`); a refinement is exact on its coordinates,
  so its expectation is the oracle over the selected ``h_i``. Tolerance: 4 Monte-Carlo
  standard errors (``sd/√ESS``).
* **Singular monomial** ``½(w₁² + w₂⁴)``: each coordinate's refined value by quadrature, with
  the step-bias bound of ``test_known_answers.test_sum_of_monomials``.
* **Linear regression** with exact gradients: the chain's stationary law is
  ``N(w*, Σ_ε)``, ``Σ_ε = (A(I − εA/4))⁻¹`` with ``A = nβ XᵀX/n + γ``. Residuals
  ``r_p = μ_p − x_p·δ`` are jointly Gaussian, so by Isserlis' theorem
  ``Cov[½r_p², ½r_q²] = ½ s_pq² + μ_p μ_q s_pq`` with ``s_pq = x_pᵀ Σ_ε x_q``: exact
  covariances of per-example losses, hence of the BIF and the susceptibilities. Their
  tolerance is 4 standard errors from the spread of the 16 independent chains' estimates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_mc_close
from test_known_answers import monomial_target

import slt_jax as sj
from slt_jax import theory
from slt_jax._src.engine import programs as sharding

# ---- selectors -----------------------------------------------------------------------------

PARAMS = {
    "layer0": {"qkv": np.zeros((4, 3, 2, 5), np.float32), "bias": np.zeros(4, np.float32)},
    "layer1": {"qkv": np.zeros((4, 3, 2, 5), np.float32)},
}


def test_selectors_patterns_predicates_and_masks():
    m = sj.refine.mask(PARAMS, "layer0/*")
    assert m["layer0"]["qkv"].all() and m["layer0"]["bias"].all() and not m["layer1"]["qkv"].any()
    m = sj.refine.mask(PARAMS, ["*/qkv"])
    assert sj.refine.num_selected(m) == 2 * 120
    # A predicate may select part of a leaf.
    m = sj.refine.mask(PARAMS, lambda path, leaf: path == "layer0/bias" and np.arange(4) < 2)
    assert sj.refine.num_selected(m) == 2
    # A mask pytree: whole leaves by a bool, part of one by an array (broadcast).
    part = np.zeros((4, 3, 2, 5), bool)
    part[:, :, 1] = True
    m = sj.refine.mask(
        PARAMS, {"layer0": {"qkv": part, "bias": False}, "layer1": {"qkv": np.bool_(True)}}
    )
    assert sj.refine.num_selected(m) == 60 + 120
    heads = sj.refine.head_masks(PARAMS, {"layer1/qkv": 2}, 2, prefix="L1H")
    assert list(heads) == ["L1H0", "L1H1"]
    assert heads["L1H0"]["layer1"]["qkv"][:, :, 0].all()
    assert not heads["L1H0"]["layer1"]["qkv"][:, :, 1].any()
    assert sj.refine.num_selected(heads["L1H1"]) == 60


def test_paths_of_a_flax_nnx_state():
    from flax import nnx

    model = sj.examples.MLP((4, 3, 2), rngs=nnx.Rngs(0))
    _, params = sj.nnx_loss(model, lambda out, y: jnp.sum(out, axis=1))
    assert sj.refine.leaf_paths(params) == [
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/bias",
        "layers/1/kernel",
    ]
    assert sj.refine.num_selected(sj.refine.mask(params, "layers/0/*")) == 15


def test_selector_errors():
    with pytest.raises(ValueError, match="selects no coordinate.*layer0/qkv"):
        sj.refine.mask(PARAMS, "nothing/*")
    with pytest.raises(ValueError, match="does not broadcast"):
        sj.refine.mask(PARAMS, lambda path, leaf: np.ones(3, bool))
    with pytest.raises(TypeError, match="boolean"):
        sj.refine.mask(PARAMS, lambda path, leaf: 1.0)
    with pytest.raises(ValueError, match="structure"):
        sj.refine.mask(PARAMS, {"layer0": True})
    with pytest.raises(ValueError, match="cannot be split into 3 heads"):
        sj.refine.head_masks(PARAMS, {"*/qkv": 2}, 3)
    with pytest.raises(ValueError, match="no parameter path matches"):
        sj.refine.head_masks(PARAMS, {"mlp/*": 0}, 2)
    # A typo next to a pattern that matches is not silently dropped.
    with pytest.raises(ValueError, match=r"no parameter path matches \['layr0/qkv'\]"):
        sj.refine.head_masks(PARAMS, {"layer1/qkv": 2, "layr0/qkv": 2}, 2)
    for axis in (4, -5, 1.0):  # the qkv leaves have 4 axes
        with pytest.raises(ValueError, match="is not an axis of leaf"):
            sj.refine.head_masks(PARAMS, {"*/qkv": axis}, 2)
    negative = sj.refine.head_masks(PARAMS, {"*/qkv": -2}, 2)
    positive = sj.refine.head_masks(PARAMS, {"*/qkv": 2}, 2)
    assert all(
        np.array_equal(a, b)
        for h in negative
        for a, b in zip(jax.tree.leaves(negative[h]), jax.tree.leaves(positive[h]), strict=True)
    )
    with pytest.raises(TypeError, match="non-empty mapping"):
        sj.estimate_refined_llc(
            lambda w, b: jnp.sum(w), jnp.zeros(2), jnp.zeros((4, 1)), {}, batch_size=4
        )


# ---- weight-refined LLC --------------------------------------------------------------------


def _regression_run(loss_fn, params, data, refinements, **options):
    settings = dict(num_chains=4, num_steps=600, step_size=1e-4, localization=100.0, batch_size=64)
    return sj.estimate_refined_llc(loss_fn, params, data, refinements, **{**settings, **options})


@pytest.mark.parametrize("sampler", ["sgld", "hmc"])
def test_refinement_selecting_everything_is_the_full_llc(linear_regression, sampler):
    loss_fn, w, data = linear_regression
    options = dict(num_chains=4, num_steps=600, step_size=1e-4, localization=100.0, batch_size=64)
    if sampler == "hmc":
        options.update(step_size=0.01, num_steps=200)
    full = sj.estimate_llc(loss_fn, w, data, sampler=sampler, **options)
    refined = sj.estimate_refined_llc(loss_fn, w, data, sampler=sampler, **options)
    assert list(refined) == ["all"] and refined.num_selected["all"] == 4
    np.testing.assert_allclose(refined["all"].llc_per_chain, full.llc_per_chain, rtol=1e-5)
    np.testing.assert_allclose(refined["all"].mala_acceptance, full.mala_acceptance, rtol=1e-4)


def _quadratic(h):
    h = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), h)

    def loss_fn(w, batch):
        del batch
        terms = jax.tree.map(lambda hi, wi: jnp.sum(hi * wi**2), h, w)
        return 0.5 * sum(jax.tree.leaves(terms))

    return loss_fn


@pytest.mark.parametrize(
    "sampler, step_size", [("sgld", 1e-3), (sj.samplers.SGHMC(friction=20.0), 2e-3), ("hmc", 0.03)]
)
def test_masked_model_equals_the_smaller_model(sampler, step_size):
    """Half of ``a`` and one column of ``b`` move; the frozen column has curvature 10⁶, which
    any noise or drift on it would turn into a divergence. The refined chains must match
    the model of the selected coordinates alone, and (SGLD, HMC) the quadratic oracle."""
    nbeta, gamma = 100.0, 1.0
    h_full = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([[5.0, 1e6], [7.0, 1e6]])}
    w_star = {"a": np.zeros(4, np.float32), "b": np.zeros((2, 2), np.float32)}
    selected = {"a": np.array([True, True, False, False]), "b": np.array([[True, False]] * 2)}
    h_small = np.array([1.0, 2.0, 5.0, 7.0])
    data = jnp.zeros((10, 1))
    options = dict(
        num_chains=16,
        num_steps=4000,
        num_burnin=500,
        step_size=step_size,
        localization=gamma,
        nbeta=nbeta,
        batch_size=10,
        sampler=sampler,
    )
    refined = sj.estimate_refined_llc(
        _quadratic(h_full), w_star, data, {"part": selected}, **options
    )["part"]
    small = sj.estimate_llc(_quadratic(h_small), jnp.zeros(4), data, **options)
    assert not refined.diverged.any()
    se = np.hypot(refined.llc_stderr, small.llc_stderr)
    assert abs(refined.llc_mean - small.llc_mean) < 4 * se, (refined.llc_mean, small.llc_mean)
    if sampler in ("sgld", "hmc"):  # SGHMC's finite-step law is not the SGLD oracle's
        eps = step_size if sampler == "sgld" else 0.0  # HMC is exact (Metropolis-corrected)
        target = theory.quadratic_oracle_llc(
            h_small, nbeta=nbeta, localization=gamma, step_size=eps
        )
        assert_mc_close(refined.llc_mean, refined.llc_stderr, target)
    # Diagnostics are those of the selected coordinates: ‖w − w*‖² ≈ Σ_selected variances.
    if sampler == "sgld":
        var = theory.quadratic_oracle_stationary_variance(
            h_small, nbeta=nbeta, localization=gamma, step_size=step_size
        )
        mean_sq = np.mean(refined.weight_distance**2)
        assert abs(mean_sq / var.sum() - 1) < 0.1, (mean_sq, var.sum())


def test_refinements_of_a_singular_model_give_their_known_values():
    """K(w) = ½(w₁² + w₂⁴) + ½·10⁶·w₃² (w₃ never selected): refining to w₁ gives the regular
    ½, to w₂ the quartic ¼ (by quadrature at finite nβ), to both their sum 3/4."""
    nbeta, gamma, eps = 200.0, 1.0, 2e-4

    def loss_fn(w, batch):
        del batch
        return 0.5 * (w[0] ** 2 + w[1] ** 4 + 1e6 * w[2] ** 2)

    res = sj.estimate_refined_llc(
        loss_fn,
        jnp.zeros(3),
        jnp.zeros((10, 1)),
        {
            "w1": np.array([True, False, False]),
            "w2": np.array([False, True, False]),
            "w1w2": np.array([True, True, False]),
        },
        num_chains=16,
        num_steps=32_000,
        num_burnin=2_000,
        step_size=eps,
        localization=gamma,
        nbeta=nbeta,
        batch_size=10,
    )
    targets = {p: monomial_target(p, nbeta=nbeta, gamma=gamma) for p in (2, 4)}
    assert abs(targets[4] - theory.monomial_learning_coefficient([4])) < 0.02
    bias = {}
    for p, target in targets.items():  # the step-bias bound of test_sum_of_monomials
        sd = np.sqrt(target * 2 / nbeta) ** (2 / p)
        rel = eps * (nbeta * (p - 1) * p / 2 * (3 * sd) ** (p - 2) + gamma) / 4
        bias[p] = target * rel / (1 - rel)
    for name, powers in {"w1": (2,), "w2": (4,), "w1w2": (2, 4)}.items():
        target = sum(targets[p] for p in powers)
        tol = 4 * res[name].llc_stderr + sum(bias[p] for p in powers)
        assert abs(res[name].llc_mean - target) < tol, (name, res[name].llc_mean, target)


def test_many_refinements_one_program_per_shape_group_each_equal_to_its_own_run(
    linear_regression,
):
    loss_fn, w, data = linear_regression
    loss_fn = jax.tree_util.Partial(loss_fn)  # a fresh callable: its own program cache entry
    refinements = {
        "first": lambda path, leaf: np.arange(4) < 1,
        "middle": np.array([False, True, True, False]),
        "last": lambda path, leaf: np.arange(4) == 3,
    }
    before = sharding.num_compiled()
    together = _regression_run(loss_fn, w, data, refinements)
    # Two shape groups of compact chains: {first, last} (one entry each) and {middle} (two).
    assert sharding.num_compiled() == before + 2
    assert list(together) == list(refinements)
    assert together.num_selected == {"first": 1, "middle": 2, "last": 1}
    for name, selector in refinements.items():
        alone = _regression_run(loss_fn, w, data, {name: selector})[name]
        np.testing.assert_allclose(together[name].llc_per_chain, alone.llc_per_chain, rtol=1e-5)
    # Rough check against d_V/2-scale values: more coordinates, larger λ̂.
    assert together["middle"].llc_mean > together["first"].llc_mean
    text = str(together)
    assert "middle" in text and "coords" in text
    ds = together.to_xarray()
    assert list(ds.refinement.values) == ["first", "middle", "last"]


def test_a_diverging_refinement_is_flagged_not_fatal():
    """The stiff coordinate diverges at this step (εnβh ≫ 4); the other refinement is fine."""
    loss_fn = _quadratic({"a": np.array([1.0]), "b": np.array([1e4])})
    w = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    with pytest.warns(sj.LLCDiagnosticWarning, match="'b': all 4 chains diverged"):
        res = sj.estimate_refined_llc(
            loss_fn,
            w,
            jnp.zeros((10, 1)),
            {"a": "a", "b": "b"},
            num_chains=4,
            num_steps=400,
            step_size=1e-2,
            localization=1.0,
            nbeta=10.0,
            batch_size=10,
            probe=jnp.zeros((3, 1)),
        )
    assert res["b"].diverged.all() and np.isnan(res["b"].llc_mean)
    assert not res["a"].diverged.any() and np.isfinite(res["a"].llc_mean)
    assert np.isnan(res.probes["b"].loss_variance()).all()
    assert np.isfinite(res.probes["a"].loss_variance()).all()


# ---- observables, influence, susceptibilities (linear regression, exact gradients) ----------


def _regression_problem(seed=0, n=200, d=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + rng.normal(size=n)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    x_other = rng.normal(size=(150, d)) * np.array([2.0, 0.5, 1.0])
    y_other = x_other @ rng.normal(size=d) + rng.normal(size=150)
    return x, y, w_star, x_other, y_other


def _loss_fn(w, batch):
    xb, yb = batch
    return 0.5 * jnp.mean((xb @ w - yb) ** 2)


def _stationary_covariance(x, nbeta, gamma, eps):
    """Σ_ε of exact-gradient SGLD on ½·mean (y − xw)²: (A(I − εA/4))⁻¹, A = nβH + γ."""
    a = nbeta * x.T @ x / len(x) + gamma * np.eye(x.shape[1])
    vals, vecs = np.linalg.eigh(a)
    return (vecs / (vals * (1 - eps * vals / 4))) @ vecs.T


def _loss_cov(xp, mup, xq, muq, sigma):
    """Isserlis: Cov[½r_p², ½r_q²] for residuals r = μ − x·δ, δ ~ N(0, Σ)."""
    s = xp @ sigma @ xq.T
    return 0.5 * s**2 + np.outer(mup, muq) * s


@pytest.fixture(scope="module")
def observed_run():
    x, y, w_star, xo, yo = _regression_problem()
    nbeta, gamma, eps = 40.0, 1.0, 5e-3
    f32 = lambda *a: tuple(jnp.asarray(v, jnp.float32) for v in a)  # noqa: E731
    probe_idx = np.arange(0, 200, 25)  # 8 training examples
    res = sj.estimate_refined_llc(
        _loss_fn,
        jnp.asarray(w_star, jnp.float32),
        f32(x, y),
        observables={"data": f32(x, y), "other": f32(xo, yo)},
        probe=f32(x[probe_idx], y[probe_idx]),
        observe_every=5,
        probe_kernel=True,
        probe_trace=True,
        num_chains=16,
        num_steps=6000,
        num_burnin=1000,
        step_size=eps,
        localization=gamma,
        nbeta=nbeta,
        batch_size=200,
    )
    sigma = _stationary_covariance(x, nbeta, gamma, eps)
    return res["all"], res.observables["all"], res.probes["all"], locals()


def test_data_refined_llc_of_observables(observed_run):
    """Sampled with D, measured on D': E[nβ(L_{D'}(w) − L_{D'}(w*))] = nβ/2·tr(H'Σ_ε) (the
    linear term has mean zero because the chain's mean is w*)."""
    result, obs, _, ctx = observed_run
    x, xo, sigma, nbeta = ctx["x"], ctx["xo"], ctx["sigma"], ctx["nbeta"]
    assert obs.names == ("data", "other")
    for name, design in (("data", x), ("other", xo)):
        k = obs.names.index(name)
        target = 0.5 * nbeta * np.trace(design.T @ design / len(design) @ sigma)
        # One observation every 5 draws: se ≈ 10% of the target, so a ±40% band.
        assert_mc_close(obs.llc_mean[k], obs.llc_stderr[k], target, max_rel_stderr=0.15)
    # The observable "data" is the sampling loss on the whole data: the same λ̂ as the estimate.
    assert abs(obs.llc_mean[0] - result.llc_mean) < 4 * np.hypot(
        obs.llc_stderr[0], result.llc_stderr
    )
    assert obs.loss_trace.shape == (16, 2, 1000)  # 5000 draws / observe_every 5
    assert set(obs.as_dict()) == {"data", "other"}


def test_bayesian_influence_matches_isserlis(observed_run):
    _, _, probe, ctx = observed_run
    x, y, w_star, xo, yo, sigma = (ctx[k] for k in ("x", "y", "w_star", "xo", "yo", "sigma"))
    idx = ctx["probe_idx"]
    xp, mup = x[idx], y[idx] - x[idx] @ w_star
    mu, muo = y - x @ w_star, yo - xo @ w_star
    kernel = _loss_cov(xp, mup, xp, mup, sigma)
    cross = np.stack(
        [_loss_cov(xp, mup, x, mu, sigma).mean(1), _loss_cov(xp, mup, xo, muo, sigma).mean(1)], 1
    )
    est, se = probe.kernel_influence(), probe.kernel_influence_stderr()
    assert np.all(np.abs(est + kernel) < 4 * se + 1e-3 * np.abs(kernel).max()), (est, -kernel)
    est, se = probe.influence(), probe.influence_stderr()
    assert np.all(np.abs(est + cross) < 4 * se + 1e-3 * np.abs(cross).max()), (est, -cross)
    # Correlations are in [-1, 1]; an example's own kernel correlation is -1.
    corr = probe.kernel_influence(normalize=True)
    np.testing.assert_allclose(np.diag(corr), -1.0, rtol=1e-6)
    assert np.all(np.abs(probe.influence(normalize=True)) <= 1 + 1e-9)
    # The loss gain: E[ℓ_p] − ℓ_p(w*) = ½ x_pᵀΣx_p (the linear term has mean zero).
    gain = 0.5 * np.einsum("pi,ij,pj->p", xp, sigma, xp)
    var_gain = 0.5 * np.diag(kernel)  # Var[ℓ_p]/2-scale bound for the per-example SE
    assert np.all(np.abs(probe.loss_gain() - gain) < 4 * np.sqrt(var_gain / 400) + 1e-4)


def test_susceptibilities_match_their_definition(observed_run):
    """χ_{k,p} = −nβ Cov[φ_k, ℓ_p − L_q]: against Isserlis, and (ε → 0) against the
    derivative d/dh E_h[φ] of the exact Gaussian posterior of (1−h)L_D + hℓ_p."""
    _, _, probe, ctx = observed_run
    x, y, w_star, xo, yo, sigma, nbeta = (
        ctx[k] for k in ("x", "y", "w_star", "xo", "yo", "sigma", "nbeta")
    )
    idx = ctx["probe_idx"]
    xp, mup = x[idx], y[idx] - x[idx] @ w_star
    mu, muo = y - x @ w_star, yo - xo @ w_star

    def chi(sigma, reference):
        cov_p = np.stack(
            [_loss_cov(d, m, xp, mup, sigma).mean(0) for d, m in ((x, mu), (xo, muo))]
        )  # (K, P) Cov[φ_k, ℓ_p]
        if reference is None:
            base = cov_p.mean(1, keepdims=True)
        else:  # Cov[φ_k, L_D]
            base = np.stack(
                [_loss_cov(d, m, x, mu, sigma).mean() for d, m in ((x, mu), (xo, muo))]
            )[:, None]
        return -nbeta * (cov_p - base)

    for reference in (None, "data"):
        exact = chi(sigma, reference)
        est = probe.susceptibility(reference)
        se = probe.susceptibility_stderr(reference)
        assert est.shape == (2, len(idx))
        assert np.all(np.abs(est - exact) < 4 * se + 1e-3 * np.abs(exact).max()), (est, exact)

    # The definition: the derivative of E_h[L_{D'}] as the data shifts towards example p.
    gamma, n = ctx["gamma"], len(x)
    hess, hess_o = x.T @ x / n, xo.T @ xo / len(xo)

    def expected_other(h, p):
        xz, yz = xp[p], y[idx][p]
        a = nbeta * ((1 - h) * hess + h * np.outer(xz, xz)) + gamma * np.eye(3)
        b = nbeta * ((1 - h) * x.T @ y / n + h * xz * yz) + gamma * w_star
        m = np.linalg.solve(a, b)
        return 0.5 * np.mean((yo - xo @ m) ** 2) + 0.5 * np.trace(hess_o @ np.linalg.inv(a))

    exact_posterior = np.linalg.inv(nbeta * hess + gamma * np.eye(3))
    step = 1e-5
    for p in range(len(idx)):
        derivative = (expected_other(step, p) - expected_other(-step, p)) / (2 * step)
        # Cov[φ, ℓ_p − L_D] under the exact posterior (ε = 0).
        cov = (
            _loss_cov(xo, muo, xp[p : p + 1], mup[p : p + 1], exact_posterior).mean()
            - _loss_cov(xo, muo, x, mu, exact_posterior).mean()
        )
        np.testing.assert_allclose(derivative, -nbeta * cov, rtol=1e-4)


def test_streaming_moments_equal_the_full_trace(observed_run):
    _, obs, probe, _ = observed_run
    trace = probe.probe_trace  # (chains, P, observations)
    pooled = trace.transpose(1, 0, 2).reshape(trace.shape[1], -1).astype(np.float64)
    phi = obs.loss_trace.transpose(1, 0, 2).reshape(2, -1)
    np.testing.assert_allclose(probe.loss_kernel(), np.cov(pooled), rtol=2e-3, atol=1e-7)
    full = np.cov(np.concatenate([pooled, phi]))
    np.testing.assert_allclose(probe.covariance(), full[:-2, -2:], rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(probe.loss_mean(), pooled.mean(1), rtol=1e-5)
    assert probe.count.tolist() == [1000] * 16


def test_probe_memory_does_not_grow_with_draws(linear_regression):
    loss_fn, w, data = linear_regression
    probe = jax.tree.map(lambda a: a[:50], data)
    for steps in (200, 800):
        res = _regression_run(loss_fn, w, data, None, probe=probe, num_steps=steps)
        stats = res.probes["all"]
        assert stats.kernel is None and stats.probe_trace is None
        assert stats.cross.shape == (4, 50, 0) and stats.probe_mean.shape == (4, 50)
        assert stats.count.tolist() == [(steps - steps // 4) // 10] * 4
    with pytest.raises(ValueError, match="probe_kernel=True"):
        stats.loss_kernel()


def test_observation_input_errors(linear_regression):
    loss_fn, w, data = linear_regression
    x, y = data
    with pytest.raises(ValueError, match="observable 'bad' does not have the pytree structure"):
        _regression_run(loss_fn, w, data, None, observables={"bad": x})
    with pytest.raises(ValueError, match="non-finite"):
        _regression_run(loss_fn, w, data, None, observables={"nan": (x.at[0, 0].set(jnp.nan), y)})
    with pytest.raises(ValueError, match="exceeds the number of draws"):
        _regression_run(loss_fn, w, data, None, probe=data, observe_every=10_000)
    with pytest.raises(ValueError, match="need a `probe`"):
        _regression_run(loss_fn, w, data, None, probe_kernel=True)

    def needs_full_batches(w, batch):  # a loss that cannot see one example alone
        return 0.5 * jnp.mean((batch[0].reshape(2, -1, 4) @ w - batch[1].reshape(2, -1)) ** 2)

    with pytest.raises(ValueError, match="batches of one example"):
        _regression_run(needs_full_batches, w, data, None, probe=data)
    with pytest.raises(ValueError, match="is not an observable"):
        res = _regression_run(loss_fn, w, data, None, probe=jax.tree.map(lambda a: a[:4], data))
        res.probes["all"].susceptibility("missing")


# ---- one observation keyword for every entry point ----------------------------------------------


@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")  # 40 steps: equalities only
def test_every_entry_point_takes_the_same_observation(linear_regression):
    """``observe=sj.Observation(...)`` is one declaration: ``estimate_llc`` and
    ``estimate_llc_checkpoints`` take it (the refined job of the one refinement ``"all"``),
    the refined entry points take it or its loose keywords, with the same numbers."""
    loss_fn, w, data = linear_regression
    x, y = data
    options = dict(num_chains=2, num_steps=40, step_size=1e-4, localization=100.0, batch_size=64)
    observe = sj.Observation(
        observables={"half": (x[:500], y[:500])}, probe=(x[:4], y[:4]), every=4
    )
    plain = sj.estimate_llc(loss_fn, w, data, **options)
    res = sj.estimate_llc(loss_fn, w, data, observe=observe, **options)
    loose = sj.estimate_refined_llc(
        loss_fn,
        w,
        data,
        observables=observe.observables,
        probe=observe.probe,
        observe_every=4,
        **options,
    )
    assert isinstance(res, sj.RefinedLLCResult) and list(res) == ["all"]
    np.testing.assert_allclose(res["all"].llc_per_chain, plain.llc_per_chain, rtol=1e-5)
    np.testing.assert_array_equal(res["all"].llc_per_chain, loose["all"].llc_per_chain)
    np.testing.assert_array_equal(
        res.observables["all"].llc_per_chain, loose.observables["all"].llc_per_chain
    )
    np.testing.assert_array_equal(res.probes["all"].probe_mean, loose.probes["all"].probe_mean)
    sweep = sj.estimate_llc_checkpoints(
        loss_fn, [w, w + 0.01], data, observe=observe, progress=False, **options
    )
    assert isinstance(sweep, sj.RefinedCheckpointsResult)
    np.testing.assert_array_equal(
        sweep.checkpoint(0).observables["all"].llc_per_chain,
        sj.estimate_refined_llc_checkpoints(
            loss_fn, [w, w + 0.01], data, observe=observe, progress=False, **options
        )
        .checkpoint(0)
        .observables["all"]
        .llc_per_chain,
    )
    with pytest.raises(TypeError, match="not both"):
        sj.estimate_refined_llc(loss_fn, w, data, observe=observe, probe=(x[:2], y[:2]), **options)
    with pytest.raises(TypeError, match="must be an sj.Observation"):
        sj.estimate_llc(loss_fn, w, data, observe={"probe": x}, **options)
    with pytest.raises(TypeError, match="`dry_run` is not taken with `observe=`"):
        sj.estimate_llc_checkpoints(loss_fn, [w], data, observe=observe, dry_run=True, **options)
