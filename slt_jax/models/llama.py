r"""The Llama family (Touvron et al. 2023; Llama 3, Grattafiori et al. 2024) and its close
relatives Mistral (Jiang et al. 2023) and Qwen2/2.5 (Yang et al. 2024) as one Flax NNX
module whose parameters are those of Hugging Face's ``LlamaForCausalLM``,
``MistralForCausalLM`` and ``Qwen2ForCausalLM``, by name and layout, so their checkpoints
load as they are (``sj.lm.load_model``; ``config.json``'s ``model_type`` says which).

A pre-norm decoder without position embeddings. RMSNorm (Zhang & Sennrich 2019) with
weight :math:`g`, :math:`\mathrm{RMS}(x) = g \odot x / \sqrt{\overline{x^2} + \epsilon}`
(in float32), and per layer

.. math::

    a = h + \mathrm{Attn}(\mathrm{RMS}_1(h)),\qquad
    h \leftarrow a + W_{down}\,\bigl(\mathrm{silu}(W_{gate}\,\mathrm{RMS}_2(a)) \odot
    W_{up}\,\mathrm{RMS}_2(a)\bigr)

(SwiGLU, Shazeer 2020); the logits are :math:`\mathrm{RMS}_f(h^{(L)})\, W_{lm}^\top`.
Attention has ``H`` query heads and ``H_kv`` key/value heads of size ``d_h``
(grouped-query attention, Ainslie et al. 2023): query head ``h`` reads key/value head
:math:`g(h) = \lfloor h / (H / H_{kv}) \rfloor`,
:math:`z_h = \mathrm{softmax}(\mathrm{rot}(q_h) \mathrm{rot}(k_{g(h)})^\top / \sqrt{d_h})\,
v_{g(h)}`, causal, and with Mistral's ``sliding_window`` ``W`` a query at ``t`` sees keys
``t - W < s <= t`` only. The rotary embedding (Su et al. 2021) turns all ``d_h``
dimensions "rotate-half" style with :math:`\theta_j = b^{-2j/d_h}` (``rope_theta`` = b),
optionally rescaled as Llama 3.1 does (``rope_type="llama3"``: frequencies with a
wavelength above ``original_max_position_embeddings / low_freq_factor`` divided by
``factor``, those below ``… / high_freq_factor`` kept, interpolated between).

The three families differ only in biases and windows: Llama has biases on ``q, k, v, o``
iff ``attention_bias`` and on the MLP iff ``mlp_bias``; Qwen2 = Llama with biases on
``q_proj``, ``k_proj``, ``v_proj`` (``qkv_bias``); Mistral = Llama with a sliding window.

Parameters (``nnx.state(model, nnx.Param)`` paths, HF keys without ``model.``):
``embed_tokens/weight`` ``(V, d)``; per layer ``layers/{i}/``: ``input_layernorm/weight``,
``self_attn/q_proj/weight`` ``(H d_h, d)`` (torch ``(out, in)``), ``k_proj/weight`` and
``v_proj/weight`` ``(H_kv d_h, d)``, ``o_proj/weight`` ``(d, H d_h)`` (and biases where the
family has them), ``post_attention_layernorm/weight``, ``mlp/gate_proj/weight`` and
``mlp/up_proj/weight`` ``(intermediate_size, d)``, ``mlp/down_proj/weight``; then
``norm/weight`` and ``lm_head/weight`` ``(V, d)``, absent when ``tie_word_embeddings``.
The refined-LLC layout is ``"llama"`` (:mod:`slt_jax._src.layouts`): head ``"l0h1"`` is its
``q_proj`` rows and ``o_proj`` columns *and its group's* ``k_proj``/``v_proj`` rows, shared
with the group's other query heads; ``"l0g0"`` is a whole group.

References:
  Touvron et al. (2023), "LLaMA: open and efficient foundation language models",
  arXiv:2302.13971. Grattafiori et al. (2024), "The Llama 3 herd of models",
  arXiv:2407.21783. Jiang et al. (2023), "Mistral 7B", arXiv:2310.06825. Yang et al.
  (2024), "Qwen2 technical report", arXiv:2407.10671. Ainslie et al. (2023), "GQA",
  arXiv:2305.13245. Shazeer (2020), "GLU variants improve transformer", arXiv:2002.05202.

Example::

  import slt_jax as sj
  from flax import nnx
  config = sj.lm.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  model = sj.lm.Llama(config, rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((1, 16), jnp.int32))         # (1, 16, 97)
  sj.lm.save_model(model, "tiny-llama")                  # transformers loads this directory
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax._src import families
from slt_jax.models import _lm

__all__ = ["Llama", "LlamaConfig"]

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_LLAMA3 = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A Llama, Mistral or Qwen2 architecture, with the field names of Hugging Face's
    ``config.json``.

    ``model_type`` is ``"llama"``, ``"mistral"`` or ``"qwen2"`` (what :meth:`to_dict`
    writes, so that ``transformers`` builds that class). ``num_key_value_heads`` ``None``
    becomes ``num_attention_heads`` (no grouping); ``head_dim`` ``None`` becomes
    ``hidden_size // num_attention_heads``. ``rope_llama3`` is Llama 3.1's rotary scaling
    ``(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)`` or
    ``None``. ``attention_bias`` (Llama only): biases on q, k, v and o; Qwen2 always has
    biases on q, k and v (:attr:`qkv_bias`); ``mlp_bias`` (Llama only): on the three MLP
    projections; ``sliding_window`` (Mistral only): the window (``None``: full causal
    attention).
    """

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_llama3: tuple[float, float, float, float] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.model_type not in _ARCHITECTURES:
            raise ValueError(
                f"model_type must be one of {sorted(_ARCHITECTURES)}, got {self.model_type!r}."
            )
        _lm.check_positive(
            self,
            (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "max_position_embeddings",
            ),
        )
        for name in ("num_key_value_heads", "head_dim", "sliding_window"):
            if getattr(self, name) is not None:
                _lm.check_positive(self, (name,))
        if self.head_dim is None:
            _lm.check_heads(self.hidden_size, self.num_attention_heads, ("hidden_size", "heads"))
        # Resolved once, so that a config equals its to_dict/from_dict round trip.
        object.__setattr__(self, "head_dim", self.head_size)
        object.__setattr__(self, "num_key_value_heads", self.kv_heads)
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_key_value_heads={self.kv_heads} does not divide "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.head_size % 2:
            raise ValueError(f"the head size {self.head_size} must be even (rotary embedding).")
        _lm.check_activation(self.hidden_act, "hidden_act")
        if self.model_type != "llama" and (self.attention_bias or self.mlp_bias):
            raise ValueError(
                f"attention_bias and mlp_bias are Llama's; {self.model_type} has none."
            )
        if self.model_type != "mistral" and self.sliding_window is not None:
            raise ValueError(f"sliding_window is Mistral's; {self.model_type} has none here.")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}.")
        if self.rope_llama3 is not None:
            scaling = tuple(float(x) for x in self.rope_llama3)
            if len(scaling) != 4 or min(scaling) <= 0 or scaling[1] >= scaling[2]:
                raise ValueError(
                    "rope_llama3 must be (factor, low_freq_factor, high_freq_factor, "
                    "original_max_position_embeddings), positive, low < high; got "
                    f"{self.rope_llama3!r}."
                )
            object.__setattr__(self, "rope_llama3", scaling)

    @property
    def qkv_bias(self) -> bool:
        """Biases on the query, key and value projections: Qwen2, or ``attention_bias``."""
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def kv_heads(self) -> int:
        """``H_kv``: ``num_key_value_heads``, or ``num_attention_heads``."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        """``d_h``: ``head_dim``, or ``hidden_size // num_attention_heads``."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LlamaConfig:
        """The config of a ``config.json`` dict of ``model_type`` ``"llama"``, ``"mistral"``
        or ``"qwen2"`` (unknown keys ignored). Rotary settings are read in either spelling
        (transformers 5's ``rope_parameters`` or ``rope_theta``/``rope_scaling``); rotary
        scaling other than ``"llama3"``, and Qwen2's per-layer sliding windows, are
        ``ValueError`` s."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a config must be a dict (a config.json), not {type(d).__name__}.")
        model_type = d.get("model_type", "llama")
        if model_type not in _ARCHITECTURES:
            raise ValueError(
                f"config.json has model_type {model_type!r}; LlamaConfig reads "
                f"{sorted(_ARCHITECTURES)} configs (slt_jax.lm.load_model picks the model from "
                "the model_type)."
            )
        base, scaling = families.llama_rope(d)
        if d.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("a partial rotary embedding (partial_rotary_factor) is not supported.")
        fields = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_llama3"}
        kept = {k: v for k, v in d.items() if k in fields and v is not None}
        kept |= {"rope_theta": base, "model_type": model_type}
        if scaling is not None:
            kept["rope_llama3"] = tuple(scaling[k] for k in _LLAMA3)
        if model_type != "llama":  # only Llama's config says where its biases are
            kept |= {"attention_bias": False, "mlp_bias": False}
        if model_type == "qwen2":
            kept.pop("sliding_window", None)
            windowed = d.get("use_sliding_window") or any(
                t != "full_attention" for t in d.get("layer_types") or ()
            )
            if windowed:
                raise ValueError("Qwen2's per-layer sliding windows are not supported.")
        elif model_type == "llama":
            kept.pop("sliding_window", None)
        return cls(**kept)

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` (4 and 5) loads as a
        ``LlamaForCausalLM``, ``MistralForCausalLM`` or ``Qwen2ForCausalLM`` (dropout 0)."""
        out = dataclasses.asdict(self)
        out |= {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_size,
            "attention_dropout": 0.0,
        }
        scaling = None
        if self.rope_llama3 is not None:
            scaling = {"rope_type": "llama3", **dict(zip(_LLAMA3, self.rope_llama3, strict=True))}
            scaling["original_max_position_embeddings"] = int(scaling[_LLAMA3[-1]])
        rope = {"rope_type": "default", "rope_theta": self.rope_theta} | (scaling or {})
        out |= {"rope_parameters": rope, "rope_scaling": scaling}
        del out["rope_llama3"]
        if self.model_type == "qwen2":
            out |= {"use_sliding_window": False, "sliding_window": None}
        if self.model_type != "llama":
            del out["attention_bias"], out["mlp_bias"]
        return out


