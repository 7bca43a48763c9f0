"""The next-token loss of a language model (``sj.lm``) and per-token observables.

The model is a hand-written bigram LM, ``logits_t = W[x_t]`` (a ``V × V`` table; also as an
NNX module ``E[x] @ U``), on windows of a Markov chain over ``V = 4`` tokens.

Known answer and how its tolerance is derived:

* The bigram model is a saturated multinomial model per context: at ``W* = log p̂`` (the
  empirical transition probabilities, the exact minimiser) it is regular except for the
  softmax's shift of each row (``W_r + c·1`` leaves the loss unchanged, and is bounded
  only by the localization), so ``d = V(V − 1) = 12`` free parameters and ``λ = d/2 = 6``.
  At finite ``nβ`` and ``γ`` the expectation of ``λ̂`` under the exact localized, tempered
  posterior is computed here without the quadratic approximation: ``L_n`` separates over
  context rows, each row's shift direction is Gaussian and does not move the loss, and the
  remaining ``V − 1 = 3`` dimensional integrals are evaluated by Gauss–Hermite quadrature
  around the Laplace approximation (checked converged: 30 vs 40 nodes). The chain's finite
  step multiplies the quadratic part by the oracle factor
  ``E_ε[λ̂]/E_0[λ̂]`` (:func:`slt_jax.theory.quadratic_oracle_llc` on the Hessian's
  eigenvalues); the cross term of step bias and non-quadratic correction is bounded by
  their product and added to the tolerance. Gradients are exact (full batch), so the
  remaining error is Monte Carlo: 4 standard errors from the ESS.
* Per-token outputs are checked against identities that hold draw by draw: the ω-weighted
  sum of the per-token trace equals the sequence-level observable's trace; the streaming
  moments equal the covariance of the recorded trace (float32 accumulation over at most
  ``N = 800`` observations: relative error ``≲ N·2⁻²⁴ ≈ 5·10⁻⁵`` of the largest entry).
"""

import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from conftest import assert_mc_close
from flax import nnx

import slt_jax as sj
from slt_jax import theory
from slt_jax._src import lm
from slt_jax._src.engine import programs

V, T = 4, 16


def _markov_windows(num_windows, seed=1):
    """``(num_windows, T + 1)`` int32 windows of a Markov chain over ``V`` tokens (all
    transition probabilities ≥ 0.05), cut by ``sj.TokenWindows``; and its token stream."""
    rng = np.random.default_rng(seed)
    transition = 0.8 * rng.dirichlet(np.full(V, 4.0), size=V) + 0.2 / V
    tokens = np.zeros(num_windows * (T + 1), np.int64)
    u = rng.random(len(tokens))
    for i in range(1, len(tokens)):
        tokens[i] = min(np.searchsorted(np.cumsum(transition[tokens[i - 1]]), u[i]), V - 1)
    windows = sj.TokenWindows(tokens.astype(np.uint16), seq_len=T + 1)
    return np.asarray(windows.gather(np.arange(len(windows)))).astype(np.int32), tokens


def _empirical(windows):
    """Transition probabilities ``p̂`` and context frequencies ``π`` of the windows' pairs."""
    counts = np.zeros((V, V))
    np.add.at(counts, (windows[:, :-1].ravel(), windows[:, 1:].ravel()), 1)
    return counts / counts.sum(1, keepdims=True), counts.sum(1) / counts.sum()


def bigram(w, input_ids, attention_mask=None):
    del attention_mask
    return w["logits"][input_ids]


class Bigram(nnx.Module):
    """``logits = E[x] @ U`` with ``config.vocab_size``."""

    def __init__(self, embed, unembed):
        self.embed, self.unembed = nnx.Param(embed), nnx.Param(unembed)
        self.config = types.SimpleNamespace(vocab_size=embed.shape[0])

    def __call__(self, input_ids, attention_mask=None):
        return self.embed[...][input_ids] @ self.unembed[...]


