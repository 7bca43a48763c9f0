"""``estimate_refined_llc_checkpoints``: refined LLCs (per attention head, say) of every
checkpoint of a training run, written as they finish and resumed after an interruption.

Each checkpoint is one call of :func:`~slt_jax.estimate_refined_llc`: its refinements ×
chains are the items of one compiled program, and every checkpoint has the parameters'
shapes, so the program is compiled once for the whole run. Every checkpoint's chains use
the same keys (common random numbers: the change of a head's λ̂ between checkpoints is
measured with less noise than two independent runs would give).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from slt_jax._src import refine
from slt_jax._src.config import LLCConfig, run_options
from slt_jax._src.io.checkpoints import as_checkpoint_set
from slt_jax._src.io.fingerprint import checkpoint_hashes, data_hash
from slt_jax._src.io.hf import write_temp
from slt_jax._src.io.store import check_out
from slt_jax._src.jobs.refined import estimate_refined_llc
from slt_jax._src.layouts import Layout

PyTree = Any
FORMAT = "slt_jax-refined-checkpoints/1"
MANIFEST = "manifest.json"
# Per (step, refinement): what each finished checkpoint's file holds.
FIELDS = ("llc_mean", "llc_stderr", "llc_std", "rhat", "ess", "num_diverged", "init_loss")


@run_options()
def estimate_refined_llc_checkpoints(
    loss_fn,
    checkpoints: Any,
    data: PyTree,
    refinements: Mapping[str, refine.Selector] | None = None,
    *,
    config: LLCConfig,
    steps: Sequence[int] | None = None,
    like: PyTree = None,
    format: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    layout: Layout | None = None,
    mesh: Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
):
    r"""Weight-refined LLCs of every checkpoint of a training run.

    For checkpoint ``w*_k`` and refinement ``V`` (a set of coordinates, e.g. one attention
    head; :mod:`slt_jax.refine`), the chains sample only ``V`` with the rest held at
    ``w*_k`` and estimate ``λ̂_V(k) = nβ (E[L_n] − L_n(w*_k))`` (Wang et al. 2024,
    arXiv:2410.02984), as :func:`~slt_jax.estimate_refined_llc` does for one checkpoint.

    Args:
      loss_fn, data, refinements: as for :func:`~slt_jax.estimate_refined_llc`
        (``data`` may be a host source such as :class:`~slt_jax.TokenWindows`).
      checkpoints, steps, like, format: as for :func:`~slt_jax.estimate_llc_checkpoints`.
      out: a results directory: each checkpoint's table is written (a ``.npy`` file,
        atomically) when it finishes; re-running with the same settings skips the
        finished ones, other settings are an error. Read it back with :func:`load_refined_results`.
      config, num_chains, num_steps, …: as for :func:`~slt_jax.estimate_llc`, except
        ``step_size="auto"``: calibrate first (:func:`~slt_jax.calibrate`) and pass the
        chosen numbers.
      progress: print one line per finished checkpoint.
      layout: as for :func:`~slt_jax.estimate_refined_llc` (component names such as
        ``"l0h1"``).

    Returns:
      An ``xarray.Dataset`` with dimensions ``(step, refinement)``: ``llc_mean``,
      ``llc_stderr``, ``llc_std``, ``rhat``, ``ess``, ``num_diverged``, ``init_loss``, and
      ``num_selected`` over ``refinement``; the settings in its ``config`` attribute.

    Example:
      >>> import jax.numpy as jnp, numpy as np, slt_jax as sj
      >>> x = np.linspace(-1, 1, 256)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] * w["a"] + w["b"] - b[1][:, None]) ** 2)
      >>> ckpts = [{"a": np.array([a]), "b": np.array([0.0])} for a in (1.9, 2.0)]
      >>> ds = sj.estimate_refined_llc_checkpoints(
      ...     loss, ckpts, (x, y), {"a": "a", "both": "*"}, steps=[10, 20],
      ...     num_steps=400, step_size=2e-3, localization=1.0, progress=False)
      >>> ds.llc_mean.dims, ds.num_selected.values.tolist()
      (('step', 'refinement'), [1, 2])
    """
    if isinstance(config.step_size, str) or isinstance(config.localization, str):
        raise ValueError(
            "estimate_refined_llc_checkpoints takes no step_size='auto': calibrate first "
            "(sj.calibrate, or the calibration of sj.estimate_llc_checkpoints) and pass the "
            "chosen step_size, localization and nbeta."
        )
    checkpoint_set = as_checkpoint_set(checkpoints, steps=steps, like=like, format=format)
    if refinements is None:
        refinements = {"all": "*"}
    first = jax.tree.map(lambda x: x[0], checkpoint_set.params)
    masks = refine.masks(first, refinements, layout=layout)  # checked before anything runs
    names = list(masks)
    counts = [refine.num_selected(masks[k]) for k in names]
    path = None if out is None else check_out(out)
    wanted = {
        "format": FORMAT,
        "config": config.to_dict(),
        "refinements": names,
        "num_selected": counts,
    }
    done = {}
    if path is not None:
        steps_here = [int(s) for s in checkpoint_set.steps]
        hashes = dict(zip(steps_here, checkpoint_hashes(checkpoint_set), strict=True))
        done = _start(path, {**wanted, "data_hash": data_hash(data)}, hashes)
    tables = []
    for k, step in enumerate(checkpoint_set.steps):
        step = int(step)
        if step in done:
            tables.append(done[step])
            continue
        centre = jax.tree.map(lambda x, k=k: x[k], checkpoint_set.params)
        result = estimate_refined_llc(
            loss_fn, centre, data, masks, config=config, mesh=mesh, devices=devices
        )
        table = _table(result, names, step)
        if path is not None:
            _write(path / f"step-{step:010d}.npy", table)
        tables.append(table)
        if progress:
            shown = ", ".join(f"{n} {table[0][i]:.3g}" for i, n in enumerate(names[:6]))
            print(f"step {step}: {shown}{' …' if len(names) > 6 else ''}", flush=True)
    return _dataset([int(s) for s in checkpoint_set.steps], names, counts, tables, wanted["config"])


def _table(result, names, step) -> np.ndarray:
    """``(len(FIELDS), refinements)`` numbers of one checkpoint."""
    rows = []
    for field in FIELDS:
        if field == "num_diverged":
            rows.append([float(np.sum(result[n].diverged)) for n in names])
        else:
            rows.append([float(getattr(result[n], field)) for n in names])
    return np.asarray(rows, np.float64)


def _dataset(steps, names, counts, tables, config: dict):
    import xarray as xr

    stacked = np.stack(tables) if tables else np.zeros((0, len(FIELDS), len(names)))
    variables = {
        field: (("step", "refinement"), stacked[:, i, :]) for i, field in enumerate(FIELDS)
    }
    variables["num_selected"] = ("refinement", np.asarray(counts, np.int64))
    return xr.Dataset(
        variables,
        coords={"step": np.asarray(steps, np.int64), "refinement": list(names)},
        attrs={"config": json.dumps(config)},
    )


def _write(target: pathlib.Path, table: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, table)
    os.replace(write_temp(target.parent, target.name, buffer.getvalue()), target)


def _start(path: pathlib.Path, wanted: dict, hashes: dict[int, str]) -> dict[int, np.ndarray]:
    """Check or write the manifest of ``path`` (the settings, the data's hash and each
    checkpoint's; checkpoints may be added between runs); the tables of the finished
    checkpoints."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = path / MANIFEST
    if manifest.exists():
        try:
            stored = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{manifest} is not a refined-LLC manifest ({error}).") from None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise ValueError(
                f"{manifest} was not written by estimate_refined_llc_checkpoints; use "
                "another output directory."
            )
        differ = [k for k in wanted if stored.get(k) != wanted[k]]
        if differ:
            what = ", ".join("data" if k == "data_hash" else k for k in differ)
            raise ValueError(
                f"{path} holds refined LLCs of other settings ({what} differ); "
                "use another output directory, or the settings it was written with."
            )
        known = {int(k): v for k, v in stored.get("checkpoints", {}).items()}
        changed = [s for s, h in hashes.items() if s in known and known[s] != h]
        if changed:
            raise ValueError(
                f"{path} holds refined LLCs of other checkpoints at steps {changed[:6]}: "
                "their parameters differ from these; use another output directory."
            )
        wanted = {**stored, "checkpoints": {str(k): v for k, v in {**known, **hashes}.items()}}
    else:
        if any(p.name != MANIFEST for p in path.iterdir()):
            raise ValueError(f"out={str(path)!r} is not empty and holds no refined-LLC results.")
        wanted = {**wanted, "checkpoints": {str(k): v for k, v in hashes.items()}}
    tmp = path / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(wanted, indent=1))
    os.replace(tmp, manifest)
    return _tables(path)


def _tables(path: pathlib.Path) -> dict[int, np.ndarray]:
    """``{step: table}`` of the checkpoints finished in ``path``."""
    done = {}
    for entry in path.glob("step-*.npy"):
        with open(entry, "rb") as f:
            done[int(entry.stem.split("-")[1])] = np.load(f)
    return done


def load_refined_results(path: str | os.PathLike):
    """The dataset :func:`estimate_refined_llc_checkpoints` wrote to ``out=path`` (the
    checkpoints finished so far, by step)."""
    path = pathlib.Path(path)
    manifest = path / MANIFEST
    if not manifest.exists():
        raise ValueError(f"{str(path)!r} holds no refined-LLC results (no {MANIFEST}).")
    stored = json.loads(manifest.read_text())
    if stored.get("format") != FORMAT:
        raise ValueError(f"{manifest} was not written by estimate_refined_llc_checkpoints.")
    done = _tables(path)
    steps = sorted(done)
    return _dataset(
        steps,
        stored["refinements"],
        stored["num_selected"],
        [done[s] for s in steps],
        stored["config"],
    )
