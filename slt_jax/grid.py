"""Many sampler settings for one ``w*`` in one compiled program.

The items of the run are (setting × chain) pairs: each carries its own step size,
localization and ``nβ`` as array arguments of the same compiled program that
:func:`~slt_jax.estimate_llc` uses, so a grid of settings costs one compilation and one
call. Used by :func:`~slt_jax.calibrate` and :func:`~slt_jax.estimate_llc_two_temperature`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from slt_jax import _validation, sharding
from slt_jax._summarize import summarize
from slt_jax.engine import SamplerSettings, chain_config
from slt_jax.posterior import LossFn
from slt_jax.result import LLCResult

PyTree = Any


def run_grid(
    loss_fn: LossFn,
    params: PyTree,
    data: PyTree,
    settings: Sequence[dict],
    *,
    common_keys: bool,
    mesh=None,
    devices=None,
    **options,
) -> list[LLCResult]:
    """One :class:`~slt_jax.LLCResult` per entry of ``settings``.

    Args:
      settings: dicts with ``step_size``, ``localization`` and ``nbeta`` (``None``: n/log n).
      common_keys: every setting's chain ``i`` uses the same key (common random numbers:
        differences between settings are then measured with less noise); otherwise each
        setting gets its own keys.
      options: the other options of :func:`~slt_jax.estimate_llc` (all settings share them).
    """
    if not settings:
        raise ValueError("the grid of settings is empty.")
    _validation.check_params(params)
    options = {"seed": 0, **options}
    first, key = _validation.check_run(loss_fn, params, data, **settings[0], **options)
    configs = [first] + [
        _validation.resolve_config(**cell, **options, num_examples=first.num_examples)
        for cell in settings[1:]
    ]
    if any(callable(cell["step_size"]) for cell in settings):
        raise TypeError("a grid takes numeric step sizes, not schedules.")
    init_loss = sharding.center_loss(loss_fn, params, data, first.batch_size)
    num_cells, num_chains = len(configs), first.num_chains
    if common_keys:
        keys = jax.random.split(key, num_chains)
        keys = jax.random.wrap_key_data(
            np.tile(np.asarray(jax.random.key_data(keys)), (num_cells, 1))
        )
    else:
        keys = jax.random.split(key, num_cells * num_chains)
    per_item = SamplerSettings(
        *(
            np.repeat(np.asarray([getattr(c, name) for c in configs], np.float32), num_chains)
            for name in ("step_size", "localization", "nbeta")
        )
    )
    centers = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (num_cells * num_chains, *np.shape(x))), params
    )
    traces = sharding.run_items(
        loss_fn,
        chain_config(first),
        keys,
        centers,
        data,
        per_item,
        sharding.resolve_mesh(mesh, devices),
    )
    results = []
    for g, config in enumerate(configs):
        rows = slice(g * num_chains, (g + 1) * num_chains)
        trace = jax.tree.map(lambda x, rows=rows: x[rows], traces)
        results.append(summarize(trace, init_loss, config))
    return results
