"""``estimate_llc``: the LLC of one trained parameter, from many SGLD chains at once."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from slt_jax import _auto, _validation, sharding
from slt_jax._summarize import summarize, warn_if_unhealthy
from slt_jax.diagnostics import LLCDiagnosticWarning
from slt_jax.engine import chain_config, sampler_settings
from slt_jax.posterior import LossFn
from slt_jax.result import LLCResult
from slt_jax.samplers import Sampler

PyTree = Any
#: The localization ``γ`` when none is given and the step size is not calibrated.
DEFAULT_LOCALIZATION = 100.0


def estimate_llc(
    loss_fn: LossFn,
    params: PyTree,
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

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over ``batch`` (a
        pytree shaped like ``data`` with ``batch_size`` rows). ``L_n(w*)`` is evaluated in
        chunks of ``batch_size`` rows and one final chunk of ``n mod batch_size`` rows, so
        ``loss_fn`` must accept that batch size too (checked before anything is compiled;
        a ``batch_size`` that divides ``n`` avoids it). For Flax models see
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
        evaluated at every step inside the compiled loop; or ``"auto"``: first run
        :func:`~slt_jax.calibrate` (automatic grid, at this run's ``num_steps``, burn-in,
        sampler, batch size, estimator and ``nβ``, within ``calibration_budget``
        chain-steps), then estimate at its recommended step size (and localization, unless
        given). The result's ``calibration`` records the setting, the calibration's table
        and explanation, and its ε → 0 fit (``llc_corrected``). A recommendation that could
        not be verified is used with a warning; no usable setting at all is a
        :class:`~slt_jax.CalibrationError` (a ``ValueError``) saying what to run next.
      localization: ``γ``, the strength of the pull towards ``w*``; default 100, or chosen
        by the calibration with ``step_size="auto"`` (also ``localization="auto"``).
      nbeta: ``nβ``; default ``n / log n``.
      batch_size: minibatch size ``b`` (``b = n`` gives exact gradients).
      estimator: ``"paired"`` (default) averages ``nβ·(L_B(w_t) − L_B(w*))`` on the same
        minibatch, cancelling minibatch noise for one extra forward pass per draw;
        ``"plain"`` averages ``nβ·(L_B(w_t) − L_n(w*))``. See :mod:`slt_jax.estimators`.
      sampler: ``"sgld"`` (default), ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, or an
        exact-gradient reference sampler ``"mala"``, ``"hmc"``, ``"nuts"`` (these use the
        whole data set at every step; ``batch_size`` is ignored); or a spec with options
        from :mod:`slt_jax.samplers`, e.g. ``sj.samplers.SGHMC(friction=50.0)``.
      diagnostic_every: record the chain diagnostics (MALA acceptance, ``‖w − w*‖``,
        gradient and noise norms) every this many draws; ``0`` turns them off. For SGLD
        each costs one extra gradient on the same minibatch.
      seed: an integer seed or a JAX key; chain ``i`` uses ``jax.random.split(key, C)[i]``.
      calibration_budget: with ``step_size="auto"``, the most chain-steps the calibration
        may spend (default: its full two-stage grid, 76 × ``num_steps``: 5 × 4 cells × 2
        chains, then 3 × 3 cells × 4 chains).
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
    _validation.check_params(params)
    record = None
    auto = _auto.wants_auto(step_size, localization)
    if not auto and calibration_budget is not None:
        raise ValueError("`calibration_budget` needs step_size='auto'.")
    if auto:
        # everything but the calibrated numbers is checked before the calibration compiles
        stand_in = 1.0 if localization is None or isinstance(localization, str) else localization
        _validation.check_run(
            loss_fn,
            params,
            data,
            num_chains=num_chains,
            num_steps=num_steps,
            num_burnin=num_burnin,
            step_size=1.0,
            localization=stand_in,
            nbeta=nbeta,
            batch_size=batch_size,
            estimator=estimator,
            seed=seed,
            sampler=sampler,
            diagnostic_every=diagnostic_every,
        )
        setting, record = _auto.calibrated_setting(
            loss_fn,
            params,
            data,
            key=_validation.resolve_key(seed),
            localization=localization,
            nbeta=nbeta,
            num_steps=num_steps,
            num_burnin=num_burnin,
            budget=calibration_budget,
            batch_size=batch_size,
            estimator=estimator,
            sampler=sampler,
            diagnostic_every=diagnostic_every,
            mesh=mesh,
            devices=devices,
        )
        step_size, localization, nbeta = (
            setting["step_size"],
            setting["localization"],
            setting["nbeta"],
        )
    elif localization is None:
        localization = DEFAULT_LOCALIZATION
    config, key = _validation.check_run(
        loss_fn,
        params,
        data,
        num_chains=num_chains,
        num_steps=num_steps,
        num_burnin=num_burnin,
        step_size=step_size,
        localization=localization,
        nbeta=nbeta,
        batch_size=batch_size,
        estimator=estimator,
        seed=seed,
        sampler=sampler,
        diagnostic_every=diagnostic_every,
    )

    init_loss = sharding.center_loss(loss_fn, params, data, config.batch_size)
    centers = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (config.num_chains, *np.shape(x))), params
    )
    trace = sharding.run_items(
        loss_fn,
        chain_config(config),
        jax.random.split(key, config.num_chains),
        centers,
        data,
        sampler_settings(config),
        sharding.resolve_mesh(mesh, devices),
    )
    result = summarize(trace, init_loss, config)
    if record is not None:
        result = dataclasses.replace(result, calibration=record)
    if result.diverged.all():
        # flagged, not raised: the traces stay available to see where the chains went
        warnings.warn(
            f"all {config.num_chains} chains diverged (the loss or the parameters became "
            f"non-finite) at step_size={config.step_size:g}, so the estimate is NaN; try a "
            "smaller step_size or a larger localization.",
            LLCDiagnosticWarning,
            stacklevel=2,
        )
    else:
        warn_if_unhealthy(result)
    return result
