r"""Exact-gradient reference samplers (BlackJAX's MALA, HMC and NUTS) on the full-data
localized posterior.

No minibatch noise and a Metropolis-Hastings correction: for a small model their
estimate is the posterior's own up to Monte-Carlo error, the ground truth against which
an SGLD setting's bias is measured. ``batch`` is the whole data set at every step.

Step sizes: MALA takes SGLD's ``ε`` (proposal ``N(w + ε/2·∇log p, εI)``, BlackJAX's step
``ε/2``); HMC and NUTS take the leapfrog step. The mass matrix is the identity.

With ``jax_enable_x64`` on, BlackJAX draws its noise and momenta in float64 whatever the
position's type, which a float32 chain's state cannot carry (a type error while tracing).
A transition then runs in float64 (:func:`_widened`) and its state is stored back in the
chain's own types, so a chain holds the same types with x64 on or off.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from slt_jax._src.samplers.base import Kernel, StepInfo

PyTree = Any


def _num_elements(tree: PyTree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def _widened(tree: PyTree) -> PyTree:
    """``tree``'s floating leaves in float64 when ``jax_enable_x64`` is on (else as given)."""
    if not jax.config.jax_enable_x64:
        return tree
    return jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _exact_kernel(logdensity, loss_of, transition, init_state) -> Kernel:
    """Wrap a BlackJAX ``(state, logdensity_fn, step_size) -> (state, info)`` transition."""

    def init(position: PyTree, batch: PyTree):
        return init_state(position, lambda w: logdensity(w, batch))

    def step(key, state, batch, step_size):
        wide = _widened(state)  # see the module docstring
        new_state, info = transition(key, wide, lambda w: logdensity(w, batch), step_size)
        new_state = jax.tree.map(lambda x, old: x.astype(old.dtype), new_state, state)
        loss = loss_of(state.logdensity, state.position)
        acceptance = jnp.asarray(info.acceptance_rate, jnp.float32)
        return new_state, StepInfo(loss, state.logdensity_grad, None, acceptance)

    return Kernel(init, step)


def mala(logdensity, loss_of) -> Kernel:
    """MALA (Roberts & Tweedie 1996) with SGLD's ``ε``.

    Args:
      logdensity: ``(position, batch) -> log p``.
      loss_of: ``(logdensity, position) -> loss`` (the inverse of ``logdensity``'s tempering).
    """
    from blackjax.mcmc import mala as bj_mala

    kernel = bj_mala.build_kernel()

    def transition(key, state, logdensity_fn, step_size):
        return kernel(key, state, logdensity_fn, step_size / 2)

    return _exact_kernel(logdensity, loss_of, transition, bj_mala.init)


def hmc(logdensity, loss_of, *, num_integration_steps: int = 10) -> Kernel:
    """HMC (Duane et al. 1987; Neal 2011) with ``num_integration_steps`` leapfrog steps."""
    from blackjax.mcmc import hmc as bj_hmc

    kernel = bj_hmc.build_kernel()

    def transition(key, state, logdensity_fn, step_size):
        inverse_mass = jnp.ones(_num_elements(state.position))
        return kernel(key, state, logdensity_fn, step_size, inverse_mass, num_integration_steps)

    return _exact_kernel(logdensity, loss_of, transition, bj_hmc.init)


def nuts(logdensity, loss_of, *, max_num_doublings: int = 10) -> Kernel:
    """NUTS (Hoffman & Gelman 2014, arXiv:1111.4246), BlackJAX's multinomial variant."""
    from blackjax.mcmc import hmc as bj_hmc
    from blackjax.mcmc import nuts as bj_nuts

    kernel = bj_nuts.build_kernel()

    def transition(key, state, logdensity_fn, step_size):
        inverse_mass = jnp.ones(_num_elements(state.position))
        return kernel(key, state, logdensity_fn, step_size, inverse_mass, max_num_doublings)

    return _exact_kernel(logdensity, loss_of, transition, bj_hmc.init)
