"""``RefinedCheckpointsResult``: refined LLCs (and observables, probe statistics) of every
checkpoint of a training run, as :func:`~slt_jax.estimate_refined_llc_checkpoints` returns
them and as a results directory stores them, one chunk of checkpoints per file."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from slt_jax._src.estimators.influence import ObservableLLCs, ProbeStatistics
from slt_jax._src.io import export
from slt_jax._src.jobs import refined
from slt_jax._src.observe import Moments, Observations
from slt_jax._src.results import LLCResult

# The per-(step, refinement) numbers of the summary table (the dataset this function
# returned before it had a result type; :meth:`RefinedCheckpointsResult.table_dataset`).
FIELDS = ("llc_mean", "llc_stderr", "llc_std", "rhat", "ess", "num_diverged", "init_loss")
_OBSERVED = ("observations", "observed_at_center", "probe_at_center", "probe_trace")


@dataclasses.dataclass(frozen=True, eq=False)
class RefinedCheckpointsResult:
    r"""Weight-refined LLCs of ``K`` checkpoints × ``R`` refinements.

    ``results[name]`` is an :class:`~slt_jax.LLCResult` over the checkpoints, as
    :func:`~slt_jax.estimate_llc_checkpoints` returns (every array field has a leading
    checkpoint axis, ``steps`` the training steps): the refined LLC
    ``λ̂_V(k) = nβ (E[L_n] − L_n(w*_k))`` of refinement ``V = name`` at checkpoint ``k``.
    :meth:`checkpoint` gives one checkpoint's :class:`~slt_jax.RefinedLLCResult`, equal to
    what :func:`~slt_jax.estimate_refined_llc` returns on it (observables and probe
    statistics included).

    The per-(step, refinement) summary reads as an ``xarray`` table: ``res.llc_mean`` and
    ``res.llc_stderr`` are ``DataArray``\ s with dims ``(step, refinement)``,
    ``res.num_selected`` one over ``refinement``; any other attribute of
    :meth:`table_dataset` (``rhat``, ``ess``, ``num_diverged``, ``init_loss``, ``llc_std``,
    ``step``, ``refinement``, ``sizes``, ``attrs``, ``sel`` …) is read from it, so code
    written for the ``xarray.Dataset`` this function used to return keeps working.

    Attributes:
      steps: ``(K,)`` training steps, ascending.
      results: ``{name: LLCResult}``, stacked over checkpoints.
      selected: ``{name: number of coordinates that move}``.
      observed: ``{name: Observations}`` the observer's raw outputs per chain, stacked over
        checkpoints (``None`` without observables or probe); read them through
        :attr:`observables`, :attr:`probes` or :meth:`checkpoint`.
      observe: what was observed: ``names`` (observables), ``probe``, ``probe_kernel``,
        ``probe_trace``, ``token_shape``.
      token_fields: the per-token probe's ``token_shape``, ``token_mask`` and ``input_ids``
        (``{}`` per example).

    Example:
      >>> import jax.numpy as jnp, numpy as np, slt_jax as sj
      >>> x = np.linspace(-1, 1, 256)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] * w["a"] + w["b"] - b[1][:, None]) ** 2)
      >>> ckpts = [{"a": np.array([a]), "b": np.array([0.0])} for a in (1.9, 2.0)]
      >>> res = sj.estimate_refined_llc_checkpoints(
      ...     loss, ckpts, (x, y), {"a": "a", "both": "*"}, steps=[10, 20],
      ...     num_steps=400, step_size=2e-3, localization=1.0, progress=False)
      >>> res["a"].llc_mean.shape, res.checkpoint(1)["both"].steps is None
      ((2,), True)
    """

    store_format: ClassVar[str] = "slt_jax-refined-checkpoints/2"

    steps: np.ndarray
    results: dict[str, LLCResult]
    selected: dict[str, int]
    observed: dict[str, Observations] | None = None
    observe: dict = dataclasses.field(default_factory=dict)
    token_fields: dict = dataclasses.field(default_factory=dict)

    # ---- access ---------------------------------------------------------------------------

    def __getitem__(self, name: str) -> LLCResult:
        return self.results[name]

    def __len__(self) -> int:
        return len(self.results)

    @property
    def names(self) -> list[str]:
        return list(self.results)

    @property
    def config(self):
        return next(iter(self.results.values())).config

    def checkpoint(self, k: int) -> refined.RefinedLLCResult:
        """The refined LLCs of checkpoint ``k`` (an index), as
        :func:`~slt_jax.estimate_refined_llc` returns them."""
        results = {n: r.checkpoint(k) for n, r in self.results.items()}
        observables, probes = {}, {}
        names = tuple(self.observe.get("names", ()))
        for n, result in results.items():
            if self.observed is None:
                continue
            obs = jax.tree.map(lambda x, k=k: np.asarray(x)[k], self.observed[n])
            nbeta = result.config.nbeta
            if names:
                observables[n] = ObservableLLCs.from_trace(
                    names, obs.observations, obs.observed_at_center[0], nbeta, result.diverged
                )
            if self.observe.get("probe"):
                probes[n] = refined._probe_statistics(
                    obs,
                    result,
                    names,
                    result.config,
                    self.observe.get("probe_kernel", False),
                    self.observe.get("probe_trace", False),
                    self.token_fields,
                )
        return refined.RefinedLLCResult(results, dict(self.selected), observables, probes)

    @property
    def observables(self) -> dict[str, list[ObservableLLCs]]:
        """``{name: [ObservableLLCs of each checkpoint]}`` (``{}`` without observables)."""
        views = [self.checkpoint(k) for k in range(len(self.steps))]
        return {n: [v.observables[n] for v in views] for n in views[0].observables}

    @property
    def probes(self) -> dict[str, list[ProbeStatistics]]:
        """``{name: [ProbeStatistics of each checkpoint]}`` (``{}`` without a probe)."""
        views = [self.checkpoint(k) for k in range(len(self.steps))]
        return {n: [v.probes[n] for v in views] for n in views[0].probes}

    # ---- the summary table ----------------------------------------------------------------

    def table_dataset(self):
        """An ``xarray.Dataset`` with dims ``(step, refinement)``: ``llc_mean``,
        ``llc_stderr``, ``llc_std``, ``rhat``, ``ess``, ``num_diverged``, ``init_loss``, and
        ``num_selected`` over ``refinement``; the settings in its ``config`` attribute."""
        return self._table.copy()

    @functools.cached_property
    def _table(self):
        import xarray as xr

        names = self.names
        variables = {}
        for field in FIELDS:
            values = [
                np.sum(self.results[n].diverged, axis=-1)
                if field == "num_diverged"
                else np.asarray(getattr(self.results[n], field))
                for n in names
            ]
            variables[field] = (("step", "refinement"), np.stack(values, -1).astype(np.float64))
        variables["num_selected"] = ("refinement", [self.selected[n] for n in names])
        return xr.Dataset(
            variables,
            coords={"step": np.asarray(self.steps, np.int64), "refinement": names},
            attrs={"config": json.dumps(self.config.to_dict())},
        )

    @property
    def llc_mean(self):
        """``λ̂`` of each (step, refinement), an ``xarray.DataArray``."""
        return self._table["llc_mean"]

    @property
    def llc_stderr(self):
        """The Monte-Carlo standard error of each (step, refinement)."""
        return self._table["llc_stderr"]

    @property
    def num_selected(self):
        """Coordinates that move, per refinement (an ``xarray.DataArray``)."""
        return self._table["num_selected"]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in {f.name for f in dataclasses.fields(self)}:
            raise AttributeError(name)
        try:
            return getattr(self._table, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            ) from None

    def table(self) -> str:
        """One row per (step, refinement): coordinates, ``λ̂ ± se``, R-hat, ESS, diverged
        chains (and each observable's data-refined ``λ̂``)."""
        names = tuple(self.observe.get("names", ()))
        head = (
            f"{'step':>10} {'refinement':<16} {'coords':>8} {'llc':>10} {'stderr':>8} "
            f"{'rhat':>6} {'ess':>7} {'div':>5}"
        )
        head += "".join(f" {('llc:' + n)[:14]:>14}" for n in names)
        lines = [head, "-" * len(head)]
        observables = self.observables if names else {}
        for k, step in enumerate(self.steps):
            for n, r in self.results.items():
                row = (
                    f"{int(step):>10} {n[:16]:<16} {self.selected[n]:>8d} "
                    f"{r.llc_mean[k]:>10.4g} {r.llc_stderr[k]:>8.2g} {r.rhat[k]:>6.3f} "
                    f"{r.ess[k]:>7.0f} {int(np.sum(r.diverged[k])):>5d}"
                )
                if names:
                    row += refined.observable_cells(observables[n][k])
                lines.append(row)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # ---- export ---------------------------------------------------------------------------

    def to_xarray(self):
        """An ``xarray.Dataset`` with dims ``(checkpoint, refinement, chain, …)``.

        Every :class:`~slt_jax.LLCResult` field (``llc_mean`` ``(checkpoint, refinement)``,
        ``llc_per_chain`` ``(checkpoint, refinement, chain)``, ``loss_trace`` ``(checkpoint,
        refinement, chain, draw)``, …), ``step`` on ``checkpoint``, ``num_selected`` on
        ``refinement``. With observables: ``observable_llc_mean`` and
        ``observable_llc_stderr`` ``(checkpoint, refinement, observable)``. With a probe
        (the "embryology" of a probe set): ``probe_llc_mean``, ``probe_llc_stderr``
        ``(checkpoint, refinement, batch[, token_pos])``, ``probe_init_loss`` ``(checkpoint,
        batch[, token_pos])`` and, with observables too, ``susceptibility`` ``(checkpoint,
        refinement, observable, batch[, token_pos])``. The observer's raw outputs
        (``observed_*``) make it readable back (:meth:`from_xarray`).
        """
        import xarray as xr

        names = self.names
        parts = [self.results[n].to_xarray() for n in names]
        ds = xr.concat(parts, dim="refinement", coords="minimal", combine_attrs="override")
        ds = ds.assign_coords(refinement=names).transpose("checkpoint", "refinement", ...)
        ds["num_selected"] = ("refinement", np.asarray([self.selected[n] for n in names]))
        ds.attrs["observe"] = json.dumps(self.observe)
        if self.observed is not None:
            for key, value in _flat_observed(self.observed, names).items():
                dims = ("checkpoint", "refinement", "chain")
                dims += tuple(f"{key}_{i}" for i in range(value.ndim - 3))
                ds[key] = (dims, value)
            for key in ("token_mask", "input_ids"):
                if self.token_fields.get(key) is not None:
                    value = np.asarray(self.token_fields[key])
                    dims = tuple(f"probe_{key}_{i}" for i in range(value.ndim))
                    ds[f"probe_{key}"] = (dims, value.astype(np.int64))
            ds = ds.merge(self._derived())
        return ds

    def _derived(self):
        """The observables' and the probe's estimates per (checkpoint, refinement)."""
        import xarray as xr

        names = self.names
        views = [self.checkpoint(k) for k in range(len(self.steps))]
        data, coords = {}, {}
        observable_names = list(self.observe.get("names", ()))
        if observable_names:
            coords["observable"] = observable_names
            for what in ("llc_mean", "llc_stderr"):
                data[f"observable_{what}"] = (
                    ("checkpoint", "refinement", "observable"),
                    [[getattr(v.observables[n], what) for n in names] for v in views],
                )
        if self.observe.get("probe"):
            ex = ("batch", "token_pos") if self.token_fields else ("batch",)
            stats = [[v.probes[n] for n in names] for v in views]
            data["probe_llc_mean"] = (("checkpoint", "refinement", *ex), _grid(stats, "llc"))
            data["probe_llc_stderr"] = (
                ("checkpoint", "refinement", *ex),
                _grid(stats, "llc_stderr"),
            )
            data["probe_init_loss"] = (("checkpoint", *ex), [s[0].init_loss() for s in stats])
            if observable_names:
                data["susceptibility"] = (
                    ("checkpoint", "refinement", "observable", *ex),
                    _grid(stats, "susceptibility"),
                )
        return xr.Dataset(data, coords=coords)

    def to_zarr(self, path) -> None:
        """:meth:`to_xarray` written to a Zarr store; needs ``pip install "slt-jax[lm]"``."""
        export.to_zarr(self.to_xarray(), path)

    def to_netcdf(self, path) -> None:
        """:meth:`to_xarray` written to a netCDF-4 file (:meth:`from_xarray` reads it)."""
        export.to_netcdf(self.to_xarray(), path)

    @classmethod
    def from_xarray(cls, dataset) -> RefinedCheckpointsResult:
        """The inverse of :meth:`to_xarray`."""
        names = [str(n) for n in dataset["refinement"].values]
        results = {
            n: LLCResult.from_xarray(dataset.isel(refinement=i)) for i, n in enumerate(names)
        }
        selected = {n: int(c) for n, c in zip(names, dataset["num_selected"].values, strict=True)}
        observe = json.loads(dataset.attrs.get("observe", "{}"))
        observed, token_fields = None, {}
        if "observed_observations" in dataset:
            observed = {
                n: _observations(dataset, i, bool(observe.get("probe")))
                for i, n in enumerate(names)
            }
            if observe.get("token_shape") is not None:
                token_fields = {
                    "token_shape": tuple(observe["token_shape"]),
                    "token_mask": np.asarray(dataset["probe_token_mask"].values, bool),
                    "input_ids": np.asarray(dataset["probe_input_ids"].values),
                }
        steps = np.asarray(dataset["step"].values, np.int64)
        return cls(steps, results, selected, observed, observe, token_fields)

    @classmethod
    def concat(cls, parts: Sequence[RefinedCheckpointsResult]) -> RefinedCheckpointsResult:
        """Results over checkpoint sets joined along the checkpoint axis, sorted by step (a
        step held twice is kept once: the chains of a step do not depend on the chunking)."""
        first = parts[0]
        steps = np.concatenate([p.steps for p in parts])
        _, keep = np.unique(steps, return_index=True)  # sorted by step, first occurrence
        take = lambda *xs: np.concatenate([np.asarray(x) for x in xs])[keep]  # noqa: E731
        results = {n: jax.tree.map(take, *[p.results[n] for p in parts]) for n in first.names}
        observed = None
        if first.observed is not None:
            observed = {n: jax.tree.map(take, *[p.observed[n] for p in parts]) for n in first.names}
        return dataclasses.replace(first, steps=steps[keep], results=results, observed=observed)


def _grid(stats, method: str) -> np.ndarray:
    return np.asarray([[getattr(s, method)() for s in row] for row in stats])


def _flat_observed(observed: dict[str, Observations], names) -> dict[str, np.ndarray]:
    """``{variable: (checkpoint, refinement, chain, …) array}`` of the raw observations."""
    out = {}
    first = observed[names[0]]
    stack = lambda get: np.stack([np.asarray(get(observed[n])) for n in names], 1)  # noqa: E731
    for field in _OBSERVED:
        if getattr(first, field) is not None:
            out[f"observed_{field}"] = stack(lambda o, f=field: getattr(o, f))
    if first.moments is not None:
        for field in Moments._fields:
            out[f"observed_moments_{field}"] = stack(lambda o, f=field: getattr(o.moments, f))
    return out


def _observations(dataset, i: int, probe: bool) -> Observations:
    get = lambda key: np.asarray(dataset[key].values)[:, i]  # noqa: E731
    fields = {f: get(f"observed_{f}") if f"observed_{f}" in dataset else None for f in _OBSERVED}
    moments = None
    if probe:
        moments = Moments(**{f: get(f"observed_moments_{f}") for f in Moments._fields})
    return Observations(moments=moments, **fields)
