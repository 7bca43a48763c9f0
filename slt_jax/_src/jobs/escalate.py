r"""``step_size="auto"``: a sequential calibration that escalates within its budget.

One small grid at a time, placed from the problem's scales, judged by
:mod:`slt_jax._src.jobs.assess`, and moved where its verdict points until one setting is
verified or the budget is spent.

**Placement** (:func:`~slt_jax._src.jobs.autogrid.measure_scales`, no chains). Along random
directions ``ξ ~ N(0, I)`` from ``w*``, the radius ``r`` where the tempered loss has risen by
``d/2`` is the posterior's per-coordinate scale (for a quadratic ``r² = 1/Ā_true`` with
``Ā_true`` the mean of ``nβ·h_i``); ``Ā = E‖nβ ∇L_B‖²/d`` there, minibatch noise included,
sets SGLD's first-order relative step bias ``δ = εĀ/4`` (discretization and the heating
by gradient noise: for a likelihood loss the noise adds about ``(nβ/B)·nβ·h_i`` to each
direction's term). So

.. math:: \varepsilon_0 = 4\delta/\bar A, \qquad \gamma_0 = c_\gamma / r^2,

with ``δ = STEP_BIAS_TARGET`` and ``c_γ = LOCALIZATION_FACTOR``: the localization is placed
against the loss's own scale (its shrinkage ``γ/(A + γ)`` of a typical direction is about
``c_γ``), never against the noise-inflated ``Ā``. The first run length is ``k·r²/(ε₀/2)``
steps (``k = STEPS_PER_DIFFUSION``, at the stage's smaller step size): a free diffusion of
step ``ε`` needs ``r²/ε`` steps to cross
the typical set, and a quadratic's typical direction relaxes in ``2/(εA) ≈ 2 r²/ε``.

**Each stage** runs ``{ε/2, ε}`` at one localization ``γ`` with :data:`CHAINS` chains
each, common random numbers, half of each run burn-in. The two step sizes give the ε → 0
fit (``λ₀ = 2λ̂(ε/2) − λ̂(ε)``) that verifies the step bias; each cell's own draws verify
the shrinkage: ``e = d log λ̂/d log γ = −(γ/2)·Cov(nβ(L_n − L_n(w*)), ‖w − w*‖²)/λ̂``
(:func:`~slt_jax._src.estimators.diagnostics.localization_elasticity`, exact for the
localized posterior), the first-order change of λ̂ against ``γ → 0``; the health checks
(equilibration of the LLC trace and of ‖w − w*‖ included) verify the run length. A cell at
``γ/10`` beside them would cost as much again, and on a singular model far more: a deep
linear network's weaker localization is a posterior ``10^L`` times stiffer (its estimate
depends on ``nβ·γ^−L`` alone), which needs a far smaller step and far longer chains than
the cell it checks.

**Escalation**, from the verdict of the two cells at ``γ`` (steps scaled with ``1/ε`` so
that a stage covers the same diffusion time ``r²/ε``): the smaller step size unstable
(``diverged``, ``acceptance``) → ``ε/4``; the larger only, or a step bias shown → ``ε/2``
(the smaller becomes the larger); still spreading (``wandering`` after the first
length's many relaxation times: flat or far softer directions; from the second stage on,
also chains that still drift, ``nonstationary``, or disagree, ``rhat``, with enough
effective draws to say so: they leave the basin of ``w*``) → ``10γ``; a shrinkage shown
(``localization_bias``) → ``γ/10``; otherwise not equilibrated or too noisy to verify
(``nonstationary``, ``ess``, ``rhat``, a bias not shown small) → four times the steps
(with a fixed ``num_steps``: twice the step size, while no bias was seen). A localization
once left is not returned to (a shrinkage shown where ``γ/10`` was left keeps ``γ``,
unverified). It stops at the first verified cell, or when the next stage does not fit the
budget (a longer one is cut to what is left, if that is still longer than the last): then
it returns the best cell of the last stage that had one (``trusted=False``, the best of a
stage with a verified cell kept first), else the cell whose only problems are biases
shown, the least of them (its step bias plus its first-order shrinkage: a regular model
pushed to a strong γ by chains read as drifting ends on shrunk cells of the smallest step
size; ``trusted=False``), or raises :class:`CalibrationError` listing every stage it ran.

**Run length.** When the user did not fix ``num_steps``, the estimate runs with the
calibration's burn-in and as many draws as bring its Monte-Carlo standard error to
``SE_TARGET`` of λ̂, from the recommended cell's own standard error (``se ∝ 1/√(chains ×
draws)``), between the calibration's run length and ``MAX_LENGTH_FACTOR`` times it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from slt_jax._src import validation
from slt_jax._src.estimators.diagnostics import localization_elasticity
from slt_jax._src.jobs.autogrid import Scales, measure_scales

#: The proxy relative step bias ``δ = εĀ/4`` of the larger step size of the first stage.
STEP_BIAS_TARGET = 0.05
#: ``γ₀ = LOCALIZATION_FACTOR / r²``: about this shrinkage of a typical direction.
LOCALIZATION_FACTOR = 0.01
#: First run length in units of the diffusion time ``r²/ε``.
STEPS_PER_DIFFUSION = 20.0
#: Chains per cell.
CHAINS = 4
#: Cells per stage: the two step sizes at one localization.
CELLS = 2
#: The first stage takes at most ``1/FIRST_STAGE_PARTS`` of the budget.
FIRST_STAGE_PARTS = 6
#: The fewest and the most steps per chain of a stage.
MIN_STEPS = 200
MAX_STEPS = 1_000_000
#: The default budget of chain-steps (all stages).
DEFAULT_BUDGET = 2_000_000
#: The relative Monte-Carlo standard error the chosen run length aims at.
SE_TARGET = 0.025
#: The chosen run length is at most this many times the calibration's.
MAX_LENGTH_FACTOR = 8
#: At most this many stages.
MAX_STAGES = 8
#: Where the calibration chooses the stages' lengths, their chains run in blocks of this
#: many steps, the length a runtime value (:mod:`slt_jax._src.engine.blocks`): the stages,
#: of changing lengths, compile once (with a fixed ``num_steps`` they share one length).
BLOCK_STEPS = 1024

_UNSTABLE = {"diverged", "acceptance", "init_loss", "step_bias"}
_UNSETTLED = {"nonstationary", "wandering", "ess", "rhat", "below_init", "negative"}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the escalation ends with.

    Attributes:
      calibration: the stage whose recommendation is used (``None``: nothing usable).
      stages: every stage run, in order.
      tried: one line per stage (setting, steps, verdict).
      chain_steps: the chain-steps of all stages.
      scales: the problem's scales.
      num_steps, num_burnin: the run length chosen for the estimate (``None``: the user's).
    """

    calibration: object
    stages: tuple
    tried: tuple[str, ...]
    chain_steps: int
    scales: Scales
    num_steps: int | None = None
    num_burnin: int | None = None


