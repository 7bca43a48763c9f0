"""Essential dynamics: the outputs of a model on a probe set at every checkpoint, PCA'd
(joint trajectory PCA over several runs), stage boundaries, and their plots."""

from slt_jax._src.dynamics import EssentialDynamics as EssentialDynamics
from slt_jax._src.dynamics import essential_dynamics as essential_dynamics
from slt_jax._src.dynamics import features as features
from slt_jax._src.dynamics import joint_essential_dynamics as joint_essential_dynamics
from slt_jax._src.dynamics import pca as pca
from slt_jax._src.dynamics import plot_development as plot_development
from slt_jax._src.dynamics import plot_essential_dynamics as plot_essential_dynamics
from slt_jax._src.dynamics import stage_boundaries as stage_boundaries

__all__ = [
    "EssentialDynamics",
    "essential_dynamics",
    "features",
    "joint_essential_dynamics",
    "pca",
    "plot_development",
    "plot_essential_dynamics",
    "stage_boundaries",
]
