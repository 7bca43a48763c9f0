"""``estimate_refined_llc``: weight- and data-refined LLCs, observables and probe statistics.

Every refinement (a set of coordinates that move, :mod:`slt_jax.refine`) is its own group
of chains; the refinements of one shape group (:func:`slt_jax._src.restricted.plan`: e.g.
the H heads of a layer) × chains are the items of one compiled program, so H attention
heads cost one compilation and one call. Chain ``i`` of every refinement uses the same
key (common random numbers: differences between refinements are measured with less
noise). The chains observe named data sets and a probe set every ``observe_every`` draws
(:mod:`slt_jax._src.observe`); the estimators on those observations are in
:mod:`slt_jax.influence`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from slt_jax._src import refine, restricted
from slt_jax._src.config import LLCConfig, run_options
from slt_jax._src.engine import programs
from slt_jax._src.estimators.influence import ObservableLLCs, ProbeStatistics
from slt_jax._src.io import export
from slt_jax._src.jobs import orchestrate, report
from slt_jax._src.jobs.observation import Observation, observation_options
from slt_jax._src.layouts import Layout
from slt_jax._src.results import LLCResult

PyTree = Any


def observable_cells(obs: ObservableLLCs) -> str:
    """A table row's cells for the data-refined ``λ̂ ± se`` of each observable."""
    return "".join(
        f" {m:>8.4g}±{s:<5.2g}" for m, s in zip(obs.llc_mean, obs.llc_stderr, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class RefinedLLCResult(Mapping[str, LLCResult]):
    """Refined LLCs keyed by refinement name: ``res["head0"]`` is an
    :class:`~slt_jax.LLCResult` (the weight-refined LLC on the sampling data).

    Attributes:
      results: ``{name: LLCResult}``.
      num_selected: ``{name: number of coordinates that move}``.
      observables: ``{name: ObservableLLCs}`` (data-refined LLCs of the observable data
        sets under that refinement), or ``{}`` when no observables were given.
      probes: ``{name: ProbeStatistics}`` (per-example loss moments of the probe set, for
        Bayesian influence and susceptibilities), or ``{}`` without a probe.
    """

    results: dict[str, LLCResult]
    num_selected: dict[str, int]
    observables: dict[str, ObservableLLCs]
    probes: dict[str, ProbeStatistics]

    def __getitem__(self, name: str) -> LLCResult:
        return self.results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def llc_mean(self) -> dict[str, float]:
        return {k: r.llc_mean for k, r in self.results.items()}

    @property
    def llc_stderr(self) -> dict[str, float]:
        return {k: r.llc_stderr for k, r in self.results.items()}

    def table(self) -> str:
        """One row per refinement: coordinates, ``λ̂ ± se``, R-hat, ESS, and the
        data-refined ``λ̂`` of each observable."""
        names = next(iter(self.observables.values())).names if self.observables else ()
        head = f"{'refinement':<16} {'coords':>8} {'llc':>10} {'stderr':>8} {'rhat':>6} {'ess':>7}"
        head += "".join(f" {('llc:' + n)[:14]:>14}" for n in names)
        lines = [head, "-" * len(head)]
        for key, r in self.results.items():
            row = (
                f"{key[:16]:<16} {self.num_selected[key]:>8d} {r.llc_mean:>10.4g} "
                f"{r.llc_stderr:>8.2g} {r.rhat:>6.3f} {r.ess:>7.0f}"
            )
            if names:
                row += observable_cells(self.observables[key])
            lines.append(row)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_xarray(self):
        """An ``xarray.Dataset`` with a ``refinement`` dimension (and ``observable``).

        With a probe it also holds each refinement's probe LLCs ``probe_llc_mean`` and
        ``probe_llc_stderr`` ``(refinement, batch[, token_pos])``, the probe's
        ``probe_init_loss`` ``(batch[, token_pos])`` and, per token, ``input_ids``
        ``(batch, token)`` (devinterp 2.x's names). One refinement's full probe statistics,
        traces included, are ``res.probes[name].to_xarray()``.
        """
        import xarray as xr

        keys = list(self.results)
        data = {
            "llc_mean": ("refinement", [self.results[k].llc_mean for k in keys]),
            "llc_stderr": ("refinement", [self.results[k].llc_stderr for k in keys]),
            "rhat": ("refinement", [self.results[k].rhat for k in keys]),
            "ess": ("refinement", [self.results[k].ess for k in keys]),
            "num_selected": ("refinement", [self.num_selected[k] for k in keys]),
        }
        coords = {"refinement": keys}
        if self.observables:
            obs = [self.observables[k] for k in keys]
            coords["observable"] = list(obs[0].names)
            data["observable_llc_mean"] = (("refinement", "observable"), [o.llc_mean for o in obs])
            data["observable_llc_stderr"] = (
                ("refinement", "observable"),
                [o.llc_stderr for o in obs],
            )
        if self.probes:
            stats = [self.probes[k] for k in keys]
            first = stats[0]
            ex = ("batch", "token_pos") if first.token_shape is not None else ("batch",)
            data["probe_llc_mean"] = (("refinement", *ex), [s.llc() for s in stats])
            data["probe_llc_stderr"] = (("refinement", *ex), [s.llc_stderr() for s in stats])
            data["probe_init_loss"] = (ex, first.init_loss())
            if first.input_ids is not None:
                data["input_ids"] = (("batch", "token"), first.input_ids)
        return xr.Dataset(data, coords=coords)

    def to_zarr(self, path) -> None:
        """:meth:`to_xarray` written to a Zarr store (``xarray.open_zarr(path)`` reads it);
        needs ``pip install "slt-jax[lm]"``."""
        export.to_zarr(self.to_xarray(), path)

    def to_netcdf(self, path) -> None:
        """:meth:`to_xarray` written to a netCDF-4 file (``xarray.open_dataset(path)``)."""
        export.to_netcdf(self.to_xarray(), path)


@run_options()
@observation_options(loose=True)
def estimate_refined_llc(
    loss_fn,
    params: PyTree,
    data: PyTree,
    refinements: Mapping[str, refine.Selector] | None = None,
    *,
    config: LLCConfig,
    observe: Observation | None = None,
    layout: Layout | None = None,
    mesh: Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> RefinedLLCResult:
    r"""Weight-refined LLCs of many refinements in one compiled call, with observables.

    For each refinement ``V`` the chains sample the posterior of the selected coordinates
    with the others held at ``w* = params`` and estimate
    ``λ̂_V = nβ (E[L_n] − L_n(w*))`` on ``data`` (Wang et al. 2024, arXiv:2410.02984).
    Unselected coordinates never move; the noise and the localization act on the selected
    ones only.

    With an SGLD or RMSProp-SGLD sampler the chains are *compact*: they hold, move and
    differentiate only the selected entries, the model's other parameters are held once
    for all chains, and refinements of the same shape (e.g. the heads of one layer) share
    one compiled program; the estimates equal the masked full-size chains' to float
    rounding (:mod:`slt_jax._src.restricted`). Other samplers run masked full-size chains.

    Args:
      loss_fn, params, data: as for :func:`~slt_jax.estimate_llc`; ``data`` is the data set
        the chains sample with.
      refinements: ``{name: selector}``; a selector is a glob pattern on the parameter path
        (``"layer0/attn/*"``), a list of them, a predicate ``(path, leaf) -> bool | array``,
        or a boolean mask pytree shaped like ``params`` (which may select part of a tensor);
        see :mod:`slt_jax.refine` and :func:`slt_jax.refine.head_masks`. Default: one
        refinement ``"all"`` that selects everything (the ordinary LLC).
      observe: an :class:`~slt_jax.Observation` (the observation options below, in one
        object; the same keyword as :func:`~slt_jax.estimate_llc`'s), or the options one by
        one:
      observables: ``{name: data set}`` (pytrees like ``data``). Every ``observe_every``
        draws each chain evaluates the mean loss of each on its whole; the result's
        ``observables[refinement]`` holds their data-refined LLCs
        ``nβ (E[L_{D_k}] − L_{D_k}(w*))`` and traces.
      probe: a data set whose per-example losses are observed at the same draws and folded
        into streaming moments (memory independent of the number of draws): the result's
        ``probes[refinement]`` gives Bayesian influence and susceptibilities
        (:class:`~slt_jax.influence.ProbeStatistics`). ``loss_fn`` must accept a batch of
        one example.
      observe_every: observe every this many draws.
      probe_kernel: also keep the ``P × P`` covariance of the probe losses (``P²`` floats
        per chain and refinement).
      probe_trace: also keep every observed probe loss (``P`` floats per observation).
      per_token: with a language model's loss (``sj.lm.next_token_loss``, which has
        ``loss_fn.per_token``), observe the probe's per-token losses ``ℓ_{p,t}``, a
        ``(P, T)`` matrix at each observation, in place of its ``P`` per-example losses:
        ``probes[refinement]`` then gives per-token LLCs ``nβ (E[ℓ_{p,t}] − ℓ_{p,t}(w*))``,
        the BIF between tokens and per-token susceptibilities, shaped ``(P, T)``, and
        :meth:`~slt_jax.influence.ProbeStatistics.to_xarray` uses devinterp 2.x's dims
        (``chain, draw, batch, token_pos``). Moments grow as ``P·T`` (the kernel as
        ``(P·T)²``).
      layout: a :class:`~slt_jax.refine.Layout` (e.g. ``sj.lm.layout(model)``): string
        selectors that are component names (``"l0h1"``, ``"l1 mlp"``, ``"embed"``) resolve
        through it, so ``refinements={"l0h1": "l0h1", "mlp": ["l0 mlp", "l1 mlp"]}`` works.
      config, num_chains, …, devices: as for :func:`~slt_jax.estimate_llc`.

    Returns:
      A :class:`RefinedLLCResult`, a mapping ``name -> LLCResult``.

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 512)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] * w["a"] + w["b"] - b[1][:, None]) ** 2)
      >>> w = {"a": jnp.array([2.0]), "b": jnp.array([0.0])}
      >>> res = sj.estimate_refined_llc(loss, w, (x, y), {"a": "a", "both": "*"},
      ...                               num_steps=6000, step_size=2e-3, localization=1.0)
      >>> res.num_selected
      {'a': 1, 'both': 2}
      >>> # a regular model: λ = d/2 for the d coordinates that move
      >>> within = lambda r, d: bool(abs(r.llc_mean - d / 2) < 4 * r.llc_stderr)
      >>> within(res["a"], 1), within(res["both"], 2)
      (True, True)
    """
    prepared = orchestrate.prepare_run(loss_fn, params, data, config, mesh=mesh, devices=devices)
    loss_fn, config = prepared.loss_fn, prepared.config  # the loss traced once per shape
    if refinements is None:
        refinements = {"all": "*"}
    masks = refine.masks(params, refinements, layout=layout)
    plan = (observe or Observation()).plan(loss_fn, params, data, config)
    names, observer = plan.names, plan.observer
    keys = orchestrate.chain_keys(prepared.key, config.num_chains, 1, common=True)[0]
    parts = restricted.plan(params, masks, config.sampler)  # one program per shape group
    work = [
        orchestrate.Program(
            [
                orchestrate.Group(config, 0, keys, label=f"refinement {n!r}", args=part.args[n])
                for n in part.names
            ],
            programs.Plugins(part.restriction, observer),
        )
        for part in parts
    ]
    outcomes = orchestrate.run_prepared(
        prepared, work, observed=plan.observed if observer is not None else None
    )
    done = dict(zip([n for part in parts for n in part.names], outcomes, strict=True))
    results, observable_llcs, probes = {}, {}, {}
    for name in masks:
        outcome = done[name]
        results[name] = result = outcome.result
        obs = outcome.trace.observed
        if names:
            observable_llcs[name] = ObservableLLCs.from_trace(
                names, obs.observations, obs.observed_at_center[0], config.nbeta, result.diverged
            )
        if observe is not None and observe.probe is not None:
            probes[name] = _probe_statistics(
                obs,
                result,
                names,
                config,
                observe.probe_kernel,
                observe.probe_trace,
                plan.token_fields,
            )
        report.warn(result, prefix=f"refinement {name!r}: ")
    return RefinedLLCResult(
        results=results,
        num_selected={k: refine.num_selected(m) for k, m in masks.items()},
        observables=observable_llcs,
        probes=probes,
    )


def _probe_statistics(obs, result, names, config, probe_kernel, probe_trace, token_fields):
    healthy = ~result.diverged
    m = jax.tree.map(lambda x, h=healthy: np.asarray(x, np.float64)[h], obs.moments)
    return ProbeStatistics(
        count=m.count,
        probe_mean=m.probe_mean,
        observable_mean=m.observable_mean,
        probe_sq=m.probe_sq,
        observable_sq=m.observable_sq,
        cross=m.cross,
        kernel=m.kernel if probe_kernel else None,
        probe_at_center=np.asarray(obs.probe_at_center[0], np.float64),
        observable_names=names,
        nbeta=config.nbeta,
        probe_trace=np.asarray(obs.probe_trace)[healthy] if probe_trace else None,
        **token_fields,
    )