def minimum_budget(num_steps: int | None) -> int:
    """The chain-steps of the smallest stage (a budget below it is an error)."""
    return CELLS * CHAINS * (num_steps or MIN_STEPS)


def checked_budget(budget: int | None, num_steps: int | None) -> int:
    """The chain-steps ``step_size="auto"`` may spend: ``budget`` checked (at least the
    smallest stage, naming it), or the default (:data:`DEFAULT_BUDGET`,
    or 8 smallest stages if more). ``num_steps``: the stages' length when the user fixed it
    (``None``: the calibration chooses it)."""
    minimum = minimum_budget(num_steps)
    if budget is None:
        return max(DEFAULT_BUDGET, 8 * minimum)
    budget = validation.check_count("budget", budget, minimum=1)
    if budget < minimum:
        raise ValueError(
            f"`budget` = {budget} chain-steps is below the minimum of {minimum} for "
            f"step_size='auto': one stage of {CELLS} settings × "
            f"{CHAINS} chains × {num_steps or MIN_STEPS} steps."
        )
    return budget


def first_setting(scales: Scales, localization: float | None) -> tuple[float, float]:
    """``(ε₀, γ₀)`` from the scales (``localization``: the user's, kept)."""
    r2 = scales.radius**2
    flat = not np.isfinite(r2) or scales.radius >= 1e3
    if localization is not None:
        gamma = float(localization)
    elif flat:
        gamma = 1e-3 * scales.nbeta  # nothing rises within 1e3: a scale from nβ alone
    else:
        gamma = LOCALIZATION_FACTOR / r2
    curvature = scales.curvature + gamma  # ∇ of γ/2‖w − w*‖² adds at most γ²r² ≤ γ here
    return _round(4 * STEP_BIAS_TARGET / curvature), _round(gamma)


def first_length(scales: Scales, step_size: float) -> int:
    """The first stage's steps per chain: ``STEPS_PER_DIFFUSION · r²/(ε/2)`` (the stage's
    smaller step size relaxes slowest), clipped."""
    r2 = min(scales.radius, 1e3) ** 2
    steps = STEPS_PER_DIFFUSION * r2 / (step_size / 2) if step_size > 0 else MIN_STEPS
    return int(min(max(steps, MIN_STEPS), MAX_STEPS))


