"""Parameter initialisers drawn as matrices, for the native models' higher-rank weights."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx


def as_matrix(init, num_in_axes: int = 1):
    """``init`` drawn as a ``(fan_in, fan_out)`` matrix and reshaped to the weight's shape.

    The same values as drawing the shape itself (JAX's random bits follow the elements'
    flat order; the fan-in of a variance-scaling ``init`` is the product of the first
    ``num_in_axes`` axes, its default fan-in axis on the matrix), but XLA's CPU compiler
    builds a matrix draw several times faster than a rank-3 or rank-4 one (about 0.25 s
    against 1 s for a ``(2, 8, 8, 16)`` normal; 4.7 s with its legacy emitters): a model's
    first initialisation compiles one draw per weight shape.
    """

    def draw(key, shape, dtype=jnp.float32):
        rows = math.prod(shape[:num_in_axes])
        return init(key, (rows, math.prod(shape) // rows), dtype).reshape(shape)

    return draw


def normal(std: float):
    """``nnx.initializers.normal(std)``, drawn as a matrix (:func:`as_matrix`)."""
    return as_matrix(nnx.initializers.normal(std))