class RMSNorm(nnx.Module):
    """``weight * x / sqrt(mean(x²) + eps)`` over the last axis, computed in float32."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)


def rotary_angles(config: LlamaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)``, each ``(T, 1, head_size)`` float32, as HF's rotary embedding
    (with Llama 3.1's frequency scaling where the config has it)."""
    dim = config.head_size
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    if config.rope_llama3 is not None:
        factor, low, high, old = config.rope_llama3
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None]
    angles = np.concatenate([freqs, freqs], -1)[:, None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotate(u, cos, sin):
    half = u.shape[-1] // 2
    return u * cos + jnp.concatenate([-u[..., half:], u[..., :half]], -1) * sin


class Attention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, std, dh = config.hidden_size, config.initializer_range, config.head_size
        h, hk = config.num_attention_heads, config.kv_heads
        qkv = config.qkv_bias
        self.q_proj = _lm.Linear(d, h * dh, bias=qkv, std=std, rngs=rngs)
        self.k_proj = _lm.Linear(d, hk * dh, bias=qkv, std=std, rngs=rngs)
        self.v_proj = _lm.Linear(d, hk * dh, bias=qkv, std=std, rngs=rngs)
        self.o_proj = _lm.Linear(h * dh, d, bias=config.attention_bias, std=std, rngs=rngs)
        self.shape = (h, hk, dh)
        self.window = config.sliding_window

    def __call__(self, x, attention_mask, cos, sin):
        b, t, _ = x.shape
        h, hk, dh = self.shape
        q = _rotate(self.q_proj(x).reshape(b, t, h, dh), cos, sin)
        k = _rotate(self.k_proj(x).reshape(b, t, hk, dh), cos, sin)
        v = self.v_proj(x).reshape(b, t, hk, dh)
        mask = None
        if attention_mask is not None:  # padded keys get no weight
            mask = (jnp.asarray(attention_mask) != 0)[:, None, None, :]
        # Grouped-query attention: query head j reads key/value head j // (h // hk).
        window = None if self.window is None or self.window >= t else (self.window - 1, 0)
        z = jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=dh**-0.5, is_causal=True, local_window_size=window
        )
        return self.o_proj(z.reshape(b, t, h * dh))


