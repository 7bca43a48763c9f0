"""The samplers ``estimate_llc(..., sampler=...)`` accepts, as small hashable specs.

Pass a name (``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, ``"mala"``,
``"hmc"``, ``"nuts"``) for the defaults, or a spec with options, e.g.
``sj.samplers.RMSPropSGLD(alpha=0.999)``, or a spec of your own (a frozen-dataclass
subclass of :class:`Sampler`: docs/extending.md). A spec is static: it selects the compiled
program; the step size, localization and ``nβ`` stay array arguments.

* Stochastic-gradient samplers (minibatches): :class:`SGLD`, :class:`RMSPropSGLD`,
  :class:`SGHMC`, :class:`SGNHT` (see :mod:`slt_jax._src.samplers.langevin`,
  :mod:`slt_jax._src.samplers.hamiltonian`).
* Exact-gradient reference samplers (the whole data set every step, with a Metropolis-
  Hastings correction): :class:`MALA`, :class:`HMC`, :class:`NUTS` (see
  :mod:`slt_jax._src.samplers.exact`). For small models: their estimate is free of minibatch
  and step-size bias, so it measures an SGLD setting's bias.

What ``step_size`` means: ``ε`` of SGLD's ``w + ε/2·∇log p + N(0, ε)`` for SGLD,
RMSProp-SGLD (before preconditioning) and MALA; the time step ``h`` of the dynamics for
SGHMC and SGNHT; the leapfrog step for HMC and NUTS.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import ClassVar

import jax
import numpy as np

from slt_jax._src import posterior, validation
from slt_jax._src.samplers import exact, hamiltonian, langevin
from slt_jax._src.samplers.base import Kernel


@dataclasses.dataclass(frozen=True)
class Sampler:
    r"""Base of the sampler specs: subclass it (a frozen dataclass) to add a sampler.

    A spec is a small hashable value: its fields are the sampler's static options (they
    select the compiled program), its :meth:`build` gives the kernel. The configuration
    keeps the spec itself, so any subclass works wherever a registered one does; its
    :meth:`describe` string is what manifests and ``LLCConfig.to_dict`` record (and what
    :func:`resolve_sampler` reads back for the registered ones, :data:`SAMPLERS`). A spec
    compares equal to its description (``sj.samplers.SGLD() == "sgld"``), so results read
    from disk, which hold the description, compare equal to the run that wrote them.

    What a subclass gives:

    * :meth:`build` (required): ``(loss_fn, center, *, nbeta, localization, noise=None) ->``
      :class:`~slt_jax._src.samplers.base.Kernel` on the localized posterior
      ``log p(w) = -nβ·L(w) - γ/2·‖w − w*‖²``. A stochastic-gradient sampler must honour
      ``noise`` (``(key, position) -> N(0, I)`` draws shaped like the position; zeros give
      its noise-free limit, which the conformance test checks).
    * :meth:`check` (optional): its options checked, before anything compiles.
    * :meth:`acceptance` (optional): its acceptance diagnostic for the chain's diagnostics.
    * the class variables ``name``, ``full_batch``, ``langevin``, ``compactable``.

    Example:
      >>> import dataclasses, jax.numpy as jnp, slt_jax as sj
      >>> @dataclasses.dataclass(frozen=True)
      ... class ColdSGLD(sj.samplers.Sampler):  # SGLD with its noise scaled down
      ...     temperature: float = 0.5  # an option (a field); `name = ...` would be a ClassVar
      ...     def build(self, loss_fn, center, *, nbeta, localization, noise=None):
      ...         grad = sj.kernels.localized_logdensity_grad(
      ...             loss_fn, center, nbeta=nbeta, localization=localization)
      ...         return sj.kernels.sgld(grad, self.temperature, noise=noise)
      >>> ColdSGLD(temperature=0.25).describe()
      'coldsgld(temperature=0.25)'
      >>> res = sj.estimate_llc(lambda w, b: 0.5 * jnp.sum(w**2), jnp.zeros(2),
      ...     jnp.zeros((10, 1)), sampler=ColdSGLD(), batch_size=10, num_chains=2,
      ...     num_steps=100, step_size=1e-3, localization=1.0, nbeta=100.0)
      >>> res.config.sampler
      ColdSGLD(temperature=0.5)
    """

    #: The name its description starts with (default: the class name, lower case).
    name: ClassVar[str] = "sampler"
    #: Steps see the whole data set (exact gradients and a Metropolis-Hastings test).
    full_batch: ClassVar[bool] = False
    #: Moves are Langevin proposals, so their MALA acceptance can be computed (the default
    #: :meth:`acceptance`).
    langevin: ClassVar[bool] = False
    #: ``build`` takes ``noise=`` and the selected coordinates of a restricted chain move
    #: as the masked full-size chain's do (so a compact restricted chain may stand in for it).
    compactable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()
        if "__eq__" not in cls.__dict__:  # kept by @dataclass, which sets only missing ones
            cls.__eq__ = Sampler.__eq__

    def __eq__(self, other):
        if isinstance(other, str):
            return self.describe() == other
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(
            getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self)
        )

    __hash__ = object.__hash__  # replaced by @dataclass(frozen=True) in every spec

    def __str__(self) -> str:
        return self.describe()

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        """The kernel for this loss and centre (``noise``: see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not define build().")

    def describe(self) -> str:
        """``name`` or ``name(option=value, ...)`` for options that differ from the defaults;
        :func:`resolve_sampler` reads it back."""
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def check(self) -> Sampler:
        """This spec with its options checked (``ValueError``/``TypeError`` naming the
        option) and normalized: float options as floats (``friction=50`` is ``50.0``: one
        description, one program). The default: an option whose default is a float must be
        finite and > 0, one whose default is an int a count >= 1. Override it (calling
        ``super().check()`` or not) for other rules."""
        spec = dataclasses.replace(self, **_floats(self))
        for field in dataclasses.fields(spec):
            value = getattr(spec, field.name)
            if isinstance(field.default, float):
                validation.check_positive(f"{spec.name}.{field.name}", value)
            elif isinstance(field.default, int) and not isinstance(field.default, bool):
                validation.check_count(f"{spec.name}.{field.name}", value, minimum=1)
        return spec

    def acceptance(
        self,
        loss_fn,
        center,
        *,
        nbeta,
        localization,
        position,
        proposal,
        info,
        grad,
        batch,
        step_size,
    ) -> jax.Array:
        """The acceptance diagnostic of one move ``position → proposal`` (recorded every
        ``diagnostic_every`` draws as ``mala_acceptance``). The default: for a Langevin
        sampler (:attr:`langevin`) the Metropolis-Hastings acceptance the move would have
        had as MALA (:func:`~slt_jax._src.samplers.langevin.move_acceptance`, one extra
        gradient), else the kernel's own ``info.acceptance`` (NaN when it has none).

        Args:
          loss_fn, center, nbeta, localization: the posterior (in the chain's coordinates).
          position, proposal: the move's start and end.
          info: the kernel's :class:`~slt_jax._src.samplers.base.StepInfo` of the move.
          grad: ``info.logdensity_grad`` over the moving coordinates.
          batch, step_size: the step's minibatch and step size.
        """
        if not self.langevin:
            return info.acceptance
        return langevin.move_acceptance(
            loss_fn,
            center,
            nbeta=nbeta,
            localization=localization,
            position=position,
            proposal=proposal,
            loss=info.loss,
            grad=grad,
            preconditioner=info.preconditioner,
            batch=batch,
            step_size=step_size,
        )


def _floats(spec: Sampler) -> dict:
    """The float options given as ints or numpy numbers, as floats."""
    return {
        f.name: float(getattr(spec, f.name))
        for f in dataclasses.fields(spec)
        if isinstance(f.default, float)
        and isinstance(getattr(spec, f.name), int | np.integer | np.floating)
        and not isinstance(getattr(spec, f.name), bool)
    }


def _grad(loss_fn, center, nbeta, localization):
    return posterior.localized_logdensity_grad(
        loss_fn, center, nbeta=nbeta, localization=localization
    )


def _exact_parts(loss_fn, center, nbeta, localization):
    logdensity = posterior.localized_logdensity(
        loss_fn, center, nbeta=nbeta, localization=localization
    )

    def loss_of(value, position):
        return posterior.loss_from_logdensity(
            value, position, center, nbeta=nbeta, localization=localization
        )

    return logdensity, loss_of


@dataclasses.dataclass(frozen=True)
class SGLD(Sampler):
    r"""Stochastic gradient Langevin dynamics, the default sampler.

    .. math::

        w_{t+1} = w_t - \tfrac{\epsilon}{2}\bigl(n\beta\,\nabla L_{B_t}(w_t)
            + \gamma\,(w_t - w^*)\bigr) + \sqrt{\epsilon}\,\xi_t,\qquad \xi_t\sim N(0, I),

    the convention of Lau et al. 2023 and devinterp's ``lr`` (``ε`` is the ``step_size``).

    References: Welling & Teh 2011, "Bayesian learning via stochastic gradient Langevin
    dynamics", ICML; Lau et al. 2023, arXiv:2308.12108.

    Example:
      >>> import jax.numpy as jnp, slt_jax as sj
      >>> loss = lambda w, batch: 0.5 * jnp.sum(w**2)  # λ = d/2 = 1/2
      >>> res = sj.estimate_llc(loss, jnp.zeros(1), jnp.zeros((10, 1)), batch_size=10,
      ...     sampler=sj.samplers.SGLD(), nbeta=100.0, step_size=1e-3, localization=1.0,
      ...     num_steps=8000)
      >>> bool(abs(res.llc_mean - 0.5) < 0.05)
      True
    """

    name: ClassVar[str] = "sgld"
    langevin: ClassVar[bool] = True
    compactable: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        return langevin.sgld(_grad(loss_fn, center, nbeta, localization), noise=noise)


@dataclasses.dataclass(frozen=True)
class RMSPropSGLD(Sampler):
    r"""RMSProp-preconditioned SGLD (pSGLD): each coordinate's step scaled by a running
    estimate of its gradient's magnitude, with ``g_t = ∇log p(w_t)``,

    .. math::

        V_t = \alpha V_{t-1} + (1-\alpha)\,g_t^2,\quad
        G_t = 1/(\mathrm{eps} + \sqrt{V_t/(1-\alpha^t)}),\quad
        w_{t+1} = w_t + \tfrac{\epsilon}{2} G_t g_t + \sqrt{\epsilon G_t}\,\xi_t.

    Reference: Li, Chen, Carlson & Carin 2016, "Preconditioned stochastic gradient
    Langevin dynamics for deep neural networks", AAAI, arXiv:1512.07666.

    Example:
      >>> import slt_jax as sj
      >>> sj.samplers.RMSPropSGLD(alpha=0.999).describe()
      'rmsprop_sgld(alpha=0.999)'

    ``G = 1/(eps + sqrt(V))`` with ``V`` the bias-corrected running mean (decay ``alpha``)
    of the squared gradient; Li et al.'s correction term Γ (the drift from G's dependence
    on w) is omitted, as in their experiments and in devinterp.

    * ``alpha = 0.9999``: with the bias correction, ``V`` is close to the mean of g² over
      the whole chain so far, a nearly frozen preconditioner, and the chain samples the
      preconditioned posterior. A fast-moving ``V`` couples ``G`` to the current position
      and, without Γ, biases λ̂ upward: with devinterp's ``alpha = 0.99``, measured +47% on
      the singular ``½(w₁² + w₂⁴)`` and +13-23% on a quadratic, growing as ε shrinks
      (0.999: +6%; 0.9999: within the Monte-Carlo error).
    * ``eps = 0.1`` bounds ``G`` by ``1/eps`` (devinterp's default). Where the gradient at
      ``w*`` vanishes (a minimum with full-batch gradients, a dead unit) ``V ≈ 0`` at the
      start, and a tiny ``eps`` makes the first moves' noise ``sqrt(ε/eps)`` huge (λ̂ off
      by orders of magnitude).
    """

    alpha: float = 0.9999
    eps: float = 0.1
    name: ClassVar[str] = "rmsprop_sgld"
    langevin: ClassVar[bool] = True
    compactable: ClassVar[bool] = True

    def check(self) -> RMSPropSGLD:
        """``eps > 0``; ``alpha`` a decay in ``[0, 1)`` (0 keeps only the current g²)."""
        spec = dataclasses.replace(self, **_floats(self))
        validation.check_positive(f"{spec.name}.eps", spec.eps)
        alpha = spec.alpha
        if (
            isinstance(alpha, bool | str)
            or not isinstance(alpha, int | float | np.integer | np.floating)
            or not 0 <= alpha < 1
        ):
            raise ValueError(f"rmsprop_sgld.alpha must be in [0, 1), got {alpha}.")
        return spec

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        grad = _grad(loss_fn, center, nbeta, localization)
        return langevin.rmsprop_sgld(grad, alpha=self.alpha, eps=self.eps, noise=noise)


@dataclasses.dataclass(frozen=True)
class SGHMC(Sampler):
    r"""Stochastic gradient Hamiltonian Monte Carlo: Langevin dynamics with momentum ``p``
    and friction ``α`` (unit mass, time step ``h`` = ``step_size``),

    .. math::

        p_{t+1} = (1 - \alpha h)\,p_t + h\,\nabla\log p(w_t) + \sqrt{2\alpha h}\,\xi_t,
        \qquad w_{t+1} = w_t + h\,p_{t+1}.

    Reference: Chen, Fox & Guestrin 2014, "Stochastic gradient Hamiltonian Monte Carlo",
    ICML, arXiv:1402.4102 (see :mod:`slt_jax._src.samplers.hamiltonian`).

    Example:
      >>> import slt_jax as sj
      >>> sj.samplers.resolve_sampler("sghmc(friction=50.0)")
      SGHMC(friction=50.0)
    """

    friction: float = 10.0
    name: ClassVar[str] = "sghmc"

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        grad = _grad(loss_fn, center, nbeta, localization)
        return hamiltonian.sghmc(grad, friction=self.friction, noise=noise)


@dataclasses.dataclass(frozen=True)
class SGNHT(Sampler):
    r"""Stochastic gradient Nosé-Hoover thermostat: SGHMC whose friction is a dynamic
    thermostat ``ξ`` keeping the kinetic energy per coordinate at the temperature,

    .. math::

        p_{t+1} = (1 - \xi_t h)\,p_t + h\,\nabla\log p(w_t) + \sqrt{2Dh}\,\xi'_t,\quad
        w_{t+1} = w_t + h\,p_{t+1},\quad
        \xi_{t+1} = \xi_t + h\,(\lVert p_{t+1}\rVert^2/d - 1),

    with ``D`` the ``diffusion`` (``ξ_0 = D``).

    Reference: Ding, Fang, Babbush, Chen, Skeel & Neven 2014, "Bayesian sampling using
    stochastic gradient thermostats", NeurIPS.

    Example:
      >>> import slt_jax as sj
      >>> sj.samplers.SGNHT(diffusion=5.0).describe()
      'sgnht(diffusion=5.0)'
    """

    diffusion: float = 10.0
    name: ClassVar[str] = "sgnht"

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        grad = _grad(loss_fn, center, nbeta, localization)
        return hamiltonian.sgnht(grad, diffusion=self.diffusion, noise=noise)


@dataclasses.dataclass(frozen=True)
class MALA(Sampler):
    r"""Metropolis-adjusted Langevin on the full-data posterior (a reference sampler): the
    SGLD proposal with exact gradients, accepted with probability

    .. math::

        \min\Bigl(1, \frac{p(w')\,q(w_t\mid w')}{p(w_t)\,q(w'\mid w_t)}\Bigr),\qquad
        q(w'\mid w) = N\bigl(w + \tfrac{\epsilon}{2}\nabla\log p(w),\ \epsilon I\bigr).

    Reference: Roberts & Tweedie 1996, "Exponential convergence of Langevin distributions
    and their discrete approximations", Bernoulli 2(4).

    Example:
      >>> import slt_jax as sj
      >>> sj.samplers.MALA().full_batch  # sees the whole data set at every step
      True
    """

    name: ClassVar[str] = "mala"
    full_batch: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        return exact.mala(*_exact_parts(loss_fn, center, nbeta, localization))


@dataclasses.dataclass(frozen=True)
class HMC(Sampler):
    r"""Hamiltonian Monte Carlo on the full-data posterior (a reference sampler):
    ``num_integration_steps`` leapfrog steps of size ``h`` (the ``step_size``) with a fresh
    unit-mass momentum, then a Metropolis test on ``H(w, p) = −log p(w) + ½‖p‖²``.

    Reference: Neal 2011, "MCMC using Hamiltonian dynamics", Handbook of Markov Chain Monte
    Carlo, ch. 5.

    Example:
      >>> import slt_jax as sj
      >>> sj.samplers.HMC(num_integration_steps=20).describe()
      'hmc(num_integration_steps=20)'
    """

    num_integration_steps: int = 10
    name: ClassVar[str] = "hmc"
    full_batch: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        parts = _exact_parts(loss_fn, center, nbeta, localization)
        return exact.hmc(*parts, num_integration_steps=self.num_integration_steps)


@dataclasses.dataclass(frozen=True)
class NUTS(Sampler):
    r"""The No-U-Turn sampler on the full-data posterior (a reference sampler): HMC whose
    trajectory doubles until it turns back (at most ``max_num_doublings`` times), leapfrog
    step ``h`` = ``step_size``.

    Reference: Hoffman & Gelman 2014, "The No-U-Turn sampler", JMLR 15, arXiv:1111.4246.

    Example:
      >>> import slt_jax as sj
      >>> sj.samplers.resolve_sampler("nuts").max_num_doublings
      10
    """

    max_num_doublings: int = 10
    name: ClassVar[str] = "nuts"
    full_batch: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        parts = _exact_parts(loss_fn, center, nbeta, localization)
        return exact.nuts(*parts, max_num_doublings=self.max_num_doublings)


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (SGLD, RMSPropSGLD, SGHMC, SGNHT, MALA, HMC, NUTS)
}


