"""Before/after figures for the float32 MALA-acceptance diagnostic (issue 27 item 5).

One SGLD move on a quadratic ``L(w) = 3 + ½ Σ h_i (w_i − m_i)²`` of P parameters
(nβ = 1e4, γ = 3000, start near stationarity), acceptance computed three ways from the same
float32 positions: the former float32 formula (log p(w') − log p(w) as a difference of two
sums, the two Gaussian exponents summed separately), the current float32 one, and a
float64 reference. Run: ``python benchmarks/bench_mala_precision.py [P ...]``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.posterior import localized_logdensity_change
from slt_jax._src.samplers.langevin import langevin_acceptance

NBETA, GAMMA, L0 = 1e4, 3000.0, 3.0


@jax.jit
def former(w, w_new, c, loss, loss_new, g, g_new, eps):
    def logdensity(loss, w):
        return -NBETA * loss - GAMMA * 0.5 * jnp.sum((w - c) ** 2)

    def log_q(to, start, g):
        return -jnp.sum((to - start - (eps / 2) * g) ** 2) / (2 * eps)

    log_ratio = (
        logdensity(loss_new, w_new)
        - logdensity(loss, w)
        + log_q(w, w_new, g_new)
        - log_q(w_new, w, g)
    )
    return jnp.exp(jnp.minimum(log_ratio, 0.0))


@jax.jit
def current(w, w_new, c, loss, loss_new, g, g_new, eps):
    change = localized_logdensity_change(
        loss, loss_new, w, w_new, c, nbeta=NBETA, localization=GAMMA
    )
    return langevin_acceptance(
        position=w,
        proposal=w_new,
        logdensity_change=change,
        grad=g,
        proposal_grad=g_new,
        step_size=eps,
    )


def _reference(w, w_new, c, m, h, eps, losses=None):
    """The acceptance in float64 from the float32 positions (exact losses and gradients;
    ``losses``: use these loss values instead, to leave out the loss's own rounding)."""
    w, w_new, c, m, h = (np.asarray(x, np.float64) for x in (w, w_new, c, m, h))
    loss, loss_new = (L0 + 0.5 * np.sum(h * (x - m) ** 2) for x in (w, w_new))
    loss, loss_new = (loss, loss_new) if losses is None else losses
    g, g_new = (-NBETA * h * (x - m) - GAMMA * (x - c) for x in (w, w_new))
    log_q = -np.sum((w - w_new - eps / 2 * g_new) ** 2 - (w_new - w - eps / 2 * g) ** 2) / (2 * eps)
    localize = 0.5 * (np.sum((w_new - c) ** 2) - np.sum((w - c) ** 2))
    return np.exp(min(-NBETA * (loss_new - loss) - GAMMA * localize + log_q, 0.0))


def main(sizes, seeds=5):
    for size in sizes:
        rng = np.random.default_rng(0)
        c = rng.normal(size=size).astype(np.float32)
        m = (c + rng.normal(scale=1e-3, size=size)).astype(np.float32)
        h = rng.uniform(0.0, 1.0, size).astype(np.float32)
        w = (c + rng.normal(size=size) / np.sqrt(NBETA * h + GAMMA)).astype(np.float32)

        @jax.jit
        def value_and_grad(x, m=m, h=h, c=c):
            loss, g = jax.value_and_grad(lambda x: L0 + 0.5 * jnp.sum(h * (x - m) ** 2))(x)
            return loss, -NBETA * g - GAMMA * (x - c)

        print(f"P = {size}: acceptance over {seeds} noise draws, mean (max |error| vs float64)")
        print(
            "      eps   former f32         current f32        float64 reference"
            "    max |current − float64 given the float32 losses|"
        )
        for eps in (1e-7, 3e-7, 1e-6, 3e-6, 1e-5):
            old, new, ref, same = [], [], [], []
            for seed in range(seeds):
                loss, g = value_and_grad(jnp.asarray(w))
                noise = jax.random.normal(jax.random.key(seed), (size,), jnp.float32)
                w_new = jnp.asarray(w) + (eps / 2) * g + np.sqrt(eps) * noise
                loss_new, g_new = value_and_grad(w_new)
                args = (jnp.asarray(w), w_new, jnp.asarray(c), loss, loss_new, g, g_new, eps)
                old.append(float(former(*args)))
                new.append(float(current(*args)))
                ref.append(_reference(w, w_new, c, m, h, eps))
                losses = (float(loss), float(loss_new))
                same.append(_reference(w, w_new, c, m, h, eps, losses))
            old, new, ref, same = map(np.asarray, (old, new, ref, same))
            print(
                f"  {eps:7.0e}   {old.mean():.4f} ({np.abs(old - ref).max():.4f})"
                f"    {new.mean():.4f} ({np.abs(new - ref).max():.4f})    {ref.mean():.4f}"
                f"    {np.abs(new - same).max():.4f}"
            )


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [393_216, 4_000_000])