def _hand_loss(logits, ids, mask=None):
    """Per-token losses and the loss from numpy's log-softmax."""
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    b, t = np.indices(ids[:, 1:].shape)
    nll = -logp[b, t, ids[:, 1:]]
    counted = np.ones_like(nll, bool) if mask is None else mask[:, 1:].astype(bool)
    nll = np.where(counted, nll, 0.0)
    return nll, np.mean(nll.sum(1) / counted.sum(1))


# ---- the loss ----------------------------------------------------------------------------------


def test_loss_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    w = {"logits": jnp.asarray(rng.normal(size=(V, V)), jnp.float32)}
    ids = rng.integers(0, V, (5, T + 1)).astype(np.int32)
    loss_fn, params = sj_lm().next_token_loss(bigram, w)
    assert loss_fn.vocab_size == V  # from the logits' last dimension
    nll, loss = _hand_loss(np.asarray(w["logits"])[ids[:, :-1]], ids)
    np.testing.assert_allclose(loss_fn.per_token(params, ids), nll, rtol=1e-5)
    np.testing.assert_allclose(loss_fn(params, ids), loss, rtol=1e-6)
    # Without padding it is devinterp's mean over (batch, token_pos).
    np.testing.assert_allclose(loss_fn(params, ids), nll.mean(), rtol=1e-6)
    assert loss_fn.token_mask(ids).shape == (5, T) and bool(loss_fn.token_mask(ids).all())