def register(cls: type[Sampler]) -> type[Sampler]:
    """Add a spec class to :data:`SAMPLERS` (a class decorator), so that its name and
    description strings resolve too: ``sampler="my_sgld"``, ``--sampler my_sgld`` on the
    command line, results of it read back from disk. Not needed to run a spec object.

    Example:
      >>> import dataclasses, slt_jax as sj
      >>> @sj.samplers.register
      ... @dataclasses.dataclass(frozen=True)
      ... class WarmSGLD(sj.samplers.SGLD):
      ...     name = "warm_sgld"
      >>> sj.samplers.resolve_sampler("warm_sgld")
      WarmSGLD()
      >>> del sj.samplers.SAMPLERS["warm_sgld"]
    """
    if not (isinstance(cls, type) and issubclass(cls, Sampler)):
        raise TypeError(f"register takes a subclass of slt_jax.samplers.Sampler, got {cls!r}.")
    known = SAMPLERS.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"a sampler named {cls.name!r} is registered already ({known}).")
    SAMPLERS[cls.name] = cls
    return cls


def names_help() -> str:
    """The registered names with their options, for help texts (the command line's)."""
    parts = []
    for name, cls in SAMPLERS.items():
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        parts.append(f"{name}({options})" if options else name)
    return ", ".join(parts)


