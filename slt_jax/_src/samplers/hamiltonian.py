r"""Stochastic-gradient samplers with momentum: SGHMC and SGNHT, on BlackJAX's diffusions.

SGHMC (Chen, Fox & Guestrin 2014, arXiv:1402.4102, eq. 15) with friction ``α`` in the
scaling of Ma, Chen & Fox 2015, unit mass, as the papers integrate it (semi-implicit Euler:
the position moves with the *new* momentum):

.. math::

    p_{t+1} = (1 - \alpha h)\,p_t + h\,\nabla\log p(w_t) + \sqrt{2\alpha h}\,\xi_t,
    \qquad w_{t+1} = w_t + h\,p_{t+1}.

BlackJAX's ``sghmc`` / ``sgnht`` diffusions give the momentum (and thermostat) update; their
own position update ``w_t + h p_t`` (explicit Euler) is replaced by the papers'. On a
quadratic of curvature ``A`` the semi-implicit scheme is stable iff ``0 < αh < 2`` and
``h²A < 2(2 − αh)``, and its stationary variance is close to ``1/A`` (explicit Euler needs
``hA < α`` and runs hot: variance ``≈ 1.7/A`` at ``hA = 0.4α``).

SGNHT (Ding et al. 2014, "Bayesian sampling using stochastic gradient thermostats",
Algorithm 1) makes the friction a dynamic thermostat ``ξ`` that keeps the kinetic energy
per coordinate at the temperature: ``ξ_{t+1} = ξ_t + h (‖p_{t+1}‖²/d − 1)``, starting at
``ξ = α``.

``h`` is the ``step_size`` here (BlackJAX's convention: a time step, not SGLD's ``ε``).
The momentum persists across steps (no refresh) and starts at zero.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax._src.posterior import LogDensityGrad
from slt_jax._src.samplers.base import Kernel, StepInfo
from slt_jax._src.samplers.langevin import NoiseFn

PyTree = Any


class SGHMCState(NamedTuple):
    position: PyTree
    momentum: PyTree


class SGNHTState(NamedTuple):
    position: PyTree
    momentum: PyTree
    thermostat: jax.Array  # ξ, the dynamic friction


def _cast_like(tree, like):
    return jax.tree.map(lambda new, old: new.astype(old.dtype), tree, like)


def _semi_implicit(position, new_momentum, step_size):
    """The papers' position update ``w + h p_{t+1}`` (BlackJAX's diffusions use ``p_t``)."""
    return jax.tree.map(lambda w, p: (w + step_size * p).astype(w.dtype), position, new_momentum)


def _momentum_noise(new, old, grad, friction, step_size):
    """The Gaussian part of a momentum update ``(1 - friction·h) p + h g + noise``."""
    return jax.tree.map(
        lambda pn, po, g: pn - (1 - friction * step_size) * po - step_size * g, new, old, grad
    )


def _momentum_step(noise: NoiseFn, alpha: float):
    """BlackJAX's SGHMC/SGNHT momentum update (the same arithmetic, ``beta = 0``, unit
    temperature) with the standard normal draw taken from ``noise``; the position update
    is the papers' (:func:`_semi_implicit`). ``friction`` is ``α`` (SGHMC) or ``ξ`` (SGNHT)."""

    def one_step(key, position, momentum, friction, logdensity_grad, step_size):
        xi = noise(key, position)
        return jax.tree.map(
            lambda p, g, n: (
                (1.0 - friction * step_size) * p
                + step_size * g
                + jnp.sqrt(step_size * (2 * alpha)) * n
            ),
            momentum,
            logdensity_grad,
            xi,
        )

    return one_step


