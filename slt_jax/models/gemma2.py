r"""Gemma 2 (Gemma Team 2024) as a Flax NNX module whose parameters are those of Hugging
Face's ``Gemma2ForCausalLM``, by name and layout, so its checkpoints load as they are
(``sj.lm.load_model``; ``config.json``'s ``model_type`` is ``"gemma2"``).

A decoder like Llama's (:mod:`slt_jax.models.llama`: rotary positions, grouped-query
attention, gated MLP) with six differences:

- RMSNorm scales by :math:`1 + g`, not :math:`g` (its weights start at 0):
  :math:`\mathrm{RMS}(x) = (1 + g) \odot x / \sqrt{\overline{x^2} + \epsilon}`, in float32;
- the token embedding is multiplied by :math:`\sqrt{d}` (``hidden_size``, in float32);
- each block normalises both sublayers' inputs *and* outputs,

  .. math::

      a = h + \mathrm{RMS}_{pa}(\mathrm{Attn}(\mathrm{RMS}_{in}(h))),\qquad
      h \leftarrow a + \mathrm{RMS}_{pf}(\mathrm{MLP}(\mathrm{RMS}_{f}(a))),

  with the GeGLU MLP :math:`W_{down}(\mathrm{gelu}_{\tanh}(W_{gate} x) \odot W_{up} x)`
  (``hidden_activation``, GELU's tanh approximation);
- attention scores are scaled by ``query_pre_attn_scalar`` :math:`s`, not by the head size,
  and soft-capped at :math:`c_a` (``attn_logit_softcapping``) before the mask and softmax:
  :math:`z_h = \mathrm{softmax}\bigl(c_a \tanh(q_h k_{g(h)}^\top / (\sqrt{s}\, c_a))\bigr)
  v_{g(h)}` (query head :math:`h` reads key/value head :math:`g(h) = \lfloor h / (H /
  H_{kv}) \rfloor`);
- layers alternate (``layer_types``; by default even layers ``"sliding_attention"``, odd
  ones ``"full_attention"``): in a sliding layer a query at ``t`` sees keys
  ``t - W < s <= t`` only (``sliding_window`` ``W``), in a full one all ``s <= t``;
- the logits are soft-capped at :math:`c_f` (``final_logit_softcapping``):
  :math:`c_f \tanh(\mathrm{RMS}_{out}(h^{(L)}) W_{lm}^\top / c_f)`, the head tied to the
  embedding by default.

A cap of ``None`` leaves that tanh out. Because the final cap is not linear, the model has no
``features``/``output_weight`` split: :func:`slt_jax.lm.next_token_loss` takes the whole
``(B, T, V)`` logits (as for any module), not the chunked head of the other native models.

Parameters (``nnx.state(model, nnx.Param)`` paths, HF keys without ``model.``):
``embed_tokens/weight`` ``(V, d)``; per layer ``layers/{i}/``: ``input_layernorm/weight``,
``self_attn/q_proj/weight`` ``(H d_h, d)``, ``k_proj/weight`` and ``v_proj/weight``
``(H_kv d_h, d)``, ``o_proj/weight`` ``(d, H d_h)`` (biases on all four iff
``attention_bias``), ``post_attention_layernorm/weight``, ``pre_feedforward_layernorm/weight``,
``mlp/gate_proj/weight``, ``mlp/up_proj/weight`` ``(intermediate_size, d)``,
``mlp/down_proj/weight``, ``post_feedforward_layernorm/weight``; then ``norm/weight`` and,
untied only, ``lm_head/weight``. The refined-LLC layout is Llama's (``"llama"``: head
``"l0h1"`` is its ``q_proj`` rows, ``o_proj`` columns and its group's ``k_proj``/``v_proj``
rows).

References:
  Gemma Team (2024), "Gemma 2: improving open language models at a practical size",
  arXiv:2408.00118. Shazeer (2020), "GLU variants improve transformer", arXiv:2002.05202.
  Hugging Face ``transformers``' ``modeling_gemma2.py`` (eager attention).

Example::

  import slt_jax as sj
  from flax import nnx
  config = sj.lm.Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=8, sliding_window=8)
  model = sj.lm.Gemma2(config, rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((1, 16), jnp.int32))         # (1, 16, 97), |logits| < 30
  sj.lm.save_model(model, "tiny-gemma2")                 # transformers loads this directory
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax._src import families
from slt_jax.models import _lm
from slt_jax.models.llama import MLP, rotary_angles

__all__ = ["Gemma2", "Gemma2Config"]

SLIDING, FULL = "sliding_attention", "full_attention"
_LLAMA3 = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class Gemma2Config:
    """A Gemma 2 architecture, with the field names (and defaults) of Hugging Face's
    ``Gemma2Config``.

    ``layer_types`` ``None`` becomes ``("sliding_attention", "full_attention", ...)`` (layer
    ``i`` slides iff ``i`` is even); ``sliding_window`` ``None`` makes sliding layers full.
    ``final_logit_softcapping`` / ``attn_logit_softcapping`` ``None``: no cap.
    ``rope_llama3`` is Llama 3.1's rotary scaling or ``None`` (as
    :class:`~slt_jax.models.llama.LlamaConfig`'s).
    """

    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_llama3: tuple[float, float, float, float] | None = None
    attention_bias: bool = False
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None
    final_logit_softcapping: float | None = 30.0
    attn_logit_softcapping: float | None = 50.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self):
        _lm.check_positive(
            self,
            (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "max_position_embeddings",
            ),
        )
        if self.sliding_window is not None:
            _lm.check_positive(self, ("sliding_window",))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} does not divide "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (rotary embedding).")
        _lm.check_activation(self.hidden_activation, "hidden_activation")
        for name in ("query_pre_attn_scalar", "rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValueError(f"{name} must be positive or None, got {value!r}.")
        n = self.num_hidden_layers
        types = self.layer_types
        if types is None:
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(n))
        if isinstance(types, str) or len(types) != n or not set(types) <= {SLIDING, FULL}:
            raise ValueError(
                f"layer_types must list {n} entries, each {SLIDING!r} or {FULL!r}; got "
                f"{self.layer_types!r}."
            )
        # Resolved once, so that a config equals its to_dict/from_dict round trip.
        object.__setattr__(self, "layer_types", tuple(types))
        if self.rope_llama3 is not None:
            scaling = tuple(float(x) for x in self.rope_llama3)
            if len(scaling) != 4 or min(scaling) <= 0 or scaling[1] >= scaling[2]:
                raise ValueError(
                    "rope_llama3 must be (factor, low_freq_factor, high_freq_factor, "
                    f"original_max_position_embeddings), positive, low < high; got "
                    f"{self.rope_llama3!r}."
                )
            object.__setattr__(self, "rope_llama3", scaling)

    @property
    def head_size(self) -> int:
        """``d_h`` = ``head_dim`` (the rotary embedding reads this name)."""
        return self.head_dim

    @property
    def kv_heads(self) -> int:
        """``H_kv`` = ``num_key_value_heads``."""
        return self.num_key_value_heads

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (``None``: full causal attention)."""
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Gemma2Config:
        """The config of a ``config.json`` dict of ``model_type`` ``"gemma2"`` (unknown keys
        ignored). Rotary settings are read in either spelling (``rope_parameters`` or
        ``rope_theta``/``rope_scaling``); rotary scaling other than ``"llama3"``, a partial
        rotary embedding and bidirectional attention are ``ValueError`` s."""
        _lm.check_model_type(cls, d, "gemma2")
        if d.get("use_bidirectional_attention"):
            raise ValueError("Gemma 2 with bidirectional attention is not supported.")
        if d.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("a partial rotary embedding (partial_rotary_factor) is not supported.")
        base, scaling = families.llama_rope(d)
        fields = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_llama3"}
        # sliding_window and the caps may be null on purpose: None is a value here.
        nullable = {"sliding_window", "final_logit_softcapping", "attn_logit_softcapping"}
        kept = {k: v for k, v in d.items() if k in fields and (v is not None or k in nullable)}
        kept["rope_theta"] = base
        if scaling is not None:
            kept["rope_llama3"] = tuple(scaling[k] for k in _LLAMA3)
        if kept.get("layer_types") is not None:
            kept["layer_types"] = tuple(kept["layer_types"])
        return cls(**kept)

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` loads as a ``Gemma2ForCausalLM``
        (dropout 0, eager-equivalent attention)."""
        out = {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}
        out |= dataclasses.asdict(self)
        out |= {"layer_types": list(self.layer_types), "attention_dropout": 0.0}
        scaling = None
        if self.rope_llama3 is not None:
            scaling = {"rope_type": "llama3", **dict(zip(_LLAMA3, self.rope_llama3, strict=True))}
            scaling["original_max_position_embeddings"] = int(scaling[_LLAMA3[-1]])
        rope = {"rope_type": "default", "rope_theta": self.rope_theta} | (scaling or {})
        out |= {"rope_parameters": rope, "rope_scaling": scaling}
        del out["rope_llama3"]
        return out


class RMSNorm(nnx.Module):
    """``(1 + weight) * x / sqrt(mean(x²) + eps)`` over the last axis, in float32; the
    weight starts at 0."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (normed * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)


def _softcap(x, cap):
    return x if cap is None else cap * jnp.tanh(x / cap)


def _rotate(u, cos, sin):
    half = u.shape[-1] // 2
    return u * cos + jnp.concatenate([-u[..., half:], u[..., :half]], -1) * sin


def _allowed(length: int, window: int | None) -> np.ndarray:
    """``(T, T)`` bool: key ``s`` visible to query ``t`` iff ``t - W < s <= t``."""
    t, s = np.arange(length)[:, None], np.arange(length)[None, :]
    keep = s <= t
    return keep if window is None else keep & (s > t - window)


class Attention(nnx.Module):
    def __init__(self, config: Gemma2Config, layer: int, *, rngs: nnx.Rngs):
        d, std, dh = config.hidden_size, config.initializer_range, config.head_dim
        h, hk, bias = config.num_attention_heads, config.num_key_value_heads, config.attention_bias
        self.q_proj = _lm.Linear(d, h * dh, bias=bias, std=std, rngs=rngs)
        self.k_proj = _lm.Linear(d, hk * dh, bias=bias, std=std, rngs=rngs)
        self.v_proj = _lm.Linear(d, hk * dh, bias=bias, std=std, rngs=rngs)
        self.o_proj = _lm.Linear(h * dh, d, bias=bias, std=std, rngs=rngs)
        self.shape = (h, hk, dh)
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.cap = config.attn_logit_softcapping
        self.window = config.window(layer)

    def __call__(self, x, attention_mask, cos, sin):
        b, t, _ = x.shape
        h, hk, dh = self.shape
        # Query head j = kv·g + i reads key/value head kv (g = h / hk query heads a group).
        q = _rotate(self.q_proj(x).reshape(b, t, h, dh), cos, sin).reshape(b, t, hk, h // hk, dh)
        k = _rotate(self.k_proj(x).reshape(b, t, hk, dh), cos, sin)
        v = self.v_proj(x).reshape(b, t, hk, dh)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * self.scale
        scores = _softcap(scores, self.cap)
        allowed = jnp.asarray(_allowed(t, self.window))[None, None, None]
        if attention_mask is not None:  # padded keys get no weight
            allowed = allowed & (jnp.asarray(attention_mask) != 0)[:, None, None, None, :]
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        z = jnp.einsum("bkgts,bskd->btkgd", weights, v)
        return self.o_proj(z.reshape(b, t, h * dh))


class Layer(nnx.Module):
    def __init__(self, config: Gemma2Config, layer: int, *, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(config, layer, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(
            config.hidden_size,
            config.intermediate_size,
            std=config.initializer_range,
            bias=False,
            activation=config.hidden_activation,
            rngs=rngs,
        )
        self.post_feedforward_layernorm = RMSNorm(d, eps)

    def __call__(self, x, attention_mask, cos, sin):
        attn = self.self_attn(self.input_layernorm(x), attention_mask, cos, sin)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2(nnx.Module):
    """A Gemma 2 causal language model (``Gemma2ForCausalLM``), parameters named as its state
    dict (see the module docstring), randomly initialised as ``transformers`` does (normal
    with std ``initializer_range``; biases and RMSNorm weights 0).

    ``model(input_ids, attention_mask=None)`` maps int ``input_ids`` ``(B, T)`` to float32
    logits ``(B, T, vocab_size)``, soft-capped. ``attention_mask`` ``(B, T)`` of 1 and 0
    (padding) keeps padded tokens out of every other token's attention, as in
    ``transformers``; rotary positions are ``0..T-1`` whatever the mask; the logits at padded
    positions mean nothing. ``model.config`` is the :class:`Gemma2Config`.
    """

    def __init__(self, config: Gemma2Config, *, rngs: nnx.Rngs):
        if not isinstance(config, Gemma2Config):
            raise TypeError(f"config must be a Gemma2Config, not {type(config).__name__}.")
        self.config = config
        d, std = config.hidden_size, config.initializer_range
        self.embed_tokens = _lm.Embedding(config.vocab_size, d, std=std, rngs=rngs)
        self.layers = nnx.List(
            [Layer(config, i, rngs=rngs) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(d, config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = _lm.Linear(d, config.vocab_size, bias=False, std=std, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None):
        logits = _lm.head_logits(self.hidden_states(input_ids, attention_mask), self.head())
        return _softcap(logits, self.config.final_logit_softcapping)

    def hidden_states(self, input_ids, attention_mask=None):
        """The final hidden states ``(B, T, hidden_size)`` (after ``norm``): the logits are
        :math:`c_f \\tanh(\\text{hidden} \\cdot \\text{head}^\\top / c_f)`."""
        _lm.check_inputs(input_ids, attention_mask, None)
        cos, sin = (jnp.asarray(a) for a in rotary_angles(self.config, input_ids.shape[1]))
        scale = jnp.asarray(self.config.hidden_size**0.5, jnp.float32)
        x = self.embed_tokens(input_ids) * scale
        for layer in self.layers:
            x = layer(x, attention_mask, cos, sin)
        return self.norm(x)

    def head(self):
        """The head's ``(vocab_size, hidden_size)`` matrix: ``lm_head``'s, or
        ``embed_tokens``'s when tied."""
        module = self.embed_tokens if self.config.tie_word_embeddings else self.lm_head
        return module.weight[...]
