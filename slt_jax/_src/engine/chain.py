"""One chain as a compiled program, assembled from small parts.

A chain is one ``lax.scan`` over steps: burn-in, then ``num_draws`` recorded steps (what a
step records is a branch on its number, so the model's gradient is compiled once). Each step
takes the minibatch of its step (:func:`minibatch_source`), the step size of its step
(:func:`step_size_at`), moves with the sampler's kernel, puts back the coordinates a
restriction holds fixed, and records: the loss (and, for the paired estimator, the loss of
``w*`` on the same minibatch) every draw, read on the step's minibatch or on an independent
one (:func:`evaluation_source`), the chain diagnostics every
``diagnostic_every`` draws (:func:`measure`) and an observer's observations every
``observer.every`` draws. The data set stays on the device; nothing leaves the loop.

Keys: the chain's key alone drives it (split once into a minibatch key and a noise key;
the noise of step ``t`` is ``fold_in(noise_key, t)``), so chain ``i`` under ``vmap`` equals
a single run with its key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from slt_jax._src import data as _data
from slt_jax._src.config import Arrays, Static
from slt_jax._src.engine import transforms
from slt_jax._src.engine.interfaces import EVERYTHING, ChainTrace
from slt_jax._src.posterior import sampling_dtype, tree_all_finite, tree_norm

PyTree = Any
DIAGNOSTICS = ("acceptance", "weight_distance", "grad_norm", "noise_norm")


def minibatch_source(static: Static, data: PyTree, batch_key: jax.Array) -> Callable:
    """``batch_at(t)``: the minibatch of step ``t`` (the whole data set for exact-gradient
    samplers). Stateless: see :func:`slt_jax._src.data.minibatch`."""
    if static.sampler.full_batch:
        return lambda t: data
    return lambda t: _data.minibatch(batch_key, t, data, static.batch_size)


#: ``fold_in`` constant that separates the independent loss minibatches' stream from the
#: chain's step minibatches (``loss_batch="independent"``).
LOSS_BATCH_STREAM = 0x1B5E


def evaluation_key(batch_key: jax.Array) -> jax.Array:
    """The key of a chain's independent loss minibatches (its own epochs and permutations,
    independent of the steps' minibatches and so of the chain's path)."""
    return jax.random.fold_in(batch_key, LOSS_BATCH_STREAM)


def reads_independent(static: Static) -> bool:
    """Whether recorded steps read their loss on independent minibatches
    (``loss_batch="independent"``; a resolved configuration with exact gradients has
    ``"step"``)."""
    return static.loss_batch == "independent"


def evaluation_source(static: Static, data: PyTree, batch_key: jax.Array) -> Callable | None:
    """``eval_at(t)``: the independent minibatch the loss of draw ``t`` is read on, or
    ``None`` when the loss is read on the step's own minibatch (``loss_batch="step"``)."""
    if not reads_independent(static):
        return None
    key = evaluation_key(batch_key)
    return lambda t: _data.minibatch(key, t, data, static.batch_size)


def step_size_at(static: Static, arrays: Arrays) -> Callable:
    """``eps_at(t)``: the step size of step ``t`` (a schedule multiplies the array one)."""
    if static.schedule is None:
        return lambda t: arrays.step_size
    return lambda t: arrays.step_size * jnp.asarray(static.schedule(t), jnp.float32)


def periodically(draw, every: int, update: Callable, state):
    """``update(state)`` on every ``every``-th draw, else ``state``. The predicate depends
    on the step only (not on the chain), so under ``vmap`` this stays a branch."""
    return jax.lax.cond(draw % every == 0, update, lambda s: s, state)


