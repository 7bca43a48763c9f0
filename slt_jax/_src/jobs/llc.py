"""``estimate_llc``: the LLC of one trained parameter, from many SGLD chains at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from slt_jax._src.config import LLCConfig, run_options
from slt_jax._src.jobs import auto, orchestrate, refined, report
from slt_jax._src.jobs.observation import Observation, observation_options
from slt_jax._src.results import LLCResult

PyTree = Any


@run_options()
@observation_options()
def estimate_llc(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    config: LLCConfig,
    observe: Observation | None = None,
    calibration_budget: int | None = None,
    mesh: Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> LLCResult:
    r"""Estimate the local learning coefficient of ``params`` with SGLD.

    Samples the localized, tempered posterior

    .. math:: p(w) \propto \exp\bigl(-n\beta L_n(w) - \tfrac{\gamma}{2}\lVert w-w^*\rVert^2\bigr)

    around ``w* = params`` with ``num_chains`` SGLD chains run together in one compiled
    program, and returns

    .. math:: \hat\lambda = n\beta\,\bigl(E_p[L_n(w)] - L_n(w^*)\bigr),

    averaged over the chains that did not diverge (Lau et al. 2023, "Quantifying degeneracy
    in singular models via the learning coefficient", arXiv:2308.12108).

    The run options (``num_chains``, ``num_steps``, …) are those of
    :class:`~slt_jax.LLCConfig`; pass them one by one or as ``config=sj.LLCConfig(...)``
    (options given beside it override its fields).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over ``batch`` (a
        pytree shaped like ``data`` with ``batch_size`` rows). An exact ``L_n(w*)`` is
        evaluated in chunks of ``batch_size`` rows and one final chunk of ``n mod
        batch_size`` rows, so ``loss_fn`` must accept that batch size too (checked before
        anything is compiled; a ``batch_size`` that divides ``n`` avoids it). For Flax models see
        :func:`slt_jax.nnx_loss` and :func:`slt_jax.linen_loss`.
      params: ``w*``, any pytree of floating arrays (NNX ``State``, Linen params, a dict).
      data: a pytree of arrays whose first axis indexes the ``n`` examples. It is moved to
        the device once; minibatches are drawn inside the compiled loop.
      num_chains: independent chains, all started at ``w*``.
      num_steps: SGLD steps per chain, burn-in included.
      num_burnin: initial steps whose draws are discarded; default ``num_steps // 4``.
      step_size: ``ε`` of the update ``w ← w + ε/2·∇log p(w) + N(0, ε)`` (devinterp's ``lr``;
        for other samplers see :mod:`slt_jax.samplers`), or a schedule ``step -> ε`` such as
        an optax schedule (e.g. ``optax.cosine_decay_schedule(1e-4, num_steps, 0.1)``),
        evaluated at every step inside the compiled loop; or ``"auto"``: first calibrate
        (small judged grids that escalate, :mod:`slt_jax._src.jobs.escalate`, at this run's
        sampler, batch size, estimator and ``nβ``, within ``calibration_budget``
        chain-steps; the run length too, where ``num_steps`` is left at its default), then
        estimate at its recommended step size (and localization, unless given). The
        result's ``calibration`` records the setting, the calibration's table and
        explanation (every stage it ran), its chain-steps and its ε → 0 fit
        (``llc_corrected``). A recommendation that could not be verified is used with a
        warning; a budget spent with no usable setting is a
        :class:`~slt_jax.CalibrationError` (a ``ValueError``) listing the stages tried.
      localization: ``γ``, the strength of the pull towards ``w*``; default 100, or chosen
        by the calibration with ``step_size="auto"`` (also ``localization="auto"``).
      nbeta: ``nβ``; default ``n / log n``.
      batch_size: minibatch size ``b`` (``b = n`` gives exact gradients).
      estimator: ``"paired"`` (default) averages ``nβ·(L_B(w_t) − L_B(w*))`` on the same
        minibatch, cancelling minibatch noise for one extra forward pass per draw;
        ``"plain"`` averages ``nβ·(L_B(w_t) − L_n(w*))``. See :mod:`slt_jax._src.estimators.llc`.
      init_loss_batches: how ``L_n(w*)`` is computed: ``"exact"`` (a pass over every
        example), ``k`` (the mean over ``k`` minibatches drawn with the run's key, with its
        standard error ``init_loss_stderr``, added to ``llc_stderr`` for the plain
        estimator), or ``None`` (default): exact when ``n <= num_chains · num_steps ·
        batch_size``, else a bounded sample (32 batches for the paired estimator, whose λ̂
        does not use ``L_n(w*)``; ``max(32, num_chains · draws)`` for the plain one). See
        :func:`slt_jax._src.config.resolve_init_loss_batches`.
      sampler: ``"sgld"`` (default), ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, or an
        exact-gradient reference sampler ``"mala"``, ``"hmc"``, ``"nuts"`` (these use the
        whole data set at every step; ``batch_size`` is ignored); or a spec with options
        from :mod:`slt_jax.samplers`, e.g. ``sj.samplers.SGHMC(friction=50.0)``.
      diagnostic_every: record the chain diagnostics (MALA acceptance, ``‖w − w*‖``,
        gradient and noise norms) every this many draws; ``0`` turns them off. For SGLD
        each costs one extra gradient on the same minibatch.
      seed: an integer seed or a JAX key; chain ``i`` uses ``jax.random.split(key, C)[i]``.
      observe: an :class:`~slt_jax.Observation`: the chains also observe its observables
        and probe set (the same keyword for every entry point). The result is then the
        :class:`~slt_jax.RefinedLLCResult` of the one refinement ``"all"`` (everything
        moves): ``res["all"]`` this LLC, ``res.observables["all"]``, ``res.probes["all"]``.
      calibration_budget: with ``step_size="auto"``, the most chain-steps the escalating
        calibration may spend over all its stages (default 2·10⁶, or 8 stages of
        ``num_steps`` if more; a stage is 2 step sizes × 4 chains). With ``num_steps`` left at
        its default and no ``num_burnin``, the calibration also chooses the run length
        (:mod:`slt_jax._src.jobs.escalate`).
      mesh, devices: where the chains run: a ``jax.sharding.Mesh`` (all its axes used) or
        a list of devices; default every device (every process's after
        ``jax.distributed.initialize()``). Chains are sharded over them, padded to a
        multiple of their number; the result does not depend on it.

    Returns:
      An :class:`~slt_jax.LLCResult`. Diverged chains (non-finite loss or parameters) are
      flagged in ``diverged`` and left out of the estimate, with a warning; if every chain
      diverged, ``llc_mean`` is NaN (the traces are kept) and the warning suggests a
      smaller step size.

    Raises:
      ValueError, TypeError: on bad input, before anything is compiled.
      FloatingPointError: if the loss at ``w*`` over the data is not finite (checked before
        sampling: the LLC is undefined there).

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> x = jnp.linspace(-1, 1, 512)[:, None]; y = 2 * x[:, 0]
      >>> loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
      >>> res = sj.estimate_llc(loss, jnp.array([2.0]), (x, y), num_steps=4000,
      ...                       step_size=5e-3, localization=1.0)
      >>> round(res.llc_mean, 1)  # a regular model with d = 1: λ = 1/2
      0.5
    """
    if observe is not None:  # observing chains: the refined job, one refinement "all"
        return refined.estimate_refined_llc(
            loss_fn, params, data, None, config=config, observe=observe, mesh=mesh, devices=devices
        )
    # checked once, with stand-in numbers for what a calibration will choose
    prepared = orchestrate.prepare_run(
        loss_fn,
        params,
        data,
        auto.checked_as(config),
        mesh=mesh,
        devices=devices,
    )
    config, record = auto.resolve_auto(
        prepared, config, budget=calibration_budget, choose_length=True
    )
    prepared = prepared.with_config(config)
    config, key = prepared.config, prepared.key
    group = orchestrate.Group(config, 0, jax.random.split(key, config.num_chains))
    (outcome,) = orchestrate.run_prepared(prepared, [group])
    result = outcome.result
    if record is not None:
        result = dataclasses.replace(result, calibration=record)
    report.warn(result)
    return result
