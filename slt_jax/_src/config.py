"""The one configuration of a run: every option, checked once, and its split into the part
that selects the compiled program and the part passed to it as arrays.

:class:`LLCConfig` holds what a run needs (sampler and its options, step size or schedule,
localization, ``nβ``, batch size, estimator, steps, burn-in, diagnostics, seed). Built by
hand or from an entry point's keyword options (:func:`run_options`, which declares those
keywords once, from these fields), it is *resolved* against the data set
(:meth:`LLCConfig.resolve`: defaults filled in, every value checked, the step-size
schedule evaluated) before anything is compiled. A resolved configuration is what results
carry. :meth:`LLCConfig.static` is the part that selects the compiled program (changing
it compiles again); :meth:`LLCConfig.arrays` is the part passed as arrays (step size,
localization and ``nβ``: varied across chains and grids without recompiling).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src import validation
from slt_jax._src.samplers.specs import Sampler, check_sampler, resolve_sampler

#: The LLC estimators (see :mod:`slt_jax._src.estimators.llc`).
ESTIMATORS = ("paired", "plain")
#: Which minibatch the recorded loss ``L_B(w_t)`` is read on (see ``LLCConfig.loss_batch``).
LOSS_BATCHES = ("step", "independent")
#: The localization γ when none is given and it is not calibrated.
DEFAULT_LOCALIZATION = 100.0
AUTO = "auto"


#: How the chains of one device are laid out (see :mod:`slt_jax._src.engine.programs`).
CHAIN_LAYOUTS = ("auto", "vmap", "map")
#: ``init_loss_batches`` value that asks for the exact full-data ``L_n(w*)``.
EXACT = "exact"
#: Batches of the bounded ``L_n(w*)`` sample at least (devinterp's ``num_init_loss_batches``).
MIN_INIT_LOSS_BATCHES = 32
#: Options that results record only when set (older results directories resume).
_RECORDED_IF_SET = {
    "microbatch_size": None,
    "remat": False,
    "compute_dtype": None,
    "chain_layout": "auto",
    "chain_batch": 1,
    "partition_rules": None,
    "loss_batch": "step",
}


class Static(NamedTuple):
    """The part of a configuration that selects the compiled program (hashable)."""

    batch_size: int
    num_burnin: int
    num_draws: int
    estimator: str
    sampler: Sampler
    schedule: Callable | None  # step t -> a multiplier of the step size; None: 1
    diagnostic_every: int
    microbatch_size: int | None = None
    remat: bool = False
    compute_dtype: str | None = None
    chain_layout: str = "auto"  # "vmap", "map", or "auto" (decided for the model's size)
    chain_batch: int = 1  # with "map": chains vmapped together inside the map
    partition_rules: tuple | None = None  # ((regex, spec), ...) over a "model" mesh axis
    loss_batch: str = "step"  # the recorded loss on the step's minibatch or an independent one

    @property
    def num_diagnostics(self) -> int:
        every = self.diagnostic_every
        return -(-self.num_draws // every) if every else 0


class Arrays(NamedTuple):
    """The numeric settings passed to the program as arrays (per chain under vmap)."""

    step_size: jax.Array
    localization: jax.Array
    nbeta: jax.Array


def default_nbeta(num_examples: int) -> float:
    """``n / log n``: the inverse temperature of WBIC (Watanabe 2013) times ``n``."""
    if num_examples < 2:
        raise ValueError("nbeta=None (n / log n) needs at least 2 examples; pass nbeta.")
    return num_examples / math.log(num_examples)


def resolve_nbeta(nbeta: float | None, num_examples: int) -> float:
    """``nβ`` as given, or ``n / log n`` for ``None`` (the one place ``None`` is read)."""
    return default_nbeta(num_examples) if nbeta is None else nbeta


def option(default=None, help: str = "", **cli):
    """A field of :class:`LLCConfig` (or of :class:`Auto`, :class:`Placement`) declared
    once: its default, its one-line ``help``, and how the command line spells it (``cli``:
    ``flag``, default ``--name-with-dashes``; ``parse``, text -> value raising
    ``ValueError``, default from the default's type; ``choices``; ``switch``, a flag
    without a value for a bool; ``metavar``). :mod:`slt_jax._src.cli` builds its flags
    from these."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


