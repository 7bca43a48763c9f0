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
from slt_jax._src.samplers.specs import Sampler, resolve_sampler

#: The LLC estimators (see :mod:`slt_jax._src.estimators.llc`).
ESTIMATORS = ("paired", "plain")
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


@dataclasses.dataclass(frozen=True)
class LLCConfig:
    """Every setting of a run. Unresolved (as given) or resolved (by :meth:`resolve`: what
    results carry; ``num_examples`` is set, the defaults filled in).

    Attributes:
      num_chains: independent chains, all started at ``w*``.
      num_steps: steps per chain, burn-in included.
      num_burnin: initial steps whose draws are discarded (``None``: ``num_steps // 4``).
      step_size: ``ε`` (SGLD's ``w ← w + ε/2·∇log p + N(0, ε)``, devinterp's ``lr``), a
        schedule ``step -> ε`` (resolved: its first value), or ``"auto"`` (calibrated by
        the entry point before resolving).
      localization: ``γ`` (``None``: 100, or calibrated with ``step_size="auto"``).
      nbeta: ``nβ`` (``None``: ``n / log n``).
      batch_size: minibatch size (exact-gradient samplers: the whole data set).
      num_examples: ``n``, set when resolved.
      estimator: ``"paired"`` or ``"plain"``.
      sampler: a name, a spec of :mod:`slt_jax.samplers` (resolved: its description).
      seed: an integer seed or a JAX key (resolved: the integer, or ``None`` for a key).
      diagnostic_every: record chain diagnostics every this many draws (0: none).
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

    num_chains: int = 8
    num_steps: int = 1000
    num_burnin: int | None = None
    step_size: Any = 1e-4
    localization: Any = None
    nbeta: float | None = None
    batch_size: int = 256
    num_examples: int | None = None
    estimator: str = "paired"
    sampler: Any = "sgld"
    seed: Any = 0
    diagnostic_every: int = 10
    microbatch_size: int | None = None
    remat: bool = False
    compute_dtype: str | None = None
    chain_layout: str = "auto"
    chain_batch: int = 1
    partition_rules: Any = None
    init_loss_batches: int | str | None = None
    step_size_schedule: str | None = None
    schedule: object = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
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
        step_size, schedule, text = self.step_size, None, None
        if self.schedule is not None:  # a resolved configuration: its schedule, again
            step_size = self.schedule
        if isinstance(step_size, str):
            raise TypeError(f"`step_size` must be a number or a schedule, got str {step_size!r}.")
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
            sampler=spec.describe(),
            seed=int(seed)
            if isinstance(seed, int | np.integer) and not isinstance(seed, bool)
            else None,
            diagnostic_every=validation.check_count(
                "diagnostic_every", self.diagnostic_every, minimum=0
            ),
            step_size_schedule=text,
            schedule=schedule,
            init_loss_batches=init_loss_batches,
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


def check_sampler(sampler) -> Sampler:
    """A sampler spec (from a name or a spec) whose numeric options are positive."""
    spec = resolve_sampler(sampler)
    # Float options as floats (friction=50 is friction=50.0: one description, one program).
    spec = dataclasses.replace(
        spec,
        **{
            f.name: float(getattr(spec, f.name))
            for f in dataclasses.fields(spec)
            if isinstance(f.default, float)
            and isinstance(getattr(spec, f.name), int | np.integer | np.floating)
            and not isinstance(getattr(spec, f.name), bool)
        },
    )
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if spec.name == "rmsprop_sgld" and field.name == "alpha":
            continue  # a decay in [0, 1): 0 keeps only the current g² (checked below)
        if isinstance(field.default, float):
            validation.check_positive(f"{spec.name}.{field.name}", value)
        elif isinstance(field.default, int):
            validation.check_count(f"{spec.name}.{field.name}", value, minimum=1)
    if spec.name == "rmsprop_sgld" and (
        isinstance(spec.alpha, bool | str)
        or not isinstance(spec.alpha, int | float | np.integer | np.floating)
        or not 0 <= spec.alpha < 1
    ):
        raise ValueError(f"rmsprop_sgld.alpha must be in [0, 1), got {spec.alpha}.")
    return spec


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
    lists every option.
    """
    names = [n for n in OPTIONS if n not in exclude]
    unknown = set(defaults) - set(names)
    if unknown:
        raise TypeError(f"not run options: {sorted(unknown)}")
    base = LLCConfig(**defaults)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, config: LLCConfig | None = None, **kwargs):
            options = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
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
            return fn(*args, config=config, **kwargs)

        signature = inspect.signature(fn)
        params = [p for p in signature.parameters.values() if p.name != "config"]
        first_keyword = next(
            (i for i, p in enumerate(params) if p.kind is inspect.Parameter.KEYWORD_ONLY),
            len(params),
        )
        shown = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=getattr(base, n))
            for n in names
        ]
        config_param = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="LLCConfig | None"
        )
        params = [*params[:first_keyword], *shown, config_param, *params[first_keyword:]]
        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.run_defaults = base
        return wrapper

    return decorate
