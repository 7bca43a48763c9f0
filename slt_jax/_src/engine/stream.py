"""The chain programs for a data set on the host (:class:`~slt_jax._src.sources.HostSource`).

The chains of :mod:`~slt_jax._src.engine.programs` draw their minibatches inside one
compiled loop; here the loop is cut into blocks of ``K`` steps. For each block the host
computes every chain's example indices (the same keyed stream as on the device:
:func:`slt_jax._src.data.minibatch_indices`, evaluated by JAX), gathers those examples from
the source, and sends the ``(items, K, batch, ...)`` block to the devices, sharded like
the items, while the previous block runs (a background thread gathers and transfers block
``k + 1`` while the devices compute block ``k``). Three small programs share the chain's
parts (:func:`~slt_jax._src.engine.chain.chain_parts`): init (the first carry), a block,
and finish (the trace). The blocks cut burn-in and draws alike: a block's step records
what its number says (burn-in or draw), as an on-device chain's does, and the blocks are
all of one length (``⌈T/m⌉`` steps for ``T`` steps in ``m`` blocks; the last block's few
steps past ``T`` leave the carry as it was and their records are dropped), so one block
program serves the whole run and the model's gradient is compiled once.

``K`` is the largest number of steps whose minibatches, for the items of one device, fit
half of the source's ``device_bytes`` (two blocks are alive at once). The chains of a
device are vmapped (the ``map`` layout is for on-device data).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from slt_jax._src import data as _data
from slt_jax._src.config import Static
from slt_jax._src.engine import programs, sharding
from slt_jax._src.engine.chain import chain_parts, evaluation_key, reads_independent


def _parts(loss_fn, static, plugins, key, center, arrays, args, observed):
    restriction, observer = programs.bind(loss_fn, static, plugins, args, observed)
    return chain_parts(loss_fn, static, key, center, arrays, restriction, observer)


def _init(loss_fn, static, plugins, key, center, arrays, args, observed, batch):
    return _parts(loss_fn, static, plugins, key, center, arrays, args, observed).init(batch)


def _block(loss_fn, static, plugins, key, center, arrays, args, observed, carry, ts, b):
    """The steps ``ts`` (burn-in, draws or both). ``b``: their minibatches, or
    ``(minibatches, independent loss minibatches)`` with ``loss_batch="independent"``."""
    parts = _parts(loss_fn, static, plugins, key, center, arrays, args, observed)
    # A step branches on its number as an on-device chain's does (one scan over burn-in and
    # draws), so that both compile the record alike and give the same floats.
    steps = static.num_burnin + static.num_draws

    def step(c, x):
        t, batch, evaluation = x if reads_independent(static) else (*x, None)
        new, out = parts.step(c, t, batch, t >= static.num_burnin, evaluation)
        # a step past the end (the last block's padding) leaves the carry as it was
        return jax.tree.map(lambda a, b: jnp.where(t < steps, a, b), new, c), out

    return jax.lax.scan(step, carry, (ts, *b) if reads_independent(static) else (ts, b))


def _finish(loss_fn, static, plugins, key, center, arrays, args, observed, carry, burn, recs):
    parts = _parts(loss_fn, static, plugins, key, center, arrays, args, observed)
    return parts.finish(carry, burn, recs)


#: Which arguments of each program hold one row per item (the others are replicated).
_PER_ITEM = {
    "init": (True, True, True, True, False, True),
    "block": (True, True, True, True, False, True, False, True),
    "finish": (True, True, True, True, False, True, True, True),
}


def _program(phase: str, loss_fn, static: Static, plugins, mesh, shared: bool = False):
    def build():
        fn = {
            "init": _init,
            "block": _block,
            "finish": _finish,
        }[phase]
        one = functools.partial(fn, loss_fn, static, plugins)
        per_item = _PER_ITEM[phase]
        if shared:  # one centre for every item (programs.Items.shared): not batched
            per_item = (per_item[0], False, *per_item[2:])
        return programs.over_items(programs.over_chains(one, per_item, static), mesh, per_item)

    return programs._cached(("stream", phase, loss_fn, static, plugins, mesh, shared), build)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _indices(batch_keys, steps, n: int, batch_size: int):
    """``(items, steps, batch)`` example indices: every chain's minibatches of ``steps``."""
    per_step = jax.vmap(_data.minibatch_indices, in_axes=(None, 0, None, None))
    return jax.vmap(per_step, in_axes=(0, None, None, None))(batch_keys, steps, n, batch_size)


