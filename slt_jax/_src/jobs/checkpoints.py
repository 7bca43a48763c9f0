"""``estimate_llc_checkpoints``: the LLC of every checkpoint of a training run at once."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from slt_jax._src import validation
from slt_jax._src.config import LLCConfig, run_options
from slt_jax._src.engine import programs
from slt_jax._src.io.checkpoints import Chunk, as_checkpoint_set
from slt_jax._src.io.fingerprint import loss_fingerprint, manifest
from slt_jax._src.io.lazy import CheckpointReadError
from slt_jax._src.io.store import ResultStore, check_out, read_manifest, stored_chunk_size
from slt_jax._src.jobs import auto, escalate, memory, orchestrate, plan, report, traced
from slt_jax._src.jobs.observation import Observation, observation_options
from slt_jax._src.results import CalibrationRecord, LLCResult, concat_results, stack_results

PyTree = Any


@run_options()
@observation_options()
def estimate_llc_checkpoints(
    loss_fn,
    checkpoints: Any,
    data: PyTree,
    *,
    config: LLCConfig,
    observe: Observation | None = None,
    steps: Any = None,
    like: PyTree = None,
    format: str | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    calibrate_on: int | None = None,
    calibration_budget: int | None = None,
    dry_run: bool = False,
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
      loss_fn, data, config, num_chains, num_steps, num_burnin, step_size, localization, nbeta,
        batch_size, estimator, sampler, diagnostic_every, calibration_budget: as in
        :func:`~slt_jax.estimate_llc`. ``step_size="auto"`` calibrates on one checkpoint
        (``calibrate_on``) and uses the chosen setting for all; the result's and the results
        directory's ``calibration`` record it, and resuming reuses it (no recalibration).
      calibrate_on: with ``step_size="auto"``, the training step of the checkpoint to
        calibrate on (default: the last).
      observe: an :class:`~slt_jax.Observation` (the keyword of every entry point): the
        chains also observe its observables and probe set at every checkpoint; the result
        is then the :class:`~slt_jax.RefinedCheckpointsResult` of the one refinement
        ``"all"`` (:func:`~slt_jax.estimate_refined_llc_checkpoints`), which takes no
        ``step_size="auto"``, ``calibrate_on`` or ``dry_run``.
      checkpoints: a :class:`~slt_jax.CheckpointSet`; a directory of snapshots (orbax,
        safetensors or flax msgpack; see :func:`~slt_jax.load_checkpoint_set`); a list of
        pytrees; or one pytree whose leaves are stacked along a leading checkpoint axis.
        A directory (or a lazy set) is read a chunk at a time: the next chunk's files are
        read on a thread while the current chunk samples, so host memory holds two chunks
        of checkpoints, whatever their number. A checkpoint that is gone, cut short or
        corrupt when its turn comes stops the sweep with an error naming it; the finished
        chunks stay in ``out``, and the same call resumes once the file is back.
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
        ``memory_budget`` by XLA's memory analysis of the compiled program, and whose host
        copies (two chunks of checkpoints for a lazy set: the one sampling, the one being
        read) fit in the host's available memory (see :func:`memory.chunk_size_within`).
      memory_budget: bytes (an int, or an integral float such as ``2e9``); default
        :func:`default_memory_budget`.
      out: a results directory. Each chunk is written (netCDF via xarray, atomically) as
        soon as it finishes; re-running with the same configuration resumes, skipping
        finished chunks; a different configuration (sampler settings, seed, chunking,
        checkpoints, data, or the loss function's traced program) is an error. It must be a
        new or empty directory or one written by this function; it is checked, and locked,
        before anything is compiled. Read it back with :func:`~slt_jax.load_results`.
      progress: show a progress bar (checkpoints done, time left).
      dry_run: do not sample: compile the sweep's program and return a
        :class:`~slt_jax._src.jobs.plan.RunPlan` (per-device memory by XLA's memory
        analysis, the chunking, the mesh and chain layout, the time per step of a short
        timed run); ``out`` is neither written nor locked, and ``step_size="auto"`` is not
        calibrated (stand-in numbers; the plan gives the calibration's chain-steps).
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
    if observe is not None:  # observing chains: the refined sweep, one refinement "all"
        return _observed_sweep(loss_fn, checkpoints, data, locals())
    checkpoint_set = as_checkpoint_set(checkpoints, steps=steps, like=like, format=format)
    # A lazy set is checked on its structure (shapes, dtypes): its values are read, and
    # checked, when their chunk runs.
    first = checkpoint_set.template if checkpoint_set.lazy else checkpoint_set.read(0)
    wants = auto.wants_auto(config.step_size, config.localization)
    # Everything is checked once, before anything is compiled or written (with stand-in
    # numbers for what a calibration will choose); a results directory records the data's
    # fingerprint, computed in the checks' one read.
    prepared = orchestrate.prepare_run(
        loss_fn,
        first,
        data,
        auto.checked_as(config),
        mesh=mesh,
        devices=devices,
        fingerprint=out is not None,
    )
    if chunk_size is not None:
        chunk_size = validation.check_count("chunk_size", chunk_size, minimum=1)
    if memory_budget is not None:
        memory_budget = validation.check_bytes("memory_budget", memory_budget)
    request = None
    if wants:
        request = _calibration_request(
            checkpoint_set, calibrate_on, calibration_budget, config.localization, config.nbeta
        )
    elif calibrate_on is not None or calibration_budget is not None:
        raise ValueError("`calibrate_on` and `calibration_budget` need step_size='auto'.")
    if dry_run:
        resolved = prepared.config
        calibration = None
        if wants:  # the escalation's budget: at most what it spends (it stops when verified)
            calibration = escalate.checked_budget(calibration_budget, resolved.num_steps)
        sweep = Sweep.of(prepared, checkpoint_set)
        return plan.dry_run(sweep, chunk_size, memory_budget, calibration=calibration)
    # The output directory is checked and locked (and a stored manifest read, which fixes
    # the chunking and any earlier calibration) before anything is compiled; the manifest
    # is compared or written after.
    store = _lock_store(out) if out is not None else None
    try:
        record = _stored_calibration(store, out, request) if wants else None
        if wants and record is None:
            centre = _checkpoint_at(checkpoint_set, request["calibrate_on"])
            config, record = auto.resolve_auto(
                prepared.at(centre),
                config,
                budget=calibration_budget,
                calibrate_on=request["calibrate_on"],
            )
        elif wants:
            config = dataclasses.replace(
                config,
                step_size=record.step_size,
                localization=record.localization,
                nbeta=record.nbeta,
            )
        sweep = Sweep.of(prepared.with_config(config), checkpoint_set, record, request)
        result = _run(sweep, store, out, chunk_size, memory_budget, progress)
    finally:
        if store is not None:
            store.close()
    report.warn_over_checkpoints(result)
    return result


def _observed_sweep(loss_fn, checkpoints, data, given: dict):
    """``estimate_llc_checkpoints(..., observe=...)``: the refined sweep of ``"all"``."""
    from slt_jax._src.jobs.refined_sweep import estimate_refined_llc_checkpoints

    for name, default in (("calibrate_on", None), ("calibration_budget", None), ("dry_run", False)):
        if given[name] != default:
            raise TypeError(f"`{name}` is not taken with `observe=` (a refined sweep).")
    keep = ("steps", "like", "format", "chunk_size", "memory_budget", "out", "progress")
    return estimate_refined_llc_checkpoints(
        loss_fn,
        checkpoints,
        data,
        None,
        config=given["config"],
        observe=given["observe"],
        mesh=given["mesh"],
        devices=given["devices"],
        **{k: given[k] for k in keep},
    )


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
        budget = validation.check_count("calibration_budget", budget, minimum=1)
    if localization is None or isinstance(localization, str):
        localization = "auto"
    else:
        localization = validation.check_positive("localization", localization, allow_zero=True)
    if nbeta is not None:
        nbeta = validation.check_positive("nbeta", nbeta)
    return {
        "calibrate_on": int(calibrate_on),
        "budget": budget,
        "localization": localization,
        "nbeta": nbeta,
    }


def _checkpoint_at(checkpoint_set, step: int):
    return checkpoint_set.read(int(np.flatnonzero(checkpoint_set.steps == step)[0]))


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


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep at numeric settings: what every chunk runs.

    Another job over checkpoints subclasses it (its groups, its plug-ins, its result type):
    :func:`_run` chunks it by memory (:meth:`chunk_size` measures :meth:`lower`), runs
    :meth:`run_chunk` on each chunk and writes it to a :class:`ResultStore` of
    :attr:`result_type` with :meth:`manifest`. The checkpoint set is read only through
    ``len``, ``.steps`` and ``select(indices).params`` (one chunk's parameters).
    """

    result_type = LLCResult  # what a chunk's result is (and what the store holds)
    plugins = programs.NO_PLUGINS  # the chains' restriction and observer plug-ins
    observed = None  # the observer's data

    loss_fn: Any
    config: LLCConfig
    key: jax.Array
    checkpoint_set: Any
    data: PyTree
    mesh: Mesh
    record: CalibrationRecord | None = None
    request: dict | None = None

    @classmethod
    def of(cls, prepared: orchestrate.Prepared, checkpoint_set, *args, **kwargs) -> Sweep:
        """The sweep of a prepared run over ``checkpoint_set`` (``args``, ``kwargs``: the
        other fields)."""
        return cls(
            prepared.loss_fn,
            prepared.config,
            prepared.key,
            checkpoint_set,
            prepared.data,
            prepared.mesh,
            *args,
            **kwargs,
        )

    @property
    def prepared(self) -> orchestrate.Prepared:
        """The sweep's run (its centres come chunk by chunk)."""
        return orchestrate.Prepared(self.loss_fn, None, self.data, self.config, self.key, self.mesh)

    def labels(self, indices) -> list[str]:
        return [f"checkpoint at step {int(self.checkpoint_set.steps[i])}" for i in indices]

    def groups(self, indices, config: LLCConfig | None = None) -> list[orchestrate.Group]:
        """The groups of these checkpoints: checkpoint ``i`` owns the keys of its step."""
        config = config or self.config
        steps = self.checkpoint_set.steps[indices]
        keys = orchestrate.checkpoint_keys(self.key, steps, config.num_chains)
        labels = self.labels(indices)
        return [orchestrate.Group(config, j, keys[j], label=labels[j]) for j in range(len(keys))]

    def centers(self, indices) -> PyTree:
        """The stacked parameters of these checkpoints (read now, for a lazy set)."""
        return self.checkpoint_set.read(np.asarray(indices))

    def placeholder(self, chunk: int) -> PyTree:
        """Zeros shaped as ``chunk`` stacked checkpoints: what lowering needs (nothing read)."""
        template = self.checkpoint_set.template
        return jax.tree.map(lambda s: np.zeros((chunk, *s.shape), s.dtype), template)

    @classmethod
    def store_options(cls) -> dict:
        """How a :class:`ResultStore` of this sweep's results is opened."""
        return {"result_type": cls.result_type}

    def manifest(self, chunk_size: int) -> dict:
        """What identifies the results on disk (compared on resume)."""
        checkpoint_set, config = self.checkpoint_set, self.config
        first = checkpoint_set.template if checkpoint_set.lazy else checkpoint_set.read(0)
        # the user's loss (not the run's jitted wrapper): the fingerprint of its own jaxpr
        loss = loss_fingerprint(traced.unwrap(self.loss_fn), first, self.data, config.batch_size)
        contents = manifest(config, checkpoint_set, self.data, self.key, chunk_size, loss)
        if self.record is not None:
            contents["calibration"] = self.record.to_dict()
            contents["calibration_request"] = self.request
        return contents

    def concat(self, results):
        """The chunks' results joined along the checkpoint axis."""
        return concat_results(results)

    def lower(self, chunk: int):
        """The compiled-program-to-be of a chunk of ``chunk`` checkpoints."""
        indices = np.zeros(chunk, int)
        # The program with the most groups (they run one after another: the largest decides).
        plugins, groups = max(self.chunk_programs(indices), key=lambda program: len(program[1]))
        return orchestrate.lower(
            self.loss_fn,
            self.placeholder(chunk),
            self.data,
            groups,
            mesh=self.mesh,
            plugins=plugins,
            observed=self.observed,
        )

    def host_bytes(self) -> int:
        """Host bytes a chunk holds per checkpoint: its parameters, twice for a lazy set
        (the chunk sampling and the next one being read), once for a set in memory (the
        chunk's gathered copy)."""
        leaves = jax.tree.leaves(self.checkpoint_set.template)
        one = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in leaves)
        return one * (2 if self.checkpoint_set.lazy else 1)

    def chunk_size(self, chunk_size: int | None, memory_budget: int | None) -> int:
        """``chunk_size`` as given, else the largest chunk whose program fits the budget."""
        if chunk_size is None:
            measure = lambda chunk: memory.program_bytes(self.lower(chunk).compile())  # noqa: E731
            chunk_size = memory.chunk_size_within(
                measure, len(self.checkpoint_set), memory_budget, host_bytes=self.host_bytes()
            )
        return min(chunk_size, len(self.checkpoint_set))

    def read_chunk(self, indices, chunk_size: int) -> Chunk:
        """A chunk's checkpoints, read (padded to ``chunk_size`` by repeating the last, which
        is read once), with their content hashes: what :meth:`run_chunk` takes."""
        padded = np.concatenate([indices, np.full(chunk_size - len(indices), indices[-1])])
        return self.checkpoint_set.load(padded)

    def run_chunk(self, indices, chunk_size: int, chunk: Chunk | None = None):
        """One chunk's results (padded to ``chunk_size``: every chunk has the same shapes,
        one compilation), from its checkpoints ``chunk`` as :meth:`read_chunk` gives them
        (read now if ``None``): :func:`orchestrate.run_prepared` of :meth:`chunk_programs`
        (one after another), then :meth:`result` of their outcomes (in that order)."""
        padded = np.concatenate([indices, np.full(chunk_size - len(indices), indices[-1])])
        chunk = chunk if chunk is not None else self.read_chunk(indices, chunk_size)
        work = []
        for plugins, groups in self.chunk_programs(padded):
            per_checkpoint = len(groups) // chunk_size
            work.append(
                orchestrate.Program(
                    groups[: len(indices) * per_checkpoint], plugins, chunk_size * per_checkpoint
                )
            )
        outcomes = orchestrate.run_prepared(
            self.prepared,
            work,
            centers=chunk.params,
            labels=self.labels(padded),
            observed=self.observed,
            flag=True,
        )
        return self.result(indices, outcomes)

    def chunk_programs(self, indices) -> list[tuple[programs.Plugins, list[orchestrate.Group]]]:
        """The plug-ins and groups of each compiled program that a chunk of checkpoints
        ``indices`` runs (groups checkpoint-major: each checkpoint's groups together)."""
        return [(self.plugins, self.groups(indices))]

    def result(self, indices, outcomes: list[orchestrate.Outcome]) -> LLCResult:
        """The chunk's result from its groups' outcomes (one per checkpoint here)."""
        steps = self.checkpoint_set.steps[indices]
        stacked = stack_results([o.result for o in outcomes], steps)
        return dataclasses.replace(stacked, calibration=self.record)


