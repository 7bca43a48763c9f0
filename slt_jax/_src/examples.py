"""Small built-in examples: a quick classifier trainer and the digits MLP factory of the
demo (``python -m slt_jax demo``), used by the benchmarks and the tests too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slt_jax._src.io.adapters import nnx_loss
from slt_jax._src.io.checkpoints import save_checkpoint
from slt_jax.models.digits import MLP, load_digits


def train_classifier(
    model: nnx.Module,
    data: tuple[np.ndarray, np.ndarray],
    *,
    num_steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    checkpoint_steps: tuple[int, ...] = (),
) -> float:
    """Train ``model`` in place with Adam on softmax cross-entropy; return the final loss.

    With ``checkpoint_dir``, the parameters before step ``s`` (so ``s = 0`` is the
    initialisation) are saved for every ``s`` in ``checkpoint_steps`` as a checkpoint set
    (:func:`slt_jax.save_checkpoint`, safetensors); ``s = num_steps`` saves the end.
    """

    def maybe_save(step):
        if checkpoint_dir is not None and step in checkpoint_steps:
            save_checkpoint(checkpoint_dir, step, nnx.state(model, nnx.Param))

    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xb, yb):
        def loss_fn(model):
            logits = model(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    key = jax.random.key(seed)
    for step in range(num_steps):
        maybe_save(step)
        idx = jax.random.choice(jax.random.fold_in(key, step), x.shape[0], (batch_size,))
        loss = train_step(model, optimizer, x[idx], y[idx])
    maybe_save(num_steps)
    return float(loss)


def digits_mlp(hidden: int = 32, seed: int = 0):
    """A model factory for the command line: ``--model slt_jax.examples:digits_mlp``.

    Returns ``(loss_fn, data, like)`` for an untrained 64-``hidden``-10 MLP on digits:
    the loss, the data set and the parameter template that checkpoints are loaded into.
    """
    import optax

    model = MLP((64, hidden, 10), rngs=nnx.Rngs(seed))
    loss_fn, params = nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    return loss_fn, load_digits(), params
