"""slt_jax: local learning coefficients in JAX, many SGLD chains in one compiled program."""

from slt_jax import examples as examples
from slt_jax import influence as influence
from slt_jax import refine as refine
from slt_jax import samplers as samplers
from slt_jax import theory as theory
from slt_jax._auto import CalibrationError as CalibrationError
from slt_jax.adapters import linen_loss as linen_loss
from slt_jax.adapters import nnx_loss as nnx_loss
from slt_jax.calibrate import Calibration as Calibration
from slt_jax.calibrate import calibrate as calibrate
from slt_jax.checkpoints import CheckpointSet as CheckpointSet
from slt_jax.checkpoints import load_checkpoint_set as load_checkpoint_set
from slt_jax.checkpoints import save_checkpoint as save_checkpoint
from slt_jax.diagnostics import LLCDiagnosticWarning as LLCDiagnosticWarning
from slt_jax.inline import LLCEstimate as LLCEstimate
from slt_jax.inline import llc_function as llc_function
from slt_jax.llc import estimate_llc as estimate_llc
from slt_jax.plots import plot_calibration as plot_calibration
from slt_jax.plots import plot_llc as plot_llc
from slt_jax.plots import plot_trace as plot_trace
from slt_jax.refined import RefinedLLCResult as RefinedLLCResult
from slt_jax.refined import estimate_refined_llc as estimate_refined_llc
from slt_jax.result import CalibrationRecord as CalibrationRecord
from slt_jax.result import LLCConfig as LLCConfig
from slt_jax.result import LLCResult as LLCResult
from slt_jax.store import load_results as load_results
from slt_jax.sweep import estimate_llc_checkpoints as estimate_llc_checkpoints
from slt_jax.temperatures import TwoTemperatureResult as TwoTemperatureResult
from slt_jax.temperatures import estimate_llc_two_temperature as estimate_llc_two_temperature

__version__ = "0.1.0"

__all__ = [
    "Calibration",
    "CalibrationError",
    "CalibrationRecord",
    "CheckpointSet",
    "LLCConfig",
    "LLCDiagnosticWarning",
    "LLCEstimate",
    "LLCResult",
    "RefinedLLCResult",
    "TwoTemperatureResult",
    "calibrate",
    "estimate_llc",
    "estimate_llc_checkpoints",
    "estimate_llc_two_temperature",
    "estimate_refined_llc",
    "examples",
    "influence",
    "linen_loss",
    "llc_function",
    "load_checkpoint_set",
    "load_results",
    "nnx_loss",
    "plot_calibration",
    "plot_llc",
    "plot_trace",
    "refine",
    "samplers",
    "save_checkpoint",
    "theory",
]