class DefaultSteps(int):
    """The default ``num_steps``: an ``int`` that tells "left at the default" apart from the
    same number given (``num_steps=1000``), for the options that depend on it: a
    ``step_size="auto"`` run chooses the run length only where ``num_steps`` was left.

    Example:
      >>> import slt_jax as sj
      >>> left, given = sj.LLCConfig().num_steps, sj.LLCConfig(num_steps=1000).num_steps
      >>> left == given == 1000, isinstance(left, DefaultSteps), isinstance(given, DefaultSteps)
      (True, True, False)
    """


def number_or_auto(text: str) -> float | str:
    """A float, or the word ``auto`` (command-line text of ``step_size``, ``localization``)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number or 'auto': {text!r}") from None


def batches_or_exact(text: str) -> int | str:
    """A positive whole number of batches, or the word ``exact``."""
    if text.strip().lower() == EXACT:
        return EXACT
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number or 'exact': {text!r}") from None
    if value < 1:
        raise ValueError(f"must be >= 1 (or 'exact'), got {value}")
    return value


def whole_count(text: str) -> int:
    """A whole count >= 1, written ``2000000`` or ``2e6``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a count: {text!r}") from None
    if not value.is_integer() or value < 1:
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Auto:
    """``step_size=sj.Auto(...)``: calibrate the step size first, then estimate with it.

    The same as ``step_size="auto"`` (kept), with the calibration's own options carried by
    the value instead of separate keywords: the entry point runs :func:`~slt_jax.calibrate`
    (automatic grid, at the run's own length, sampler, batch size, estimator and ``nβ``)
    and estimates at its recommended step size (and localization, unless given). Checked
    when built, before anything compiles.

    Attributes:
      budget: the most chain-steps the calibration's escalating stages may spend (``None``:
        2·10⁶, or 8 stages where one stage is larger). The keyword ``calibration_budget=``
        is the older spelling.
      on_step: for a checkpoint sweep, the training step of the checkpoint to calibrate on
        (``None``: the last). The keyword ``calibrate_on=`` is the older spelling.

    Example:
      >>> import slt_jax as sj
      >>> sj.Auto(budget=20_000)
      Auto(budget=20000, on_step=None)
      >>> sj.Auto(budget=0)
      Traceback (most recent call last):
      ...
      ValueError: `Auto.budget` must be >= 1, got 0.
    """

    budget: int | None = option(
        None,
        "with --step-size auto: the most chain-steps the calibration may spend",
        flag="--calibration-budget",
        parse=whole_count,
        keyword="calibration_budget",
    )
    on_step: int | None = option(
        None,
        "with --step-size auto: the training step to calibrate on (default: the last)",
        flag="--calibrate-on",
        parse=int,
        keyword="calibrate_on",
    )

    def __post_init__(self):
        for name in ("budget", "on_step"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise TypeError(f"`Auto.{name}` must be an int or None, got {value!r}.")
            if name == "budget":
                validation.check_count("Auto.budget", value, minimum=1)
            object.__setattr__(self, name, int(value))

    def keywords(self) -> dict:
        """The older keywords it stands for: ``calibration_budget``, ``calibrate_on``."""
        return {f.metadata["keyword"]: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class Placement:
    """Memory, layout and placement options, grouped: ``placement=sj.Placement(...)``, an
    entry point's keyword or :class:`LLCConfig`'s. Each is also a flat option of the same
    name (``microbatch_size=4``, the older spelling), which is where the configuration
    keeps it. None of them changes the result, only memory and speed; see
    :class:`LLCConfig` for each in full. ``Placement.of(config)`` reads them back.

    Example:
      >>> import slt_jax as sj
      >>> config = sj.LLCConfig(placement=sj.Placement(microbatch_size=8, remat=True))
      >>> config.microbatch_size, sj.Placement.of(config).remat
      (8, True)
    """

    microbatch_size: int | None = option(
        None, "evaluate each minibatch this many rows at a time, gradient accumulated"
    )
    remat: bool = option(False, "recompute activations (jax.checkpoint)", switch=True)
    compute_dtype: str | None = option(None, "e.g. bfloat16: the loss's parameters")
    chain_layout: str = option(
        "auto",
        "the chains of a device as one vmap or a map over them (default: by a rule)",
        choices=CHAIN_LAYOUTS,
    )
    chain_batch: int = option(1, "with --chain-layout map")
    partition_rules: Any = option(
        None,
        'a JSON list of [regex, spec] pairs, e.g. [["attn/.*/kernel", [null, "model"]]]',
        parse=str,
        metavar="FILE",
    )

    @classmethod
    def of(cls, config: LLCConfig) -> Placement:
        """The placement options of a configuration."""
        return cls(**{name: getattr(config, name) for name in PLACEMENT})


#: The placement options (the flat fields of :class:`LLCConfig` that :class:`Placement` groups).
PLACEMENT = tuple(f.name for f in dataclasses.fields(Placement))
_PLACEMENT = Placement()


def _placed(name: str):
    """An :class:`LLCConfig` field declared by :class:`Placement`'s (default and help)."""
    (field,) = (f for f in dataclasses.fields(Placement) if f.name == name)
    return dataclasses.field(default=field.default, metadata={**field.metadata, "group": "memory"})


@dataclasses.dataclass(frozen=True)
class LLCConfig:
    """Every setting of a run. Unresolved (as given) or resolved (by :meth:`resolve`: what
    results carry; ``num_examples`` is set, the defaults filled in).

    Attributes:
      num_chains: independent chains, all started at ``w*``.
      num_steps: steps per chain, burn-in included.
      num_burnin: initial steps whose draws are discarded (``None``: ``num_steps // 4``).
      step_size: ``ε`` (SGLD's ``w ← w + ε/2·∇log p + N(0, ε)``, devinterp's ``lr``), a
        schedule ``step -> ε`` (resolved: its first value), or ``"auto"`` /
        :class:`Auto` (calibrated by the entry point before resolving).
      localization: ``γ`` (``None``: 100, or calibrated with ``step_size="auto"``).
      nbeta: ``nβ`` (``None``: ``n / log n``).
      batch_size: minibatch size (exact-gradient samplers: the whole data set).
      num_examples: ``n``, set when resolved.
      estimator: ``"paired"`` or ``"plain"``.
      sampler: a name, or a spec (any :class:`slt_jax.samplers.Sampler`, a user's own
        subclass too); resolved: the checked spec (:meth:`~slt_jax.samplers.Sampler.check`).
        Saved as its description (``to_dict``); results read back from disk hold that
        string, which a spec compares equal to.
      seed: an integer seed or a JAX key (resolved: the integer, or ``None`` for a key).
      diagnostic_every: record chain diagnostics every this many draws (0: none).
      placement: (keyword only) a :class:`Placement` that sets the six memory and layout
        options below at once (their grouped spelling).
      microbatch_size: evaluate each minibatch this many rows at a time, the gradient
        accumulated (``None``: at once); must divide the batch size. Same result, less memory.
      remat: the loss under ``jax.checkpoint`` (its activations recomputed in the backward
        pass rather than kept from the forward). The whole loss is one checkpoint, so the
        recomputed forward stores its activations again: this lowers the memory between
        the forward and backward passes, not the peak of a deep model's backward; for
        that, checkpoint each layer inside the model (``nnx.remat`` in an ``nnx.scan``
        over layers; measured in docs/scale.md) or use ``microbatch_size``.
      compute_dtype: evaluate the loss with the parameters cast to this float type (e.g.
        ``"bfloat16"``); the chain stays in at least float32.
      chain_layout: the chains of a device as one ``"vmap"``, or a ``"map"`` over them
        (``chain_batch`` vmapped together at each step of the map); ``"auto"`` picks by a
        measured rule for the backend and the model's size
        (:func:`slt_jax._src.engine.programs.default_layout`).
      chain_batch: with ``chain_layout="map"``, the chains vmapped together (default 1).
      partition_rules: with a mesh that has a ``"model"`` axis, how each parameter leaf is
        split over it: pairs ``(regex on the leaf's path, PartitionSpec)``, first match
        wins; unmatched leaves (and every leaf when ``None``) split FSDP-style along their
        largest divisible dimension (:mod:`slt_jax._src.engine.sharding`). Same result,
        less memory per device.
      init_loss_batches: how ``L_n(w*)`` is computed: ``"exact"`` (a pass over all ``n``
        examples), an int ``k >= 1`` (the mean over ``k`` minibatches of ``batch_size``
        examples drawn without replacement with a key derived from the run's, with its
        finite-population standard error), or ``None``: automatic
        (:func:`resolve_init_loss_batches`: exact when the data hold no more examples than
        the run's chains see, else a bounded sample). ``k`` batches that would cover the
        data resolve to ``"exact"``. Resolved: ``"exact"`` or ``k``.
      loss_batch: which minibatch the recorded loss ``L_B(w_t)`` is read on. ``"step"``:
        the step's own minibatch (free: its loss comes with the gradient). Minibatches
        drawn without replacement make that choice depend on the chain's past (the
        examples of ``B_t`` are those the chain has not stepped on for longest in the
        epoch), which biases ``λ̂`` upward, to first order by
        ``nβ²(ε/2)/(n−1)·E_j Σ_{k≤j} tr(M^{k−1} S)`` (``S`` the per-example gradients'
        covariance at ``w*``, ``M = I − εA/2``): up to ``≈ 2λ/log n`` for a regular model
        at the default ``nβ`` (measured: ``benchmarks/multipass_bias.py``).
        ``"independent"``: a minibatch of the same size from a separate keyed stream,
        independent of the chain's path, so ``E[L_B(w_t)] = E[L_n(w_t)]`` exactly; one
        more forward pass per recorded draw (two with the paired estimator, whose
        ``L_B(w*)`` is then read on that minibatch too). Exact-gradient runs (``batch_size
        = n``, MALA/HMC/NUTS) resolve to ``"step"``: they have no such choice.
      step_size_schedule: resolved: a description of the schedule, ``None`` if constant.
      schedule: resolved: the schedule itself (not saved, not compared).

    Example:
      >>> import slt_jax as sj
      >>> config = sj.LLCConfig(num_chains=4, step_size=1e-3, localization=1.0)
      >>> resolved, key = config.resolve(num_examples=1000)
      >>> resolved.num_burnin, round(resolved.nbeta, 2)  # defaults: steps/4, n/log n
      (250, 144.76)
      >>> resolved.static().batch_size, resolved.arrays().step_size.dtype  # static | arrays
      (256, dtype('float32'))
    """

    num_chains: int = option(8, "chains per checkpoint", flag="--chains")
    num_steps: int = option(
        DefaultSteps(1000), "steps per chain, burn-in included", flag="--steps", parse=int
    )
    num_burnin: int | None = option(None, "burn-in steps (default steps/4)", flag="--burnin")
    step_size: Any = option(
        1e-4,
        "ε (devinterp's lr), or 'auto': calibrate on one checkpoint first (slt_jax.calibrate) "
        "and use the chosen setting for all",
        parse=number_or_auto,
    )
    localization: Any = option(
        None,
        "γ (default 100; with --step-size auto, calibrated too unless given)",
        parse=number_or_auto,
    )
    nbeta: float | None = option(None, "nβ (default n / log n)", parse=float)
    batch_size: int = option(256, "minibatch size (exact-gradient samplers: all examples)")
    num_examples: int | None = None
    estimator: str = option("paired", "the λ̂ estimator", choices=ESTIMATORS)
    sampler: Any = option(
        "sgld",
        "a sampler, or one with options, e.g. 'sghmc(friction=50.0)' (see slt_jax.samplers); "
        "registered: {samplers}",
        parse=str,
    )
    seed: Any = option(0, "integer seed", parse=int)
    diagnostic_every: int = option(
        10, "record MALA acceptance and norms every this many draws (0: off)"
    )
    microbatch_size: int | None = _placed("microbatch_size")
    remat: bool = _placed("remat")
    compute_dtype: str | None = _placed("compute_dtype")
    chain_layout: str = _placed("chain_layout")
    chain_batch: int = _placed("chain_batch")
    partition_rules: Any = _placed("partition_rules")
    init_loss_batches: int | str | None = option(
        None,
        "L_n(w*) from this many minibatches, or 'exact' (default: exact when the data are no "
        "larger than what the chains see, else a bounded sample)",
        parse=batches_or_exact,
    )
    loss_batch: str = option(
        "step",
        "read the recorded loss on the step's minibatch or on an independent one (unbiased "
        "when the chains revisit examples; one more forward pass per draw)",
        choices=LOSS_BATCHES,
    )
    step_size_schedule: str | None = None
    schedule: object = dataclasses.field(default=None, compare=False, repr=False)
    placement: dataclasses.InitVar[Placement | None] = None

    def __post_init__(self, placement):
        if placement is not None:  # the grouped spelling of the flat placement options
            if not isinstance(placement, Placement):
                raise TypeError(f"`placement` must be an sj.Placement, got {placement!r}.")
            for name in PLACEMENT:
                flat, grouped = getattr(self, name), getattr(placement, name)
                if flat != getattr(_PLACEMENT, name) and flat != grouped:
                    raise TypeError(
                        f"`{name}` is given twice, as {flat!r} and as placement.{name}="
                        f"{grouped!r}; give it once."
                    )
                object.__setattr__(self, name, grouped)
        # A resolved configuration that does not say how L_n(w*) was computed used the
        # exact pass: results written before the option existed (and exact ones, which
        # record nothing: to_dict) read back as they were resolved.
        if self.num_examples is not None and self.init_loss_batches is None:
            object.__setattr__(self, "init_loss_batches", EXACT)

    @property
    def num_draws(self) -> int:
        return self.num_steps - self.num_burnin

    @property
    def resolved(self) -> bool:
        return self.num_examples is not None

    def to_dict(self) -> dict:
        """The saved settings (everything but the schedule callable; the memory and layout
        options only when set, so that results written before they existed resume)."""
        fields = dataclasses.asdict(self)
        del fields["schedule"]
        fields["sampler"] = str(self.sampler)  # a spec's description (Sampler.describe)
        for name, default in _RECORDED_IF_SET.items():
            if fields[name] == default:
                del fields[name]
        if fields["init_loss_batches"] in (None, EXACT):  # as results written before it
            del fields["init_loss_batches"]
        return fields

    def resolve(self, num_examples: int) -> tuple[LLCConfig, jax.Array]:
        """Check every option against a data set of ``num_examples`` and fill in the
        defaults: ``(resolved configuration, the run's key)``. Raises ``ValueError`` or
        ``TypeError`` naming the option."""
        num_chains = validation.check_count("num_chains", self.num_chains, minimum=1)
        num_steps, num_burnin = self.num_steps, self.num_burnin
        if num_burnin is None:
            validation.check_count("num_steps", num_steps, minimum=1)
            num_burnin = num_steps // 4
        validation.check_steps(num_steps, num_burnin)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {ESTIMATORS}.")
        spec = check_sampler(self.sampler)
        batch_size = num_examples if spec.full_batch else self.batch_size
        if self.loss_batch not in LOSS_BATCHES:
            raise ValueError(
                f"unknown loss_batch {self.loss_batch!r}; choose one of {LOSS_BATCHES}."
            )
        step_size, schedule, text = self.step_size, None, None
        if self.schedule is not None:  # a resolved configuration: its schedule, again
            step_size = self.schedule
        if isinstance(step_size, str | Auto):
            raise TypeError(
                f"`step_size` must be a number or a schedule, got {step_size!r}: 'auto' and "
                "sj.Auto(...) are calibrated by the entry point (estimate_llc, "
                "estimate_llc_checkpoints) before the configuration is resolved."
            )
        if callable(step_size):
            schedule = step_size
            step_size, text = check_schedule(schedule, int(num_steps))
        localization = DEFAULT_LOCALIZATION if self.localization is None else self.localization
        if isinstance(localization, str):
            raise TypeError(f"`localization` must be a number, got str {localization!r}.")
        if self.resolved and self.seed is None:
            raise TypeError(
                "this configuration's run was seeded with a JAX key, which results do not "
                "record (config.seed is None): pass seed= (an int or the key) with it."
            )
        key = validation.resolve_key(self.seed)
        seed = self.seed
        memory = _check_memory_options(self, int(batch_size))
        init_loss_batches = resolve_init_loss_batches(
            self.init_loss_batches,
            num_examples=int(num_examples),
            batch_size=int(batch_size),
            num_chains=num_chains,
            num_steps=int(num_steps),
            num_draws=int(num_steps) - int(num_burnin),
            estimator=self.estimator,
        )
        resolved = LLCConfig(
            num_chains=num_chains,
            num_steps=int(num_steps),
            num_burnin=int(num_burnin),
            step_size=validation.check_positive("step_size", step_size),
            localization=validation.check_positive("localization", localization, allow_zero=True),
            nbeta=validation.check_positive("nbeta", resolve_nbeta(self.nbeta, num_examples)),
            batch_size=validation.check_batch_size(batch_size, num_examples),
            num_examples=int(num_examples),
            estimator=self.estimator,
            sampler=spec,
            seed=int(seed)
            if isinstance(seed, int | np.integer) and not isinstance(seed, bool)
            else None,
            diagnostic_every=validation.check_count(
                "diagnostic_every", self.diagnostic_every, minimum=0
            ),
            step_size_schedule=text,
            schedule=schedule,
            init_loss_batches=init_loss_batches,
            loss_batch="step" if int(batch_size) >= int(num_examples) else self.loss_batch,
            **memory,
        )
        return resolved, key

    def static(self) -> Static:
        """The part that selects the compiled program (of a resolved configuration)."""
        return Static(
            self.batch_size,
            self.num_burnin,
            self.num_draws,
            self.estimator,
            resolve_sampler(self.sampler),
            self.schedule,
            self.diagnostic_every,
            self.microbatch_size,
            bool(self.remat),
            self.compute_dtype,
            self.chain_layout,
            self.chain_batch,
            normalize_rules(self.partition_rules),
            self.loss_batch,
        )

    def arrays(self) -> Arrays:
        """The part passed as arrays: with a schedule the step size is its multiplier's
        scale (1), the schedule itself being static."""
        step_size = 1.0 if self.schedule is not None else self.step_size
        return Arrays(*(jnp.float32(v) for v in (step_size, self.localization, self.nbeta)))


def check_init_loss_batches(value) -> int | str | None:
    """``init_loss_batches`` as given, checked: ``None``, ``"exact"`` or an int ``>= 1``."""
    if value is None or (isinstance(value, str) and value == EXACT):
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(
            "`init_loss_batches` must be a positive integer (minibatches for L_n(w*)), "
            f"{EXACT!r} (the full-data pass) or None (automatic); got {value!r}."
        )
    if value < 1:
        raise ValueError(
            f"`init_loss_batches` must be a positive integer, {EXACT!r} or None; got {value}."
        )
    return int(value)


def resolve_init_loss_batches(
    value,
    *,
    num_examples: int,
    batch_size: int,
    num_chains: int,
    num_steps: int,
    num_draws: int,
    estimator: str,
) -> int | str:
    r"""How ``L_n(w*)`` is computed: ``"exact"`` or a number ``k`` of minibatches.

    ``None`` (automatic): exact when the data hold no more examples than the run's chains
    see (``n <= num_chains · num_steps · batch_size``: the full pass then costs less than
    the run, forward only); otherwise ``k = max(32, num_chains · num_draws)`` batches for
    the ``"plain"`` estimator (its standard error is then no larger than the chains' own
    minibatch noise, for at most a third of their cost) and ``k = 32`` for ``"paired"``
    (whose λ̂ does not use ``L_n(w*)``: only ``init_loss`` and the WBIC do). A ``k`` whose
    batches would cover the data (``k · batch_size >= n``) is the exact pass, which costs
    no more.

    Example:
      >>> resolve_init_loss_batches(None, num_examples=10**6, batch_size=32, num_chains=2,
      ...                           num_steps=20, num_draws=15, estimator="paired")
      32
    """
    value = check_init_loss_batches(value)
    if value == EXACT:
        return EXACT
    if value is None:
        if num_examples <= num_chains * num_steps * batch_size:
            return EXACT
        value = MIN_INIT_LOSS_BATCHES
        if estimator == "plain":
            value = max(value, num_chains * num_draws)
    return EXACT if value * batch_size >= num_examples else value


def _check_memory_options(config: LLCConfig, batch_size: int) -> dict:
    """The memory and layout options, checked (the microbatch must divide the batch)."""
    out = {}
    m = config.microbatch_size
    if m is not None:
        m = validation.check_count("microbatch_size", m, minimum=1)
        if batch_size % m:
            raise ValueError(
                f"`microbatch_size` ({m}) does not divide the batch size ({batch_size}); "
                "the minibatch is evaluated in equal microbatches."
            )
    out["microbatch_size"] = m
    if not isinstance(config.remat, bool | np.bool_):
        raise TypeError(f"`remat` must be True or False, got {config.remat!r}.")
    out["remat"] = bool(config.remat)
    dtype = config.compute_dtype
    if dtype is not None:
        try:
            parsed = jnp.dtype(dtype)
        except TypeError:
            raise TypeError(f"`compute_dtype` must be a float dtype, got {dtype!r}.") from None
        if not jnp.issubdtype(parsed, jnp.floating):
            raise TypeError(f"`compute_dtype` must be a float dtype, got {dtype!r}.")
        dtype = parsed.name
    out["compute_dtype"] = dtype
    if config.chain_layout not in CHAIN_LAYOUTS:
        raise ValueError(
            f"`chain_layout` must be one of {CHAIN_LAYOUTS}, got {config.chain_layout!r}."
        )
    out["chain_layout"] = config.chain_layout
    out["chain_batch"] = validation.check_count("chain_batch", config.chain_batch, minimum=1)
    out["partition_rules"] = normalize_rules(config.partition_rules)
    return out


def normalize_rules(rules) -> tuple | None:
    """Partition rules as a hashable tuple of ``(regex, spec)`` (spec: a tuple of ``None``,
    an axis name, or a tuple of axis names per dimension). Raises on a malformed rule."""
    if rules is None:
        return None
    if isinstance(rules, dict):
        rules = list(rules.items())
    out = []
    for rule in rules:
        if not (isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2):
            raise TypeError(f"a partition rule is a pair (regex, PartitionSpec), got {rule!r}.")
        pattern, spec = rule
        if not isinstance(pattern, str):
            raise TypeError(f"a partition rule's pattern must be a str, got {pattern!r}.")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"partition rule {pattern!r} is not a valid regex: {error}.") from None
        if spec is None:
            spec = ()
        if isinstance(spec, str):
            spec = (spec,)
        entries = []
        for entry in tuple(spec):
            if isinstance(entry, list):
                entry = tuple(entry)
            if not (entry is None or isinstance(entry, str) or isinstance(entry, tuple)):
                raise TypeError(
                    f"partition rule {pattern!r}: a spec entry is None, an axis name or a tuple "
                    f"of axis names, got {entry!r}."
                )
            entries.append(entry)
        out.append((pattern, tuple(entries)))
    return tuple(out)


def check_schedule(schedule, num_steps: int) -> tuple[float, str]:
    """Evaluate a step-size schedule (``step -> ε``, e.g. an optax schedule) at every step:
    all values finite and > 0. Returns its first value and a description that identifies
    it (first and last values and a digest of all of them)."""
    try:
        values = np.asarray(schedule(jnp.arange(num_steps)), np.float64)
        values = np.broadcast_to(values, (num_steps,))
    except Exception as error:
        raise TypeError(
            "`step_size` as a callable must be a schedule: step (an int array) -> step size, "
            f"like an optax schedule; calling it failed with {error!r}."
        ) from None
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        raise ValueError(
            f"the step-size schedule gives {values[bad][0]} at step {np.argmax(bad)}; every "
            "step size must be finite and > 0."
        )
    digest = hashlib.sha256(values.astype(np.float32).tobytes()).hexdigest()[:12]
    text = f"schedule {values[0]:.4g} -> {values[-1]:.4g} (sha256 {digest})"
    return float(values[0]), text


_DEFAULTS = LLCConfig()
#: The run options an entry point takes as keywords: the fields a user sets.
OPTIONS = tuple(
    f.name
    for f in dataclasses.fields(LLCConfig)
    if f.name not in ("num_examples", "step_size_schedule", "schedule")
)


def run_options(*, exclude: tuple[str, ...] = (), **defaults):
    """Give an entry point ``fn(..., config, ...)`` the run options as keyword arguments.

    The options are :class:`LLCConfig`'s fields, declared there once: the wrapped function
    takes ``config=`` (an :class:`LLCConfig`), or the options one by one (defaults:
    ``defaults``, else the field's), or both (the options override the config's fields),
    and receives one ``config``. ``exclude``: options this entry point does not take (a
    ``config=`` that sets one of them to other than its default is an error). A ``config=``
    brings all its fields: the entry point's own defaults (``defaults``) apply only to the
    options passed one by one. The signature shown by ``help()`` and ``inspect.signature``
    lists every option. Two grouped spellings are unpacked here: ``placement=``
    (a :class:`Placement`: its six options, each given once) and ``step_size=``
    :class:`Auto` (``"auto"`` with the keywords ``calibration_budget`` and
    ``calibrate_on``, for an entry point that takes them).
    """
    names = [n for n in OPTIONS if n not in exclude]
    grouped = not set(PLACEMENT) & set(exclude)
    unknown = set(defaults) - set(names)
    if unknown:
        raise TypeError(f"not run options: {sorted(unknown)}")
    base = LLCConfig(**defaults)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, config: LLCConfig | None = None, **kwargs):
            options = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            if grouped and kwargs.get("placement") is not None:
                options = _with_placement(options, kwargs.pop("placement"))
            kwargs.pop("placement", None)
            if config is None:
                config = base
            elif not isinstance(config, LLCConfig):
                raise TypeError(f"`config` must be an sj.LLCConfig, got {type(config).__name__}.")
            else:
                for name in exclude:
                    if getattr(config, name) != getattr(_DEFAULTS, name):
                        raise TypeError(
                            f"{fn.__name__} does not take `{name}`, which this config sets to "
                            f"{getattr(config, name)!r}; leave it at its default."
                        )
            if options:
                config = dataclasses.replace(config, **options)
            if isinstance(config.step_size, Auto):
                config, kwargs = _unpack_auto(fn, config, kwargs)
            return fn(*args, config=config, **kwargs)

        shown = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=getattr(base, n))
            for n in names
        ]
        if grouped:
            shown.append(
                inspect.Parameter("placement", inspect.Parameter.KEYWORD_ONLY, default=None)
            )
        config_param = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="LLCConfig | None"
        )
        wrapper.__signature__ = spliced_signature(
            fn, "config", [*shown, config_param], before=inspect.Parameter.KEYWORD_ONLY
        )
        wrapper.run_defaults = base
        return wrapper

    return decorate


