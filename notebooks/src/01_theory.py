# %% [markdown]
# # 1. λ̂ against theory
#
# **What the paper found.** Lau, Furman, Wang, Murfet & Wei (2023, "Quantifying degeneracy
# in singular models via the learning coefficient", arXiv:2308.12108) proposed the SGLD
# estimator of the local learning coefficient and validated it on models whose λ is known:
# it recovers d/2 for regular models and the smaller, theoretically known values of singular
# ones, and it orders critical points by their degeneracy.
#
# **What this notebook shows.** `slt_jax` estimates λ for four models with known answers and
# puts each estimate next to its theoretical value in one table:
#
# | model | loss | λ |
# |---|---|---|
# | regular: linear regression, d = 4 | ½·mean (y − x·w)² | d/2 = 2 |
# | sum of monomials | ½(w₁² + w₂⁴) | 1/2 + 1/4 |
# | normal crossing | ½·w₁²w₂² | 1/2, multiplicity 2 |
# | deep linear network 5-4-5 at rank 0 | ½·mean ‖W₂W₁x − y‖² | 8 (Aoyagi 2024) |
#
# At finite nβ an estimate is not exactly λ: localization shrinks it a little, and a
# multiplicity m > 1 lowers it by about (m−1)/log(nβ) (the free energy's log log n term).
# The "target" column states the expectation at the notebook's settings: exact where it can
# be computed (quadratic oracle, quadrature), Aoyagi's λ for the deep linear network.

# %%
import os

import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax import theory

SMOKE = os.environ.get("SLT_JAX_SMOKE") == "1"  # tiny settings for the test suite
scale = 0.02 if SMOKE else 1.0


def steps(n, floor=200):
    return max(floor, int(n * scale))


rows = []

# %% [markdown]
# ## Regular model: linear regression (λ = d/2)

# %%
rng = np.random.default_rng(0)
n, d = 5000, 4
x = rng.normal(size=(n, d)).astype(np.float32)
y = (x @ rng.normal(size=d) + rng.normal(size=n)).astype(np.float32)
w_ols = np.linalg.lstsq(x, y, rcond=None)[0].astype(np.float32)


def linreg_loss(w, batch):
    return 0.5 * jnp.mean((batch[0] @ w - batch[1]) ** 2)


res = sj.estimate_llc(
    linreg_loss,
    jnp.asarray(w_ols),
    (jnp.asarray(x), jnp.asarray(y)),
    num_chains=8,
    num_steps=steps(4000),
    step_size=1e-4,
    localization=10.0,
    batch_size=500,
)
h = np.linalg.eigvalsh(x.T @ x / n)
target = theory.quadratic_oracle_llc(h, nbeta=res.config.nbeta, localization=10.0, step_size=1e-4)
rows.append(
    (
        "linear regression d=4",
        theory.regular_learning_coefficient(d),
        1,
        target,
        "quadratic oracle (exact)",
        res,
    )
)
print(res.summary())

# %% [markdown]
# ## Sum of monomials ½(w₁² + w₂⁴) (λ = 3/4)
#
# The loss is the population loss itself (exact gradients); its localized posterior's
# expectation is computed by quadrature on a fine grid, one coordinate at a time.

# %%
nbeta, gamma = 200.0, 1.0


def monomial_target(p):
    scale_p = (2 / nbeta) ** (1 / p)
    w = np.linspace(-12 * scale_p, 12 * scale_p, 200_001)
    log_density = -nbeta * 0.5 * w**p - 0.5 * gamma * w**2
    weight = np.exp(log_density - log_density.max())
    return float(np.sum(nbeta * 0.5 * w**p * weight) / np.sum(weight))


def monomial_loss(w, batch):
    del batch
    return 0.5 * (w[0] ** 2 + w[1] ** 4)


res = sj.estimate_llc(
    monomial_loss,
    jnp.zeros(2),
    jnp.zeros((100, 1)),
    num_chains=16,
    num_steps=steps(32_000),
    num_burnin=steps(2000, 50),
    step_size=2e-4,
    localization=gamma,
    nbeta=nbeta,
    batch_size=100,
)
rows.append(
    (
        "½(w₁² + w₂⁴)",
        theory.monomial_learning_coefficient([2, 4]),
        1,
        monomial_target(2) + monomial_target(4),
        "quadrature (exact)",
        res,
    )
)

# %% [markdown]
# ## Normal crossing ½w₁²w₂² (λ = 1/2, m = 2)
#
# Its localized posterior's expectation is exact by a one-dimensional quadrature: given w₂,
# w₁ is Gaussian with precision nβw₂² + γ, so E[nβ·½w₁²w₂² | w₂] = nβw₂² / (2(nβw₂² + γ)),
# and w₂'s marginal density is ∝ exp(−γw₂²/2)·(nβw₂² + γ)^(−1/2). The multiplicity m = 2
# shows as a target well below λ = 1/2 at this nβ (roughly λ − (m−1)/log nβ).

# %%
lam, m = theory.normal_crossing_learning_coefficient([1, 1])


