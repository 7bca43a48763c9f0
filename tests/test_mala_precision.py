"""The MALA-acceptance diagnostic in float32 against a float64 reference at 10⁵–10⁶ parameters.

The model is a quadratic ``L(w) = L₀ + ½ Σ h_i (w_i − m_i)²`` (``L₀ = 3``, like an LM's
loss; ``m`` near the trained point ``w*`` of size ~1), sampled at ``nβ = 10⁴``, ``γ = 3000``.
One SGLD move is made in float32 from a point drawn near stationarity; the diagnostic is
computed from the float32 positions, losses and gradients exactly as a chain computes it
(:func:`localized_logdensity_change` and :func:`langevin_acceptance`); the reference takes
the same float32 positions to float64 and computes losses, gradients and the ratio there.

Bound. ``α = exp(min(log r, 0))`` is 1-Lipschitz in ``log r``, so ``|α₃₂ − α₆₄| ≤ |Δ log r|``.
``Δ log r`` has three parts. (1) The float32 loss values' own errors ``δL, δL'``, measured
here (the diagnostic cannot do better than the losses it is given): ``nβ(|δL| + |δL'|)``.
(2) The float32 rounding of each per-coordinate term ``t_i`` (proposal ratio and
localization) from its inputs: ``|δ_i| ≤ 16u|t_i|`` (``u = 2⁻²⁴``; the gradient
``−nβ h(w − m) − γ(w − w*)`` and the term's own products are a dozen roundings).
(3) One rounding per node of the summation trees, ``≤ u·|node|``. The worst-case bound
``u(16 Σ|t_i| + Σ|node|)`` is uninformative at 10⁶ terms (≈ 2 in log r), so (2) and (3)
use the standard probabilistic model of rounding (Higham & Mary 2019: independent,
mean-zero errors): by Hoeffding their sum exceeds ``λu(16√Σt_i² + √Σnode²)`` with
probability ``≤ 2exp(−λ²/2)``; ``λ = 6``. Node sums are computed exactly (float64) on the
same tree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_jax._src.posterior import accurate_sum, localized_logdensity_change
from slt_jax._src.samplers.langevin import langevin_acceptance

U = 2.0**-24
LAMBDA = 6.0  # Hoeffding: P(|error| > λ·σ-bound) ≤ 2·exp(−λ²/2) ≈ 3e-8
NBETA, GAMMA, L0 = 1e4, 3000.0, 3.0


def _model(size, seed):
    rng = np.random.default_rng(seed)
    center = rng.normal(size=size).astype(np.float32)
    minimum = (center + rng.normal(scale=1e-3, size=size)).astype(np.float32)
    h = rng.uniform(0.0, 1.0, size).astype(np.float32)
    curvature = NBETA * h.astype(np.float64) + GAMMA
    start = (center + rng.normal(size=size) / np.sqrt(curvature)).astype(np.float32)
    return center, minimum, h, start


def _loss32(w, m, h):
    return L0 + 0.5 * jnp.sum(h * (w - m) ** 2)


def _loss64(w, m, h):
    w, m, h = (np.asarray(x, np.float64) for x in (w, m, h))
    return L0 + 0.5 * np.sum(h * (w - m) ** 2)


def _grad64(w, m, h, c):
    w, m, h, c = (np.asarray(x, np.float64) for x in (w, m, h, c))
    return -NBETA * h * (w - m) - GAMMA * (w - c)


@pytest.mark.parametrize("size", [131_071, 1_000_003])
@pytest.mark.parametrize("eps", [1e-7, 1e-6, 3e-6, 1e-5])
def test_float32_acceptance_matches_float64(size, eps):
    center, minimum, h, start = _model(size, seed=size % 97)
    # The chain's split of the parameters into leaves: two of unequal size.
    split = size // 3

    def leaves(x):
        return (jnp.asarray(x[:split]), jnp.asarray(x[split:]))

    def value_and_grad(w):
        loss, g = jax.value_and_grad(_loss32)(w, minimum, h)
        return loss, -NBETA * g - GAMMA * (w - center)

    loss, grad = value_and_grad(jnp.asarray(start))
    noise = jax.random.normal(jax.random.key(size), (size,), jnp.float32)
    proposal = jnp.asarray(start) + (eps / 2) * grad + np.sqrt(eps) * noise
    proposal_loss, proposal_grad = value_and_grad(proposal)
    change = localized_logdensity_change(
        loss,
        proposal_loss,
        leaves(start),
        leaves(proposal),
        leaves(center),
        nbeta=NBETA,
        localization=GAMMA,
    )
    ours = langevin_acceptance(
        position=leaves(start),
        proposal=leaves(proposal),
        logdensity_change=change,
        grad=leaves(grad),
        proposal_grad=leaves(proposal_grad),
        step_size=jnp.float32(eps),
    )

    # The float64 reference from the same float32 positions.
    w, w_new = start.astype(np.float64), np.asarray(proposal, np.float64)
    c = center.astype(np.float64)
    g, g_new = _grad64(w, minimum, h, c), _grad64(w_new, minimum, h, c)
    ref_loss, ref_proposal_loss = _loss64(w, minimum, h), _loss64(w_new, minimum, h)
    d = w_new - w
    localize = GAMMA * d * (d / 2 + (w - c))
    ratio = -0.5 * (g + g_new) * (d + eps / 4 * (g_new - g))
    # The textbook form, as a check of the identities used (no cancellation issue in f64
    # at this size beyond ~1e-9 relative).
    log_q = -np.sum((w - w_new - eps / 2 * g_new) ** 2 - (w_new - w - eps / 2 * g) ** 2) / (2 * eps)
    half_sq = 0.5 * (np.sum((w_new - c) ** 2) - np.sum((w - c) ** 2))
    log_r = -NBETA * (ref_proposal_loss - ref_loss) - GAMMA * half_sq + log_q
    np.testing.assert_allclose(
        log_r,
        -NBETA * (ref_proposal_loss - ref_loss) - np.sum(localize) + np.sum(ratio),
        atol=1e-9 * NBETA * ref_loss + 1e-6,
    )
    reference = np.exp(min(log_r, 0.0))

    loss_error = abs(float(loss) - ref_loss) + abs(float(proposal_loss) - ref_proposal_loss)
    nodes = _tree_nodes_square([localize[:split], localize[split:]])
    nodes += _tree_nodes_square([ratio[:split], ratio[split:]])
    terms = np.sum(localize**2) + np.sum(ratio**2)
    spread = 16 * np.sqrt(terms) + np.sqrt(nodes) + NBETA * abs(ref_proposal_loss - ref_loss)
    bound = NBETA * loss_error + LAMBDA * U * spread
    assert abs(float(ours) - reference) <= bound, (float(ours), reference, bound)
    assert bound < 0.05  # informative: far below the spread of the values compared


def _tree_nodes_square(leaves):
    """Σ over the nodes of :func:`accurate_sum`'s trees (per leaf, then over the leaf sums)
    of the node's exact partial sum squared: each node rounds once, by at most u·|node|."""
    total, sums = 0.0, []
    for x in leaves:
        while x.size > 1:
            x = np.pad(x, (0, -x.size % 16)).reshape(-1, 16).sum(axis=1)
            total += np.sum(x**2)
        sums.append(x.sum())
    x = np.asarray(sums)
    while x.size > 1:
        x = np.pad(x, (0, -x.size % 16)).reshape(-1, 16).sum(axis=1)
        total += np.sum(x**2)
    return total


def test_accurate_sum_bound():
    """|Ŝ − S| ≤ ⌈log₁₆ n⌉·15·u·Σ|x| on terms that cancel (float64 reference)."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=3_000_017) * np.exp(rng.normal(size=3_000_017))).astype(np.float32)
    exact = np.sum(x.astype(np.float64))
    levels = int(np.ceil(np.log(x.size) / np.log(16)))
    assert abs(float(accurate_sum(jnp.asarray(x))) - exact) <= levels * 15 * U * np.abs(x).sum()
    assert float(accurate_sum(jnp.zeros((0,), jnp.float32))) == 0.0
    assert float(accurate_sum(jnp.float32(2.5))) == 2.5