def spliced_signature(fn, name: str, shown, *, before) -> inspect.Signature:
    """The signature a keyword-adding wrapper of ``fn`` shows (``help()``,
    ``inspect.signature``): ``fn``'s with its parameter ``name`` replaced by the parameters
    ``shown``, put before its first parameter of kind ``before`` (else last)."""
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.name != name]
    where = next((i for i, p in enumerate(params) if p.kind is before), len(params))
    return signature.replace(parameters=[*params[:where], *shown, *params[where:]])


def _with_placement(options: dict, placement) -> dict:
    """The run options with ``placement=`` spread into its flat options (each given once)."""
    if not isinstance(placement, Placement):
        raise TypeError(f"`placement` must be an sj.Placement, got {placement!r}.")
    options = dict(options)
    for name in PLACEMENT:
        value = getattr(placement, name)
        if name in options and options[name] != value:
            raise TypeError(
                f"`{name}` is given twice, as {options[name]!r} and as placement.{name}="
                f"{value!r}; give it once."
            )
        options[name] = value
    return options


def _unpack_auto(fn, config: LLCConfig, kwargs: dict) -> tuple[LLCConfig, dict]:
    """``step_size=sj.Auto(...)`` as the entry point's older spelling: ``step_size="auto"``
    and the keywords ``calibration_budget``, ``calibrate_on`` (each given once, and only
    to an entry point that takes it)."""
    accepted = inspect.signature(fn).parameters
    kwargs = dict(kwargs)
    for (keyword, value), field in zip(
        config.step_size.keywords().items(), dataclasses.fields(Auto), strict=True
    ):
        if value is None:
            continue
        if keyword not in accepted:
            raise TypeError(
                f"{fn.__name__} does not take sj.Auto({field.name}=...): "
                + (
                    "it calibrates on its one `params`; on_step chooses a checkpoint of a "
                    "sweep (estimate_llc_checkpoints)."
                    if field.name == "on_step"
                    else "it does not calibrate the step size."
                )
            )
        if kwargs.get(keyword) is not None:
            raise TypeError(
                f"the calibration's {field.name} is given twice, as sj.Auto({field.name}="
                f"{value!r}) and as {keyword}={kwargs[keyword]!r}; give it once."
            )
        kwargs[keyword] = value
    return dataclasses.replace(config, step_size=AUTO), kwargs
