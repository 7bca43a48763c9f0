"""Many sampler settings for one ``w*`` in one compiled program.

The groups of the run are the settings: each carries its own step size, localization and
``nβ`` as array arguments of the same compiled program that :func:`~slt_jax.estimate_llc`
uses, so a grid of settings costs one compilation and one call. Used by
:func:`~slt_jax.calibrate` and :func:`~slt_jax.estimate_llc_two_temperature`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from slt_jax._src.config import LLCConfig
from slt_jax._src.engine import programs
from slt_jax._src.jobs import orchestrate
from slt_jax._src.results import LLCResult

PyTree = Any


def run_grid(
    loss_fn,
    params: PyTree,
    data: PyTree,
    settings: Sequence[dict],
    *,
    config: LLCConfig,
    common_keys: bool,
    mesh=None,
    devices=None,
) -> list[LLCResult]:
    """One :class:`~slt_jax.LLCResult` per entry of ``settings`` (dicts of ``step_size``,
    ``localization`` and ``nbeta``; ``None``: n/log n), the other options from ``config``.

    ``common_keys``: every setting's chain ``i`` uses the same key (common random numbers:
    differences between settings are then measured with less noise); otherwise each
    setting gets its own keys.
    """
    if not settings:
        raise ValueError("the grid of settings is empty.")
    if any(callable(cell["step_size"]) for cell in settings):
        raise TypeError("a grid takes numeric step sizes, not schedules.")
    first, key = orchestrate.prepare(
        loss_fn, params, data, dataclasses.replace(config, **settings[0])
    )
    configs = [first] + [
        dataclasses.replace(config, **cell).resolve(first.num_examples)[0] for cell in settings[1:]
    ]
    one = jax.tree.map(lambda x: jax.numpy.asarray(x)[None], params)
    mesh = programs.resolve_mesh(mesh, devices)
    losses = orchestrate.center_losses(loss_fn, one, data, configs[0], [""], key=key, mesh=mesh)
    keys = orchestrate.chain_keys(key, configs[0].num_chains, len(configs), common=common_keys)
    groups = [
        orchestrate.Group(
            c,
            0,
            k,
            label=f"step_size={c.step_size:g}, localization="
            f"{c.localization:g}, nbeta={c.nbeta:.4g}",
        )
        for c, k in zip(configs, keys, strict=True)
    ]
    outcomes = orchestrate.run(loss_fn, one, data, groups, mesh=mesh, losses=losses)
    return [o.result for o in outcomes]