def sghmc(
    logdensity_grad: LogDensityGrad, *, friction: float = 10.0, noise: NoiseFn | None = None
) -> Kernel:
    """Build an SGHMC kernel; ``step(key, state, batch, step_size)`` takes ``h``.

    Args:
      logdensity_grad: ``(position, batch) -> (loss, grad log p)``.
      friction: ``α``, per unit time; the momentum keeps ``1 - αh`` per step. A direction
        of curvature ``A`` is critically damped at ``α ≈ 2√A``; stable for ``αh < 2`` and
        ``h²A < 2(2 − αh)``.
      noise: ``(key, position) -> N(0, I)`` noise shaped like the position (default:
        BlackJAX's draw; zeros give the noise-free heavy-ball limit).
    """
    from blackjax.sgmcmc.diffusions import sghmc as sghmc_diffusion

    if noise is None:
        diffusion = sghmc_diffusion(alpha=friction)
    else:
        momentum_step = _momentum_step(noise, friction)

        def diffusion(key, position, momentum, grad, step_size):
            return None, momentum_step(key, position, momentum, friction, grad, step_size)

    def init(position: PyTree, batch: PyTree = None) -> SGHMCState:
        del batch
        return SGHMCState(position, jax.tree.map(jnp.zeros_like, position))

    def step(key, state: SGHMCState, batch, step_size):
        loss, grad = logdensity_grad(state.position, batch)
        _, momentum = diffusion(key, state.position, state.momentum, grad, step_size)
        momentum = _cast_like(momentum, grad)
        position = _semi_implicit(state.position, momentum, step_size)
        noise = _momentum_noise(momentum, state.momentum, grad, friction, step_size)
        info = StepInfo(loss, grad, noise, jnp.float32(jnp.nan))
        return SGHMCState(position, momentum), info

    return Kernel(init, step)


def sgnht(
    logdensity_grad: LogDensityGrad, *, diffusion: float = 10.0, noise: NoiseFn | None = None
) -> Kernel:
    """Build an SGNHT kernel; ``step(key, state, batch, step_size)`` takes ``h``.

    Args:
      logdensity_grad: ``(position, batch) -> (loss, grad log p)``.
      diffusion: ``α``, the injected noise ``sqrt(2αh)`` per step and the thermostat's
        starting value (the friction it settles at when the gradients are exact).
      noise: ``(key, position) -> N(0, I)`` noise, as for :func:`sghmc`.
    """
    from blackjax.sgmcmc.diffusions import sgnht as sgnht_diffusion

    if noise is None:
        solver = sgnht_diffusion(alpha=diffusion)
    else:
        momentum_step = _momentum_step(noise, diffusion)

        def solver(key, position, momentum, xi, grad, step_size):
            momentum = momentum_step(key, position, momentum, xi, grad, step_size)
            kinetic = sum(jnp.sum(p * p) for p in jax.tree.leaves(momentum))
            size = sum(p.size for p in jax.tree.leaves(momentum))
            return None, momentum, xi + step_size * (kinetic / size - 1.0)

    def init(position: PyTree, batch: PyTree = None) -> SGNHTState:
        del batch
        zeros = jax.tree.map(jnp.zeros_like, position)
        # ξ in the widest float of the position (at least float32): at h ≲ 1e-6 a float32
        # ξ ≈ 10 would round its updates h·(‖p‖²/d − 1) away under float64 sampling.
        dtype = jnp.result_type(jnp.float32, *jax.tree.leaves(position))
        return SGNHTState(position, zeros, jnp.asarray(diffusion, dtype))

    def step(key, state: SGNHTState, batch, step_size):
        loss, grad = logdensity_grad(state.position, batch)
        _, momentum, thermostat = solver(
            key, state.position, state.momentum, state.thermostat, grad, step_size
        )
        momentum = _cast_like(momentum, grad)
        position = _semi_implicit(state.position, momentum, step_size)
        noise = _momentum_noise(momentum, state.momentum, grad, state.thermostat, step_size)
        info = StepInfo(loss, grad, noise, jnp.float32(jnp.nan))
        thermostat = thermostat.astype(state.thermostat.dtype)
        return SGNHTState(position, momentum, thermostat), info

    return Kernel(init, step)
