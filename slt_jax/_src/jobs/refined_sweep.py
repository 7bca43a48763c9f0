"""``estimate_refined_llc_checkpoints``: refined LLCs (per attention head, say), observables
and probe statistics of every checkpoint of a training run, checkpoints × refinements ×
chains as the items of one compiled program, chunked by memory, written through the results
store and resumed after an interruption.

The sweep is a :class:`~slt_jax._src.jobs.checkpoints.Sweep` whose groups are (checkpoint,
refinement) pairs: each carries its checkpoint as centre and its refinement's mask as the
restriction's argument, and every chunk is padded to the same number of groups, so one
compilation serves every chunk. Keys: chain ``i`` of every (checkpoint, refinement) uses
``split(key, num_chains)[i]`` (common random numbers across refinements, as in
:func:`~slt_jax.estimate_refined_llc`, and across checkpoints: the change of a head's λ̂
between checkpoints is measured with less noise than independent runs would give, and
each checkpoint's numbers are those of ``estimate_refined_llc`` on it with the same seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from slt_jax._src import refine, restricted, validation
from slt_jax._src.config import LLCConfig, run_options
from slt_jax._src.engine import programs
from slt_jax._src.io.checkpoints import as_checkpoint_set
from slt_jax._src.io.fingerprint import data_hash, loss_fingerprint, manifest
from slt_jax._src.io.store import MANIFEST, read_manifest, read_results
from slt_jax._src.jobs import orchestrate, report, traced
from slt_jax._src.jobs.checkpoints import Sweep, _lock_store, _run
from slt_jax._src.jobs.observation import Observation, observation_options
from slt_jax._src.jobs.refined_result import RefinedCheckpointsResult
from slt_jax._src.layouts import Layout
from slt_jax._src.results import stack_results

PyTree = Any


@run_options()
@observation_options(loose=True)
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
    observe: Observation | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    layout: Layout | None = None,
    mesh: Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> RefinedCheckpointsResult:
    r"""Weight-refined LLCs, observables and probe statistics of every checkpoint at once.

    For checkpoint ``w*_k`` and refinement ``V`` (a set of coordinates, e.g. one attention
    head; :mod:`slt_jax.refine`), the chains sample only ``V`` with the rest held at
    ``w*_k`` and estimate ``λ̂_V(k) = nβ (E[L_n] − L_n(w*_k))`` (Wang et al. 2024,
    arXiv:2410.02984), as :func:`~slt_jax.estimate_refined_llc` does for one checkpoint.
    Checkpoints × refinements × chains are the items of one compiled program,
    ``chunk_size`` checkpoints per call (every chunk padded to the same shapes: one
    compilation). With ``probe`` (and ``per_token``, ``observables``) the chains also
    observe the probe set, so its per-example (per-token) LLCs, Bayesian influence and
    susceptibilities come at every checkpoint (the "embryology" of the probe set).

    Chain ``i`` of every (checkpoint, refinement) uses the key ``split(key, num_chains)[i]``
    (common random numbers): each checkpoint's numbers are those of
    ``estimate_refined_llc(..., seed=seed)`` on it alone, to float rounding.

    Args:
      loss_fn, data, refinements, observe (or observables, probe, observe_every,
        probe_kernel, probe_trace, per_token), layout: as for
        :func:`~slt_jax.estimate_refined_llc`
        (``data`` may be a host source such as :class:`~slt_jax.TokenWindows`).
      checkpoints, steps, like, format, chunk_size, memory_budget: as for
        :func:`~slt_jax.estimate_llc_checkpoints` (``chunk_size=None``: the largest chunk
        whose program fits ``memory_budget`` by XLA's memory analysis).
      out: a results directory (:class:`~slt_jax._src.io.store.ResultStore`): each chunk is
        written (netCDF, atomically) as it finishes, under a lock (a second writer is an
        error). Re-running with the same settings skips the finished chunks; a run over
        more checkpoints of the same run resumes one over fewer; other settings, data,
        refinements, observables or checkpoint contents are an error, before anything is
        compiled. Read it back with :func:`load_refined_results`.
      config, num_chains, num_steps, …: as for :func:`~slt_jax.estimate_llc`, except
        ``step_size="auto"``: calibrate first (:func:`~slt_jax.calibrate`) and pass the
        chosen numbers.
      progress: show a progress bar (checkpoints done).
      mesh, devices: as for :func:`~slt_jax.estimate_llc`.

    Returns:
      A :class:`RefinedCheckpointsResult`: ``res["head0"]`` is an
      :class:`~slt_jax.LLCResult` over the checkpoints, ``res.checkpoint(k)`` a
      :class:`~slt_jax.RefinedLLCResult`; ``res.llc_mean`` an ``xarray.DataArray``
      ``(step, refinement)``; ``res.to_xarray()`` dims ``(checkpoint, refinement, chain,
      …)``.

    Example:
      >>> import jax.numpy as jnp, numpy as np, slt_jax as sj
      >>> x = np.linspace(-1, 1, 256)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] * w["a"] + w["b"] - b[1][:, None]) ** 2)
      >>> ckpts = [{"a": np.array([a]), "b": np.array([0.0])} for a in (1.9, 2.0)]
      >>> res = sj.estimate_refined_llc_checkpoints(
      ...     loss, ckpts, (x, y), {"a": "a", "both": "*"}, steps=[10, 20],
      ...     num_steps=400, step_size=2e-3, localization=1.0, progress=False)
      >>> res.llc_mean.dims, res.num_selected.values.tolist()
      (('step', 'refinement'), [1, 2])
    """
    if isinstance(config.step_size, str) or isinstance(config.localization, str):
        raise ValueError(
            "estimate_refined_llc_checkpoints takes no step_size='auto': calibrate first "
            "(sj.calibrate, or the calibration of sj.estimate_llc_checkpoints) and pass the "
            "chosen step_size, localization and nbeta."
        )
    checkpoint_set = as_checkpoint_set(checkpoints, steps=steps, like=like, format=format)
    first = checkpoint_set.read(0)  # one checkpoint (the others are read chunk by chunk)
    if refinements is None:
        refinements = {"all": "*"}
    masks = refine.masks(first, refinements, layout=layout)  # checked before anything runs
    prepared = orchestrate.prepare_run(loss_fn, first, data, config, mesh=mesh, devices=devices)
    loss_fn, config = prepared.loss_fn, prepared.config  # the loss traced once per shape
    observe = observe or Observation()
    plan = observe.plan(loss_fn, first, data, config)
    if chunk_size is not None:
        chunk_size = validation.check_count("chunk_size", chunk_size, minimum=1)
    if memory_budget is not None:
        memory_budget = validation.check_bytes("memory_budget", memory_budget)
    sweep = RefinedSweep.of(
        prepared,
        checkpoint_set,
        masks=masks,
        parts=restricted.plan(first, masks, config.sampler),
        observer=plan.observer,
        observed=plan.observed,
        observe={
            "names": list(plan.names),
            "probe": observe.probe is not None,
            "probe_kernel": bool(observe.probe_kernel),
            "probe_trace": bool(observe.probe_trace),
            "token_shape": None if plan.tokens is None else list(plan.tokens),
            "every": int(observe.every) if plan.observer is not None else None,
        },
        token_fields=plan.token_fields,
    )
    store = _lock_store(out, RefinedSweep) if out is not None else None
    try:
        result = _run(sweep, store, out, chunk_size, memory_budget, progress)
    finally:
        if store is not None:
            store.close()
    for name, one in result.results.items():
        report.warn_over_checkpoints(one, prefix=f"refinement {name!r}: ")
    return result


def _digest(tree: PyTree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{leaf.dtype}{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class RefinedSweep(Sweep):
    """A refined sweep: groups are (checkpoint, refinement) pairs, checkpoint-major."""

    result_type = RefinedCheckpointsResult

    masks: dict = dataclasses.field(default_factory=dict)
    parts: list = dataclasses.field(default_factory=list)  # restricted.plan of the masks
    observer: Any = None
    observed: Any = None
    observe: dict = dataclasses.field(default_factory=dict)
    token_fields: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def store_options(cls) -> dict:
        return {"result_type": cls.result_type, "growing": {"checkpoints": "checkpoints at steps"}}

    def chunk_programs(self, indices) -> list:
        """One program per shape group of the refinements (:func:`restricted.plan`: compact
        chains, or the mask path for a sampler that needs it); in each, checkpoint ``j`` of
        the chunk × each refinement of the group. Every group's chain keys are
        ``split(key, num_chains)`` (common random numbers)."""
        keys = jax.random.split(self.key, self.config.num_chains)
        labels = self.labels(indices)
        return [
            (
                programs.Plugins(part.restriction, self.observer),
                [
                    orchestrate.Group(
                        self.config,
                        j,
                        keys,
                        label=f"refinement {name!r} at {labels[j]}",
                        args=part.args[name],
                    )
                    for j in range(len(indices))
                    for name in part.names
                ],
            )
            for part in self.parts
        ]

    def result(self, indices, outcomes) -> RefinedCheckpointsResult:
        """The chunk's result from its outcomes: program after program (:meth:`chunk_programs`),
        checkpoint-major in each."""
        steps = self.checkpoint_set.steps[indices]
        names = list(self.masks)
        by_name, start = {}, 0
        for part in self.parts:
            block = outcomes[start : start + len(indices) * len(part.names)]
            by_name.update({n: block[r :: len(part.names)] for r, n in enumerate(part.names)})
            start += len(block)
        results = {n: stack_results([o.result for o in by_name[n]], steps) for n in names}
        observed = None
        if self.observer is not None:
            stack = lambda *xs: np.stack([np.asarray(x) for x in xs])  # noqa: E731
            observed = {
                n: jax.tree.map(stack, *[o.trace.observed for o in by_name[n]]) for n in names
            }
        return RefinedCheckpointsResult(
            steps=np.asarray(steps, np.int64),
            results=results,
            selected={n: refine.num_selected(m) for n, m in self.masks.items()},
            observed=observed,
            observe=self.observe,
            token_fields=self.token_fields,
        )

    def manifest(self, chunk_size: int) -> dict:
        """Settings, data, loss, refinements (their masks' hash), what is observed (the
        observed sets' hashes) and ``checkpoints``: ``{step: hash}``, which a later run may
        extend."""
        first = (
            self.checkpoint_set.template
            if self.checkpoint_set.lazy
            else self.checkpoint_set.read(0)
        )
        loss = loss_fingerprint(
            traced.unwrap(self.loss_fn), first, self.data, self.config.batch_size
        )
        contents = manifest(self.config, self.checkpoint_set, self.data, self.key, chunk_size, loss)
        steps = contents.pop("steps")
        # A set in memory: each step's content hash. A lazy set (nothing read yet): each
        # step's file, its content checked on resume by `verify_finished` against the
        # stamps kept in the manifest and the hashes written with each chunk.
        if "checkpoint_hashes" in contents:
            identity = contents.pop("checkpoint_hashes")
        else:
            identity = list(self.checkpoint_set.sources)
        contents["checkpoints"] = {str(s): h for s, h in zip(steps, identity, strict=True)}
        contents["refinements"] = list(self.masks)
        contents["num_selected"] = [refine.num_selected(m) for m in self.masks.values()]
        contents["masks_sha256"] = _digest(list(self.masks.values()))
        observed = None
        if self.observed is not None:
            observed = [data_hash(x) for x in self.observed.observables]
            observed.append(None if self.observed.probe is None else data_hash(self.observed.probe))
        contents["observe"] = {**self.observe, "data_hashes": observed}
        return contents

    def concat(self, results) -> RefinedCheckpointsResult:
        return RefinedCheckpointsResult.concat(results)


def load_refined_results(path: str | os.PathLike) -> RefinedCheckpointsResult:
    """The results :func:`estimate_refined_llc_checkpoints` wrote to ``out=path`` (the
    checkpoints finished so far, by step), as a :class:`RefinedCheckpointsResult`."""
    path = pathlib.Path(path)
    if not path.is_dir() or read_manifest(path, RefinedCheckpointsResult.store_format) is None:
        raise ValueError(f"{str(path)!r} holds no refined-LLC results (no {MANIFEST}).")
    return read_results(path, RefinedCheckpointsResult)