def measure(loss_fn, static, center, arrays, info, state, new_state, batch, eps, restriction):
    """The chain diagnostics of one move: the sampler's acceptance diagnostic
    (:meth:`~slt_jax._src.samplers.specs.Sampler.acceptance`: a Metropolis sampler's own
    acceptance, or a Langevin move's MALA acceptance at one extra gradient), ``‖w − w*‖``,
    ``‖∇log p‖`` and ``‖noise‖``, over the moving coordinates (``loss_fn`` and ``center``:
    in the restriction's coordinates)."""
    position = restriction.restrict(state.position, center)
    proposal = restriction.restrict(new_state.position, center)
    grad = restriction.select(info.logdensity_grad)
    noise = restriction.select(info.noise)
    acceptance = static.sampler.acceptance(
        loss_fn,
        center,
        nbeta=arrays.nbeta,
        localization=arrays.localization,
        position=position,
        proposal=proposal,
        info=info,
        grad=grad,
        batch=batch,
        step_size=eps,
    )
    values = (
        acceptance,
        tree_norm(jax.tree.map(lambda w, c: w - c, position, center)),
        tree_norm(grad),
        jnp.float32(jnp.nan) if noise is None else tree_norm(noise),
    )
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


def _wide(x):
    return _data.wide(jnp.asarray(x))


class Parts(NamedTuple):
    """One chain taken apart, for a data set streamed from the host: ``init(batch_0)`` is
    the first carry, ``step(carry, t, batch, record, evaluation=None)`` one step (its
    record: the loss, with the paired reference; read on ``evaluation``, an independent
    minibatch, when one is given), ``finish(carry, burnin_loss, records)`` the trace."""

    init: Callable
    step: Callable
    finish: Callable
    batch_key: jax.Array


