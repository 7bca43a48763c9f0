"""Samplers: ``(init, step)`` pairs of pure functions over a NamedTuple state."""

from slt_jax.kernels.base import Kernel as Kernel
from slt_jax.kernels.base import StepInfo as StepInfo
from slt_jax.kernels.exact import hmc as hmc
from slt_jax.kernels.exact import mala as mala
from slt_jax.kernels.exact import nuts as nuts
from slt_jax.kernels.hamiltonian import sghmc as sghmc
from slt_jax.kernels.hamiltonian import sgnht as sgnht
from slt_jax.kernels.langevin import langevin_acceptance as langevin_acceptance
from slt_jax.kernels.langevin import rmsprop_sgld as rmsprop_sgld
from slt_jax.kernels.langevin import sgld as sgld

__all__ = [
    "Kernel",
    "StepInfo",
    "hmc",
    "langevin_acceptance",
    "mala",
    "nuts",
    "rmsprop_sgld",
    "sghmc",
    "sgld",
    "sgnht",
]