def _run(sweep: Sweep, store, out, chunk_size, memory_budget, progress):
    """Every checkpoint of the sweep, in chunks (``store`` already locked); the sweep's
    results joined (:meth:`Sweep.concat`)."""
    if chunk_size is None and out is not None:
        if store is None:
            chunk_size = stored_chunk_size(out, sweep.result_type)
        else:
            chunk_size = store.stored_chunk_size
    chunk_size = sweep.chunk_size(chunk_size, memory_budget)
    if out is not None:
        store = _start_store(store, out, sweep.manifest(chunk_size), sweep)
        verify_finished(sweep.checkpoint_set, store, chunk_size)
    results = _run_chunks(
        lambda indices, chunk: sweep.run_chunk(indices, chunk_size, chunk),
        sweep.checkpoint_set.steps,
        chunk_size,
        store,
        progress,
        read=lambda indices: sweep.read_chunk(indices, chunk_size),
    )
    return sweep.concat(results)


def _lock_store(out, sweep_type: type | None = None) -> ResultStore | None:
    """Process 0 writes the results: it opens (checks and locks) the directory at once; the
    other processes only check the path. ``sweep_type``: the :class:`Sweep` (sub)class,
    whose results the directory holds."""
    if jax.process_index() == 0:
        return ResultStore(out, **(sweep_type or Sweep).store_options())
    check_out(out)
    return None


