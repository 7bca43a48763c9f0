"""The one orchestration every job uses.

A public entry point checks and prepares its run once (:func:`prepare_run`: the options
resolved against the data, the run's key, the mesh, the loss traced once per input shape,
:mod:`slt_jax._src.jobs.traced`) and hands the :class:`Prepared` run to whatever it calls
(``step_size="auto"`` → calibration → grid), which trusts it: a new setting is only
resolved (:meth:`Prepared.with_config`), never checked or traced again.

A job describes its work as *groups*: each group is a set of chains that makes one
:class:`~slt_jax.LLCResult` (a checkpoint, a refinement, a grid cell, a temperature), with
its resolved configuration, its centre, its chain keys and, for a restriction plug-in, its
arguments. :func:`run_prepared` runs a prepared run's groups (one or several compiled
programs of them):

0. (:func:`prepare`) checks the run before anything is compiled;
1. computes each distinct centre's ``L_n(w*)`` once (a small program, before the chains:
   a loss that is not finite at ``w*`` is an error there, or is flagged for a sweep):
   exactly, or from a bounded sample of minibatches (``init_loss_batches``, the same
   examples for every centre) with its standard error;
2. flattens the groups into items (one chain each) and runs all of them in one compiled
   program (:func:`slt_jax._src.engine.programs.run_items`);
3. summarizes each group's chains (:func:`slt_jax._src.estimators.llc.summarize`).

:mod:`slt_jax._src.jobs.report` then warns, one wording per failure kind.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src import data as _data
from slt_jax._src import sources, validation
from slt_jax._src.config import EXACT, LLCConfig
from slt_jax._src.engine import blocks, programs, stream
from slt_jax._src.engine.interfaces import ChainTrace
from slt_jax._src.estimators.llc import init_loss_estimate, summarize
from slt_jax._src.jobs import report, traced
from slt_jax._src.results import LLCResult

PyTree = Any


_AT_CENTER = "The loss at w*, L_n(w*),"


def prepare(loss_fn, params, data, config: LLCConfig, *, what=_AT_CENTER, fingerprint=False):
    """Check a run before anything is compiled: the parameters, the options against the
    data, the data (a host source once, in one read that with ``fingerprint`` also
    fingerprints it for a results directory), the loss on one minibatch and, for an exact
    ``L_n(w*)``, on the final short chunk of a full-data loss. Returns ``(resolved config,
    key)``."""
    validation.check_params(params)
    resolved, key = config.resolve(_data.num_examples(data))
    if sources.is_source(data) and resolved.static().sampler.full_batch:
        raise ValueError(
            f"sampler {resolved.sampler!r} uses the whole data set at every step; a "
            "data source streamed from the host needs a minibatch sampler (e.g. 'sgld')."
        )
    validation.check_data(data, getattr(loss_fn, "vocab_size", None), fingerprint=fingerprint)
    check_values = getattr(loss_fn, "check_tokens", None)  # a loss's own check of its data
    if check_values is not None and not sources.is_source(data):
        try:
            check_values(data)
        except (ValueError, TypeError) as error:
            raise type(error)(f"`data`: {error}") from error
    validation.check_loss_fn(loss_fn, params, validation.batch_like(data, resolved.batch_size))
    if resolved.init_loss_batches == EXACT:  # a sample has whole minibatches only
        validation.check_remainder(loss_fn, params, data, resolved.batch_size, what)
    return resolved, key


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A run checked once, that the jobs it calls take as it is.

    Attributes:
      loss_fn: the loss, traced once per input shape (:func:`slt_jax._src.jobs.traced.shared`;
        ``inspect.unwrap`` gives the user's).
      params: ``w*`` (for a sweep: the checkpoint whose structure was checked).
      data: the data set.
      config: the resolved configuration.
      key: the run's key (from ``config.seed``).
      mesh: where the chains run (:func:`slt_jax._src.engine.programs.resolve_mesh`).
      block_steps: on-device chains run in blocks of this many steps, their length a
        runtime value (:mod:`slt_jax._src.engine.blocks`: runs of every length share one
        compilation, as the escalating calibration's stages do); 0: one scan.
    """

    loss_fn: Any
    params: PyTree
    data: PyTree
    config: LLCConfig
    key: jax.Array
    mesh: Any
    block_steps: int = 0

    def with_config(self, config: LLCConfig) -> Prepared:
        """The same run with another setting (a calibrated step size, a grid cell):
        ``config`` is resolved against the data (cheap checks of the options); nothing is
        traced again (a remainder check that an exact ``L_n(w*)`` newly needs reuses the
        loss's trace on that shape, which the centre-loss program needs anyway)."""
        resolved, key = config.resolve(self.config.num_examples)
        b = resolved.batch_size
        if b != self.config.batch_size:  # a shape not checked yet (no job asks for one)
            batch = validation.batch_like(self.data, b)
            validation.check_loss_fn(self.loss_fn, self.params, batch)
        if resolved.init_loss_batches == EXACT and (
            self.config.init_loss_batches != EXACT or b != self.config.batch_size
        ):
            validation.check_remainder(self.loss_fn, self.params, self.data, b, _AT_CENTER)
        return dataclasses.replace(self, config=resolved, key=key)

    def at(self, params: PyTree) -> Prepared:
        """The same run centred at ``params``, of the checked structure (its values are
        checked: finite floating arrays)."""
        validation.check_params(params)
        return dataclasses.replace(self, params=params)

    def one_center(self) -> PyTree:
        """``params`` stacked as one centre (leading axis of 1)."""
        return jax.tree.map(lambda x: jnp.asarray(x)[None], self.params)


