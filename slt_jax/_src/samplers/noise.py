r"""The Gaussian noise of the Langevin kernels, and the same noise drawn for a few coordinates.

A Langevin kernel draws its step's noise for the whole position at once: the position
pytree is flattened (``ravel_pytree``: its leaves in order, in their common float type) and
one ``jax.random.normal(key, (N,))`` is drawn, so coordinate ``i`` of the flattened
position receives entry ``i`` of that draw (:func:`gaussian`, BlackJAX's
``generate_gaussian_noise``).

A restricted chain moves only ``k ≪ N`` coordinates. :func:`normal_entries` gives entries
``i₁, …, i_k`` of that same draw at cost ``O(k)``: with JAX's partitionable Threefry (the
default since JAX 0.5), entry ``i`` of a draw of shape ``(N,)`` is a function of the key and
of ``i`` alone,

.. math::

    (b_1, b_2) = \mathrm{threefry2x32}(\text{key}, (\lfloor i/2^{32}\rfloor,\ i \bmod 2^{32})),
    \quad u = \mathrm{uniform}(b_1 \oplus b_2),\quad z_i = \sqrt2\,\mathrm{erf}^{-1}(u),

with ``uniform`` JAX's mantissa construction on ``(nextafter(-1, 0), 1)``. So a restricted
chain draws, for its ``k`` coordinates, the values a full-size chain with the same key
draws for them, without drawing the other ``N − k``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> key = jax.random.key(0)
  >>> full = jax.random.normal(key, (1000,))
  >>> some = normal_entries(key, jnp.array([3, 500, 999]), jnp.float32)
  >>> bool(jnp.all(some == full[jnp.array([3, 500, 999])]))
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def gaussian(key: jax.Array, position: PyTree) -> PyTree:
    """``N(0, I)`` noise shaped like ``position``: one draw over the flattened position."""
    from blackjax.util import generate_gaussian_noise

    return generate_gaussian_noise(key, position)


def flat_dtype(leaves) -> np.dtype:
    """The float type ``ravel_pytree`` flattens these leaves (or dtypes) to."""
    return np.dtype(jnp.result_type(*[jnp.dtype(getattr(x, "dtype", x)) for x in leaves]))


def reproducible(dtype) -> bool:
    """Whether :func:`normal_entries` reproduces ``jax.random.normal`` of this float type
    under the current configuration (partitionable Threefry keys, a 32- or 64-bit float)."""
    dtype = np.dtype(dtype)
    return (
        bool(jax.config.jax_threefry_partitionable)
        and jax.config.jax_default_prng_impl == "threefry2x32"
        and dtype in (np.dtype(np.float32), np.dtype(np.float64))
    )


def normal_entries(key: jax.Array, index: jax.Array, dtype) -> jax.Array:
    """Entries ``index`` of ``jax.random.normal(key, (N,), dtype)`` (any ``N > max(index)``),
    computed for those entries only.

    Args:
      key: a Threefry key (typed, as ``jax.random.key`` makes, or raw ``uint32[2]``).
      index: integer array of flat indices (int32, or int64 under ``jax_enable_x64``).
      dtype: ``float32`` or ``float64`` (see :func:`reproducible`).

    Returns:
      An array shaped like ``index``, bit-equal to the full draw's entries.
    """
    dtype = np.dtype(dtype)
    if not reproducible(dtype):
        raise ValueError(
            f"normal_entries reproduces partitionable Threefry draws of float32/float64 only "
            f"(dtype {dtype}, jax_threefry_partitionable="
            f"{jax.config.jax_threefry_partitionable})."
        )
    from jax.extend.random import threefry_2x32

    if jnp.issubdtype(jax.numpy.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    index = jnp.asarray(index)
    flat = index.reshape(-1)
    if flat.dtype.itemsize == 8:
        high = (flat >> 32).astype(jnp.uint32)
    else:
        high = jnp.zeros(flat.shape, jnp.uint32)
    low = flat.astype(jnp.uint32)
    if flat.size == 0:
        return jnp.zeros(index.shape, dtype)
    hashed = threefry_2x32((key[0], key[1]), jnp.concatenate([high, low]))
    first, second = hashed[: flat.size], hashed[flat.size :]
    if dtype.itemsize == 4:
        bits, uint, nmant = first ^ second, jnp.uint32, 23
    else:
        bits = (first.astype(jnp.uint64) << jnp.uint64(32)) | second.astype(jnp.uint64)
        uint, nmant = jnp.uint64, 52
    one = np.array(1.0, dtype).view(np.dtype(uint))
    float_bits = jax.lax.shift_right_logical(bits, jnp.asarray(8 * dtype.itemsize - nmant, uint))
    floats = jax.lax.bitcast_convert_type(float_bits | jnp.asarray(one, uint), dtype)
    floats = floats - jnp.array(1.0, dtype)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    hi = np.array(1.0, dtype)
    u = jax.lax.max(jnp.asarray(lo, dtype), floats * jnp.asarray(hi - lo, dtype) + lo)
    z = jax.lax.mul(jnp.asarray(np.sqrt(2), dtype), jax.lax.erf_inv(u))
    return z.reshape(index.shape)
