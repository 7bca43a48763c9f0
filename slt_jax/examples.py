"""Small built-in examples: the digits data set (shipped), an MLP for it, a quick trainer
with checkpoints, and the demo's model factory (``--model slt_jax.examples:digits_mlp``)."""

from slt_jax._src.examples import digits_mlp as digits_mlp
from slt_jax._src.examples import train_classifier as train_classifier
from slt_jax._src.training import checkpoint_schedule as checkpoint_schedule
from slt_jax._src.training import log_spaced_steps as log_spaced_steps
from slt_jax.models.digits import MLP as MLP
from slt_jax.models.digits import load_digits as load_digits
from slt_jax.models.digits import load_mnist_idx as load_mnist_idx

__all__ = [
    "MLP",
    "checkpoint_schedule",
    "load_digits",
    "load_mnist_idx",
    "log_spaced_steps",
    "digits_mlp",
    "train_classifier",
]
