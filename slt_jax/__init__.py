"""slt_jax: local learning coefficients in JAX, many SGLD chains in one compiled program.

The implementation lives in ``slt_jax._src`` by stage (config, data, posterior, samplers,
engine, estimators, jobs, io, plots; see docs/architecture.md); this package re-exports the
public names, one per line.
"""

from slt_jax import examples as examples
from slt_jax import influence as influence
from slt_jax import kernels as kernels
from slt_jax import lm as lm
from slt_jax import refine as refine
from slt_jax import samplers as samplers
from slt_jax import theory as theory
from slt_jax._src.compilation import enable_compilation_cache as enable_compilation_cache
from slt_jax._src.config import Auto as Auto
from slt_jax._src.config import LLCConfig as LLCConfig
from slt_jax._src.config import Placement as Placement
from slt_jax._src.dynamics import EssentialDynamics as EssentialDynamics
from slt_jax._src.dynamics import essential_dynamics as essential_dynamics
from slt_jax._src.dynamics import joint_essential_dynamics as joint_essential_dynamics
from slt_jax._src.dynamics import plot_development as plot_development
from slt_jax._src.dynamics import plot_essential_dynamics as plot_essential_dynamics
from slt_jax._src.estimators.diagnostics import LLCDiagnosticWarning as LLCDiagnosticWarning
from slt_jax._src.io.adapters import eqx_loss as eqx_loss
from slt_jax._src.io.adapters import linen_loss as linen_loss
from slt_jax._src.io.adapters import nnx_loss as nnx_loss
from slt_jax._src.io.checkpoints import CheckpointSet as CheckpointSet
from slt_jax._src.io.checkpoints import load_checkpoint_set as load_checkpoint_set
from slt_jax._src.io.checkpoints import save_checkpoint as save_checkpoint
from slt_jax._src.io.store import load_results as load_results
from slt_jax._src.io.tlens import tlens_forward as tlens_forward
from slt_jax._src.io.tlens import tlens_loss as tlens_loss
from slt_jax._src.io.torch_bridge import torch_forward as torch_forward
from slt_jax._src.io.torch_bridge import torch_loss as torch_loss
from slt_jax._src.jobs.auto import CalibrationError as CalibrationError
from slt_jax._src.jobs.calibrate import calibrate as calibrate
from slt_jax._src.jobs.calibration import Calibration as Calibration
from slt_jax._src.jobs.checkpoints import estimate_llc_checkpoints as estimate_llc_checkpoints
from slt_jax._src.jobs.inline import LLCEstimate as LLCEstimate
from slt_jax._src.jobs.inline import llc_function as llc_function
from slt_jax._src.jobs.llc import estimate_llc as estimate_llc
from slt_jax._src.jobs.observation import Observation as Observation
from slt_jax._src.jobs.plan import RunPlan as RunPlan
from slt_jax._src.jobs.refined import RefinedLLCResult as RefinedLLCResult
from slt_jax._src.jobs.refined import estimate_refined_llc as estimate_refined_llc
from slt_jax._src.jobs.refined_result import RefinedCheckpointsResult as RefinedCheckpointsResult
from slt_jax._src.jobs.refined_sweep import (
    estimate_refined_llc_checkpoints as estimate_refined_llc_checkpoints,
)
from slt_jax._src.jobs.refined_sweep import load_refined_results as load_refined_results
from slt_jax._src.jobs.temperatures import TwoTemperatureResult as TwoTemperatureResult
from slt_jax._src.jobs.temperatures import (
    estimate_llc_two_temperature as estimate_llc_two_temperature,
)
from slt_jax._src.plots import plot_calibration as plot_calibration
from slt_jax._src.plots import plot_llc as plot_llc
from slt_jax._src.plots import plot_trace as plot_trace
from slt_jax._src.results import CalibrationRecord as CalibrationRecord
from slt_jax._src.results import LLCResult as LLCResult
from slt_jax._src.sources import HostArrays as HostArrays
from slt_jax._src.sources import HostDataset as HostDataset
from slt_jax._src.sources import HostSource as HostSource
from slt_jax._src.sources import TokenWindows as TokenWindows
from slt_jax._src.version import __version__ as __version__

__all__ = [
    "Auto",
    "Calibration",
    "CalibrationError",
    "CalibrationRecord",
    "CheckpointSet",
    "EssentialDynamics",
    "HostArrays",
    "HostDataset",
    "HostSource",
    "LLCConfig",
    "LLCDiagnosticWarning",
    "LLCEstimate",
    "LLCResult",
    "Observation",
    "Placement",
    "RefinedCheckpointsResult",
    "RefinedLLCResult",
    "RunPlan",
    "TokenWindows",
    "TwoTemperatureResult",
    "calibrate",
    "enable_compilation_cache",
    "eqx_loss",
    "essential_dynamics",
    "estimate_llc",
    "estimate_llc_checkpoints",
    "estimate_llc_two_temperature",
    "estimate_refined_llc",
    "estimate_refined_llc_checkpoints",
    "examples",
    "influence",
    "joint_essential_dynamics",
    "linen_loss",
    "llc_function",
    "kernels",
    "lm",
    "load_checkpoint_set",
    "load_refined_results",
    "load_results",
    "nnx_loss",
    "plot_calibration",
    "plot_development",
    "plot_essential_dynamics",
    "plot_llc",
    "plot_trace",
    "refine",
    "samplers",
    "save_checkpoint",
    "theory",
    "tlens_forward",
    "tlens_loss",
    "torch_forward",
    "torch_loss",
]
