"""What the engine records, and the two ways features plug into a chain.

A feature that changes *which coordinates move* is a :class:`Restriction`; one that
*evaluates something along the chain* is an :class:`Observer`. Both are static, hashable
specs (they select the compiled program) that the engine binds, inside the traced chain,
to per-chain arrays (a restriction's ``args``, e.g. a mask) or replicated ones (an
observer's ``data``). The engine imports no feature: refinements (:mod:`slt_jax.refine`)
and observables (:mod:`slt_jax._src.observe`) implement these protocols.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

PyTree = Any


class ChainTrace(NamedTuple):
    """What the compiled loop records, per chain (leading axis: chains)."""

    loss: jax.Array  # (draws,) minibatch loss L_B(w_t) at each draw
    reference_loss: jax.Array  # (draws,) L_B(w*) on the same minibatch (paired), else (0,)
    burnin_loss: jax.Array  # (burnin,) minibatch loss during burn-in
    diverged: jax.Array  # () bool: loss or parameters became non-finite
    # Every `diagnostic_every` draws, shape (num_diagnostics,):
    acceptance: jax.Array  # MALA acceptance probability of the move from w_t
    weight_distance: jax.Array  # ‖w_t − w*‖
    grad_norm: jax.Array  # ‖∇log p(w_t)‖
    noise_norm: jax.Array  # ‖injected noise‖ of the move from w_t
    observed: PyTree = None  # the observer's outputs (None without one)


class BoundRestriction(Protocol):
    """A restriction bound to one chain's arguments (inside the traced chain)."""

    def loss(self, loss_fn, center: PyTree):
        """``loss_fn`` as a function of the moving coordinates (the others at ``center``)."""

    def restrict(self, position: PyTree, center: PyTree) -> PyTree:
        """``position`` with the coordinates that do not move put back at ``center``."""

    def select(self, tree: PyTree) -> PyTree:
        """``tree`` with the coordinates that do not move set to 0 (for diagnostics)."""


class Restriction(Protocol):
    """Which coordinates a chain moves. ``project``: whether a stochastic-gradient move is
    projected back after every step (a Metropolis sampler samples the others as dummies)."""

    def bind(self, args: PyTree) -> BoundRestriction: ...


class BoundObserver(Protocol):
    """An observer bound to its data (inside the traced chain)."""

    def init(self) -> PyTree:
        """The observation state carried through the loop."""

    def observe(self, state: PyTree, params: PyTree, column: jax.Array) -> PyTree:
        """Fold in an observation at ``params`` (the ``column``-th one)."""

    def finish(self, state: PyTree, center: PyTree) -> PyTree:
        """The outputs that go into :attr:`ChainTrace.observed`."""


class Observer(Protocol):
    """Something evaluated along the chain every ``every`` draws."""

    every: int

    def bind(self, loss_fn, batch_size: int, num_draws: int, data: PyTree) -> BoundObserver: ...


class _Everything:
    """The default restriction: every coordinate moves."""

    def loss(self, loss_fn, center):
        return loss_fn

    def restrict(self, position, center):
        return position

    def select(self, tree):
        return tree


EVERYTHING = _Everything()
