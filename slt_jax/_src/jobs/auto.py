"""``step_size="auto"``: calibrate first, then estimate at the recommended setting.

Used by :func:`~slt_jax.estimate_llc`, :func:`~slt_jax.estimate_llc_checkpoints` and the
command line. The calibration (:func:`~slt_jax.calibrate`, automatic grid) runs with the
estimate's own run length, sampler, batch size, estimator and ``nβ``, so the setting it
verifies is verified for the run that follows; its keys are drawn apart from the estimate's.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from slt_jax._src.config import AUTO, DefaultSteps, LLCConfig
from slt_jax._src.results import CalibrationRecord

#: ``fold_in`` constant that separates the calibration's keys from the estimate's.
_CALIBRATION_STREAM = 0x5CA1


class CalibrationError(ValueError):
    """``step_size="auto"`` found no setting that can be used (the message says what to
    run next)."""


def wants_auto(step_size, localization) -> bool:
    """Whether the step size (and the localization) are to be calibrated; checks the
    combinations before anything runs."""
    if isinstance(localization, str) and localization != AUTO:
        raise TypeError(
            f"`localization` must be a number, got str {localization!r} (the one word it takes "
            "is 'auto')."
        )
    if isinstance(step_size, str):
        if step_size != AUTO:
            raise TypeError(
                f"`step_size` must be a number, got str {step_size!r} (a schedule, or the one "
                "word it takes: 'auto')."
            )
        return True
    if isinstance(localization, str):
        if callable(step_size):
            raise ValueError(
                "localization='auto' is calibrated together with the step size, which must "
                "then be step_size='auto': a calibration chooses a constant step size, not a "
                "schedule."
            )
        raise ValueError(
            "localization='auto' needs step_size='auto' (they are calibrated together)."
        )
    return False


def checked_as(config: LLCConfig) -> LLCConfig:
    """The configuration a public entry point checks: ``config``, or its :func:`stand_in`
    when a calibration will choose the step size (or localization) first."""
    return stand_in(config) if wants_auto(config.step_size, config.localization) else config


def stand_in(config: LLCConfig, *, step_size=1.0, localization=1.0, **fields) -> LLCConfig:
    """``config`` with numbers standing in for those a calibration will choose, so that
    everything else is checked before it compiles: ``step_size``, and ``localization``
    unless ``config`` gives one (a number); ``fields`` replaced too.

    Example:
      >>> import slt_jax as sj
      >>> c = stand_in(sj.LLCConfig(step_size="auto", localization=5.0))
      >>> c.step_size, c.localization
      (1.0, 5.0)
    """
    given = config.localization is not None and not isinstance(config.localization, str)
    return dataclasses.replace(
        config,
        step_size=step_size,
        localization=config.localization if given else localization,
        **fields,
    )


def resolve_auto(
    prepared, config: LLCConfig, *, budget, calibrate_on=None, choose_length: bool = False
) -> tuple[LLCConfig, CalibrationRecord | None]:
    """``config`` with a calibrated step size (and localization, unless given) when its
    step size is ``"auto"``, and the calibration's record; else ``(config, None)``.

    ``prepared``: the run (:class:`~slt_jax._src.jobs.orchestrate.Prepared`), checked with
    :func:`stand_in` numbers and centred where the calibration runs; it is taken as checked.
    ``choose_length``: the entry point lets the calibration choose the run length
    (``num_steps``, ``num_burnin``) where the user left both at their defaults.
    """
    if not wants_auto(config.step_size, config.localization):
        if budget is not None:
            raise ValueError("`calibration_budget` needs step_size='auto'.")
        return config, None
    given = config.localization is not None and not isinstance(config.localization, str)
    free = choose_length and length_is_free(config)
    setting, record = calibrated_setting(
        prepared,
        localization=config.localization if given else None,
        nbeta=config.nbeta,
        num_steps=None if free else config.num_steps,
        num_burnin=None if free else config.num_burnin,
        budget=budget,
        calibrate_on=calibrate_on,
        final_chains=config.num_chains if free else None,
        batch_size=config.batch_size,
        estimator=config.estimator,
        sampler=config.sampler,
        diagnostic_every=config.diagnostic_every,
    )
    return dataclasses.replace(config, **setting), record


def length_is_free(config: LLCConfig) -> bool:
    """Whether the user left the run length to the calibration: ``num_steps`` left at its
    default (:class:`~slt_jax._src.config.DefaultSteps`; the same number given is kept) and
    no ``num_burnin``."""
    return isinstance(config.num_steps, DefaultSteps) and config.num_burnin is None


def calibrated_setting(
    prepared,
    *,
    localization,
    nbeta,
    num_steps: int | None,
    num_burnin,
    budget,
    calibrate_on: int | None = None,
    final_chains: int | None = None,
    **options,
) -> tuple[dict, CalibrationRecord]:
    """Run the escalating calibration (:mod:`slt_jax._src.jobs.escalate`) and return
    ``(setting, record)``.

    ``setting`` are the keyword arguments ``step_size``, ``localization`` and ``nbeta``, and
    ``num_steps`` and ``num_burnin`` when ``num_steps`` is ``None`` (the calibration chooses
    the run length of an estimate with ``final_chains`` chains); ``localization`` is
    calibrated when it is ``None`` or ``"auto"``, else kept fixed. The calibration runs on
    the ``prepared`` run (not checked again), with keys drawn apart from its key;
    ``options``: the other options of :func:`~slt_jax.calibrate`.

    Raises:
      ValueError: a budget below the smallest stage (naming the minimum), before any chain.
      CalibrationError: when the budget is spent and no setting passed the health checks
        (with every stage it tried).
    """
    from slt_jax._src.estimators.diagnostics import LLCDiagnosticWarning
    from slt_jax._src.jobs import escalate
    from slt_jax._src.jobs.calibrate import BIAS_TOLERANCE, calibrate, run_stage
    from slt_jax._src.userwarn import warn as warn_user

    fixed = None if localization is None or isinstance(localization, str) else localization
    given_budget = budget
    budget = escalate.checked_budget(budget, num_steps)
    config = dataclasses.replace(
        calibrate.run_defaults,
        num_steps=num_steps or 1000,
        num_burnin=num_burnin,
        seed=jax.random.fold_in(prepared.key, _CALIBRATION_STREAM),
        **options,
    )
    checked = dataclasses.replace(
        prepared.with_config(stand_in(config, localization=fixed or 1.0, nbeta=nbeta)),
        # stages of changing lengths (where the calibration chooses them): one compilation
        block_steps=escalate.BLOCK_STEPS if num_steps is None else 0,
    )
    judge = dict(tolerance=BIAS_TOLERANCE, check_localization=fixed is None)

    def stage(step_sizes, localizations, chains, steps, key):
        burnin = num_burnin if num_steps is not None else None
        burnin = steps // 2 if burnin is None else burnin
        stage_config = dataclasses.replace(config, num_burnin=burnin)
        return run_stage(
            checked,
            stage_config,
            step_sizes,
            localizations,
            chains,
            steps,
            key,
            nbeta=nbeta,
            **judge,
        )

    outcome = escalate.run(
        stage,
        checked,
        localization=fixed,
        num_steps=num_steps,
        budget=budget,
        key=checked.key,
        final_chains=final_chains if num_steps is None else None,
    )
    tried = "; ".join(f"({i + 1}) {line}" for i, line in enumerate(outcome.tried))
    cal = outcome.calibration
    if cal is None:
        raise CalibrationError(
            f"step_size='auto' found no usable setting within the budget of {budget:,} "
            f"chain-steps ({outcome.chain_steps:,} spent). Tried: {tried}. "
            f"{outcome.stages[-1].explanation if outcome.stages else ''}"
        )
    explanation = f"{cal.explanation} Stages: {tried}."
    if not cal.trusted:
        warn_user(f"step_size='auto': {explanation}", LLCDiagnosticWarning)
    setting = dict(cal.recommended)
    if outcome.num_steps is not None:
        setting.update(num_steps=outcome.num_steps, num_burnin=outcome.num_burnin)
    bias, bias_se = cal.step_bias()
    i = cal.cell(**cal.recommended)
    row = int(np.ravel_multi_index(np.unravel_index(i, cal.shape)[1:], cal.shape[1:]))
    fit = cal.fits[row]
    fitted = fit.fitted and all(
        np.isfinite(v) for v in (bias, bias_se, fit.intercept, fit.intercept_stderr)
    )  # a NaN would never equal itself once stored: None stands for "not fitted"
    record = CalibrationRecord(
        step_size=float(setting["step_size"]),
        localization=float(setting["localization"]),
        nbeta=float(setting["nbeta"]),
        trusted=bool(cal.trusted),
        explanation=explanation,
        table=cal.summary(),
        reference_llc=float(cal.results[i].llc_mean),
        corrected_llc=float(fit.intercept) if fitted else None,
        corrected_stderr=float(fit.intercept_stderr) if fitted else None,
        step_bias=float(bias) if fitted else None,
        step_bias_stderr=float(bias_se) if fitted else None,
        chain_steps=int(outcome.chain_steps),
        calibrate_on=calibrate_on,
        budget=given_budget,
    )
    return setting, record
