"""The shape every sampler has."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any


class StepInfo(NamedTuple):
    """What every kernel reports about one step.

    Attributes:
      loss: the (minibatch) loss at the position the step started from.
      logdensity_grad: ``∇log p`` at that position.
      noise: the Gaussian noise the step injected (``None`` for Metropolis samplers).
      acceptance: the Metropolis-Hastings acceptance probability of the step (NaN for
        stochastic-gradient samplers, which accept every move).
      preconditioner: the diagonal preconditioner ``G`` of a Langevin proposal
        ``N(w + ε/2·G∇log p, εG)`` (``None``: the identity).
    """

    loss: jax.Array
    logdensity_grad: PyTree
    noise: PyTree
    acceptance: jax.Array
    preconditioner: PyTree = None


class Kernel(NamedTuple):
    """A sampler as two pure functions.

    ``init(position, batch) -> state`` and
    ``step(key, state, batch, step_size) -> (state, StepInfo)``. The step size is an
    argument (BlackJAX's convention), so a schedule can change it at every step.
    """

    init: Callable[[PyTree, PyTree], Any]
    step: Callable[[jax.Array, Any, PyTree, jax.Array], tuple[Any, StepInfo]]
