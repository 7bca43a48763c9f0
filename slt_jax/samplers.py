"""The samplers ``estimate_llc(..., sampler=...)`` accepts, as small hashable specs.

Pass a name (``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, ``"mala"``,
``"hmc"``, ``"nuts"``) for the defaults, or a spec with options, e.g.
``sj.samplers.RMSPropSGLD(alpha=0.999)``. A spec is static: it selects the compiled
program; the step size, localization and ``nβ`` stay array arguments.

* Stochastic-gradient samplers (minibatches): :class:`SGLD`, :class:`RMSPropSGLD`,
  :class:`SGHMC`, :class:`SGNHT` (see :mod:`slt_jax.kernels.langevin`,
  :mod:`slt_jax.kernels.hamiltonian`).
* Exact-gradient reference samplers (the whole data set every step, with a Metropolis-
  Hastings correction): :class:`MALA`, :class:`HMC`, :class:`NUTS` (see
  :mod:`slt_jax.kernels.exact`). For small models: their estimate is free of minibatch
  and step-size bias, so it measures an SGLD setting's bias.

What ``step_size`` means: ``ε`` of SGLD's ``w + ε/2·∇log p + N(0, ε)`` for SGLD,
RMSProp-SGLD (before preconditioning) and MALA; the time step ``h`` of the dynamics for
SGHMC and SGNHT; the leapfrog step for HMC and NUTS.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import ClassVar

from slt_jax import posterior
from slt_jax.kernels import exact, hamiltonian, langevin
from slt_jax.kernels.base import Kernel


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Base of the sampler specs."""

    name: ClassVar[str]
    #: Steps see the whole data set (exact gradients and a Metropolis-Hastings test).
    full_batch: ClassVar[bool] = False
    #: Moves are Langevin proposals, so their MALA acceptance can be computed.
    langevin: ClassVar[bool] = False

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
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
    """Stochastic gradient Langevin dynamics (Welling & Teh 2011)."""

    name: ClassVar[str] = "sgld"
    langevin: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
        return langevin.sgld(_grad(loss_fn, center, nbeta, localization))


@dataclasses.dataclass(frozen=True)
class RMSPropSGLD(Sampler):
    """RMSProp-preconditioned SGLD (Li et al. 2016, arXiv:1512.07666)."""

    alpha: float = 0.99
    eps: float = 1e-5
    name: ClassVar[str] = "rmsprop_sgld"
    langevin: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
        grad = _grad(loss_fn, center, nbeta, localization)
        return langevin.rmsprop_sgld(grad, alpha=self.alpha, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class SGHMC(Sampler):
    """Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin 2014)."""

    friction: float = 10.0
    name: ClassVar[str] = "sghmc"

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
        grad = _grad(loss_fn, center, nbeta, localization)
        return hamiltonian.sghmc(grad, friction=self.friction)


@dataclasses.dataclass(frozen=True)
class SGNHT(Sampler):
    """Stochastic gradient Nosé-Hoover thermostat (Ding et al. 2014)."""

    diffusion: float = 10.0
    name: ClassVar[str] = "sgnht"

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
        grad = _grad(loss_fn, center, nbeta, localization)
        return hamiltonian.sgnht(grad, diffusion=self.diffusion)


@dataclasses.dataclass(frozen=True)
class MALA(Sampler):
    """Metropolis-adjusted Langevin, exact gradients (a reference sampler)."""

    name: ClassVar[str] = "mala"
    full_batch: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
        return exact.mala(*_exact_parts(loss_fn, center, nbeta, localization))


@dataclasses.dataclass(frozen=True)
class HMC(Sampler):
    """Hamiltonian Monte Carlo, exact gradients (a reference sampler)."""

    num_integration_steps: int = 10
    name: ClassVar[str] = "hmc"
    full_batch: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
        parts = _exact_parts(loss_fn, center, nbeta, localization)
        return exact.hmc(*parts, num_integration_steps=self.num_integration_steps)


@dataclasses.dataclass(frozen=True)
class NUTS(Sampler):
    """The No-U-Turn sampler, exact gradients (a reference sampler)."""

    max_num_doublings: int = 10
    name: ClassVar[str] = "nuts"
    full_batch: ClassVar[bool] = True

    def build(self, loss_fn, center, *, nbeta, localization) -> Kernel:
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
    options = {}
    if rest:
        call = ast.parse(f"f({rest}", mode="eval").body
        options = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    try:
        return SAMPLERS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad options for sampler {name!r}: {error}") from None
