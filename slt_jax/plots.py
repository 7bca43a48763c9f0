"""Figures of LLC results (matplotlib)."""

from slt_jax._src.plots import plot_calibration as plot_calibration
from slt_jax._src.plots import plot_llc as plot_llc
from slt_jax._src.plots import plot_trace as plot_trace

__all__ = [
    "plot_calibration",
    "plot_llc",
    "plot_trace",
]
