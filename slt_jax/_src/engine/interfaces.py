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
    """A restriction bound to one chain's arguments (inside the traced chain).

    A chain samples in the restriction's *coordinates*: the full parameters (a mask
    restriction, whose position is a full copy with the fixed coordinates put back), or
    only the moving ones (a compact restriction, whose position holds the selected entries
    of the affected leaves and nothing else).
    """

    #: Whether a stochastic-gradient move must be put back onto the moving coordinates
    #: after every step (``restrict``); ``False`` when the position holds nothing else.
    projects: bool
    #: ``(key, position) -> N(0, I)`` noise for the kernel, or ``None`` for its own draw.
    noise: Any

    def origin(self, center: PyTree) -> PyTree:
        """The chain's ``w*`` in its coordinates: where it starts and is localized."""

    def loss(self, loss_fn, center: PyTree):
        """``loss_fn`` as a function of the chain's coordinates (the rest at ``center``)."""

    def params(self, position: PyTree, center: PyTree) -> PyTree:
        """The full parameters at the chain's ``position`` (for observers)."""

    def restrict(self, position: PyTree, origin: PyTree) -> PyTree:
        """``position`` with the coordinates that do not move put back at ``origin``."""

    def select(self, tree: PyTree) -> PyTree:
        """``tree`` with the coordinates that do not move set to 0 (for diagnostics)."""


class Restriction(Protocol):
    """Which coordinates a chain moves (a static, hashable spec)."""

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

    projects = False
    noise = None

    def origin(self, center):
        return center

    def loss(self, loss_fn, center):
        return loss_fn

    def params(self, position, center):
        return position

    def restrict(self, position, center):
        return position

    def select(self, tree):
        return tree


EVERYTHING = _Everything()