def test_padding_is_left_out_of_the_loss():
    rng = np.random.default_rng(1)
    w = {"logits": jnp.asarray(rng.normal(size=(V, V)), jnp.float32)}
    ids = rng.integers(0, V, (4, T + 1)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right padding: 8 targets counted
    mask[3, 2:] = 0  # 1 target counted
    loss_fn, params = sj_lm().next_token_loss(bigram, w)
    batch = {"input_ids": ids, "attention_mask": mask}
    nll, loss = _hand_loss(np.asarray(w["logits"])[ids[:, :-1]], ids, mask)
    per_token = np.asarray(loss_fn.per_token(params, batch))
    assert per_token.shape == (4, T)
    np.testing.assert_allclose(per_token, nll, rtol=1e-5)
    assert (per_token[1, 8:] == 0).all() and (per_token[3, 1:] == 0).all()
    np.testing.assert_allclose(loss_fn(params, batch), loss, rtol=1e-6)
    np.testing.assert_array_equal(loss_fn.token_mask(batch), mask[:, 1:].astype(bool))
    # A masked target does not change the loss, whatever its id (right padding: the padded
    # positions only predict padded targets).
    other = ids.copy()
    other[mask == 0] = (ids[mask == 0] + 1) % V
    np.testing.assert_allclose(
        loss_fn(params, {"input_ids": other, "attention_mask": mask}), loss, rtol=1e-6
    )
    # Each window weighs the same: not the mean over all counted tokens.
    assert abs(loss - nll.sum() / mask[:, 1:].sum()) > 1e-3


def test_an_nnx_module_and_its_vocabulary():
    rng = np.random.default_rng(2)
    embed, unembed = rng.normal(size=(V, 3)), rng.normal(size=(3, V))
    model = Bigram(jnp.asarray(embed, jnp.float32), jnp.asarray(unembed, jnp.float32))
    loss_fn, params = sj_lm().next_token_loss(model)
    assert isinstance(params, nnx.State) and loss_fn.vocab_size == V  # config.vocab_size
    ids = rng.integers(0, V, (3, T + 1)).astype(np.int32)
    nll, loss = _hand_loss((embed @ unembed)[ids[:, :-1]], ids)
    np.testing.assert_allclose(loss_fn(params, ids), loss, rtol=1e-5)
    assert sj_lm().next_token_loss(model, vocab_size=3)[0].vocab_size == 3
    with pytest.raises(ValueError, match="fewer than vocab_size"):
        sj_lm().next_token_loss(model, vocab_size=9)[0](params, ids)
    seen = {}

    def forward(w, input_ids, attention_mask=None):
        seen["mask"] = attention_mask
        return w["logits"][input_ids]

    loss_fn, w = sj_lm().next_token_loss(forward, {"logits": jnp.zeros((V, V))})
    mask = np.ones_like(ids)
    loss_fn(w, {"input_ids": ids, "attention_mask": mask})
    assert seen["mask"].shape == (3, T)  # the model sees the mask of its T inputs
    with pytest.raises(TypeError, match="needs its params"):
        sj_lm().next_token_loss(forward)
    with pytest.raises(TypeError, match="only with a pure forward"):
        sj_lm().next_token_loss(model, params)


def sj_lm():
    """``sj.lm`` once it is re-exported; the private module until then."""
    return getattr(sj, "lm", lm)


# ---- known answer: the bigram model is regular, λ = V(V − 1)/2 -----------------------------------


def _row_expectation(pi_r, p, nbeta, gamma, nodes):
    """``E[nβ π_r (CE_r(w) − CE_r(w*))]`` under ``exp(−nβ π_r (CE_r − CE_r*) − γ/2 |u|²)`` over
    the row's logits ``w = log p + Q u`` (``u ⊥ 1``), by Gauss–Hermite quadrature around the
    Laplace approximation."""
    q = np.linalg.qr(np.concatenate([np.ones((V, 1)), np.eye(V)[:, : V - 1]], 1))[0][:, 1:]
    precision = nbeta * pi_r * q.T @ (np.diag(p) - np.outer(p, p)) @ q + gamma * np.eye(V - 1)
    vals, vecs = np.linalg.eigh(precision)
    x, weights = np.polynomial.hermite_e.hermegauss(nodes)
    z = np.stack(np.meshgrid(*[x] * (V - 1), indexing="ij"), -1).reshape(-1, V - 1)
    weight = np.prod(np.stack(np.meshgrid(*[weights] * (V - 1), indexing="ij"), -1), -1).ravel()
    u = z @ (vecs / np.sqrt(vals)).T
    logits = np.log(p) + u @ q.T
    ce = -(p * (logits - np.log(np.exp(logits).sum(1, keepdims=True)))).sum(1)
    g = nbeta * pi_r * (ce + (p * np.log(p)).sum())
    log_ratio = -g - 0.5 * gamma * (u**2).sum(1) + 0.5 * (z**2).sum(1)
    ratio = weight * np.exp(log_ratio - log_ratio.max())
    return (ratio * g).sum() / ratio.sum()


def test_bigram_llc_is_half_the_free_parameters():
    """λ̂ on token windows against the exact posterior expectation (module docstring)."""
    # 300 windows (N = 4800 tokens): the target is computed from these windows' own p̂ and
    # π, so the data's size changes only the cost of each (full-batch) step
    windows, _ = _markov_windows(300)
    p_hat, pi = _empirical(windows)
    nbeta, gamma, eps = 1000.0, 1.0, 2e-3
    loss_fn, w_star = sj_lm().next_token_loss(bigram, {"logits": jnp.asarray(np.log(p_hat))})
    # L_n's Hessian at W*: block-diagonal, π_r (diag p̂_r − p̂_r p̂_rᵀ), one zero (the shift)
    # per row; the loss's own Hessian agrees (a float32 mean over N = 4800 tokens: an
    # error below N·2⁻²⁴ of the largest entry).
    blocks = [pi[r] * (np.diag(p_hat[r]) - np.outer(p_hat[r], p_hat[r])) for r in range(V)]
    exact_hessian = np.zeros((V * V, V * V))
    for r, block in enumerate(blocks):
        exact_hessian[r * V : (r + 1) * V, r * V : (r + 1) * V] = block
    hessian = jax.jit(jax.hessian(lambda w: loss_fn({"logits": w}, windows)))(w_star["logits"])
    bound = windows[:, 1:].size * np.finfo(np.float32).eps / 2 * np.abs(exact_hessian).max()
    np.testing.assert_allclose(hessian.reshape(V * V, V * V), exact_hessian, atol=bound)
    h = np.linalg.eigvalsh(exact_hessian).clip(0)
    free = h[h > 1e-9]
    assert len(free) == V * (V - 1)
    np.testing.assert_allclose(theory.quadratic_oracle_llc(free, nbeta=nbeta, localization=0.0), 6)
    exact = [
        sum(_row_expectation(pi[r], p_hat[r], nbeta, gamma, n) for r in range(V)) for n in (30, 40)
    ]
    assert abs(exact[0] - exact[1]) < 1e-6  # the quadrature has converged
    quadratic = theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma)
    step_factor = (
        theory.quadratic_oracle_llc(h, nbeta=nbeta, localization=gamma, step_size=eps) / quadratic
    )
    target = exact[0] * step_factor
    cross = abs(exact[0] - quadratic) * (step_factor - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_llc(
            loss_fn,
            w_star,
            windows,
            num_chains=8,
            num_steps=3500,
            num_burnin=500,
            step_size=eps,
            localization=gamma,
            nbeta=nbeta,
            batch_size=len(windows),  # exact gradients
        )
    assert not res.diverged.any()
    assert_mc_close(res.llc_mean, res.llc_stderr, target, extra=cross)


# ---- per-token observables -------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_run():
    """A bigram LM at its MLE, sampled on 400 windows (a dict of input_ids and
    attention_mask, as a Hugging Face data set holds them); a probe of 6
    windows, two of them right-padded, observed per token; observables: the probe itself
    (sequence level) and its unpadded windows."""
    windows, _ = _markov_windows(400, seed=3)
    p_hat, _ = _empirical(windows)
    loss_fn, w_star = sj_lm().next_token_loss(bigram, {"logits": jnp.asarray(np.log(p_hat))})
    data = {"input_ids": windows, "attention_mask": np.ones_like(windows)}
    probe_mask = np.ones((6, T + 1), np.int32)
    probe_mask[1, 9:] = 0
    probe_mask[4, 13:] = 0
    probe_ids = windows[:6] * probe_mask  # pad id 0
    probe = {"input_ids": probe_ids, "attention_mask": probe_mask}
    unpadded = [0, 2, 3, 5]
    observables = {
        "probe": probe,
        "unpadded": {k: v[unpadded] for k, v in probe.items()},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_refined_llc(
            loss_fn,
            w_star,
            data,
            observables=observables,
            probe=probe,
            per_token=True,
            probe_kernel=True,
            probe_trace=True,
            observe_every=5,
            num_chains=4,
            num_steps=1500,
            num_burnin=500,
            step_size=1e-3,
            localization=1.0,
            nbeta=200.0,
            batch_size=100,
        )
    return res, dict(probe=probe, unpadded=unpadded, nbeta=200.0)


def test_per_token_shapes_and_devinterp_dims(token_run):
    res, ctx = token_run
    stats = res.probes["all"]
    assert stats.token_shape == (6, T)
    assert stats.llc().shape == stats.llc_stderr().shape == (6, T)
    assert stats.loss_trace().shape == (4, 200, 6, T)  # 1000 draws / observe_every 5
    assert stats.influence().shape == (6, T, 2) and stats.susceptibility().shape == (2, 6, T)
    assert stats.kernel_influence().shape == (6, T, 6, T)
    ds = stats.to_xarray()
    assert ds.loss_trace.dims == ("chain", "draw", "batch", "token_pos")
    assert ds.init_loss.dims == ds.llc_mean.dims == ("batch", "token_pos")
    assert ds.input_ids.dims == ("batch", "token") and ds.sizes["token"] == T + 1
    assert ds.bif_kernel.dims == ("batch_1", "batch_2", "target_position", "target_position_T")
    np.testing.assert_array_equal(ds.input_ids, ctx["probe"]["input_ids"])
    # Non-counted targets have loss 0 at every draw: their LLC and covariances are 0.
    padded = ~stats.token_mask
    assert padded.sum() == 8 + 4
    assert (stats.loss_trace()[:, :, padded] == 0).all() and (stats.llc()[padded] == 0).all()
    table = res.to_xarray()
    assert table.probe_llc_mean.dims == ("refinement", "batch", "token_pos")


def test_per_token_llcs_add_up_to_the_sequence_level_observable(token_run):
    res, ctx = token_run
    stats, obs = res.probes["all"], res.observables["all"]
    weights = stats.token_weights()
    mask = ctx["probe"]["attention_mask"][:, 1:]
    np.testing.assert_allclose(weights, mask / (6 * mask.sum(1, keepdims=True)))
    # Draw by draw: the probe's loss is the ω-weighted sum of its per-token losses.
    trace = stats.loss_trace()  # (chain, draw, batch, token_pos)
    sequence = np.einsum("cdbt,bt->cd", trace.astype(np.float64), weights)
    tol = 8 * np.finfo(np.float32).eps * np.abs(trace).max()
    np.testing.assert_allclose(sequence, obs.loss_trace[:, 0], atol=tol, rtol=0)
    # Hence the LLCs: Σ ω λ̂_{p,t} is the probe's data-refined LLC, and over the unpadded
    # windows the plain mean over (batch, token_pos) is theirs.
    nbeta = ctx["nbeta"]
    np.testing.assert_allclose((weights * stats.llc()).sum(), obs.llc_mean[0], atol=nbeta * tol)
    unpadded = stats.llc()[ctx["unpadded"]].mean()
    np.testing.assert_allclose(unpadded, obs.llc_mean[1], atol=nbeta * tol)
    # The per-token standard error is the spread of the chains' estimates.
    per_chain = nbeta * (trace.mean(1) - stats.to_xarray().init_loss.values)
    np.testing.assert_allclose(stats.llc_per_chain(), per_chain, rtol=1e-4, atol=nbeta * tol)
    np.testing.assert_allclose(
        stats.llc_stderr(), per_chain.std(0, ddof=1) / 2, rtol=1e-3, atol=nbeta * tol
    )


def test_per_token_bif_and_susceptibilities_match_the_trace(token_run):
    res, ctx = token_run
    stats, obs = res.probes["all"], res.observables["all"]
    trace = stats.loss_trace().astype(np.float64)  # (chain, draw, batch, token_pos)
    pooled = trace.reshape(-1, 6 * T).T  # (tokens, chain·draw)
    phi = obs.loss_trace.transpose(1, 0, 2).reshape(2, -1)  # (K, chain·draw)
    kernel = stats.kernel_influence()
    np.testing.assert_allclose(kernel, kernel.transpose(2, 3, 0, 1), atol=1e-6 * abs(kernel).max())
    direct = -np.cov(pooled).reshape(6, T, 6, T)
    bound = 5e-5 * abs(direct).max()  # float32 Welford over 800 observations
    np.testing.assert_allclose(kernel, direct, atol=bound, rtol=0)
    full = np.cov(np.concatenate([pooled, phi]))
    bif = -full[:-2, -2:].reshape(6, T, 2)
    np.testing.assert_allclose(stats.influence(), bif, atol=5e-5 * abs(bif).max(), rtol=0)
    # χ_{k,(p,t)} = −nβ Cov[φ_k, ℓ_{p,t} − L_q], L_q the probe's sequence-level loss.
    sequence = stats.token_weights().ravel() @ pooled
    chi = np.stack(
        [
            -ctx["nbeta"] * np.cov(np.concatenate([phi[k : k + 1], pooled - sequence]))[0, 1:]
            for k in range(2)
        ]
    ).reshape(2, 6, T)
    scale = abs(chi).max()
    np.testing.assert_allclose(stats.susceptibility(), chi, atol=5e-5 * scale, rtol=0)


def test_the_per_token_view_is_the_flat_statistics_reshaped():
    """On hand-made moments: every per-token output is the per-example (flat, ``P·T``)
    output at index ``p·T + t``; without padding the susceptibility's ``L_q`` is the same."""
    import dataclasses

    rng = np.random.default_rng(6)
    c, p, t, k = 3, 2, 5, 2
    factor = rng.normal(size=(c, p * t + k, p * t + k))
    joint = np.einsum("cij,ckj->cik", factor, factor)  # per-chain centred sums (PSD)
    flat = sj.influence.ProbeStatistics(
        count=np.full(c, 50.0),
        probe_mean=rng.normal(size=(c, p * t)),
        observable_mean=rng.normal(size=(c, k)),
        probe_sq=np.einsum("cii->ci", joint[:, : p * t, : p * t]),
        observable_sq=joint[:, p * t :, p * t :],
        cross=joint[:, : p * t, p * t :],
        kernel=joint[:, : p * t, : p * t],
        probe_at_center=rng.normal(size=p * t),
        observable_names=("a", "b"),
        nbeta=10.0,
        probe_trace=rng.normal(size=(c, p * t, 7)),
    )
    tokens = dataclasses.replace(flat, token_shape=(p, t), token_mask=np.ones((p, t), bool))
    np.testing.assert_allclose(tokens.llc().ravel(), flat.llc())
    np.testing.assert_allclose(tokens.llc_stderr().ravel(), flat.llc_stderr())
    np.testing.assert_allclose(tokens.influence().reshape(p * t, k), flat.influence())
    np.testing.assert_allclose(
        tokens.kernel_influence(normalize=True).reshape(p * t, p * t),
        flat.kernel_influence(normalize=True),
    )
    np.testing.assert_allclose(tokens.susceptibility().reshape(k, p * t), flat.susceptibility())
    np.testing.assert_allclose(
        tokens.susceptibility_stderr("a").reshape(k, p * t), flat.susceptibility_stderr("a")
    )
    np.testing.assert_allclose(tokens.loss_trace().reshape(c, 7, p * t), flat.loss_trace())
    per_example = flat.to_xarray()
    assert per_example.loss_trace.dims == ("chain", "draw", "batch")
    assert per_example.bif_kernel.dims == ("batch_1", "batch_2")
    assert per_example.susceptibility.dims == ("observable", "batch")


def test_zarr_and_netcdf_round_trips(token_run, tmp_path):
    res, _ = token_run
    stats = res.probes["all"]
    ds = stats.to_xarray()
    stats.to_zarr(tmp_path / "probe.zarr")
    stats.to_netcdf(tmp_path / "probe.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no consolidated-metadata or unstable-dtype warning
        back = xr.open_zarr(tmp_path / "probe.zarr").load()
    xr.testing.assert_allclose(back, ds)
    assert back.loss_trace.dims == ds.loss_trace.dims
    with xr.open_dataset(tmp_path / "probe.nc") as nc:
        xr.testing.assert_allclose(nc.load(), ds)
    assert nc.token_mask.dtype == bool
    res.to_zarr(tmp_path / "refined.zarr")
    xr.testing.assert_allclose(xr.open_zarr(tmp_path / "refined.zarr").load(), res.to_xarray())
    # An LLCResult, through its existing to_xarray / from_xarray.
    result = res["all"]
    result.to_zarr(tmp_path / "llc.zarr")
    result.to_netcdf(tmp_path / "llc.nc")
    for back in (
        sj.LLCResult.from_xarray(xr.open_zarr(tmp_path / "llc.zarr").load()),
        sj.LLCResult.from_xarray(xr.open_dataset(tmp_path / "llc.nc").load()),
    ):
        assert back.config == result.config and back.llc_mean == result.llc_mean
        np.testing.assert_array_equal(back.loss_trace, result.loss_trace)
        np.testing.assert_array_equal(back.diverged, result.diverged)


def test_zarr_is_an_optional_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError, match=r'pip install "slt-jax\[lm\]"'):
        lm.to_zarr(xr.Dataset({"a": ("x", np.zeros(2))}), tmp_path / "a.zarr")


# ---- bad input, before anything is compiled ------------------------------------------------------


def test_bad_token_input_raises_before_compiling():
    windows, tokens = _markov_windows(32, seed=5)
    loss_fn, w = sj_lm().next_token_loss(bigram, {"logits": jnp.zeros((V, V))})
    options = dict(num_chains=2, num_steps=20, step_size=1e-3, batch_size=8, nbeta=10.0)
    before = programs.num_compiled()
    bad = windows.copy()
    bad[3, 5] = V
    with pytest.raises(ValueError, match="token id 4 at example 3, position 5"):
        loss_fn(w, bad)
    with pytest.raises(ValueError, match="`data`: token id 4 at example 3"):
        sj.estimate_refined_llc(loss_fn, w, bad, **options)
    with pytest.raises(ValueError, match="`probe`: token id -1"):
        sj.estimate_refined_llc(loss_fn, w, windows, probe=windows * 0 - 1, **options)
    bad_tokens = tokens.astype(np.uint16)
    bad_tokens[40] = 7
    bad_source = sj.TokenWindows(bad_tokens, seq_len=T + 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):  # the host-source check
        sj.estimate_llc(loss_fn, w, bad_source, **options)
    source = sj.TokenWindows(tokens.astype(np.uint16), seq_len=T + 1)
    with pytest.raises(ValueError, match="`probe`: token id 7 at example 2, position 6"):
        sj.estimate_refined_llc(loss_fn, w, source, probe=bad_source, per_token=True, **options)
    with pytest.raises(TypeError, match="integer array"):
        loss_fn(w, windows.astype(np.float32))
    with pytest.raises(TypeError, match="`data`: token ids must be an integer array"):
        sj.estimate_llc(loss_fn, w, windows.astype(np.float32), **options)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sj.estimate_llc(loss_fn, w, windows[:, :1], **options)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        sj.estimate_llc(
            loss_fn,
            w,
            {"input_ids": windows, "attention_mask": np.ones((32, T), np.int32)},
            **options,
        )
    empty = np.ones_like(windows)
    empty[7, 1:] = 0
    with pytest.raises(ValueError, match="example 7 has no counted target"):
        loss_fn(w, {"input_ids": windows, "attention_mask": empty})
    with pytest.raises(ValueError, match="`data`: example 7 has no counted target"):
        sj.estimate_refined_llc(
            loss_fn, w, {"input_ids": windows, "attention_mask": empty}, **options
        )
    with pytest.raises(TypeError, match="per-token losses"):
        sj.estimate_refined_llc(
            lambda p, b: jnp.mean(p["logits"]) * 0.0,
            w,
            windows,
            probe=windows,
            per_token=True,
            **options,
        )
    with pytest.raises(ValueError, match="per_token=True observes"):
        sj.estimate_refined_llc(loss_fn, w, windows, per_token=True, **options)
    assert programs.num_compiled() == before


def test_docstring_examples(monkeypatch):
    """The examples of ``sj.lm`` run (with the module as ``sj.lm`` until it is re-exported)."""
    import doctest

    public = getattr(sj, "lm", None)
    if public is None:
        monkeypatch.setattr(sj, "lm", lm, raising=False)
    else:
        for name in ("next_token_loss", "check_tokens", "to_zarr", "to_netcdf"):
            if not hasattr(public, name):
                monkeypatch.setattr(public, name, getattr(lm, name), raising=False)
    result = doctest.testmod(lm, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
