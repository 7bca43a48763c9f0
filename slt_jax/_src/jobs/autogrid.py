r"""The automatic calibration grid: the problem's scales, measured before any chain runs, and
the two stages' grids within a budget of chain-steps.

**Scales.** SGLD's relative step bias is, at first order, ``δ = ε·E‖∇U‖²/(4d)`` for the
tempered potential ``U = nβ L_B + γ/2 ‖w − w*‖²`` (per step, the squared drift
``(ε/2)²‖∇U‖²`` against the injected noise ``ε d``; for a quadratic, ``E‖∇U‖² = Σ A_i`` and
``δ`` is the mean of the oracle's ``εA_i/4``; minibatch gradient noise enters ``‖∇U‖²`` as
the extra variance it adds). So the problem's curvature scale is
``Ā = E‖nβ ∇L_B(w)‖²/d`` at typical posterior points ``w``. Before sampling these are
stand-ins: along a few random directions ``ξ ~ N(0, I)`` from ``w*``, the radius ``r`` where
the tempered loss, averaged over ``w* ± rξ`` (the linear term of a subset's gradient
cancels), has risen by ``nβ (L(w* + rξ) − L(w*)) = d/2`` (the posterior's typical
energy above its minimum for a regular model), and the minibatch gradients there.
``ε₀ = 0.4/Ā`` (a 10 % proxy bias) centres the step-size grid; localizations are
placed relative to ``Ā`` (the shrinkage of a direction of curvature ``A`` is ``γ/(A + γ)``).

**Stages.** A coarse grid (step sizes ``ε₀·4^k``, ``k = −3 … 1``; localizations
``Ā·10^{−4 … −1}``) is run with half the chains and judged; a refined grid with all of them
settles the recommendation (few chains, long runs: equilibration, not the number of chains,
is what singular models need): step sizes ``ε*/4, ε*/2, ε*`` below the largest step size ``ε*`` not
shown biased at the coarse stage's best localization ``γ*``, localizations ``γ*/10, γ*,
10γ*``. Each stage is one compiled chain program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src import data as _data

PyTree = Any

#: The proxy step bias ``δ`` that centres the coarse step-size grid.
CENTRE_BIAS = 0.1
#: Coarse step sizes ``ε₀·4^k`` and localizations ``Ā·10^j``.
COARSE_STEP_POWERS = (-3, -2, -1, 0, 1)
COARSE_LOCALIZATION_POWERS = (-4, -3, -2, -1)
#: Refined step sizes and localizations, relative to the coarse stage's best cell.
REFINED_STEP_FACTORS = (0.25, 0.5, 1.0)
REFINED_LOCALIZATION_FACTORS = (0.1, 1.0, 10.0)
#: The smallest plan: 4 step sizes × 2 localizations × 2 chains, then 3 × 2 × 4.
MIN_COARSE = (4, 2, 2)
MIN_REFINED = (3, 2, 4)
#: The most chains per refined cell a large budget buys.
MAX_REFINED_CHAINS = 64
_DIRECTIONS = 4
_MINIBATCHES = 4


@dataclasses.dataclass(frozen=True)
class Scales:
    """What the problem looks like before sampling (see the module docstring)."""

    num_params: int
    nbeta: float
    radius: float  # median typical-set radius along random directions
    curvature: float  # Ā = E‖nβ ∇L_B‖² / d at those points
    gradient_noise: float  # E‖nβ (∇L_B − ∇L)‖² / d at w* (minibatch noise)

    @property
    def step_size(self) -> float:
        """``ε₀ = 4δ/Ā`` with the proxy bias δ = :data:`CENTRE_BIAS`."""
        return 4 * CENTRE_BIAS / self.curvature


def num_params(params: PyTree) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def measure_scales(loss_fn, params, data, *, nbeta: float, batch_size: int, seed: int = 0):
    """Measure :class:`Scales` with a few loss and gradient evaluations (no chains)."""
    n = _data.num_examples(data)
    d = num_params(params)
    rng = np.random.default_rng(seed)
    b = min(batch_size, n)
    rows = min(n, max(4 * b, 1024))
    evaluation = _rows(data, rng, rows)
    minibatches = [_rows(data, rng, b) for _ in range(_MINIBATCHES)]
    dtype = lambda leaf: np.promote_types(np.asarray(leaf).dtype, np.float32)  # noqa: E731
    center = jax.tree.map(lambda x: jnp.asarray(x, dtype(x)), params)

    def cast(w):
        return jax.tree.map(lambda x, p: x.astype(jnp.asarray(p).dtype), w, params)

    @jax.jit
    def rise(radius, direction):
        # symmetric: the mean of ±r cancels the linear term, which the evaluation rows' own
        # gradient at w* (nonzero on a subset of the data) would otherwise add
        at = lambda sign: loss_fn(  # noqa: E731
            cast(jax.tree.map(lambda c, x: c + sign * radius * x, center, direction)),
            evaluation,
        )
        return nbeta * (0.5 * (at(1.0) + at(-1.0)) - loss_fn(cast(center), evaluation))

    @jax.jit
    def gradient(w, batch):
        grad = jax.grad(lambda v: _data.wide(loss_fn(cast(v), batch)))(w)
        return jnp.concatenate(
            [nbeta * g.astype(jnp.float32).ravel() for g in jax.tree.leaves(grad)]
        )

    def squared_gradient(w, batch):
        return float(jnp.sum(jnp.square(gradient(w, batch))))

    keys = jax.random.split(jax.random.key(seed), _DIRECTIONS)
    leaves, treedef = jax.tree.flatten(center)
    target = max(d / 2, 0.5)
    radii, norms = [], []
    for key in keys:
        parts = jax.random.split(key, len(leaves))
        direction = jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(parts, leaves, strict=True)],
        )
        radius = _radius(lambda r, u=direction: float(rise(r, u)), target)
        radii.append(radius)
        moved = jax.tree.map(lambda c, x, r=radius: c + r * x, center, direction)
        norms += [float(squared_gradient(moved, batch)) for batch in minibatches]
    at_center = np.stack([np.asarray(gradient(center, batch)) for batch in minibatches])
    curvature = float(np.mean(norms)) / d if np.isfinite(norms).all() else float("nan")
    if not (np.isfinite(curvature) and curvature > 0):
        curvature = float(nbeta)  # a flat or broken probe: the scale of nβ itself
    # E‖nβ(∇L_B − ∇L)‖² with ∇L estimated by the minibatches' mean
    noise = float(np.sum(np.var(at_center, axis=0, ddof=1))) if len(at_center) > 1 else 0.0
    return Scales(d, float(nbeta), float(np.median(radii)), curvature, noise / d)


def _rows(data, rng, count):
    n = _data.num_examples(data)
    if count >= n:
        index = np.arange(n)
    else:
        index = np.sort(rng.choice(n, size=count, replace=False))
    return jax.tree.map(jnp.asarray, _data.rows(data, index))


def _radius(rise, target: float) -> float:
    """The radius where ``rise(r)`` first reaches ``target`` (bisection in ``log r``)."""
    low, high = -10.0, 3.0
    if not rise(10.0**high) >= target:  # flat (or non-finite) out to far away
        return 10.0**high
    for _ in range(30):
        mid = 0.5 * (low + high)
        value = rise(10.0**mid)
        if not np.isfinite(value) or value >= target:
            high = mid
        else:
            low = mid
    return 10.0 ** (0.5 * (low + high))


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def coarse_axes(scales: Scales, sizes=None) -> tuple[list[float], list[float]]:
    """The coarse stage's step sizes and localizations (``sizes``: how many of each)."""
    num_eps, num_gamma = sizes or (len(COARSE_STEP_POWERS), len(COARSE_LOCALIZATION_POWERS))
    steps = (
        COARSE_STEP_POWERS[-num_eps:] if num_eps < len(COARSE_STEP_POWERS) else COARSE_STEP_POWERS
    )
    gammas = COARSE_LOCALIZATION_POWERS[:num_gamma]
    if num_gamma < len(COARSE_LOCALIZATION_POWERS):  # keep the span, drop the middle
        gammas = (
            np.linspace(COARSE_LOCALIZATION_POWERS[0], COARSE_LOCALIZATION_POWERS[-1], num_gamma)
            .round()
            .astype(int)
        )
    eps0 = scales.step_size
    return (
        [_round(eps0 * 4.0**k) for k in steps],
        [_round(scales.curvature * 10.0 ** int(j)) for j in gammas],
    )