def crossing_target():
    w2 = np.linspace(-12 / np.sqrt(gamma), 12 / np.sqrt(gamma), 400_001)
    precision = nbeta * w2**2 + gamma
    weight = np.exp(-0.5 * gamma * w2**2) / np.sqrt(precision)
    return float(np.sum(nbeta * w2**2 / (2 * precision) * weight) / np.sum(weight))


def crossing_loss(w, batch):
    del batch
    return 0.5 * (w[0] * w[1]) ** 2


res = sj.estimate_llc(
    crossing_loss,
    jnp.zeros(2),
    jnp.zeros((100, 1)),
    num_chains=16,
    num_steps=steps(32_000),
    num_burnin=steps(2000, 50),
    step_size=2e-4,
    localization=gamma,
    nbeta=nbeta,
    batch_size=100,
)
rows.append(("½w₁²w₂²", lam, m, crossing_target(), "quadrature (exact)", res))

# %% [markdown]
# ## Deep linear network 5-4-5 at rank 0 (λ = 8, Aoyagi 2024)

# %%
widths, n = (5, 4, 5), 100_000
lam, m = theory.dln_learning_coefficient(widths, 0)
rng = np.random.default_rng(0)
data = (
    jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
    jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
)  # truth f ≡ 0


def dln_loss(params, batch):
    x, y = batch
    for w in params:
        x = x @ w
    return 0.5 * jnp.mean(jnp.sum((x - y) ** 2, axis=1))


params = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=False)]
res = sj.estimate_llc(
    dln_loss,
    params,
    data,
    num_chains=8,
    num_steps=steps(6000),
    num_burnin=steps(1000, 50),
    step_size=2e-5,
    localization=1.0,
    batch_size=500,
)
rows.append(
    (
        "DLN 5-4-5, rank 0",
        lam,
        m,
        lam - (m - 1) / np.log(res.config.nbeta),
        "Aoyagi λ, m-corrected",
        res,
    )
)

# %% [markdown]
# ## The table
#
# "band" is what the estimate may differ from its target by: 4 Monte-Carlo standard errors;
# for linear regression plus the inflation of the oracle by minibatch gradient noise
# (at most ε·nβ²·h_max/(4b) relative); for the deep linear network, whose target is
# asymptotic, plus Watanabe's fluctuation over data sets, 3·sqrt(λβ/2) with β = 1/log n
# (WBIC theorem; the band of the slow test of the deep linear network). The exact targets
# (oracle, quadrature) include localization and, for the oracle, the step size; SGLD's
# remaining step bias is O(ε) and small at these settings.

# %%
header = f"{'model':<24} {'λ':>6} {'m':>3} {'target':>8} {'λ̂ ± se':>16} {'band':>6}"
print(header + f" {'R-hat':>6}  inside?  target is")
for name, lam, m, target, how, r in rows:
    band = 4 * r.llc_stderr
    if "DLN" in name:  # data-set fluctuation around the asymptotic λ
        band += 3 * np.sqrt(lam * (1 / np.log(r.config.num_examples)) / 2)
    if "regression" in name:  # minibatch noise inflates the oracle by at most this factor
        c = r.config
        band += target * c.step_size * c.nbeta**2 * h.max() / (4 * c.batch_size)
    inside = abs(r.llc_mean - target) < band
    print(
        f"{name:<24} {lam:>6.3f} {m:>3d} {target:>8.3f} {r.llc_mean:>9.3f} ± {r.llc_stderr:<5.3f}"
        f" {band:>6.3f} {r.rhat:>6.3f}  {'yes' if inside else 'NO':<7}  {how}"
    )

# %%
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6, 3.2))
for i, (_name, lam, _, target, _, r) in enumerate(rows):
    ax.errorbar(
        i,
        r.llc_mean / lam,
        yerr=4 * r.llc_stderr / lam,
        fmt="o",
        capsize=3,
        label="λ̂ ± 4 se" if i == 0 else None,
        color="C0",
    )
    ax.plot(i, target / lam, "x", color="C1", label="finite-n target" if i == 0 else None)
ax.axhline(1.0, color="grey", lw=0.8, ls="--")
ax.set_xticks(range(len(rows)), [row[0] for row in rows], rotation=15, fontsize=8)
ax.set_ylabel("relative to λ")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("theory.png", dpi=120)

# %% [markdown]
# ![estimates relative to λ](theory.png)
#
# **Reading the table.** Every estimate lies within its band of its target. The monomial
# and normal-crossing estimates sit on exact finite-nβ values (quadrature); the normal
# crossing's target is well below λ = 1/2 because of its multiplicity m = 2, a finite-n
# effect the estimator shares with the theory. For the deep linear network the only target
# is Aoyagi's asymptotic λ = 8, and the estimate depends on the step size (notebook 5's
# calibration shows λ̂ rising with ε); at ε = 2·10⁻⁵ it lies inside the WBIC band. The
# ordering of degeneracy is right: the network, with 40 parameters, has λ ≈ 8 ≪ d/2 = 20.
