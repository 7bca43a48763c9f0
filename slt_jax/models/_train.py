"""Minibatch training shared by the small regression models (TMS, deep linear networks)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import nnx

from slt_jax.adapters import nnx_loss
from slt_jax.checkpoints import save_checkpoint
from slt_jax.examples import log_spaced_steps


def minibatch_train(
    model: nnx.Module,
    per_example_loss: Callable,
    data: tuple[jax.Array, jax.Array],
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    optimizer: str,
    key: jax.Array,
    checkpoint_dir: str | None,
    num_checkpoints: int,
) -> dict[str, np.ndarray]:
    """Train ``model`` in place; return its history on the full data at log-spaced steps.

    Step ``s`` draws ``batch_size`` indices with replacement from ``fold_in(branch, s)``, where
    ``branch = fold_in(fold_in(key, 2**31 - 1), 0)`` is kept apart from the keys
    ``fold_in(key, i)`` that ``nnx.Rngs`` gives the initialisers, and
    takes one ``optimizer`` (``"sgd"`` or ``"adam"``) step on the mean loss. At each ``s`` in
    ``log_spaced_steps(num_steps, num_checkpoints)`` the parameters before step ``s`` are
    recorded (``history["step"]``, ``history["loss"]`` on all of ``data``) and, with
    ``checkpoint_dir``, saved with :func:`slt_jax.save_checkpoint`.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    x, y = data
    # nnx.Rngs(seed) draws initialisers from fold_in(key(seed), count): the minibatch keys
    # live on their own branch so that no step reuses an initialiser's key.
    key = jax.random.fold_in(jax.random.fold_in(key, 2**31 - 1), 0)
    loss_fn, params = nnx_loss(model, per_example_loss)
    opt = getattr(optax, optimizer)(learning_rate)

    @jax.jit
    def run(params, opt_state, start, stop):
        def body(step, carry):
            params, opt_state = carry
            idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, len(x))
            grads = jax.grad(loss_fn)(params, (x[idx], y[idx]))
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return jax.lax.fori_loop(start, stop, body, (params, opt_state))

    full_loss = jax.jit(loss_fn)
    opt_state, done = opt.init(params), 0
    history: dict[str, list] = {"step": [], "loss": []}
    for stop in log_spaced_steps(num_steps, num_checkpoints):
        params, opt_state = run(params, opt_state, done, stop)
        done = stop
        history["step"].append(stop)
        history["loss"].append(float(full_loss(params, (x, y))))
        nnx.update(model, params)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, stop, nnx.state(model, nnx.Param))
    return {name: np.asarray(values) for name, values in history.items()}