def chain_parts(
    loss_fn,
    static: Static,
    key,
    center,
    arrays: Arrays,
    restriction=EVERYTHING,
    observer=None,
    *,
    burnin=None,
) -> Parts:
    """The parts of one chain (see :func:`run_chain`, which runs them over on-device data).

    The chain samples in the restriction's coordinates: ``origin`` (the centre there) is
    where it starts and what it is localized to; an observer sees the full parameters.

    ``burnin``: the number of burn-in steps as a traced value, for a chain whose length is
    a runtime value (:mod:`slt_jax._src.engine.blocks`; ``static.num_burnin`` and
    ``static.num_draws`` are then not read). A step's output is then ``(record, row)``:
    ``row`` the :data:`DIAGNOSTICS` of a draw that takes them (NaN on the other steps),
    where a chain of static length fills a buffer in its carry; there is no observer."""
    origin = restriction.origin(center)
    loss = restriction.loss(
        transforms.evaluation(
            loss_fn,
            microbatch_size=static.microbatch_size,
            remat=static.remat,
            compute_dtype=static.compute_dtype,
        ),
        center,
    )
    noise = {} if restriction.noise is None else {"noise": restriction.noise}
    if noise and not static.sampler.compactable:
        raise ValueError(f"sampler {static.sampler.name!r} cannot run a compact restriction.")
    kernel = static.sampler.build(
        loss, origin, nbeta=arrays.nbeta, localization=arrays.localization, **noise
    )
    project = restriction.projects and not static.sampler.full_batch
    batch_key, noise_key = jax.random.split(key)
    eps_at = step_size_at(static, arrays)
    paired, every = static.estimator == "paired", static.diagnostic_every
    observe_every = observer.every if observer is not None else 0
    rows = burnin is not None  # the diagnostics come out with each step (see above)
    if rows and observer is not None:
        raise ValueError("a chain of runtime length has no observer.")
    first_draw = static.num_burnin if burnin is None else burnin
    no_row = lambda: jnp.full((len(DIAGNOSTICS),), jnp.nan, jnp.float32)  # noqa: E731

    def recorded(t, state, new_state, info, eps, batch, evaluation, diagnostics, observed):
        """A draw's record (the loss, with the paired reference) and its diagnostics and
        observations."""
        out = _wide(info.loss)  # a bf16/f16 loss is recorded in float32 (see data.wide)
        if evaluation is not None:  # L_E(w_t) on a minibatch independent of the path
            evaluation = evaluation() if callable(evaluation) else evaluation
            out = _wide(loss(state.position, evaluation))
        read_on = batch if evaluation is None else evaluation
        out = (out, _wide(loss(origin, read_on))) if paired else out
        draw = t - first_draw
        if every:
            values = lambda: measure(  # noqa: E731
                loss, static, origin, arrays, info, state, new_state, batch, eps, restriction
            )
            if rows:
                out = (out, jax.lax.cond(draw % every == 0, values, no_row))
            else:
                diagnostics = periodically(
                    draw, every, lambda d: d.at[:, draw // every].set(values()), diagnostics
                )
        elif rows:
            out = (out, no_row())
        if observe_every:  # the observer sees w_t in the model's own float types
            moved = restriction.params(state.position, center)
            at = jax.tree.map(lambda w, c: w.astype(c.dtype), moved, center)
            observed = periodically(
                draw,
                observe_every,
                lambda o: observer.observe(o, at, draw // observe_every),
                observed,
            )
        return out, diagnostics, observed

    def step(carry, t, batch, record, evaluation=None):
        state, diverged, diagnostics, observed = carry
        eps = eps_at(t)
        new_state, info = kernel.step(jax.random.fold_in(noise_key, t), state, batch, eps)
        if project:
            position = restriction.restrict(new_state.position, origin)
            new_state = new_state._replace(position=position)
        finite = jnp.isfinite(info.loss) & tree_all_finite(new_state.position)
        args = (t, state, new_state, info, eps, batch, evaluation)
        if record is False and not rows:  # a burn-in step records its minibatch loss only
            out = _wide(info.loss)
        elif record is True and not rows:
            out, diagnostics, observed = recorded(*args, diagnostics, observed)
        else:  # traced (burn-in and draws in one scan): a branch on the step, not the chain
            loss_t = _wide(info.loss)
            skipped = (loss_t, jnp.zeros_like(loss_t)) if paired else loss_t
            skipped = (skipped, no_row()) if rows else skipped
            out, diagnostics, observed = jax.lax.cond(
                record,
                lambda d, o: recorded(*args, d, o),
                lambda d, o: (skipped, d, o),
                diagnostics,
                observed,
            )
        return (new_state, diverged | ~finite, diagnostics, observed), out

    def init(batch):
        start = jax.tree.map(lambda c: c.astype(sampling_dtype(c.dtype)), origin)
        length = 0 if rows else static.num_diagnostics
        diagnostics = jnp.full((len(DIAGNOSTICS), length), jnp.nan, jnp.float32)
        observed = observer.init() if observer is not None else None
        return (kernel.init(start, batch), jnp.asarray(False), diagnostics, observed)

    def finish(carry, burnin_loss, records):
        loss_trace, reference = records if paired else (records, jnp.zeros((0,), records.dtype))
        outputs = observer.finish(carry[3], center) if observer is not None else None
        return ChainTrace(loss_trace, reference, burnin_loss, carry[1], *carry[2], observed=outputs)

    return Parts(init, step, finish, batch_key)


def run_chain(
    loss_fn,
    static: Static,
    key: jax.Array,
    center: PyTree,
    data: PyTree,
    arrays: Arrays,
    restriction=EVERYTHING,
    observer=None,
) -> ChainTrace:
    """One chain started at ``center``: burn-in, then ``num_draws`` recorded steps.

    ``restriction`` (a bound :class:`~slt_jax._src.engine.interfaces.BoundRestriction`)
    says which coordinates move: the loss reads the others from ``center``, and a
    stochastic-gradient sampler's moves are put back onto the moving coordinates after
    every step (a Metropolis sampler, whose projected moves would break detailed balance,
    samples the others as free Gaussian dummies that never reach the loss). ``observer``
    (a bound observer) is evaluated every ``observer.every`` draws.
    """
    parts = chain_parts(loss_fn, static, key, center, arrays, restriction, observer)
    batch_at = minibatch_source(static, data, parts.batch_key)
    eval_at = evaluation_source(static, data, parts.batch_key)
    burnin = static.num_burnin
    carry = parts.init(batch_at(0))
    # One scan over burn-in and draws: the kernel's step (the model's gradient) is traced and
    # compiled once, and what a draw records is a branch on the step number.
    carry, outs = jax.lax.scan(
        lambda c, t: parts.step(
            c,
            t,
            batch_at(t),
            t >= burnin,
            None if eval_at is None else (lambda: eval_at(t)),
        ),
        carry,
        jnp.arange(burnin + static.num_draws),
    )
    burnin_loss = (outs[0] if isinstance(outs, tuple) else outs)[:burnin]
    records = jax.tree.map(lambda x: x[burnin:], outs)
    return parts.finish(carry, burnin_loss, records)
