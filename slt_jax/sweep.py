"""``estimate_llc_checkpoints``: the LLC of every checkpoint of a training run at once."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from slt_jax import _auto, _validation, sharding
from slt_jax._summarize import summarize, warn_over_checkpoints
from slt_jax.checkpoints import as_checkpoint_set
from slt_jax.engine import chain_config, checkpoint_keys, sampler_settings
from slt_jax.llc import DEFAULT_LOCALIZATION
from slt_jax.posterior import LossFn
from slt_jax.result import CalibrationRecord, LLCResult, concat_results, stack_results
from slt_jax.samplers import Sampler
from slt_jax.store import ResultStore, check_out, read_manifest, stored_chunk_size

PyTree = Any


def default_memory_budget(device: jax.Device | None = None) -> int:
    """Bytes a sweep may use: 90% of the accelerator's free memory, or on CPU half of the
    host's available memory (``/proc/meminfo``), or 4 GiB when neither is known."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):
        return 4 * 2**30


def program_bytes(compiled) -> int | None:
    """Device memory of a compiled program (arguments, outputs, temporaries) per XLA."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def auto_chunk_size(measure, num_checkpoints: int, budget: int) -> int:
    """The largest chunk whose compiled program fits in ``budget`` bytes.

    ``measure(chunk)`` returns the program's bytes for a chunk of that many checkpoints.
    Memory grows about linearly with the chunk: measure all checkpoints at once, scale
    down, and halve until the estimate fits (one chunk at least).
    """
    chunk = num_checkpoints
    size = measure(chunk)
    if size is None:
        return chunk
    if size > budget:
        fixed = measure(1)
        per_checkpoint = max(1, (size - fixed) / max(1, chunk - 1))
        chunk = int(max(1, min(chunk - 1, 1 + (budget - fixed) // per_checkpoint)))
        while chunk > 1 and measure(chunk) > budget:
            chunk //= 2
    return chunk


def estimate_llc_checkpoints(
    loss_fn: LossFn,
    checkpoints: Any,
    data: PyTree,
    *,
    num_chains: int = 8,
    num_steps: int = 1000,
    num_burnin: int | None = None,
    step_size: float | Callable[[jax.Array], jax.Array] | str = 1e-4,
    localization: float | str | None = None,
    nbeta: float | None = None,
    batch_size: int = 256,
    estimator: str = "paired",
    sampler: str | Sampler = "sgld",
    diagnostic_every: int = 10,
    seed: int | jax.Array = 0,
    steps: Any = None,
    like: PyTree = None,
    format: str | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    calibrate_on: int | None = None,
    calibration_budget: int | None = None,
    mesh: Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> LLCResult:
    r"""Estimate the LLC of every checkpoint of a training run, all in one compiled program.

    Each checkpoint ``w*_k`` is its own localization centre (and has its own initial loss);
    for each, ``num_chains`` SGLD chains sample
    :math:`p_k(w) \propto \exp(-n\beta L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*_k\rVert^2)`
    and :math:`\hat\lambda_k = n\beta(E_{p_k}[L_n] - L_n(w^*_k))` as in
    :func:`~slt_jax.estimate_llc`. Checkpoints × chains are vmapped together, ``chunk_size``
    checkpoints per call of the compiled program.

    Args:
      loss_fn, data, num_chains, num_steps, num_burnin, step_size, localization, nbeta,
        batch_size, estimator, sampler, diagnostic_every, calibration_budget: as in
        :func:`~slt_jax.estimate_llc`. ``step_size="auto"`` calibrates on one checkpoint
        (``calibrate_on``) and uses the chosen setting for all; the result's and the results
        directory's ``calibration`` record it, and resuming reuses it (no recalibration).
      calibrate_on: with ``step_size="auto"``, the training step of the checkpoint to
        calibrate on (default: the last).
      checkpoints: a :class:`~slt_jax.CheckpointSet`; a directory of snapshots (orbax,
        safetensors or flax msgpack; see :func:`~slt_jax.load_checkpoint_set`); a list of
        pytrees; or one pytree whose leaves are stacked along a leading checkpoint axis.
      seed: an int or a key. The checkpoint at training step ``s`` uses the chain keys
        ``split(fold_in(key, s), num_chains)``, so ``estimate_llc(..., seed=fold_in(key,
        s))`` on it alone gives the same chains, however the set is chunked.
      steps: training steps of in-memory checkpoints (default ``0 … K-1``).
      like: a template pytree (e.g. the ``params`` from :func:`~slt_jax.nnx_loss`) that
        snapshots loaded from disk are put into.
      format: for a directory, ``"safetensors"``, ``"msgpack"`` or ``"orbax"`` picks the
        snapshots of that format (default: the one present; see
        :func:`~slt_jax.load_checkpoint_set`).
      chunk_size: checkpoints per compiled call. ``None`` picks the largest that fits in
        ``memory_budget`` by XLA's memory analysis of the compiled program.
      memory_budget: bytes (an int, or an integral float such as ``2e9``); default
        :func:`default_memory_budget`.
      out: a results directory. Each chunk is written (netCDF via xarray, atomically) as
        soon as it finishes; re-running with the same configuration resumes, skipping
        finished chunks; a different configuration (sampler settings, seed, chunking,
        checkpoints, data, or the loss function's traced program) is an error. It must be a
        new or empty directory or one written by this function; it is checked, and locked,
        before anything is compiled. Read it back with :func:`~slt_jax.load_results`.
      progress: show a progress bar (checkpoints done, time left).
      mesh, devices: as in :func:`~slt_jax.estimate_llc`: the (checkpoint × chain) items of
        each chunk are sharded over them.

    Returns:
      An :class:`~slt_jax.LLCResult` whose array fields have a leading checkpoint axis and
      whose ``steps`` are the training steps (ascending). A checkpoint whose chains all
      diverged gets NaN estimates and a warning (the sweep goes on).

    Example:
      >>> import jax, jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 256)[:, None]
      >>> y = 2 * x[:, 0] + 0.1 * jax.random.normal(jax.random.key(0), (256,))
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> w_ols = jnp.linalg.lstsq(x, y)[0]  # one parameter, regular: λ = 1/2
      >>> ckpts = [w_ols, w_ols + 1e-3, w_ols - 1e-3]
      >>> res = sj.estimate_llc_checkpoints(loss, ckpts, (x, y), steps=[10, 100, 1000],
      ...                                   num_steps=400, step_size=1e-2,
      ...                                   localization=1.0, progress=False)
      >>> res.llc_mean.shape, res.steps.tolist()
      ((3,), [10, 100, 1000])
      >>> bool(abs(res.llc_mean - 0.5).max() < 0.15)  # about 0.5 ± 0.03 each
      True
    """
    checkpoint_set = as_checkpoint_set(checkpoints, steps=steps, like=like, format=format)
    first = jax.tree.map(lambda x: x[0], checkpoint_set.params)
    auto = _auto.wants_auto(step_size, localization)
    if not auto and localization is None:
        localization = DEFAULT_LOCALIZATION
    options = dict(
        num_chains=num_chains,
        num_steps=num_steps,
        num_burnin=num_burnin,
        nbeta=nbeta,
        batch_size=batch_size,
        estimator=estimator,
        seed=seed,
        sampler=sampler,
        diagnostic_every=diagnostic_every,
    )
    # Everything is checked before anything is compiled or written (with stand-in numbers
    # for what a calibration will choose).
    numeric = lambda v: v if not (v is None or isinstance(v, str)) else 1.0  # noqa: E731
    config, key = _validation.check_run(
        loss_fn,
        first,
        data,
        step_size=numeric(step_size),
        localization=numeric(localization),
        **options,
    )
    if chunk_size is not None:
        chunk_size = _validation.check_count("chunk_size", chunk_size, minimum=1)
    if memory_budget is not None:
        memory_budget = _validation.check_bytes("memory_budget", memory_budget)
    request = None
    if auto:
        request = _calibration_request(
            checkpoint_set, calibrate_on, calibration_budget, localization, nbeta
        )
    elif calibrate_on is not None or calibration_budget is not None:
        raise ValueError("`calibrate_on` and `calibration_budget` need step_size='auto'.")

    # The output directory is checked and locked (and a stored manifest read, which fixes
    # the chunking and any earlier calibration) before anything is compiled; the manifest
    # is compared or written after.
    store = _lock_store(out) if out is not None else None
    try:
        record = None
        if auto:
            record = _stored_calibration(store, out, request)
            if record is None:
                _, record = _auto.calibrated_setting(
                    loss_fn,
                    _checkpoint_at(checkpoint_set, request["calibrate_on"]),
                    data,
                    key=key,
                    localization=localization,
                    nbeta=nbeta,
                    num_steps=num_steps,
                    num_burnin=num_burnin,
                    budget=calibration_budget,
                    calibrate_on=request["calibrate_on"],
                    batch_size=batch_size,
                    estimator=estimator,
                    sampler=sampler,
                    diagnostic_every=diagnostic_every,
                    mesh=mesh,
                    devices=devices,
                )
            config, key = _validation.check_run(
                loss_fn,
                first,
                data,
                **{
                    **options,
                    "nbeta": record.nbeta,
                    "step_size": record.step_size,
                    "localization": record.localization,
                },
            )
        result = _sweep(
            loss_fn,
            config,
            key,
            checkpoint_set,
            first,
            data,
            store,
            out,
            record,
            request,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            progress=progress,
            mesh=sharding.resolve_mesh(mesh, devices),
        )
    finally:
        if store is not None:
            store.close()
    warn_over_checkpoints(result)
    return result


def _calibration_request(checkpoint_set, calibrate_on, budget, localization, nbeta) -> dict:
    """What an automatic step size was asked for (compared on resume)."""
    steps = [int(s) for s in checkpoint_set.steps]
    if calibrate_on is None:
        calibrate_on = steps[-1]
    elif isinstance(calibrate_on, bool) or not isinstance(calibrate_on, int | np.integer):
        raise TypeError(f"`calibrate_on` must be a training step (an int), got {calibrate_on!r}.")
    elif int(calibrate_on) not in steps:
        shown = steps if len(steps) <= 12 else [*steps[:6], "…", *steps[-6:]]
        raise ValueError(
            f"calibrate_on={calibrate_on} is not a step of the checkpoint set ({shown})."
        )
    if budget is not None:
        budget = _validation.check_count("calibration_budget", budget, minimum=1)
    if localization is None or isinstance(localization, str):
        localization = "auto"
    else:
        localization = _validation.check_positive("localization", localization, allow_zero=True)
    if nbeta is not None:
        nbeta = _validation.check_positive("nbeta", nbeta)
    return {
        "calibrate_on": int(calibrate_on),
        "budget": budget,
        "localization": localization,
        "nbeta": nbeta,
    }


def _checkpoint_at(checkpoint_set, step: int):
    index = int(np.flatnonzero(checkpoint_set.steps == step)[0])
    return jax.tree.map(lambda x: x[index], checkpoint_set.params)


def _stored_calibration(store, out, request) -> CalibrationRecord | None:
    """The calibration of an earlier run with the same request, so that resuming does not
    calibrate again (everything else is compared with the manifest as usual)."""
    if out is None:
        return None
    stored = store.stored if store is not None else read_manifest(check_out(out))
    if not stored:
        return None
    now = json.loads(json.dumps(request))
    if stored.get("calibration_request") != now:
        # A different run is in this directory: say so before calibrating for nothing.
        raise ValueError(
            f"out={str(out)!r} holds results of a different configuration; use another "
            "output directory, or the same settings to resume:\n  calibration_request: "
            f"{stored.get('calibration_request', '<missing>')!r} (stored) vs {now!r} (now)"
        )
    return CalibrationRecord.from_dict(stored["calibration"])


def _sweep(
    loss_fn,
    config,
    key,
    checkpoint_set,
    first,
    data,
    store,
    out,
    record,
    request,
    *,
    chunk_size,
    memory_budget,
    progress,
    mesh,
) -> LLCResult:
    """Every checkpoint at the numeric settings of ``config`` (``store`` already locked)."""
    num_checkpoints = len(checkpoint_set)
    static, settings = chain_config(config), sampler_settings(config)

    def items(indices):
        """The (checkpoint × chain) items of these checkpoints, flattened."""
        keys = checkpoint_keys(key, checkpoint_set.steps[indices], config.num_chains)
        owners = np.repeat(indices, config.num_chains)
        centers = jax.tree.map(lambda x: x[owners], checkpoint_set.params)
        return keys.reshape(-1), centers, data, settings

    def measure(chunk):
        lowered = sharding.lower_items(loss_fn, static, *items(np.zeros(chunk, int)), mesh)
        return program_bytes(lowered.compile())

    def run_chunk(indices) -> LLCResult:
        # Pad to the chunk size so that every chunk has the same shape (one compilation).
        padded = np.concatenate([indices, np.full(chunk_size - len(indices), indices[-1])])
        centers = jax.tree.map(lambda x: x[padded], checkpoint_set.params)
        init_losses = sharding.center_losses(loss_fn, centers, data, config.batch_size)
        traces = sharding.run_items(loss_fn, static, *items(padded), mesh)
        by_checkpoint = jax.tree.map(
            lambda x: x.reshape(chunk_size, config.num_chains, *x.shape[1:]), traces
        )
        per_checkpoint = [
            summarize(jax.tree.map(lambda x, j=j: x[j], by_checkpoint), init_losses[j], config)
            for j in range(len(indices))
        ]
        stacked = stack_results(per_checkpoint, checkpoint_set.steps[indices])
        return dataclasses.replace(stacked, calibration=record)

    if chunk_size is None and out is not None:
        chunk_size = stored_chunk_size(out) if store is None else store.stored_chunk_size
    if chunk_size is None:
        chunk_size = _auto_chunk_size(measure, num_checkpoints, memory_budget)
    chunk_size = min(chunk_size, num_checkpoints)
    if out is not None:
        loss = loss_fingerprint(loss_fn, first, data, config.batch_size)
        manifest = _manifest(config, checkpoint_set, data, key, chunk_size, loss)
        if record is not None:
            manifest["calibration"] = record.to_dict()
            manifest["calibration_request"] = request
        store = _start_store(store, out, manifest)
    results = _run_chunks(run_chunk, checkpoint_set.steps, chunk_size, store, progress)
    return concat_results(results)


def _auto_chunk_size(measure, num_checkpoints: int, memory_budget: int | None) -> int:
    """:func:`auto_chunk_size` in the budget; with several processes, the smallest."""
    budget = memory_budget or default_memory_budget()
    chunk_size = auto_chunk_size(measure, num_checkpoints, budget)
    if jax.process_count() > 1:  # every process must run the same programs
        from jax.experimental import multihost_utils

        chunk_size = int(np.min(multihost_utils.process_allgather(np.int32(chunk_size))))
    return chunk_size


def _lock_store(out) -> ResultStore | None:
    """Process 0 writes the results: it opens (checks and locks) the directory at once; the
    other processes only check the path."""
    if jax.process_index() == 0:
        return ResultStore(out)
    check_out(out)
    return None


def _start_store(store: ResultStore | None, out, manifest) -> ResultStore:
    """Process 0 compares or writes the manifest; with several processes the others wait
    for it, then read the same directory (which must be on a file system they all see)."""
    if store is not None:
        store.start(manifest)
    if jax.process_count() == 1:
        return store
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("slt_jax: results directory open")
    return store or ResultStore(out, manifest, writer=False)


def _run_chunks(run_chunk, steps, chunk_size, store, progress) -> list[LLCResult]:
    """Run (or read back) every chunk in order, writing each to ``store`` as it finishes.

    The finished chunks are listed once, before any chunk runs, so that every process
    (each runs every chunk's collective program) skips the same ones.
    """
    finished = store.finished_chunks() if store is not None else set()
    results = []
    bar = _progress_bar(len(steps), enabled=progress and jax.process_index() == 0)
    for index, start in enumerate(range(0, len(steps), chunk_size)):
        indices = np.arange(start, min(start + chunk_size, len(steps)))
        if index in finished:
            results.append(store.read_chunk(index))
        else:
            results.append(run_chunk(indices))
            if store is not None and store.writer:
                store.write_chunk(index, results[-1])
        bar.update(len(indices))
        bar.set_postfix_str(f"last step {int(steps[indices[-1]])}")
    bar.close()
    return results


def _progress_bar(total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ckpt", desc="LLC", disable=not enabled, dynamic_ncols=True)


def _shapes(tree: PyTree) -> dict[str, list]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): [list(leaf.shape), str(np.dtype(leaf.dtype))]
        for path, leaf in leaves
    }


def _digest(leaves) -> str:
    h = hashlib.sha256()
    for leaf in leaves:
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{leaf.dtype}{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()[:24]


def loss_fingerprint(loss_fn: LossFn, params: PyTree, data: PyTree, batch_size: int) -> dict:
    """What identifies the computation of ``loss_fn``: a hash of the text of its jaxpr (traced,
    never compiled, on ``params`` and a minibatch's shapes) and one of the jaxpr's constants
    (the arrays it closes over). The text depends on the JAX version (and precision)."""
    closed = jax.make_jaxpr(loss_fn)(params, _validation.batch_like(data, batch_size))
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr))  # no object addresses
    constants = []
    for constant in closed.consts:
        dtype = getattr(constant, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            constant = jax.random.key_data(constant)
        constants.append(np.asarray(constant))
    return {
        "jaxpr_sha256": hashlib.sha256(text.encode()).hexdigest()[:24],
        "constants_sha256": _digest(constants),
    }


def _manifest(config, checkpoint_set, data, key, chunk_size, loss) -> dict:
    """Everything that determines the results (compared on resume), and the platform."""
    from slt_jax import __version__

    first = jax.tree.map(lambda x: np.asarray(x[0]), checkpoint_set.params)
    leaves = [np.asarray(x) for x in jax.tree.leaves(checkpoint_set.params)]
    return {
        "config": config.to_dict(),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "steps": [int(s) for s in checkpoint_set.steps],
        "chunk_size": int(chunk_size),
        "params": _shapes(first),
        "checkpoint_hashes": [_digest([x[k] for x in leaves]) for k in range(len(checkpoint_set))],
        "data": _shapes(data),
        "data_hash": _digest(np.asarray(x) for x in jax.tree.leaves(data)),
        "loss_fn": loss,
        "slt_jax_version": __version__,
        "platform": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "x64": bool(jax.config.jax_enable_x64),
        },
    }