def run(run_stage, prepared, *, localization, num_steps, budget, key, final_chains: int | None):
    """Escalate until a cell is verified or the budget is spent.

    ``run_stage(step_sizes, localizations, num_chains, num_steps, key)`` runs and judges one
    grid (a :class:`~slt_jax._src.jobs.calibration.Calibration`); ``prepared`` the checked
    run; ``localization`` the user's (or ``None``); ``num_steps`` the user's run length or
    ``None``; ``final_chains``: the estimate's chains, to choose its run length for (``None``:
    the run length is the user's).
    """
    config = prepared.config
    scales = measure_scales(
        prepared.loss_fn,
        prepared.params,
        prepared.data,
        nbeta=config.nbeta,
        batch_size=config.batch_size,
    )
    fixed = localization is not None
    eps, gamma = first_setting(scales, localization)
    # the first stage takes at most a sixth of the budget (its chains as long as those of a
    # third of it over four cells), leaving room to escalate
    steps = num_steps or min(
        first_length(scales, eps), max(MIN_STEPS, budget // (FIRST_STAGE_PARTS * CELLS * CHAINS))
    )
    previous = 0
    spent, stages, tried, best = 0, [], [], None
    stopped = f"the {MAX_STAGES} stages ran"  # why the loop ends (said if nothing is verified)
    seen_bias, left = False, set()
    for index in range(MAX_STAGES):
        cost = CELLS * CHAINS * steps
        affordable = (budget - spent) // (CELLS * CHAINS)
        if spent + cost > budget and num_steps is None and affordable >= max(MIN_STEPS, previous):
            steps, cost = int(affordable), CELLS * CHAINS * int(affordable)  # what is left
        if spent + cost > budget:
            tried.append(
                f"next: ε = {eps:.3g}, γ = {gamma:.3g}, {steps} steps ({cost:,} chain-steps) "
                f"would pass the budget of {budget:,} ({spent:,} spent)"
            )
            stopped = "the budget was spent"
            break
        cal = run_stage(
            [_round(eps / 2), eps], [gamma], CHAINS, steps, jax.random.fold_in(key, index + 1)
        )
        spent += cost
        previous = steps
        stages.append(cal)
        tried.append(_describe(cal, eps, gamma, steps))
        if cal.recommended is not None:
            best = cal if best is None or cal.trusted or not best.trusted else best
        if cal.trusted:
            break
        move = _next_move(cal, eps, gamma, fixed, seen_bias, num_steps is None, left, index == 0)
        if move is None:
            stopped = (
                f"no further stage could verify it ({spent:,} of {budget:,} chain-steps spent)"
            )
            break
        if move[1] != gamma:
            left.add(gamma)
        eps, gamma, factor, biased = move
        seen_bias = seen_bias or biased
        steps = int(min(MAX_STEPS, steps * factor))
    if best is None:
        best = _least_biased(stages, stopped)
    outcome = Outcome(best, tuple(stages), tuple(tried), spent, scales)
    if best is None or final_chains is None:
        return outcome
    length, burnin = _run_length(best, final_chains)
    return dataclasses.replace(outcome, num_steps=length, num_burnin=burnin)


def _next_move(cal, eps, gamma, fixed, seen_bias, free_length, left, first):
    """``(ε, γ, steps factor, bias seen)`` for the next stage, or ``None`` to stop.

    ``left``: localizations not to return to (left because they shrank λ̂, or wandered);
    ``first``: ``cal`` is the first stage."""
    shape = cal.shape
    index = np.arange(len(cal.results)).reshape(shape)
    small, large = (set(cal.problems[int(index[a, 0, 0])]) for a in range(shape[0]))
    unstable = {"diverged", "acceptance", "init_loss"}
    if unstable & small:
        # both step sizes unstable: a quarter, and as many more steps (same diffusion time)
        return eps / 4, gamma, 4.0 if free_length else 1.0, True
    if (unstable | {"step_bias"}) & (large | small):
        # the larger only, or a bias shown: the smaller becomes the larger
        return eps / 2, gamma, 2.0 if free_length else 1.0, True
    stronger, weaker = _round(gamma * 10), _round(gamma / 10)
    if not fixed and _drifting((small, large), first) and stronger not in left:
        # still spreading after many relaxation times of a typical direction: flat
        # directions (singular) or far softer ones; localize more
        return eps, stronger, 1.0, seen_bias
    if not fixed and "localization_bias" in (large | small):
        # the cells' own draws show the shrinkage: a weaker localization (unless left: its
        # chains wandered, so keep γ, unverified)
        return (eps, weaker, 1.0, seen_bias) if weaker not in left else None
    if _UNSETTLED & (small | large) or not (small or large):
        # not equilibrated, or healthy but too noisy to verify: longer runs
        if free_length:
            return eps, gamma, 4.0, seen_bias
        return (eps * 2, gamma, 1.0, seen_bias) if not seen_bias else None
    return None


def _drifting(cells, first: bool) -> bool:
    """Whether the chains of ``cells`` (their problem kinds) still spread from ``w*``: a
    growing ‖w − w*‖ (``wandering``); from the second stage on also a rising LLC trace
    (``nonstationary``) or chains that disagree (``rhat``) with enough effective draws to
    say so. Disagreement with too few (``rhat`` beside ``ess``) is a run too short to
    judge: longer runs, not a stronger localization (a TMS k-gon's chains at n ≈ 2·10⁵
    disagree after 2,000 steps at γ = 4.7 where the exact posterior's R-hat is 1.004 and its
    λ̂ is 0.3 % from λ; at 10γ it is −6 %, at 100γ −26 %)."""
    for kinds in cells:
        if "wandering" in kinds:
            return True
        if not first and ("nonstationary" in kinds or ("rhat" in kinds and "ess" not in kinds)):
            return True
    return False


def _least_biased(stages, stopped: str = "the budget was spent"):
    """With the escalation over and no healthy cell: the cell, over all stages, whose only
    problems are the bias checks (``step_bias``, ``localization_bias``) with the least bias
    they show (:func:`_shown_bias`), then the smallest step size and the weakest
    localization (``trusted=False``; ``None`` if there is none). ``stopped``: why the
    escalation ended, for the explanation."""
    found = [
        (
            _shown_bias(cal, i),
            cal.results[i].config.step_size,
            cal.results[i].config.localization,
            -k,
            i,
            cal,
        )
        for k, cal in enumerate(stages)
        for i, p in enumerate(cal.problems)
        if p and set(p) <= {"step_bias", "localization_bias"}
    ]
    if not found:
        return None
    bias, *_, i, cal = min(found, key=lambda f: f[:5])
    c = cal.results[i].config
    return dataclasses.replace(
        cal,
        recommended=dict(step_size=c.step_size, localization=c.localization, nbeta=c.nbeta),
        trusted=False,
        explanation=(
            f"Not verified: {stopped} before a setting passed every check; "
            f"step_size={c.step_size:g}, localization={c.localization:g} gives λ̂ = "
            f"{cal.results[i].llc_mean:.4g} ± {cal.results[i].llc_stderr:.2g}, healthy but "
            f"shown biased ({', '.join(cal.problems[i])}): of the cells with no other "
            f"problem, the one whose biases are least (step bias and first-order "
            f"shrinkage ≈ {100 * bias:.0f}%). "
            f"{cal.explanation}"
        ),
    )


def _shown_bias(cal, i: int) -> float:
    """The relative bias a cell's checks show: its step bias against its row's ε → 0 fit
    (0 without one) plus its first-order shrinkage ``|d log λ̂/d log γ|`` from its own
    draws (0 where it cannot be read)."""
    step = 0.0
    for fit in cal.fits:
        if i in fit.bias and fit.fitted and fit.intercept > 0:
            step = abs(fit.bias[i][0]) / fit.intercept
    e, _ = localization_elasticity(cal.results[i])
    return step + (abs(e) if np.isfinite(e) else 0.0)


def _run_length(cal, final_chains: int) -> tuple[int, int]:
    """The estimate's ``(num_steps, num_burnin)`` from the recommended cell."""
    result = cal.result(**cal.recommended)
    c = result.config
    draws = c.num_steps - c.num_burnin
    mean, se = abs(float(result.llc_mean)), float(result.llc_stderr)
    if not (np.isfinite(se) and mean > 0 and se > 0):
        return c.num_steps, c.num_burnin
    # se ∝ 1/√(chains·draws): the estimate's chains are the user's num_chains
    needed = draws * c.num_chains / max(1, final_chains) * (se / (SE_TARGET * mean)) ** 2
    length = c.num_burnin + int(math.ceil(needed))
    length = int(min(max(length, c.num_steps), MAX_LENGTH_FACTOR * c.num_steps))
    return length, c.num_burnin


def _describe(cal, eps, gamma, steps) -> str:
    kinds = {}
    for p in cal.problems:
        for kind in p:
            kinds[kind] = kinds.get(kind, 0) + 1
    verdict = "verified" if cal.trusted else (", ".join(f"{k} ×{v}" for k, v in kinds.items()))
    return (
        f"ε ∈ {{{_round(eps / 2):g}, {eps:g}}}, γ ∈ {cal.localizations.tolist()}, "
        f"{steps} steps × {cal.results[0].config.num_chains} chains: "
        f"{verdict or 'healthy, not verified'}"
    )


def _round(x: float) -> float:
    return float(f"{x:.3g}")
