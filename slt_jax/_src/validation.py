"""Checks on user input, run before anything is compiled.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) with a
message that names the offending argument or pytree leaf.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src import sources
from slt_jax._src.data import num_examples

PyTree = Any


def leaf_name(path) -> str:
    """A pytree leaf's key path as users write it (``['layers'][0]['kernel']``)."""
    return jax.tree_util.keystr(path) or "<root>"


def path_string(path) -> str:
    """A key path as ``"a/b/0"``: dict keys, attribute names and indices joined by ``/``.

    The ``.value`` attribute that holds a Flax NNX variable's array is left out, so an NNX
    state's paths read ``layers/0/kernel`` like a Linen or plain-dict tree's."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        parts.pop()
    return "/".join(parts)


def check_params(params: PyTree) -> None:
    """Floating-point leaves only, at least one, all finite (``jax.ShapeDtypeStruct`` leaves,
    the template of a lazy checkpoint set, are checked on their dtype only)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ValueError("`params` has no array leaves.")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", np.asarray(leaf).dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params leaf {leaf_name(path)} has dtype {dtype}; every leaf must be a "
                "floating-point array (split non-trainable state out of `params`)."
            )
        if isinstance(leaf, jax.ShapeDtypeStruct):
            continue
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(
                f"params leaf {leaf_name(path)} contains non-finite values (NaN or inf); "
                "the LLC is only defined at a finite parameter."
            )


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).smallest_normal)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """A real number (not a bool or a string), finite, > 0 (or >= 0), that the sampler's
    float32 arithmetic represents: neither flushed to 0 nor overflowing to inf."""
    if isinstance(value, bool | np.bool_ | str | bytes):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {value}.")
    if value > _FLOAT32_MAX:
        raise ValueError(
            f"`{name}` = {value:g} overflows float32 (largest {_FLOAT32_MAX:.4g}): the "
            "sampler would see inf."
        )
    if 0 < value < _FLOAT32_TINY:
        raise ValueError(
            f"`{name}` = {value:g} underflows float32 (smallest normal "
            f"{_FLOAT32_TINY:.4g}): the sampler would see 0."
        )
    return value


def check_count(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_bytes(name: str, value: int | float) -> int:
    """A positive byte count; integral floats (``2e9``, as budgets are often written) pass."""
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be a whole number of bytes, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1 byte, got {value}.")
    return int(value)


def check_steps(num_steps: int, num_burnin: int) -> None:
    check_count("num_steps", num_steps, minimum=1)
    check_count("num_burnin", num_burnin, minimum=0)
    if num_burnin >= num_steps:
        raise ValueError(
            f"`num_burnin` ({num_burnin}) must be smaller than `num_steps` ({num_steps}): "
            "the estimate uses the draws after burn-in."
        )


def check_batch_size(batch_size: int, num_examples: int) -> int:
    check_count("batch_size", batch_size, minimum=1)
    if batch_size > num_examples:
        raise ValueError(
            f"`batch_size` ({batch_size}) is larger than the data set ({num_examples} "
            "examples); pass batch_size <= n."
        )
    return int(batch_size)


def check_data(data: PyTree, vocab_size: int | None = None, *, fingerprint: bool = False) -> None:
    """Every floating-point leaf of ``data`` finite (a NaN would read as a divergence); a
    host data source's examples all of one shape and dtype, its token ids within
    ``vocab_size`` (:meth:`slt_jax._src.sources.HostSource.check`), checked once per source
    in one streaming read, which with ``fingerprint`` also computes its fingerprint."""
    if sources.is_source(data):
        data.check_once(vocab_size, fingerprint=fingerprint)
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        if jnp.issubdtype(leaf.dtype, jnp.floating) and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(
                f"data leaf {leaf_name(path)} contains non-finite values (NaN or inf); "
                "clean the data set before estimating the LLC."
            )


def batch_like(data: PyTree, batch_size: int) -> PyTree:
    """The shapes and dtypes of one minibatch of ``data`` (for tracing, no copy)."""
    if sources.is_source(data):
        return data.like(batch_size)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((batch_size, *np.shape(x)[1:]), x.dtype), data
    )


def resolve_key(seed) -> jax.Array:
    """A JAX key from an integer seed in ``[0, 2**32)`` or from a key itself."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer | jax.Array):
        raise TypeError(f"`seed` must be an integer or a JAX key, got {seed!r}.")
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        if seed.shape != ():
            raise ValueError(f"`seed` must be a single key, got a key array of shape {seed.shape}.")
        return seed
    if isinstance(seed, jax.Array):
        raise TypeError("`seed` as an array must be a typed key from jax.random.key(...).")
    if not 0 <= seed < 2**32:
        raise ValueError(f"`seed` must be in [0, 2**32), got {seed}; larger seeds would collide.")
    return jax.random.key(int(seed))


def check_loss_fn(loss_fn, params: PyTree, batch: PyTree) -> None:
    """Trace (never compile) ``loss_fn(params, batch)`` and check it returns a float scalar.

    ``batch`` may be arrays or ``jax.ShapeDtypeStruct`` (see :func:`batch_like`).
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {loss_fn!r}.")
    try:
        out = jax.eval_shape(loss_fn, params, batch)
    except Exception as error:
        shapes = jax.tree.map(lambda x: tuple(x.shape), batch)
        raise ValueError(
            f"loss_fn(params, batch) failed on a minibatch with leaf shapes {shapes}: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not hasattr(out, "shape") or out.shape != ():
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"loss_fn must return a scalar (the mean loss over the batch); it returned {got}. "
            "If it returns per-example losses, take their mean."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a floating-point scalar, got dtype {out.dtype}.")


def check_remainder(loss_fn, params: PyTree, data: PyTree, batch_size: int, what: str) -> None:
    """Trace ``loss_fn`` on the last, short chunk of a full-data loss, if there is one.

    A full-data loss (``L_n(w*)``, an observable's loss) is evaluated in chunks of
    ``batch_size`` rows plus one final chunk of ``n mod batch_size`` rows, so ``loss_fn``
    must accept that batch size too; this says so before anything is compiled.
    """
    n = num_examples(data)
    remainder = n % min(batch_size, n)
    if not remainder:
        return
    try:
        check_loss_fn(loss_fn, params, batch_like(data, remainder))
    except ValueError as error:
        raise ValueError(
            f"loss_fn failed on a batch of {remainder} rows. {what} is evaluated over all "
            f"n = {n} examples in chunks of batch_size = {batch_size} rows plus one final "
            f"chunk of n mod batch_size = {remainder} rows, so loss_fn must accept any "
            "batch size; make it independent of the batch size, or choose a batch_size "
            f"that divides {n}. ({error})"
        ) from error
