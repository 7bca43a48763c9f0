"""The samplers ``estimate_llc(..., sampler=...)`` accepts, as small hashable specs.

Pass a name (``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, ``"mala"``,
``"hmc"``, ``"nuts"``) for the defaults, or a spec with options, e.g.
``sj.samplers.RMSPropSGLD(alpha=0.999)``. A spec is static: it selects the compiled
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

from slt_jax._src import posterior
from slt_jax._src.samplers import exact, hamiltonian, langevin
from slt_jax._src.samplers.base import Kernel


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Base of the sampler specs."""

    name: ClassVar[str]
    #: Steps see the whole data set (exact gradients and a Metropolis-Hastings test).
    full_batch: ClassVar[bool] = False
    #: Moves are Langevin proposals, so their MALA acceptance can be computed.
    langevin: ClassVar[bool] = False
    #: ``build`` takes ``noise=`` and the selected coordinates of a restricted chain move
    #: as the masked full-size chain's do (so a compact restricted chain may stand in for it).
    compactable: ClassVar[bool] = False

    def build(self, loss_fn, center, *, nbeta, localization, noise=None) -> Kernel:
        """The kernel for this loss and centre (``noise``: see :attr:`compactable`)."""
        raise NotImplementedError

    def describe(self) -> str:
        """``name`` or ``name(option=value, ...)`` for options that differ from the defaults;
        :func:`resolve_sampler` reads it back."""
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


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
        return hamiltonian.sghmc(grad, friction=self.friction)


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
        return hamiltonian.sgnht(grad, diffusion=self.diffusion)


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


def resolve_sampler(sampler: str | Sampler) -> Sampler:
    """A spec from a spec, a name, or a :meth:`Sampler.describe` string."""
    if isinstance(sampler, Sampler):
        return sampler
    if not isinstance(sampler, str):
        raise TypeError(f"`sampler` must be a name or a slt_jax.samplers spec, got {sampler!r}.")
    name, _, rest = sampler.partition("(")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.")
    options = _spec_options(sampler, rest) if rest else {}
    try:
        return SAMPLERS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad options for sampler {name!r}: {error}") from None


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
