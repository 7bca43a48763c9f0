"""Small built-in examples: the digits data set, an MLP for it, and a quick trainer.

Used by the demo (``python -m slt_jax demo``), the benchmarks and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (1797 examples), shipped with the package.

    Returns ``(x, y)``: ``x`` float32 of shape (1797, 64) scaled to [0, 1], ``y`` int32
    labels 0-9. Source and licence: ``slt_jax/data/README.md``.
    """
    with resources.files("slt_jax").joinpath("data/digits.npz").open("rb") as f:
        archive = np.load(f)
        x, y = archive["images"], archive["labels"]
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


def load_mnist_idx(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (or any IDX-format image set) from the files the user points to.

    Reads the IDX format of LeCun et al.'s MNIST distribution (optionally gzip-compressed:
    ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``): a big-endian
    header (magic number ``0x00000803`` for images, ``0x00000801`` for labels, then the
    dimensions) followed by unsigned bytes. Returns ``(x, y)``: ``x`` float32 of shape
    ``(n, rows·cols)`` scaled to [0, 1], ``y`` int32 labels. Nothing is downloaded.
    """
    import gzip

    def read(path):
        path = str(path)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            return f.read()

    def header(raw, magic, ndim, what):
        got = int.from_bytes(raw[:4], "big")
        if got != magic:
            raise ValueError(
                f"{what}: magic number {got:#010x}, expected {magic:#010x} (not an IDX file "
                f"of {ndim}-d unsigned bytes)."
            )
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise ValueError(f"{what}: {body.size} bytes of data for dimensions {dims}.")
        return body.reshape(dims)

    images = header(read(images_path), 0x00000803, 3, images_path)
    labels = header(read(labels_path), 0x00000801, 1, labels_path)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int32)


class MLP(nnx.Module):
    """A ReLU multilayer perceptron: ``widths = (in, hidden..., out)``."""

    def __init__(self, widths: tuple[int, ...], *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=False)]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


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
    from slt_jax.checkpoints import save_checkpoint

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

    from slt_jax.adapters import nnx_loss

    model = MLP((64, hidden, 10), rngs=nnx.Rngs(seed))
    loss_fn, params = nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    return loss_fn, load_digits(), params
