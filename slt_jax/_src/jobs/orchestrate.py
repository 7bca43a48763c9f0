"""The one orchestration every job uses.

A job describes its work as *groups*: each group is a set of chains that makes one
:class:`~slt_jax.LLCResult` (a checkpoint, a refinement, a grid cell, a temperature), with
its resolved configuration, its centre, its chain keys and, for a restriction plug-in, its
arguments. :func:`run` then

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
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src import data as _data
from slt_jax._src import sources, validation
from slt_jax._src.config import EXACT, LLCConfig
from slt_jax._src.engine import programs, stream
from slt_jax._src.engine.interfaces import ChainTrace
from slt_jax._src.estimators.llc import init_loss_estimate, summarize
from slt_jax._src.jobs import report
from slt_jax._src.results import LLCResult

PyTree = Any


def prepare(
    loss_fn, params, data, config: LLCConfig, *, what="The loss at w*, L_n(w*),", fingerprint=False
):
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
) -> list[Outcome]:
    """Run every group's chains in one compiled program and summarize each group.

    ``centers`` are stacked (leading axis: centres), ``losses`` their ``L_n(w*)`` and its
    standard error (:func:`center_losses`). ``pad_to``: repeat the last group up to this
    many groups so that every call of a chunked job has the same shapes (one compilation).
    """
    statics = {g.config.static() for g in groups}
    if len(statics) != 1:
        raise ValueError("the groups of one run must share the static configuration.")
    padded = list(groups) + [groups[-1]] * max(0, (pad_to or 0) - len(groups))
    runner = stream.run_items if sources.is_source(data) else programs.run_items
    traces = runner(
        loss_fn,
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


def lower(loss_fn, centers, data, groups, *, mesh, plugins=programs.NO_PLUGINS, observed=None):
    """The lowered program :func:`run` would compile for these groups (memory analysis)."""
    lower_items = stream.lower_items if sources.is_source(data) else programs.lower_items
    return lower_items(
        loss_fn,
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