# Manifest keys that identify the checkpoints: compared by :func:`verify_finished`, against
# each finished chunk's own hashes, rather than as a whole.
_IDENTITY = ("checkpoint_stamps", "checkpoint_hashes")


def _start_store(store: ResultStore | None, out, manifest, sweep=None) -> ResultStore:
    """Process 0 compares or writes the manifest; with several processes the others wait
    for it, then read the same directory (which must be on a file system they all see).

    Two sets in memory are compared on every checkpoint's content hash, as before; where
    either is lazy, the checkpoints are compared by :func:`verify_finished`."""
    if store is not None:
        stored = store.stored or {}
        both = "checkpoint_hashes" in stored and "checkpoint_hashes" in manifest
        store.start(manifest, checked_apart=_IDENTITY[:1] if both else _IDENTITY)
    if jax.process_count() == 1:
        return store
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("slt_jax: results directory open")
    options = (sweep or Sweep).store_options()
    return store or ResultStore(out, manifest, writer=False, checked_apart=_IDENTITY, **options)


def verify_finished(checkpoint_set, store: ResultStore, chunk_size: int) -> None:
    """The checkpoints of the finished chunks in ``store`` are those of ``checkpoint_set``.

    A checkpoint whose stamp (its files' names, sizes and modification times) is the one
    in the manifest is taken as unchanged, without reading it; any other (a copy, a
    ``touch``, a re-training, or a run started from a set in memory) is read and its
    content hash compared with the one written with its chunk (or, for chunks written
    before chunks carried hashes, the manifest's). A difference is a ``ValueError`` naming
    the checkpoints, before anything is compiled; the unfinished chunks need no check,
    since they will be computed from the checkpoints as they are now.
    """
    finished = sorted(store.finished_chunks(checkpoint_set.steps, chunk_size))
    if not finished:
        return
    stored = store.stored or {}
    stamps_then = stored.get("checkpoint_stamps") or []
    hashes_then = stored.get("checkpoint_hashes") or []
    stamps_now = checkpoint_set.stamps()
    changed = []
    for index in finished:
        indices = range(index * chunk_size, min((index + 1) * chunk_size, len(checkpoint_set)))
        recorded = store.chunk_hashes(index) or []
        for j, k in enumerate(indices):
            if checkpoint_set.lazy and k < len(stamps_then) and stamps_then[k] == stamps_now[k]:
                continue
            reference = recorded[j] if j < len(recorded) else None
            if reference is None and k < len(hashes_then):
                reference = hashes_then[k]
            now = checkpoint_set.load([k]).hashes[0] if checkpoint_set.lazy else stamps_now[k]
            if now != reference:
                step, source = int(checkpoint_set.steps[k]), checkpoint_set.sources[k]
                changed.append(f"step {step} ({source}): {reference!r} (stored) vs {now!r} (now)")
    if changed:
        raise ValueError(
            f"out={str(store.path)!r} holds results of different checkpoints: the content "
            "of these finished ones changed since (checkpoint_hashes); use another output "
            "directory, or restore them to resume:\n  " + "\n  ".join(changed)
        )