class MLP(nnx.Module):
    """The gated feed-forward block ``down(act(gate(x)) · up(x))`` (SwiGLU; Gemma-2's GeGLU
    with ``activation="gelu_pytorch_tanh"``)."""

    def __init__(self, d: int, m: int, *, std: float, bias: bool, activation: str, rngs):
        self.gate_proj = _lm.Linear(d, m, bias=bias, std=std, rngs=rngs)
        self.up_proj = _lm.Linear(d, m, bias=bias, std=std, rngs=rngs)
        self.down_proj = _lm.Linear(m, d, bias=bias, std=std, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        gate = _lm.ACTIVATIONS[self.activation](self.gate_proj(x))
        return self.down_proj(gate * self.up_proj(x))


class Layer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(
            config.hidden_size,
            config.intermediate_size,
            std=config.initializer_range,
            bias=config.mlp_bias,
            activation=config.hidden_act,
            rngs=rngs,
        )

    def __call__(self, x, attention_mask, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), attention_mask, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nnx.Module):
    """A Llama / Mistral / Qwen2 causal language model (``LlamaForCausalLM`` and its
    relatives), parameters named as their state dicts (see the module docstring), randomly
    initialised as ``transformers`` does (normal with std ``initializer_range``; biases 0,
    RMSNorms 1).

    ``model(input_ids, attention_mask=None)`` maps int ``input_ids`` ``(B, T)`` to float32
    logits ``(B, T, vocab_size)``. ``attention_mask`` ``(B, T)`` of 1 and 0 (padding) keeps
    padded tokens out of every other token's attention, as in ``transformers``; rotary
    positions are ``0..T-1`` whatever the mask. The logits at padded positions mean
    nothing. ``model.config`` is the :class:`LlamaConfig`.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, not {type(config).__name__}.")
        self.config = config
        d, std = config.hidden_size, config.initializer_range
        self.embed_tokens = _lm.Embedding(config.vocab_size, d, std=std, rngs=rngs)
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(d, config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = _lm.Linear(d, config.vocab_size, bias=False, std=std, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None):
        return _lm.head_logits(self.features(input_ids, attention_mask), self.output_weight())

    def features(self, input_ids, attention_mask=None):
        """The final hidden states ``(B, T, hidden_size)`` (after ``norm``), which the head
        maps to logits: ``model(ids) == features(ids) @ output_weight().T``."""
        _lm.check_inputs(input_ids, attention_mask, None)
        cos, sin = (jnp.asarray(a) for a in rotary_angles(self.config, input_ids.shape[1]))
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, attention_mask, cos, sin)
        return self.norm(x)

    def output_weight(self):
        """The head's ``(vocab_size, hidden_size)`` matrix: ``lm_head``'s, or
        ``embed_tokens``'s when tied."""
        head = self.embed_tokens if self.config.tie_word_embeddings else self.lm_head
        return head.weight[...]
