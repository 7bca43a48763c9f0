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
from collections.abc import Callable
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


class Static(NamedTuple):
    """The part of a configuration that selects the compiled program (hashable)."""

    batch_size: int
    num_burnin: int
    num_draws: int
    estimator: str
    sampler: Sampler
    schedule: Callable | None  # step t -> a multiplier of the step size; None: 1
    diagnostic_every: int

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
    step_size_schedule: str | None = None
    schedule: object = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def num_draws(self) -> int:
        return self.num_steps - self.num_burnin

    @property
    def resolved(self) -> bool:
        return self.num_examples is not None

    def to_dict(self) -> dict:
        """The saved settings (everything but the schedule callable)."""
        fields = dataclasses.asdict(self)
        del fields["schedule"]
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
        if isinstance(step_size, str):
            raise TypeError(
                f"`step_size` must be a number, got str {step_size!r} (a schedule, or the one "
                "word it takes: 'auto')."
            )
        if callable(step_size):
            schedule = step_size
            step_size, text = check_schedule(schedule, int(num_steps))
        localization = DEFAULT_LOCALIZATION if self.localization is None else self.localization
        if isinstance(localization, str):
            raise TypeError(f"`localization` must be a number, got str {localization!r}.")
        key = validation.resolve_key(self.seed)
        seed = self.seed
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
        )

    def arrays(self) -> Arrays:
        """The part passed as arrays: with a schedule the step size is its multiplier's
        scale (1), the schedule itself being static."""
        step_size = 1.0 if self.schedule is not None else self.step_size
        return Arrays(*(jnp.float32(v) for v in (step_size, self.localization, self.nbeta)))


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
    and receives one ``config``. ``exclude``: options this entry point does not take. The
    signature shown by ``help()`` and ``inspect.signature`` lists every option.
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