def prepare_run(
    loss_fn,
    params,
    data,
    config: LLCConfig,
    *,
    mesh=None,
    devices=None,
    fingerprint: bool = False,
) -> Prepared:
    """Check a run once (:func:`prepare`, with the loss traced once per input shape: its
    checks' traces are those the compiled programs reuse) and resolve its mesh.

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 64)[:, None]
      >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> run = prepare_run(loss, jnp.ones(1), (x, x[:, 0]), sj.LLCConfig(batch_size=16))
      >>> cell = run.with_config(sj.LLCConfig(batch_size=16, step_size=1e-3))  # no new checks
      >>> run.config.num_examples, cell.config.step_size
      (64, 0.001)
    """
    loss_fn = traced.shared(loss_fn)
    resolved, key = prepare(loss_fn, params, data, config, fingerprint=fingerprint)
    return Prepared(loss_fn, params, data, resolved, key, programs.resolve_mesh(mesh, devices))


@dataclasses.dataclass(frozen=True)
class Group:
    """One set of chains that makes one result.

    Attributes:
      config: its resolved configuration (all groups of a run share ``config.static()``;
        the array part may differ: grid cells, temperatures).
      center: the index of its centre ``w*`` in the stacked centres.
      keys: ``(config.num_chains,)`` typed keys, one per chain.
      label: what the group is, for messages (``"checkpoint at step 100"``).
      args: the restriction plug-in's arguments for its chains (a mask), or ``None``.
    """

    config: LLCConfig
    center: int
    keys: jax.Array
    label: str = ""
    args: PyTree = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A group's result and its host traces (``trace.observed``: the observer's outputs)."""

    group: Group
    result: LLCResult
    trace: ChainTrace


def chain_keys(key: jax.Array, num_chains: int, num_groups: int, *, common: bool) -> list:
    """Per-group chain keys: with ``common`` every group's chain ``i`` uses
    ``split(key, C)[i]`` (common random numbers: differences between groups are measured
    with less noise, and each group's chains are those of a single run with ``key``);
    otherwise each group gets its own ``C`` of ``split(key, G·C)``."""
    if common:
        return [jax.random.split(key, num_chains)] * num_groups
    keys = jax.random.split(key, num_groups * num_chains)
    return [keys[g * num_chains : (g + 1) * num_chains] for g in range(num_groups)]


def checkpoint_keys(key: jax.Array, steps, num_chains: int) -> jax.Array:
    """``(checkpoints, chains)`` keys: the checkpoint at training step ``s`` owns
    ``split(fold_in(key, s), chains)``, whatever else is in the set or how it is chunked."""
    steps = np.asarray(steps, np.int64)
    if steps.size and (steps.min() < 0 or steps.max() >= 2**32):
        raise ValueError(
            f"checkpoint steps must be in [0, 2**32) (each step seeds its chains' keys); got "
            f"{steps.min()} ... {steps.max()}."
        )
    steps = jnp.asarray(steps.astype(np.uint32))
    return jax.vmap(lambda s: jax.random.split(jax.random.fold_in(key, s), num_chains))(steps)


class CenterLosses(NamedTuple):
    """``L_n(w*)`` of each stacked centre and its standard error (0 when exact)."""

    mean: np.ndarray
    stderr: np.ndarray


def center_losses(
    loss_fn,
    centers: PyTree,
    data: PyTree,
    config: LLCConfig,
    labels: Sequence[str],
    *,
    key: jax.Array,
    mesh,
    flag: bool = False,
) -> CenterLosses:
    """``L_n(w*)`` of each stacked centre, before any chain runs: the full-data mean
    (``config.batch_size`` examples at a time) when ``config.init_loss_batches`` is
    ``"exact"``, else the mean of that many minibatches drawn with ``key`` (the run's key:
    :func:`slt_jax._src.data.sample_batches`, the same examples for every centre) and its
    standard error (:func:`~slt_jax._src.estimators.llc.init_loss_estimate`). With a model
    axis in ``mesh``, the centres split over it as the chains' will be. Not finite: a
    ``FloatingPointError`` (the chain program is neither compiled nor run), or with ``flag``
    left in (a sweep goes on; its estimate is NaN and a warning names it)."""
    batches, n, b = config.init_loss_batches, config.num_examples, config.batch_size
    rules = config.partition_rules
    if batches in (None, EXACT):
        mean = programs.center_losses(loss_fn, centers, data, b, mesh, rules)
        stderr = np.zeros_like(mean)
    else:
        indices = _data.sample_batches(key, n, b, batches)
        per_batch = programs.center_losses(loss_fn, centers, data, b, mesh, rules, indices=indices)
        mean, stderr = init_loss_estimate(per_batch, n, b)
    bad = ~np.isfinite(mean)
    if bad.any() and not flag:
        i = int(np.argmax(bad))
        raise FloatingPointError(report.center_not_finite(labels[i], float(mean[i])))
    return CenterLosses(mean, stderr)


def run(
    loss_fn,
    centers: PyTree,
    data: PyTree,
    groups: Sequence[Group],
    *,
    mesh,
    losses: CenterLosses,
    plugins: programs.Plugins = programs.NO_PLUGINS,
    observed: PyTree = None,
    pad_to: int | None = None,
    block_steps: int = 0,
) -> list[Outcome]:
    """Run every group's chains in one compiled program and summarize each group.

    ``centers`` are stacked (leading axis: centres), ``losses`` their ``L_n(w*)`` and its
    standard error (:func:`center_losses`). ``pad_to``: repeat the last group up to this
    many groups so that every call of a chunked job has the same shapes (one compilation).
    ``block_steps``: run on-device chains in blocks of this many steps, their length a
    runtime value (:mod:`slt_jax._src.engine.blocks`: runs of every length share one
    compilation); 0: one scan.
    """
    statics = {g.config.static() for g in groups}
    if len(statics) != 1:
        raise ValueError("the groups of one run must share the static configuration.")
    padded = list(groups) + [groups[-1]] * max(0, (pad_to or 0) - len(groups))
    runner = _runner(data, block_steps)
    traces = runner(
        traced.unwrap(loss_fn),  # see traced: a chain program traces the loss itself
        statics.pop(),
        items(padded, centers),
        data,
        mesh,
        plugins=plugins,
        observed=observed,
    )
    outcomes, start = [], 0
    for g in groups:
        rows = slice(start, start + g.config.num_chains)
        trace = jax.tree.map(lambda x, rows=rows: x[rows], traces)
        init, se = losses.mean[g.center], losses.stderr[g.center]
        outcomes.append(Outcome(g, summarize(trace, init, g.config, se), trace))
        start += g.config.num_chains
    return outcomes


def _runner(data, block_steps: int):
    """What runs the items: streamed from a host source, on the device in blocks of a
    runtime length, or on the device in one scan."""
    if sources.is_source(data):
        return stream.run_items
    if block_steps:
        return functools.partial(blocks.run_items, block_steps=block_steps)
    return programs.run_items


class Program(NamedTuple):
    """The groups of one compiled program of a run, its plug-ins, and the number of groups
    to pad to (see :func:`run`)."""

    groups: Sequence[Group]
    plugins: programs.Plugins = programs.NO_PLUGINS
    pad_to: int | None = None


def run_prepared(
    prepared: Prepared,
    work: Sequence[Group] | Sequence[Program],
    *,
    centers: PyTree = None,
    labels: Sequence[str] | None = None,
    observed: PyTree = None,
    flag: bool = False,
) -> list[Outcome]:
    """Run a prepared run's groups: each distinct centre's ``L_n(w*)`` once
    (:func:`center_losses`), then each compiled program (:func:`run`), one after another;
    the outcomes in order.

    Args:
      prepared: the checked run (its loss, data, configuration, key and mesh).
      work: the groups of one program, or several :class:`Program`.
      centers: stacked centres (leading axis), default the run's ``params`` alone.
      labels: each centre's name in messages.
      observed: the observer plug-in's data.
      flag: a centre whose loss is not finite is flagged (a sweep goes on), not an error.
    """
    if centers is None:
        centers = prepared.one_center()
    if labels is None:
        labels = [""] * int(np.shape(jax.tree.leaves(centers)[0])[0])
    losses = center_losses(
        prepared.loss_fn,
        centers,
        prepared.data,
        prepared.config,
        labels,
        key=prepared.key,
        mesh=prepared.mesh,
        flag=flag,
    )
    if work and isinstance(work[0], Group):
        work = [Program(work)]
    outcomes = []
    for program in work:
        outcomes += run(
            prepared.loss_fn,
            centers,
            prepared.data,
            program.groups,
            mesh=prepared.mesh,
            losses=losses,
            plugins=program.plugins,
            observed=observed,
            pad_to=program.pad_to,
            block_steps=prepared.block_steps,
        )
    return outcomes


def lower(loss_fn, centers, data, groups, *, mesh, plugins=programs.NO_PLUGINS, observed=None):
    """The lowered program :func:`run` would compile for these groups (memory analysis)."""
    lower_items = stream.lower_items if sources.is_source(data) else programs.lower_items
    return lower_items(
        traced.unwrap(loss_fn),
        groups[0].config.static(),
        items(groups, centers),
        data,
        mesh,
        plugins=plugins,
        observed=observed,
    )


def items(groups: Sequence[Group], centers: PyTree) -> programs.Items:
    """The groups flattened into items, group after group (one item per chain): each
    chain's key, its group's centre, array settings and restriction arguments. When
    ``centers`` holds one centre it is passed once (``Items.shared``), not once per chain.
    (Only then: a chunked sweep passes its chunk's centres even where the groups use one,
    in its padded last chunk, so that every chunk runs the same program.)"""
    counts = [g.config.num_chains for g in groups]
    owners = np.repeat([g.center for g in groups], counts)
    keys = np.concatenate([np.asarray(jax.random.key_data(g.keys)) for g in groups])
    arrays = jax.tree.map(
        lambda *values: np.repeat(np.asarray(values, np.float32), counts),
        *[g.config.arrays() for g in groups],
    )
    args = None
    if groups[0].args is not None:
        stack = lambda *a: np.repeat(np.stack(a), counts, axis=0)  # noqa: E731
        args = jax.tree.map(stack, *[g.args for g in groups])
    if np.shape(jax.tree.leaves(centers)[0])[0] == 1:
        one = jax.tree.map(lambda x: np.asarray(x)[0], centers)
        return programs.Items(jax.random.wrap_key_data(keys), one, arrays, args, shared=True)
    return programs.Items(
        jax.random.wrap_key_data(keys),
        jax.tree.map(lambda x: np.asarray(x)[owners], centers),
        arrays,
        args,
    )
