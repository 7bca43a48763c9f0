"""Adapters from Flax models to ``(loss_fn, params)``: Flax stays at the edge.

Both adapters expect ``data = (inputs, targets)`` (each a pytree with a leading example axis)
and a per-example loss ``per_example_loss(outputs, targets) -> (batch,)``; the returned
``loss_fn(params, batch)`` is its mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

PyTree = Any
PerExampleLoss = Callable[[Any, Any], Any]


def _mean_loss(per_example_loss: PerExampleLoss, outputs, targets):
    losses = per_example_loss(outputs, targets)
    if jnp.ndim(losses) != 1:
        raise ValueError(
            "per_example_loss(outputs, targets) must return one loss per example, shape "
            f"(batch,); got shape {jnp.shape(losses)}."
        )
    return jnp.mean(losses)


def nnx_loss(model, per_example_loss: PerExampleLoss, *, wrt: Any = None, eval_mode: bool = True):
    """``(loss_fn, params)`` for a Flax NNX module.

    Args:
      model: an ``nnx.Module``; ``model(inputs)`` gives the outputs.
      per_example_loss: ``(outputs, targets) -> (batch,)`` losses.
      wrt: the NNX filter of the state the LLC is taken over; default ``nnx.Param``. The
        rest of the state (batch statistics, RNG counters) is held fixed.
      eval_mode: evaluate the model in inference mode (``Module.eval()`` on the copy the
        loss builds: BatchNorm uses its running statistics, Dropout is off), so the loss
        is a mean of per-example losses, as the estimators need. ``False`` keeps the
        module's own mode; BatchNorm in training mode then fails, as it would mutate its
        statistics inside the sampler.

    Returns:
      ``(loss_fn, params)``: ``params`` is the ``nnx.State`` of the selected variables and
      ``loss_fn(params, (inputs, targets))`` merges it back into the model.

    Example:
      >>> from flax import nnx; import optax, slt_jax as sj
      >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
      >>> loss_fn, params = sj.nnx_loss(
      ...     model, optax.softmax_cross_entropy_with_integer_labels)
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param if wrt is None else wrt, ...)

    def loss_fn(params, batch):
        inputs, targets = batch
        module = nnx.merge(graphdef, params, rest)
        if eval_mode:
            module.eval()
        return _mean_loss(per_example_loss, module(inputs), targets)

    return loss_fn, params


def linen_loss(module, variables: dict, per_example_loss: PerExampleLoss, **apply_kwargs):
    """``(loss_fn, params)`` for a Flax Linen module and its ``variables``.

    The LLC is taken over ``variables["params"]``; other collections are held fixed and
    never mutated. ``apply_kwargs`` are passed to ``module.apply``: pass your module's
    inference switch (e.g. ``train=False``) if it has BatchNorm or Dropout.

    Example:
      >>> import flax.linen as nn, jax, optax, slt_jax as sj
      >>> module = nn.Dense(3)
      >>> variables = module.init(jax.random.key(0), jax.numpy.ones((1, 4)))
      >>> loss_fn, params = sj.linen_loss(
      ...     module, variables, optax.softmax_cross_entropy_with_integer_labels)
    """
    if "params" not in variables:
        raise ValueError("`variables` has no 'params' collection.")
    rest = {name: value for name, value in variables.items() if name != "params"}

    def loss_fn(params, batch):
        inputs, targets = batch
        outputs = module.apply({"params": params, **rest}, inputs, **apply_kwargs)
        return _mean_loss(per_example_loss, outputs, targets)

    return loss_fn, variables["params"]
