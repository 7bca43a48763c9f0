"""Chains whose length is a runtime value: the on-device chain program in blocks of ``K`` steps.

The chain program of :mod:`~slt_jax._src.engine.programs` is one scan whose length and
burn-in are part of the compiled program, so a run of another length compiles again. Here
the steps run in blocks of ``K`` (static) and the run's length and burn-in are passed as
values: one compiled block program serves runs of every length that share the other
settings. The escalating calibration (:mod:`slt_jax._src.jobs.escalate`), whose stages
change length from one to the next, compiles its chains once this way.

Two programs share the chain's parts (:func:`~slt_jax._src.engine.chain.chain_parts` with a
traced ``burnin``): init (the first carry, from step 0's minibatch) and a block (steps
``start … start + K − 1``, a loop whose end, the run's end where it falls in the block, is
the same for every chain, so it stays a loop under ``vmap``; the records of the steps past
the end are left out). A step draws its minibatch and noise from the chain's
key and its number, as a chain of one scan does, so the blocks give that chain's draws (to
the rounding of a differently fused program). The host joins the blocks' records and builds
the trace; a chain here has no observer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from slt_jax._src.config import Static
from slt_jax._src.engine import programs
from slt_jax._src.engine.chain import (
    DIAGNOSTICS,
    chain_parts,
    evaluation_source,
    minibatch_source,
)
from slt_jax._src.engine.interfaces import ChainTrace
from slt_jax._src.engine.stream import carry_by_rows


def _parts(loss_fn, static, plugins, key, center, arrays, args, burnin):
    restriction, _ = programs.bind(loss_fn, static, plugins, args, None)
    return chain_parts(loss_fn, static, key, center, arrays, restriction, burnin=burnin)


def _init(loss_fn, static, plugins, key, center, data, arrays, args):
    parts = _parts(loss_fn, static, plugins, key, center, arrays, args, 0)
    return parts.init(minibatch_source(static, data, parts.batch_key)(0))


def _block(loss_fn, static, plugins, key, center, data, arrays, args, carry, start, burnin, total):
    """Steps ``start … start + K − 1`` (``K = static.num_draws``, see :func:`_static`) of a
    run of ``total`` steps whose first ``burnin`` are burn-in."""
    parts = _parts(loss_fn, static, plugins, key, center, arrays, args, burnin)
    batch_at = minibatch_source(static, data, parts.batch_key)
    eval_at = evaluation_source(static, data, parts.batch_key)

    def advance(c, t):
        evaluation = None if eval_at is None else (lambda: eval_at(t))
        return parts.step(c, t, batch_at(t), t >= burnin, evaluation)

    k = static.num_draws
    records = jax.tree.map(
        lambda s: jnp.zeros((k, *s.shape), s.dtype), jax.eval_shape(advance, carry, start)[1]
    )

    def step(i, state):
        c, records = state
        c, out = advance(c, start + i)
        return c, jax.tree.map(lambda r, o: r.at[i].set(o), records, out)

    # a loop to the run's end within the block (not a scan of K with a branch per step: the
    # same loop as a scan's, and nothing is run past the end)
    return jax.lax.fori_loop(0, jnp.clip(total - start, 0, k), step, (carry, records))


#: Which arguments of each program hold one row per item (the others are replicated).
_PER_ITEM = {
    "init": (True, True, False, True, True),
    "block": (True, True, False, True, True, True, False, False, False),
}


def _program(phase: str, loss_fn, static: Static, plugins, mesh, shared: bool):
    def build():
        one = functools.partial(_init if phase == "init" else _block, loss_fn, static, plugins)
        per_item = _PER_ITEM[phase]
        if shared:  # one centre for every item (programs.Items.shared): not batched
            per_item = (per_item[0], False, *per_item[2:])
        return programs.over_items(programs.over_chains(one, per_item, static), mesh, per_item)

    return programs._cached(("blocks", phase, loss_fn, static, plugins, mesh, shared), build)


def _static(static: Static, block_steps: int, layout: str) -> Static:
    """The static configuration of the block programs: the run's length and burn-in taken
    out (``num_burnin = 0``; ``num_draws`` is the block's length ``K``), so that runs of
    every length share them."""
    return static._replace(num_burnin=0, num_draws=int(block_steps), chain_layout=layout)


def run_items(
    loss_fn, static: Static, items, data, mesh, *, plugins, block_steps: int, observed=None
):
    """Run the items in blocks of ``block_steps`` steps: host traces with a leading item
    axis, as :func:`slt_jax._src.engine.programs.run_items` gives."""
    if observed is not None:
        raise ValueError("a chain of runtime length has no observer.")
    layout = programs.default_layout(static, items.centers, len(items.keys), items.shared)
    burnin, total = static.num_burnin, static.num_burnin + static.num_draws
    blocked = _static(static, block_steps, layout)
    keys, centers, data, arrays, args, _ = programs.place(
        items, data, mesh, None, static.partition_rules
    )
    inputs = (keys, centers, data, arrays, args)
    carry = _program("init", loss_fn, blocked, plugins, mesh, items.shared)(*inputs)
    block = _program("block", loss_fn, blocked, plugins, mesh, items.shared)
    scalar = lambda v: programs._global(np.asarray(v, np.int32), mesh, P())  # noqa: E731
    outputs = []
    for start in range(0, total, int(block_steps)):
        carry, out = block(
            *inputs, carry_by_rows(carry, mesh), scalar(start), scalar(burnin), scalar(total)
        )
        outputs.append(out)
    steps = jax.tree.map(lambda *x: np.concatenate(x, axis=1)[:, :total], *programs._host(outputs))
    trace = _trace(static, steps, programs._host(carry[1]))
    return jax.tree.map(lambda x: x[: len(items.keys)], trace)


def _trace(static: Static, steps, diverged) -> ChainTrace:
    """The :class:`ChainTrace` of the joined steps (``(records, diagnostics rows)``, each
    with leading axes ``(items, total)``), as a chain of one scan records it."""
    records, rows = steps
    burnin, every = static.num_burnin, static.diagnostic_every
    paired = static.estimator == "paired"
    loss = records[0] if paired else records
    reference = records[1][:, burnin:] if paired else np.zeros((len(loss), 0), loss.dtype)
    drawn = rows[:, burnin::every] if every else np.zeros((len(loss), 0, len(DIAGNOSTICS)))
    diagnostics = [np.asarray(drawn[..., i], np.float32) for i in range(len(DIAGNOSTICS))]
    return ChainTrace(loss[:, burnin:], reference, loss[:, :burnin], diverged, *diagnostics)