def block_steps(source, static: Static, num_items: int, mesh) -> int:
    """``K``: steps per block (see the module docstring), at least 1."""
    per_device = math.ceil(num_items / sharding.num_item_slots(mesh))
    copies = 2 if reads_independent(static) else 1  # a recorded step's independent minibatch
    per_step = max(1, copies * per_device * static.batch_size * source.example_bytes)
    return int(
        max(1, min(static.num_burnin + static.num_draws, source.device_bytes // 2 // per_step))
    )


def _schedule(static: Static, k: int):
    """The blocks: ``(first step, length)``, over burn-in and draws, all of one length of at
    most ``k`` steps: ``m = ⌈T/k⌉`` blocks of ``⌈T/m⌉`` (the last may run past ``T`` by
    fewer than ``m`` steps, whose records are dropped)."""
    steps = static.num_burnin + static.num_draws
    length = math.ceil(steps / math.ceil(steps / k))
    return [(t, length) for t in range(0, steps, length)]


class _Feeder:
    """Gathers and places the blocks' minibatches, one block ahead, in a background thread."""

    def __init__(
        self, source, batch_keys, take, mesh, batch_size, k, evaluation_keys=None, burnin=0
    ):
        self.source, self.keys, self.take, self.mesh = source, batch_keys, take, mesh
        self.batch_size, self.k, self.evaluation_keys = batch_size, k, evaluation_keys
        self.burnin = burnin
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def _rows(self, keys, start, length):
        steps = jnp.arange(start, start + self.k)  # always K steps: one index program
        indices = np.asarray(_indices(keys, steps, len(self.source), self.batch_size))
        rows = self.source.gather(indices[self.take, :length])
        spec = sharding.item_spec(self.mesh)
        return jax.tree.map(lambda x: programs._global(np.asarray(x), self.mesh, spec), rows)

    def _load(self, start, length):
        rows = self._rows(self.keys, start, length)
        if self.evaluation_keys is None:
            return rows
        if start + length <= self.burnin:  # no draw reads them: the block's own stand in
            return rows, rows
        return rows, self._rows(self.evaluation_keys, start, length)

    def submit(self, start, length):
        """The minibatches of a block (with the independent loss minibatches, when the
        loss is read on those)."""
        return self.pool.submit(self._load, start, length)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def _placed(static, items, mesh, observed):
    placed = programs.place(items, None, mesh, observed, static.partition_rules)
    keys, centers, _, arrays, args, observed = placed
    return (keys, centers, arrays, args, observed), programs.padded_rows(len(items.keys), mesh)


def _start(loss_fn, static, items, source, mesh, plugins, observed):
    """Placed inputs, the blocks, the feeder with the first block's minibatches submitted,
    and every chain's first carry (from step 0's minibatch)."""
    inputs, take = _placed(static, items, mesh, observed)
    batch_keys = jax.vmap(lambda k: jax.random.split(k)[0])(items.keys)
    blocks = _schedule(static, block_steps(source, static, len(take), mesh))
    k = blocks[0][1]
    evaluation_keys = jax.vmap(evaluation_key)(batch_keys) if reads_independent(static) else None
    feeder = _Feeder(
        source, batch_keys, take, mesh, static.batch_size, k, evaluation_keys, static.num_burnin
    )
    pending = feeder.submit(*blocks[0])
    first_block = pending.result()
    if evaluation_keys is not None:
        first_block = first_block[0]
    first = jax.tree.map(lambda x: x[:, 0], first_block)
    carry = _program("init", loss_fn, static, plugins, mesh, items.shared)(*inputs, first)
    return inputs, take, blocks, feeder, pending, carry


def carry_by_rows(carry, mesh):
    """The carry with every leaf that came back replicated placed by rows over the items
    axes, as the others are, so that every block call sees one placement (one compilation):
    init returns the leaves it computes from shared inputs alone replicated (the
    not-yet-diverged flag, with one shared centre), and on one device XLA may return any."""
    if not sharding.item_axes(mesh):
        return carry
    rows = NamedSharding(mesh, sharding.item_spec(mesh))
    return jax.tree.map(lambda x: jax.device_put(x, rows) if x.sharding.spec == P() else x, carry)


def _steps(start, length, mesh):
    return programs._global(np.arange(start, start + length, dtype=np.int32), mesh, P())


def run_items(loss_fn, static: Static, items, source, mesh, *, plugins, observed=None):
    """Run the items with minibatches streamed from ``source``: host traces with a leading
    item axis, as :func:`slt_jax._src.engine.programs.run_items` gives for on-device data."""
    static = static._replace(chain_layout="vmap")
    started = _start(loss_fn, static, items, source, mesh, plugins, observed)
    inputs, take, blocks, feeder, pending, carry = started
    try:
        outputs = []
        run = _program("block", loss_fn, static, plugins, mesh, items.shared)
        for i, (start, length) in enumerate(blocks):
            batches = pending.result()
            if i + 1 < len(blocks):
                pending = feeder.submit(*blocks[i + 1])
            carry, out = run(
                *inputs, carry_by_rows(carry, mesh), _steps(start, length, mesh), batches
            )
            outputs.append(out)
    finally:
        feeder.close()
    outputs = [programs._host(o) for o in outputs]
    total = static.num_burnin + static.num_draws
    steps = jax.tree.map(lambda *x: np.concatenate(x, axis=1)[:, :total], *outputs)
    burnin = static.num_burnin
    place = lambda x: programs._global(np.asarray(x), mesh, sharding.item_spec(mesh))  # noqa: E731
    burnin_loss = place((steps[0] if isinstance(steps, tuple) else steps)[:, :burnin])
    records = jax.tree.map(lambda x: place(x[:, burnin:]), steps)
    finish = _program("finish", loss_fn, static, plugins, mesh, items.shared)
    trace = finish(*inputs, carry, burnin_loss, records)
    return jax.tree.map(lambda x: x[: len(items.keys)], programs._host(trace))


def lower_items(loss_fn, static: Static, items, source, mesh, *, plugins, observed=None):
    """The lowered block program (the largest; for XLA's memory analysis)."""
    static = static._replace(chain_layout="vmap")
    started = _start(loss_fn, static, items, source, mesh, plugins, observed)
    inputs, _, blocks, feeder, pending, carry = started
    try:
        batches = pending.result()
    finally:
        feeder.close()
    run = _program("block", loss_fn, static, plugins, mesh, items.shared)
    return run.lower(*inputs, carry_by_rows(carry, mesh), _steps(*blocks[0], mesh), batches)
