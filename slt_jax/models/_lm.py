"""Layers shared by the native language models (:mod:`slt_jax.models.gpt2`,
:mod:`slt_jax.models.gpt_neox`), with parameters named and laid out as PyTorch's: a
``LayerNorm`` with ``weight`` and ``bias``, a ``Linear`` with a ``(out, in)`` weight,
GPT-2's ``Conv1D`` with an ``(in, out)`` one, an ``Embedding`` with a ``(num, dim)``
weight; and the causal attention both models use, masked as ``transformers`` masks it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _normal(rngs: nnx.Rngs, shape, std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance)."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


class Linear(nnx.Module):
    """``x @ weight.T + bias`` with ``weight`` of shape ``(out, in)``, as ``torch.nn.Linear``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool = True, std: float, rngs: nnx.Rngs):
        self.weight = _normal(rngs, (d_out, d_in), std)
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if bias else None

    def __call__(self, x):
        y = x @ self.weight[...].T
        return y if self.bias is None else y + self.bias[...]


class Conv1D(nnx.Module):
    """``x @ weight + bias`` with ``weight`` of shape ``(in, out)``: GPT-2's ``Conv1D``."""

    def __init__(self, d_in: int, d_out: int, *, std: float, rngs: nnx.Rngs):
        self.weight = _normal(rngs, (d_in, d_out), std)
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

    def __call__(self, x):
        return x @ self.weight[...] + self.bias[...]


class Embedding(nnx.Module):
    """Rows of ``weight`` ``(num, dim)``; :meth:`attend` is the tied output projection."""

    def __init__(self, num: int, dim: int, *, std: float, rngs: nnx.Rngs):
        self.weight = _normal(rngs, (num, dim), std)

    def __call__(self, ids):
        return jnp.take(self.weight[...], ids, axis=0)

    def attend(self, x):
        return x @ self.weight[...].T


def head_logits(features, weight):
    """Float32 logits ``features @ weight.T`` of the final hidden states under the head's
    ``(vocab, dim)`` matrix (the models' ``__call__``; the loss of
    :func:`slt_jax.lm.next_token_loss` takes ``features`` and ``weight`` apart, in chunks)."""
    return (features @ weight.T).astype(jnp.float32)


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS = {
    "gelu": _gelu_exact,
    "gelu_python": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


def check_activation(name: str, field: str) -> None:
    """A ``ValueError`` for an activation that :data:`ACTIVATIONS` lacks."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{field}={name!r} is not supported; choose one of {sorted(ACTIVATIONS)}.")


def check_inputs(input_ids, attention_mask, max_length: int | None) -> None:
    """Shapes and dtypes checked while tracing, before anything is compiled."""
    if jnp.ndim(input_ids) != 2 or not jnp.issubdtype(jnp.result_type(input_ids), jnp.integer):
        raise ValueError(
            f"input_ids must be integer token ids of shape (batch, length); got shape "
            f"{jnp.shape(input_ids)} and dtype {jnp.result_type(input_ids)}."
        )
    if max_length is not None and input_ids.shape[1] > max_length:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} positions; the model has {max_length}."
        )
    if attention_mask is not None and jnp.shape(attention_mask) != jnp.shape(input_ids):
        raise ValueError(
            f"attention_mask has shape {jnp.shape(attention_mask)}; input_ids has "
            f"{jnp.shape(input_ids)}."
        )


def causal_attention(q, k, v, attention_mask=None, *, scale: float):
    """Softmax attention of each position to itself and earlier ones.

    ``q, k, v``: ``(B, T, H, D)``; ``attention_mask``: ``(B, T)`` of 1 (token) and 0
    (padding): padded keys get no weight, as in ``transformers`` (a query with no key left,
    a padded one, spreads its weight evenly and its output is meaningless). Scores are
    computed in float32. Returns ``(B, T, H, D)``.
    """
    scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * scale
    length = q.shape[1]
    allowed = jnp.asarray(np.tril(np.ones((length, length), bool)))[None, None]
    if attention_mask is not None:
        allowed = allowed & (jnp.asarray(attention_mask) != 0)[:, None, None, :]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


def check_model_type(cls, d: Mapping[str, Any], model_type: str) -> None:
    """A ``ValueError`` for a ``config.json`` dict of another ``model_type``."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a config must be a dict (a config.json), not {type(d).__name__}.")
    found = d.get("model_type", model_type)
    if found != model_type:
        raise ValueError(
            f"config.json has model_type {found!r}; {cls.__name__} reads {model_type!r} configs "
            "(slt_jax.lm.load_model picks the model from the model_type)."
        )


def config_from_dict(cls, d: Mapping[str, Any], model_type: str):
    """``cls`` (a config dataclass) from a ``config.json`` dict: its own fields taken,
    others ignored; another ``model_type`` is a ``ValueError``."""
    check_model_type(cls, d, model_type)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def check_positive(config, names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


def check_heads(width: int, num_heads: int, names: tuple[str, str]) -> None:
    if width % num_heads:
        raise ValueError(f"{names[0]}={width} is not a multiple of {names[1]}={num_heads}.")
