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

from slt_jax._src.config import LLCConfig
from slt_jax._src.jobs import orchestrate
from slt_jax._src.results import LLCResult

PyTree = Any


def run_grid(
    prepared: orchestrate.Prepared,
    settings: Sequence[dict],
    *,
    config: LLCConfig,
    common_keys: bool,
) -> list[LLCResult]:
    """One :class:`~slt_jax.LLCResult` per entry of ``settings`` (dicts of ``step_size``,
    ``localization`` and ``nβ``; ``None``: n/log n), the other options from ``config``, on
    the ``prepared`` run (its loss, ``w*``, data and mesh, taken as checked: the settings
    are only resolved against the data).

    ``common_keys``: every setting's chain ``i`` uses the same key (common random numbers:
    differences between settings are then measured with less noise); otherwise each
    setting gets its own keys.
    """
    if not settings:
        raise ValueError("the grid of settings is empty.")
    if any(callable(cell["step_size"]) for cell in settings):
        raise TypeError("a grid takes numeric step sizes, not schedules.")
    first = prepared.with_config(dataclasses.replace(config, **settings[0]))
    n = first.config.num_examples
    configs = [first.config] + [
        dataclasses.replace(config, **cell).resolve(n)[0] for cell in settings[1:]
    ]
    keys = orchestrate.chain_keys(
        first.key, first.config.num_chains, len(configs), common=common_keys
    )
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
    return [o.result for o in orchestrate.run_prepared(first, groups)]
