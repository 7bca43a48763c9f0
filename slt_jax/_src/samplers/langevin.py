r"""Overdamped Langevin samplers: SGLD and its RMSProp-preconditioned variant.

SGLD (Welling & Teh 2011), in the convention of Lau et al. 2023 (arXiv:2308.12108) and
devinterp's ``lr``:

.. math::

    w_{t+1} = w_t + \tfrac{\epsilon}{2}\,\nabla\log p(w_t) + \sqrt{\epsilon}\,\xi_t,
    \qquad \xi_t \sim N(0, I).

The integrator is BlackJAX's overdamped Langevin Euler step, whose step ``h`` is ``ε/2``.

RMSProp-SGLD (pSGLD; Li, Chen, Carlson & Carin 2016, arXiv:1512.07666) rescales each
coordinate by a running estimate of the gradient's magnitude:

.. math::

    V_t = \alpha V_{t-1} + (1-\alpha)\, g_t^2,\quad
    G_t = 1 / (\delta + \sqrt{V_t / (1-\alpha^t)}),\quad
    w_{t+1} = w_t + \tfrac{\epsilon}{2} G_t g_t + \sqrt{\epsilon G_t}\,\xi_t,

with ``g_t = ∇log p(w_t)`` (``V`` bias-corrected as in Adam so the first step is already
scaled; the small ``Γ`` correction term of Li et al. is dropped, as in their experiments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax._src.posterior import (
    LogDensityGrad,
    localized_logdensity_change,
    localized_logdensity_grad,
    tree_accurate_sum,
)
from slt_jax._src.samplers.base import Kernel, StepInfo
from slt_jax._src.samplers.noise import gaussian

PyTree = Any
#: ``(key, position) -> noise``: standard normal noise shaped like the position.
NoiseFn = Callable[[jax.Array, PyTree], PyTree]


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Keep each leaf's dtype (the step size or the noise may be of another float type)."""
    return jax.tree.map(lambda new, old: new.astype(old.dtype), tree, like)


class SGLDState(NamedTuple):
    position: PyTree


def sgld(
    logdensity_grad: LogDensityGrad, temperature: float = 1.0, *, noise: NoiseFn | None = None
) -> Kernel:
    """Build an SGLD kernel; ``step(key, state, batch, step_size)`` takes ``ε``.

    Args:
      logdensity_grad: ``(position, batch) -> (loss, grad log p)``, e.g. from
        :func:`slt_jax._src.posterior.localized_logdensity_grad`.
      temperature: scales the injected noise variance; ``0`` turns SGLD into gradient
        ascent on ``log p`` (used by the exactness tests).
      noise: ``(key, position) -> N(0, I)`` noise shaped like the position; default
        :func:`slt_jax._src.samplers.noise.gaussian` (a restricted chain passes the
        entries of the full-size draw for its coordinates).
    """
    if noise is not None:
        integrator = _euler(noise)
    else:
        # Imported here: importing blackjax initialises JAX's backend, which must wait until
        # a multi-host user has called jax.distributed.initialize().
        from blackjax.sgmcmc.diffusions import overdamped_langevin

        integrator = overdamped_langevin()

    def init(position: PyTree, batch: PyTree = None) -> SGLDState:
        del batch
        return SGLDState(position)

    def step(key, state: SGLDState, batch, step_size) -> tuple[SGLDState, StepInfo]:
        loss, grad = logdensity_grad(state.position, batch)
        position = integrator(key, state.position, grad, step_size / 2, temperature)
        position = _cast_like(position, state.position)
        noise = jax.tree.map(
            lambda new, old, g: new - old - (step_size / 2) * g, position, state.position, grad
        )
        return SGLDState(position), StepInfo(loss, grad, noise, jnp.float32(jnp.nan))

    return Kernel(init, step)


def _euler(noise: NoiseFn):
    """BlackJAX's overdamped Langevin Euler step (the same arithmetic) with ``noise``."""

    def one_step(key, position, logdensity_grad, step_size, temperature=1.0):
        xi = noise(key, position)
        return jax.tree.map(
            lambda p, g, n: p + step_size * g + jnp.sqrt(2 * temperature * step_size) * n,
            position,
            logdensity_grad,
            xi,
        )

    return one_step