def _run_chunks(
    run_chunk: Callable,
    steps,
    chunk_size: int,
    store,
    progress: bool,
    *,
    read: Callable | None = None,
) -> list[LLCResult]:
    """Run (or read back) every chunk in order, writing each to ``store`` as it finishes.

    The finished chunks are listed once, before any chunk runs, so that every process
    (each runs every chunk's collective program) skips the same ones, and are never read.
    Without ``read``, ``run_chunk(indices)`` makes a chunk's result. With it,
    ``read(indices)`` gives the chunk's :class:`~slt_jax._src.io.checkpoints.Chunk` (its
    checkpoints and their hashes), called on a background thread one chunk ahead, so that
    the next chunk's files are read while the current one samples, and
    ``run_chunk(indices, chunk)`` makes the result; the hashes are written with it. An
    error of a read is raised here when its chunk's turn comes, after the chunks before
    it are written.
    """
    finished = store.finished_chunks(steps, chunk_size) if store is not None else set()
    chunks = [
        (index, np.arange(start, min(start + chunk_size, len(steps))))
        for index, start in enumerate(range(0, len(steps), chunk_size))
    ]
    todo = [indices for index, indices in chunks if index not in finished]
    ahead = _ReadAhead(read, todo) if read is not None else None
    results = []
    bar = _progress_bar(len(steps), enabled=progress and jax.process_index() == 0)
    try:
        for index, indices in chunks:
            hashes = None
            if index in finished:
                results.append(store.read_chunk(index))
            elif ahead is None:
                results.append(run_chunk(indices))
            else:
                chunk = ahead.next()
                results.append(run_chunk(indices, chunk))
                hashes = chunk.hashes[: len(indices)]
                del chunk  # its host arrays go before the next chunk is taken
                memory.release_host_memory()
            if index not in finished and store is not None and store.writer:
                store.write_chunk(index, results[-1], hashes=hashes)
            bar.update(len(indices))
            bar.set_postfix_str(f"last step {int(steps[indices[-1]])}")
    except CheckpointReadError as error:
        if store is None:
            raise
        done = len(store.finished_chunks())
        raise CheckpointReadError(
            f"{error}\nThe sweep stopped there; its {done} finished chunk(s) stay in "
            f"{str(store.path)!r}: once the checkpoint is back (or complete), run the same "
            "sweep again to resume."
        ) from error
    finally:
        bar.close()
        if ahead is not None:
            ahead.close()
    return results


class _ReadAhead:
    """``read(indices)`` of each chunk in ``todo``, in order, on one background thread, the
    next one started as soon as the current one is taken: at most two chunks are held (the
    one running, the one being read)."""

    def __init__(self, read: Callable, todo: list):
        self._read, self._todo = read, list(todo)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slt_jax-read")
        self._future = self._submit()

    def _submit(self):
        return self._pool.submit(self._read, self._todo.pop(0)) if self._todo else None

    def next(self):
        """The next chunk (waiting for its read; its read's error is raised here)."""
        future, self._future = self._future, None
        chunk = future.result()
        self._future = self._submit()
        return chunk

    def close(self) -> None:
        if self._future is not None:
            self._future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _progress_bar(total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ckpt", desc="LLC", disable=not enabled, dynamic_ncols=True)
