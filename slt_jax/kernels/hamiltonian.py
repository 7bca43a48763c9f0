r"""Stochastic-gradient samplers with momentum: SGHMC and SGNHT, on BlackJAX's diffusions.

SGHMC (Chen, Fox & Guestrin 2014, arXiv:1402.4102), Euler scheme with friction ``α`` in
the scaling of Ma, Chen & Fox 2015 (BlackJAX's ``sghmc`` diffusion), unit mass:

.. math::

    w_{t+1} = w_t + h\,p_t, \qquad
    p_{t+1} = (1 - \alpha h)\,p_t + h\,\nabla\log p(w_t) + \sqrt{2\alpha h}\,\xi_t .

SGNHT (Ding et al. 2014, "Bayesian sampling using stochastic gradient thermostats") makes
the friction a dynamic thermostat ``ξ`` that keeps the kinetic energy per coordinate at
the temperature: ``ξ_{t+1} = ξ_t + h (‖p_{t+1}‖²/d − 1)``, starting at ``ξ = α``.

``h`` is the ``step_size`` here (BlackJAX's convention: a time step, not SGLD's ``ε``).
The momentum persists across steps (no refresh) and starts at zero.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax.kernels.base import Kernel, StepInfo
from slt_jax.posterior import LogDensityGrad

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


def _momentum_noise(new, old, grad, friction, step_size):
    """The Gaussian part of a momentum update ``(1 - friction·h) p + h g + noise``."""
    return jax.tree.map(
        lambda pn, po, g: pn - (1 - friction * step_size) * po - step_size * g, new, old, grad
    )


def sghmc(logdensity_grad: LogDensityGrad, *, friction: float = 10.0) -> Kernel:
    """Build an SGHMC kernel; ``step(key, state, batch, step_size)`` takes ``h``.

    Args:
      logdensity_grad: ``(position, batch) -> (loss, grad log p)``.
      friction: ``α``, per unit time; the momentum keeps ``1 - αh`` per step. A direction
        of curvature ``A`` is critically damped at ``α ≈ 2√A``; stable for ``αh < 2``.
    """
    from blackjax.sgmcmc.diffusions import sghmc as sghmc_diffusion

    diffusion = sghmc_diffusion(alpha=friction)

    def init(position: PyTree, batch: PyTree = None) -> SGHMCState:
        del batch
        return SGHMCState(position, jax.tree.map(jnp.zeros_like, position))

    def step(key, state: SGHMCState, batch, step_size):
        loss, grad = logdensity_grad(state.position, batch)
        position, momentum = diffusion(key, state.position, state.momentum, grad, step_size)
        position, momentum = _cast_like(position, state.position), _cast_like(momentum, grad)
        noise = _momentum_noise(momentum, state.momentum, grad, friction, step_size)
        info = StepInfo(loss, grad, noise, jnp.float32(jnp.nan))
        return SGHMCState(position, momentum), info

    return Kernel(init, step)


def sgnht(logdensity_grad: LogDensityGrad, *, diffusion: float = 10.0) -> Kernel:
    """Build an SGNHT kernel; ``step(key, state, batch, step_size)`` takes ``h``.

    Args:
      logdensity_grad: ``(position, batch) -> (loss, grad log p)``.
      diffusion: ``α``, the injected noise ``sqrt(2αh)`` per step and the thermostat's
        starting value (the friction it settles at when the gradients are exact).
    """
    from blackjax.sgmcmc.diffusions import sgnht as sgnht_diffusion

    solver = sgnht_diffusion(alpha=diffusion)

    def init(position: PyTree, batch: PyTree = None) -> SGNHTState:
        del batch
        zeros = jax.tree.map(jnp.zeros_like, position)
        return SGNHTState(position, zeros, jnp.asarray(diffusion, jnp.float32))

    def step(key, state: SGNHTState, batch, step_size):
        loss, grad = logdensity_grad(state.position, batch)
        position, momentum, thermostat = solver(
            key, state.position, state.momentum, state.thermostat, grad, step_size
        )
        position, momentum = _cast_like(position, state.position), _cast_like(momentum, grad)
        noise = _momentum_noise(momentum, state.momentum, grad, state.thermostat, step_size)
        info = StepInfo(loss, grad, noise, jnp.float32(jnp.nan))
        thermostat = thermostat.astype(state.thermostat.dtype)
        return SGNHTState(position, momentum, thermostat), info

    return Kernel(init, step)