def resolve_sampler(sampler: str | Sampler) -> Sampler:
    """A spec from a spec, a registered name, or a :meth:`Sampler.describe` string."""
    if isinstance(sampler, Sampler):
        return sampler
    if not isinstance(sampler, str):
        raise TypeError(f"`sampler` must be a name or a slt_jax.samplers spec, got {sampler!r}.")
    name, _, rest = sampler.partition("(")
    if name not in SAMPLERS:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}, or pass a spec "
            "object (any slt_jax.samplers.Sampler subclass; sj.samplers.register adds a "
            "name)."
        )
    options = _spec_options(sampler, rest) if rest else {}
    try:
        return SAMPLERS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad options for sampler {name!r}: {error}") from None


def check_sampler(sampler) -> Sampler:
    """A checked spec from a name or a spec: resolved, its own :meth:`Sampler.check`
    applied, and hashable (it selects the compiled program)."""
    spec = resolve_sampler(sampler).check()
    if not isinstance(spec, Sampler):
        raise TypeError(f"{type(sampler).__name__}.check() must return a Sampler, got {spec!r}.")
    try:
        hash(spec)
    except TypeError:
        raise TypeError(
            f"sampler {spec!r} is not hashable: a spec selects the compiled program, so it "
            "must be a @dataclasses.dataclass(frozen=True) whose options are hashable "
            "(numbers, strings, tuples)."
        ) from None
    return spec


def _spec_options(spec: str, rest: str) -> dict:
    """The ``option=literal`` keywords of ``name(rest``; anything else is a ``ValueError``."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"bad sampler spec {spec!r}: {why}; write e.g. 'sghmc(friction=50.0)' (options "
            "by name, values as literals)."
        )

    try:
        call = ast.parse(f"f({rest}", mode="eval").body
    except SyntaxError:
        raise bad("it does not parse") from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise bad("it is not one name(...) call")
    if call.args:
        raise bad(f"{len(call.args)} positional argument(s); options need names")
    options = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise bad("'**' is not an option")
        if keyword.arg in options:
            raise bad(f"option {keyword.arg!r} is given twice")
        try:
            options[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise bad(f"the value of {keyword.arg!r} is not a literal") from None
    return options
