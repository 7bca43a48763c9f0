"""Samplers as ``(init, step)`` pairs of pure functions over a NamedTuple state."""

from slt_jax._src.posterior import localized_logdensity_grad as localized_logdensity_grad
from slt_jax._src.samplers.base import Kernel as Kernel
from slt_jax._src.samplers.base import StepInfo as StepInfo
from slt_jax._src.samplers.exact import hmc as hmc
from slt_jax._src.samplers.exact import mala as mala
from slt_jax._src.samplers.exact import nuts as nuts
from slt_jax._src.samplers.hamiltonian import sghmc as sghmc
from slt_jax._src.samplers.hamiltonian import sgnht as sgnht
from slt_jax._src.samplers.langevin import langevin_acceptance as langevin_acceptance
from slt_jax._src.samplers.langevin import rmsprop_sgld as rmsprop_sgld
from slt_jax._src.samplers.langevin import sgld as sgld

__all__ = [
    "Kernel",
    "StepInfo",
    "hmc",
    "langevin_acceptance",
    "localized_logdensity_grad",
    "mala",
    "nuts",
    "rmsprop_sgld",
    "sghmc",
    "sgld",
    "sgnht",
]
