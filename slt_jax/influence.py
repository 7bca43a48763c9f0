"""Data-refined LLCs, Bayesian influence and susceptibilities from the observations of
:func:`slt_jax.estimate_refined_llc` (host-side estimators)."""

from slt_jax._src.estimators.influence import ObservableLLCs as ObservableLLCs
from slt_jax._src.estimators.influence import ProbeStatistics as ProbeStatistics

__all__ = [
    "ObservableLLCs",
    "ProbeStatistics",
]
