"""Training helpers shared by the paper models and the demo: log-spaced checkpoint steps,
dense checkpoints around a transition, and the minibatch trainer of the small regression
models (TMS, deep linear networks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx

from slt_jax._src.io.adapters import nnx_loss
from slt_jax._src.io.checkpoints import save_checkpoint


def log_spaced_steps(num_steps: int, count: int, *, start: int = 0) -> list[int]:
    """About ``count`` distinct log-spaced steps from ``start`` to ``num_steps`` (both in)."""
    if start == 0:
        return [0, *log_spaced_steps(num_steps, count - 1, start=1)]
    steps = np.geomspace(start, num_steps, max(1, count))
    return np.unique(np.round(steps).astype(int)).tolist()


def checkpoint_schedule(
    num_steps: int, num_checkpoints: int, checkpoint_steps: Sequence[int] | None = None
) -> list[int]:
    """The sorted steps a training script saves: ``checkpoint_steps`` if given (say, denser
    around a transition), else :func:`log_spaced_steps` ``(num_steps, num_checkpoints)``;
    the end ``num_steps`` always included. Steps outside ``[0, num_steps]`` are an error."""
    if checkpoint_steps is None:
        steps = log_spaced_steps(num_steps, num_checkpoints)
    else:
        steps = [int(s) for s in checkpoint_steps]
        bad = [s for s in steps if not 0 <= s <= num_steps]
        if bad:
            raise ValueError(f"checkpoint_steps {bad} lie outside [0, num_steps={num_steps}].")
    return sorted(set(steps) | {num_steps})


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
