"""Adapters from Flax and Equinox models to ``(loss_fn, params)``: the framework stays at
the edge.

Every adapter expects ``data = (inputs, targets)`` (each a pytree with a leading example
axis) and a per-example loss ``per_example_loss(outputs, targets) -> (batch,)``; the
returned ``loss_fn(params, batch)`` is its mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
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


def eqx_loss(
    model,
    per_example_loss: PerExampleLoss,
    *,
    inference: bool = True,
    batched: bool = False,
    filter_spec: Any = None,
):
    r"""``(loss_fn, params)`` for an Equinox module.

    The module is split by ``eqx.partition(model, filter_spec)`` into ``params`` (the
    arrays the LLC is taken over) and a static rest held fixed; ``loss_fn`` combines them
    again and returns

    .. math::

        L(w, \{(x_i, y_i)\}_{i=1}^b) = \frac1b \sum_{i=1}^b \ell(f_w(x_i), y_i),

    the mean of ``per_example_loss`` over the batch.

    Args:
      model: an ``eqx.Module``. Equinox layers act on one example (``eqx.nn.Linear`` maps
        ``(in,)`` to ``(out,)``), so by default the model is ``jax.vmap``-ed over the
        leading axis of ``inputs``.
      per_example_loss: ``(outputs, targets) -> (batch,)`` losses.
      inference: evaluate ``eqx.nn.inference_mode(model)`` (Dropout off), so the loss is
        a deterministic mean of per-example losses, as the estimators need. ``False``
        keeps the module's own mode; a Dropout in training mode then fails, as the loss
        passes it no key.
      batched: ``True`` if the model takes a whole batch itself (``model(inputs)`` gives
        the outputs of every example); no vmap is added.
      filter_spec: what ``eqx.partition`` puts in ``params``; default
        ``eqx.is_inexact_array`` (every floating-point array). A pytree of bools shaped
        like the model selects some of them (the others are held fixed, like the static
        fields). Stateful layers (``eqx.nn.BatchNorm``, ``eqx.nn.State``) are not
        supported: wrap the model in a module that closes over its state.

    Returns:
      ``(loss_fn, params)``: ``params`` is the array part of the module (an ``eqx.Module``
      pytree whose non-parameter fields are ``None``) and ``loss_fn(params, (inputs,
      targets))`` evaluates the recombined module.

    Example:
      >>> import equinox as eqx, jax, jax.numpy as jnp
      >>> from slt_jax._src.io.adapters import eqx_loss
      >>> model = eqx.nn.MLP(3, 1, width_size=8, depth=1, key=jax.random.key(0))
      >>> se = lambda out, y: 0.5 * jnp.sum((out - y) ** 2, axis=-1)
      >>> loss_fn, params = eqx_loss(model, se)
      >>> loss_fn(params, (jnp.ones((5, 3)), jnp.zeros((5, 1)))).shape
      ()
    """
    try:
        import equinox as eqx
    except ImportError:
        raise ImportError(
            'eqx_loss needs Equinox: pip install "slt-jax[equinox]" (or pip install equinox).'
        ) from None

    if inference:
        model = eqx.nn.inference_mode(model, value=True)
    params, static = eqx.partition(
        model, eqx.is_inexact_array if filter_spec is None else filter_spec
    )
    if not jax.tree.leaves(params):
        raise ValueError(
            "eqx_loss: the filter selects no array of the model; params would be empty."
        )

    def loss_fn(params, batch):
        inputs, targets = batch
        module = eqx.combine(params, static)
        outputs = module(inputs) if batched else jax.vmap(module)(inputs)
        return _mean_loss(per_example_loss, outputs, targets)

    return loss_fn, params
