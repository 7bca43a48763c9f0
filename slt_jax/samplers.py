"""The samplers ``estimate_llc(..., sampler=...)`` accepts, as small hashable specs.

Pass a name (``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, ``"mala"``, ``"hmc"``,
``"nuts"``) for the defaults, or a spec with options, e.g.
``sj.samplers.RMSPropSGLD(alpha=0.999)``, or a spec of your own: any frozen-dataclass
subclass of :class:`Sampler` (see its docstring and docs/extending.md). Each spec's
docstring gives its update rule, its reference and an example; the kernels themselves are
in :mod:`slt_jax.kernels`."""

from slt_jax._src.samplers.specs import HMC as HMC
from slt_jax._src.samplers.specs import MALA as MALA
from slt_jax._src.samplers.specs import NUTS as NUTS
from slt_jax._src.samplers.specs import SAMPLERS as SAMPLERS
from slt_jax._src.samplers.specs import SGHMC as SGHMC
from slt_jax._src.samplers.specs import SGLD as SGLD
from slt_jax._src.samplers.specs import SGNHT as SGNHT
from slt_jax._src.samplers.specs import RMSPropSGLD as RMSPropSGLD
from slt_jax._src.samplers.specs import Sampler as Sampler
from slt_jax._src.samplers.specs import register as register
from slt_jax._src.samplers.specs import resolve_sampler as resolve_sampler

__all__ = [
    "HMC",
    "MALA",
    "NUTS",
    "RMSPropSGLD",
    "SAMPLERS",
    "SGHMC",
    "SGLD",
    "SGNHT",
    "Sampler",
    "register",
    "resolve_sampler",
]
