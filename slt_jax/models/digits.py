"""The digits data set (shipped with the package), MNIST from its IDX files, and an MLP."""

from __future__ import annotations

from importlib import resources

import jax
import numpy as np
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