class RMSPropSGLDState(NamedTuple):
    position: PyTree
    square_avg: PyTree  # V, the running mean of g²
    count: jax.Array  # steps taken, for the bias correction


def rmsprop_sgld(
    logdensity_grad: LogDensityGrad,
    *,
    alpha: float = 0.9999,
    eps: float = 0.1,
    noise: NoiseFn | None = None,
) -> Kernel:
    """Build an RMSProp-preconditioned SGLD kernel (pSGLD, Li et al. 2016).

    Args:
      logdensity_grad: ``(position, batch) -> (loss, grad log p)``.
      alpha: decay of the running mean of squared gradients.
      eps: ``δ``, added to ``sqrt(V)``; bounds the preconditioner by ``1/δ``.
      noise: ``(key, position) -> N(0, I)`` noise, as for :func:`sgld`.
    """
    draw = gaussian if noise is None else noise

    def init(position: PyTree, batch: PyTree = None) -> RMSPropSGLDState:
        del batch
        zeros = jax.tree.map(jnp.zeros_like, position)
        return RMSPropSGLDState(position, zeros, jnp.zeros((), jnp.int32))

    def step(key, state: RMSPropSGLDState, batch, step_size):
        loss, grad = logdensity_grad(state.position, batch)
        count = state.count + 1
        square_avg = jax.tree.map(
            lambda v, g: alpha * v + (1 - alpha) * g * g, state.square_avg, grad
        )
        correction = 1 - alpha ** count.astype(jnp.float32)
        precond = jax.tree.map(lambda v: 1 / (eps + jnp.sqrt(v / correction)), square_avg)
        xi = draw(key, state.position)
        noise = jax.tree.map(lambda n, p: jnp.sqrt(step_size * p) * n, xi, precond)
        position = jax.tree.map(
            lambda w, g, p, n: w + (step_size / 2) * p * g + n,
            state.position,
            grad,
            precond,
            noise,
        )
        position = _cast_like(position, state.position)
        info = StepInfo(loss, grad, noise, jnp.float32(jnp.nan), precond)
        return RMSPropSGLDState(position, square_avg, count), info

    return Kernel(init, step)


def langevin_acceptance(
    *,
    position: PyTree,
    proposal: PyTree,
    logdensity: jax.Array | None = None,
    proposal_logdensity: jax.Array | None = None,
    grad: PyTree,
    proposal_grad: PyTree,
    step_size: jax.Array,
    preconditioner: PyTree = None,
    logdensity_change: jax.Array | None = None,
) -> jax.Array:
    r"""The Metropolis-Hastings acceptance probability of one Langevin move, had it been MALA.

    For the proposal ``q(w'|w) = N(w + ε/2·G∇log p(w), εG)``,

    .. math::

        \alpha = \min\Bigl(1, \frac{p(w')\,q(w\mid w')}{p(w)\,q(w'\mid w)}\Bigr),

    with ``log p`` and its gradient taken on the same minibatch at both points (Lau et al.
    2023 report ≈ 0.9 and above as a healthy SGLD step). A preconditioner is held fixed for
    the reverse move.

    **Sound in float32 at any size.** The two Gaussian exponents are each ``≈ P/2`` for
    ``P`` parameters and cancel to ``O(1)``; summed separately in float32 their rounding
    swamps the ratio at ``P ≳ 10^5``. They are therefore combined per coordinate before
    summing: with ``d = w' − w``, ``g = ∇log p(w)``, ``g' = ∇log p(w')``,

    .. math::

        \log\frac{q(w\mid w')}{q(w'\mid w)}
        = -\sum_i \tfrac12 (g_i + g'_i)\bigl(d_i + \tfrac{\epsilon}{4} G_i (g'_i - g_i)\bigr),

    an exact identity whose terms hold no large cancelling parts, summed by
    :func:`~slt_jax._src.posterior.tree_accurate_sum` (error ``≤ 120 u Σ|terms|``, ``u``
    the unit roundoff). ``d`` is the difference of the two positions, itself exact to one
    rounding of ``d``. ``log p(w') − log p(w)`` is ``logdensity_change`` when given (the
    chains pass ``−nβ(L(w') − L(w)) − γ Σ d_i(d_i/2 + (w − w*)_i)``, which again has no
    large cancelling terms), else ``proposal_logdensity − logdensity``. What remains is the
    rounding of the loss values themselves: an error ``δ`` in ``L(w)`` or ``L(w')`` moves
    ``log α`` by ``nβ·δ`` (``δ ≈ u·L`` or more, depending on how the model sums its loss),
    and ``α`` by at most as much.

    Args:
      position, proposal: ``w`` and ``w'`` (pytrees of the same structure).
      logdensity, proposal_logdensity: ``log p(w)`` and ``log p(w')`` (unused when
        ``logdensity_change`` is given).
      grad, proposal_grad: ``∇log p`` at ``w`` and ``w'``.
      step_size: ``ε``.
      preconditioner: ``G`` (a pytree like ``position``), default the identity.
      logdensity_change: ``log p(w') − log p(w)`` computed without cancellation.

    Returns:
      ``α`` in ``[0, 1]`` (a scalar).

    Example:
      >>> w, g = jnp.zeros(3), jnp.zeros(3)
      >>> float(langevin_acceptance(position=w, proposal=w + 0.1, logdensity_change=0.0,
      ...                           grad=g, proposal_grad=g, step_size=0.01))
      1.0
    """
    if logdensity_change is None:
        if logdensity is None or proposal_logdensity is None:
            raise ValueError("pass logdensity and proposal_logdensity, or logdensity_change.")
        logdensity_change = proposal_logdensity - logdensity
    if preconditioner is None:
        preconditioner = jax.tree.map(lambda w: jnp.ones((), w.dtype), position)

    def term(new, old, g, g_new, p):
        d = new - old
        return -0.5 * (g + g_new) * (d + (step_size / 4) * p * (g_new - g))

    proposal_ratio = tree_accurate_sum(
        jax.tree.map(term, proposal, position, grad, proposal_grad, preconditioner)
    )
    log_ratio = logdensity_change + proposal_ratio
    return jnp.exp(jnp.minimum(log_ratio, 0.0))