def refined_axes(step_size: float, localization: float, num_eps: int, num_gamma: int):
    """The refined stage's axes: step sizes halving down from ``step_size``, localizations
    around ``localization``."""
    eps_factors = REFINED_STEP_FACTORS[-min(num_eps, len(REFINED_STEP_FACTORS)) :]
    gamma_factors = REFINED_LOCALIZATION_FACTORS[:num_gamma]
    return (
        [_round(step_size * f) for f in eps_factors],
        [_round(localization * f) for f in gamma_factors] if localization > 0 else [0.0],
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the budget is spent: per stage ``(step sizes, localizations, chains)``."""

    num_steps: int
    coarse: tuple[int, int, int]
    refined: tuple[int, int, int]

    def runs(self, num_nbetas: int = 1) -> int:
        """Chains over both stages."""
        return num_nbetas * (int(np.prod(self.coarse)) + int(np.prod(self.refined)))

    def chain_steps(self, num_nbetas: int = 1) -> int:
        return self.runs(num_nbetas) * self.num_steps


def plan(
    budget: int | None,
    num_steps: int | None,
    num_chains: int,
    *,
    num_eps: int | None = None,
    num_gamma: int | None = None,
    num_nbetas: int = 1,
    default_budget: int,
) -> Plan:
    """The two stages' sizes within ``budget`` chain-steps. ``num_eps`` / ``num_gamma``: the
    length of an axis the user fixed (both stages then use it whole). Without ``num_steps``
    the run length is what the budget allows (at least 100 steps); with it, a budget larger
    than the default plan buys more refined chains (up to :data:`MAX_REFINED_CHAINS`).

    Raises:
      ValueError: if even the smallest plan does not fit, naming the minimum.
    """
    eps1, gamma1 = num_eps or len(COARSE_STEP_POWERS), num_gamma or len(COARSE_LOCALIZATION_POWERS)
    eps2, gamma2 = (
        num_eps or len(REFINED_STEP_FACTORS),
        num_gamma or len(REFINED_LOCALIZATION_FACTORS),
    )
    full = Plan(
        num_steps or 1,
        (eps1, gamma1, max(MIN_COARSE[2], num_chains // 2)),
        (eps2, gamma2, max(MIN_REFINED[2], num_chains)),
    )
    smallest = Plan(
        num_steps or 1,
        (num_eps or MIN_COARSE[0], num_gamma or MIN_COARSE[1], MIN_COARSE[2]),
        (num_eps or MIN_REFINED[0], num_gamma or MIN_REFINED[1], MIN_REFINED[2]),
    )
    if num_steps is None:
        budget = default_budget if budget is None else budget
        for candidate in (full, smallest):
            steps = budget // candidate.runs(num_nbetas)
            if steps >= 100:
                return dataclasses.replace(candidate, num_steps=int(steps))
        raise ValueError(
            f"`budget` = {budget} chain-steps is below the minimum of "
            f"{100 * smallest.runs(num_nbetas)} for an automatic calibration "
            f"({smallest.runs(num_nbetas)} chains of at least 100 steps)."
        )
    if budget is None:
        return full
    if full.chain_steps(num_nbetas) <= budget:
        # A larger budget buys precision: more chains in the refined stage, which decides.
        spare = budget // num_steps // num_nbetas - int(np.prod(full.coarse))
        chains = min(
            MAX_REFINED_CHAINS, max(full.refined[2], spare // int(np.prod(full.refined[:2])))
        )
        return dataclasses.replace(full, refined=(*full.refined[:2], chains))
    if smallest.chain_steps(num_nbetas) > budget:
        raise ValueError(
            f"`budget` = {budget} chain-steps is below the minimum of "
            f"{smallest.chain_steps(num_nbetas)} for an automatic calibration at num_steps="
            f"{num_steps}: {smallest.runs(num_nbetas)} chains (a coarse grid of "
            f"{smallest.coarse[0]} step sizes × {smallest.coarse[1]} localizations × "
            f"{smallest.coarse[2]} chains, then a refined one of {smallest.refined[0]} × "
            f"{smallest.refined[1]} × {smallest.refined[2]}); raise the budget or lower "
            "num_steps."
        )
    # The largest plan between the two that fits: chains go first, then coarse cells.
    fits = [
        Plan(num_steps, (e, g, c1), (full.refined[0], min(full.refined[1], g), c2))
        for c2 in range(smallest.refined[2], full.refined[2] + 1)
        for c1 in range(smallest.coarse[2], full.coarse[2] + 1)
        for g in range(smallest.coarse[1], full.coarse[1] + 1)
        for e in range(smallest.coarse[0], full.coarse[0] + 1)
    ]
    fits = [p for p in fits if p.chain_steps(num_nbetas) <= budget]
    return max(fits, key=lambda p: (p.coarse[0] * p.coarse[1], p.refined[1], p.refined[2]))


def refined_centre(coarse, scales: Scales, tolerance: float) -> tuple[float, float]:
    """The refined grid's largest step size and its localization.

    At the coarse stage's recommended localization: the largest healthy step size not
    shown to be biased, and no more than twice the step size where the fitted bias reaches
    the tolerance (when the fit's slope is significant). With nothing healthy: the largest
    step size whose chains were stable (not diverged, acceptance in the band), else a
    quarter of the smallest, at the middle localization (ten times the strongest when most
    cells wander).
    """
    if coarse.recommended is None:
        # Nothing healthy: below the largest step size whose chains were stable, at the
        # middle localization.
        stable = [
            r.config.step_size
            for r, p in zip(coarse.results, coarse.problems, strict=True)
            if not {"diverged", "acceptance", "init_loss"} & set(p)
        ]
        wandering = sum("wandering" in p for p in coarse.problems)
        gamma = float(np.median(coarse.localizations))
        if wandering > len(coarse.problems) / 2 and coarse.localizations.max() > 0:
            gamma = 10 * float(coarse.localizations.max())  # chains drift: localize more
        return (max(stable) if stable else coarse.step_sizes.min() / 4), gamma
    gamma = coarse.recommended["localization"]
    i = coarse.cell(**coarse.recommended)
    _, j, k = np.unravel_index(i, coarse.shape)
    row = [int(np.ravel_multi_index((a, j, k), coarse.shape)) for a in range(coarse.shape[0])]
    usable = [
        r
        for r in row
        if not (set(coarse.problems[r]) - {"step_bias", "localization_bias"})
        and "step_bias" not in coarse.problems[r]
    ]
    top = (
        max(coarse.results[r].config.step_size for r in usable)
        if usable
        else (coarse.recommended["step_size"])
    )
    fit = coarse.fits[int(np.ravel_multi_index((j, k), coarse.shape[1:]))]
    if fit.fitted and fit.slope > 0 and fit.intercept > 0:
        biggest = max(fit.bias, key=lambda c: coarse.results[c].config.step_size)
        bias, se = fit.bias[biggest]
        if bias > 2 * se:  # the slope is measured, not noise
            top = min(top, 2 * tolerance * fit.intercept / fit.slope)
    return float(top), gamma