def move_acceptance(
    loss_fn,
    center: PyTree,
    *,
    nbeta: jax.Array,
    localization: jax.Array,
    position: PyTree,
    proposal: PyTree,
    loss: jax.Array,
    grad: PyTree,
    preconditioner: PyTree,
    batch: PyTree,
    step_size: jax.Array,
) -> jax.Array:
    r"""The MALA acceptance of one Langevin move ``position → proposal`` on the localized
    posterior of ``loss_fn`` around ``center`` (one extra gradient, at the proposal, on the
    same minibatch): :func:`langevin_acceptance` with

    .. math::

        \log p(w') - \log p(w) = -n\beta\,(L(w') - L(w))
            - \gamma \textstyle\sum_i d_i\,(d_i/2 + (w - w^*)_i),\qquad d = w' - w,

    which holds no large cancelling terms
    (:func:`~slt_jax._src.posterior.localized_logdensity_change`).

    Args:
      loss_fn, center, nbeta, localization: the posterior.
      position, proposal: ``w`` and ``w'``.
      loss, grad: ``L_B(w)`` and ``∇log p(w)`` (what the kernel's step reported).
      preconditioner: the proposal's diagonal ``G`` (``None``: the identity).
      batch, step_size: the step's minibatch and ``ε``.

    Returns:
      ``min(1, p(w') q(w|w') / (p(w) q(w'|w)))``, a float32 scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w, batch: 0.5 * jnp.sum(w**2)
      >>> w = jnp.zeros(2)
      >>> float(move_acceptance(loss, w, nbeta=1.0, localization=0.0, position=w,
      ...     proposal=w, loss=0.0, grad=w, preconditioner=None, batch=None, step_size=0.1))
      1.0
    """
    logdensity_grad = localized_logdensity_grad(
        loss_fn, center, nbeta=nbeta, localization=localization
    )
    proposal_loss, proposal_grad = logdensity_grad(proposal, batch)
    change = localized_logdensity_change(
        loss,
        proposal_loss,
        position,
        proposal,
        center,
        nbeta=nbeta,
        localization=localization,
    )
    return langevin_acceptance(
        position=position,
        proposal=proposal,
        logdensity_change=change,
        grad=grad,
        proposal_grad=proposal_grad,
        step_size=step_size,
        preconditioner=preconditioner,
    )
