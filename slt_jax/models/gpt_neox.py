r"""GPT-NeoX (Black et al. 2022), the architecture of the Pythia suite (Biderman et al.
2023), as a Flax NNX module whose parameters are those of a Hugging Face
``GPTNeoXForCausalLM``, by name and layout, so that its checkpoints (Pythia's ``step*``
revisions included) load as they are.

A pre-LayerNorm decoder without position embeddings: rotary embeddings (Su et al. 2021)
turn the first ``r = int(d_head * rotary_pct)`` dimensions of each head's query and key by
position-dependent angles, "rotate-half" style: with :math:`\theta_j = b^{-2j/r}`
(:math:`b` = ``rotary_emb_base``, :math:`j < r/2`), :math:`c = \cos(t\theta)`,
:math:`s = \sin(t\theta)` repeated twice over the ``r`` dimensions and :math:`u = [u_1 |
u_2]` split in halves,

.. math::

    \mathrm{rot}_t(u) = u \odot c + [-u_2 \,|\, u_1] \odot s,

the other ``d_head - r`` dimensions left as they are. A layer with the parallel residual
(``use_parallel_residual``, Pythia's) adds attention and MLP of the same input,

.. math::

    h \leftarrow h + \mathrm{Attn}(\mathrm{LN}_1(h)) + \mathrm{MLP}(\mathrm{LN}_2(h)),

and otherwise runs them in turn, :math:`a = h + \mathrm{Attn}(\mathrm{LN}_1(h))`, :math:`h
\leftarrow a + \mathrm{MLP}(\mathrm{LN}_2(a))`; :math:`\mathrm{MLP}(x) = W_{4h\to h}\,
\mathrm{act}(W_{h \to 4h} x)` (``hidden_act``, exact GELU for Pythia). The logits are
:math:`\mathrm{LN}_f(h^{(L)})\, W_{out}^\top`.

Parameters (``nnx.state(model, nnx.Param)`` paths, HF keys without ``gpt_neox.``):
``embed_in/weight`` ``(V, d)``, and per layer ``layers/{i}/``: ``input_layernorm/weight|bias``,
``post_attention_layernorm/weight|bias``, ``attention/query_key_value/weight`` ``(3d, d)``
(``torch.nn.Linear``'s ``(out, in)``, its rows per head ``[q_h | k_h | v_h]`` as HF has
them) and ``bias``, ``attention/dense/weight|bias`` ``(d, d)`` (no attention biases when
``attention_bias`` is false), ``mlp/dense_h_to_4h/weight|bias`` ``(intermediate_size, d)``,
``mlp/dense_4h_to_h/weight|bias``; then ``final_layer_norm/weight|bias`` and
``embed_out/weight`` ``(V, d)``, absent when ``tie_word_embeddings`` ties it to
``embed_in``. Rotary frequencies and mask buffers are no parameters.

References:
  Black et al. (2022), "GPT-NeoX-20B: an open-source autoregressive language model",
  arXiv:2204.06745. Biderman et al. (2023), "Pythia: a suite for analyzing large language
  models across training and scaling", arXiv:2304.01373. Su et al. (2021), "RoFormer:
  enhanced transformer with rotary position embedding", arXiv:2104.09864.

Example::

  import slt_jax as sj
  model, checkpoints = sj.lm.load_checkpoints("pythia-14m")  # step0/, step1000/, ... dirs
  logits = model(jnp.zeros((1, 16), jnp.int32))               # (1, 16, vocab_size)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax._src.io import hf
from slt_jax.models import _lm

__all__ = ["GPTNeoX", "GPTNeoXConfig"]


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
    """A GPT-NeoX architecture, with the field names of Hugging Face's ``config.json``.

    ``rotary_pct`` is the fraction of each head's dimensions that the rotary embedding turns
    and ``rotary_emb_base`` its base; :meth:`from_dict` reads them from transformers 5's
    ``rope_parameters`` (``partial_rotary_factor``, ``rope_theta``) too, and
    :meth:`to_dict` writes both spellings. ``hidden_act`` is one of ``transformers``'
    activation names; ``attention_bias`` gives the attention projections biases.
    """

    vocab_size: int = 50432
    hidden_size: int = 6144
    num_hidden_layers: int = 44
    num_attention_heads: int = 64
    intermediate_size: int = 24576
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    hidden_act: str = "gelu"
    attention_bias: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self):
        _lm.check_positive(
            self,
            (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
            ),
        )
        _lm.check_heads(self.hidden_size, self.num_attention_heads, ("hidden_size", "heads"))
        _lm.check_activation(self.hidden_act, "hidden_act")
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must be in [0, 1], got {self.rotary_pct}.")
        if self.rotary_emb_base <= 0:
            raise ValueError(f"rotary_emb_base must be positive, got {self.rotary_emb_base}.")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_ndims(self) -> int:
        """The rotated dimensions of each head, ``int(head_size * rotary_pct)`` as in HF."""
        return int(self.head_size * self.rotary_pct)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPTNeoXConfig:
        """The config of a ``config.json`` dict (unknown keys ignored; a ``model_type``
        other than ``"gpt_neox"`` or rotary scaling is a ``ValueError``)."""
        _lm.check_model_type(cls, d, "gpt_neox")
        pct, base = hf.neox_rotary(d)
        rotary = {"rotary_pct": pct, "rotary_emb_base": base}
        return _lm.config_from_dict(cls, {**d, **rotary}, "gpt_neox")

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` (4 and 5) loads as a
        ``GPTNeoXForCausalLM`` (dropout 0: the native model has none)."""
        out = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}
        out |= dataclasses.asdict(self)
        rope = {
            "rope_type": "default",
            "rope_theta": self.rotary_emb_base,
            "partial_rotary_factor": self.rotary_pct,
        }
        return out | {"rope_parameters": rope, "attention_dropout": 0.0, "hidden_dropout": 0.0}


class Attention(nnx.Module):
    def __init__(self, config: GPTNeoXConfig, *, rngs: nnx.Rngs):
        d, std, bias = config.hidden_size, config.initializer_range, config.attention_bias
        self.query_key_value = _lm.Linear(d, 3 * d, bias=bias, std=std, rngs=rngs)
        self.dense = _lm.Linear(d, d, bias=bias, std=std, rngs=rngs)
        self.num_heads = config.num_attention_heads

    def __call__(self, x, attention_mask, cos, sin):
        b, t, d = x.shape
        qkv = self.query_key_value(x).reshape(b, t, self.num_heads, 3 * (d // self.num_heads))
        q, k, v = jnp.split(qkv, 3, axis=-1)  # per head [q_h | k_h | v_h], as HF splits it
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        z = _lm.causal_attention(q, k, v, attention_mask, scale=(d // self.num_heads) ** -0.5)
        return self.dense(z.reshape(b, t, d))


def _rotate(u, cos, sin):
    """Rotary embedding of the first ``cos.shape[-1]`` dims of ``u`` ``(B, T, H, D)``."""
    r = cos.shape[-1]
    if r == 0:
        return u
    rot, rest = u[..., :r], u[..., r:]
    first, second = rot[..., : r // 2], rot[..., r // 2 :]
    turned = rot * cos + jnp.concatenate([-second, first], -1) * sin
    return jnp.concatenate([turned, rest], -1)


def rotary_angles(config: GPTNeoXConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)``, each ``(T, 1, rotary_ndims)`` float32, as HF's rotary embedding."""
    dim = config.rotary_ndims
    inv_freq = 1.0 / (
        config.rotary_emb_base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    )
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None]
    angles = np.concatenate([freqs, freqs], -1)[:, None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class MLP(nnx.Module):
    def __init__(self, config: GPTNeoXConfig, *, rngs: nnx.Rngs):
        d, std = config.hidden_size, config.initializer_range
        self.dense_h_to_4h = _lm.Linear(d, config.intermediate_size, std=std, rngs=rngs)
        self.dense_4h_to_h = _lm.Linear(config.intermediate_size, d, std=std, rngs=rngs)
        self.activation = config.hidden_act

    def __call__(self, x):
        return self.dense_4h_to_h(_lm.ACTIVATIONS[self.activation](self.dense_h_to_4h(x)))


class Layer(nnx.Module):
    def __init__(self, config: GPTNeoXConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = _lm.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.post_attention_layernorm = _lm.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.attention = Attention(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)
        self.parallel = config.use_parallel_residual

    def __call__(self, x, attention_mask, cos, sin):
        a = self.attention(self.input_layernorm(x), attention_mask, cos, sin)
        if self.parallel:
            return x + a + self.mlp(self.post_attention_layernorm(x))
        a = x + a
        return a + self.mlp(self.post_attention_layernorm(a))


class GPTNeoX(nnx.Module):
    """GPT-NeoX with a language-model head (``GPTNeoXForCausalLM``), parameters named as its
    state dict (see the module docstring), randomly initialised as ``transformers`` does
    (normal with std ``initializer_range``; biases 0, LayerNorms 1 and 0).

    ``model(input_ids, attention_mask=None)`` maps int ``input_ids`` ``(B, T)`` to float32
    logits ``(B, T, vocab_size)``. ``attention_mask`` ``(B, T)`` of 1 and 0 (padding) keeps
    padded tokens out of every other token's attention, as in ``transformers``; rotary
    positions are ``0..T-1`` whatever the mask, also as there. The logits at padded positions
    mean nothing. ``model.config`` is the :class:`GPTNeoXConfig`.
    """

    def __init__(self, config: GPTNeoXConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, GPTNeoXConfig):
            raise TypeError(f"config must be a GPTNeoXConfig, not {type(config).__name__}.")
        self.config = config
        d, std = config.hidden_size, config.initializer_range
        self.embed_in = _lm.Embedding(config.vocab_size, d, std=std, rngs=rngs)
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = _lm.LayerNorm(d, config.layer_norm_eps)
        if not config.tie_word_embeddings:
            self.embed_out = _lm.Linear(d, config.vocab_size, bias=False, std=std, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None):
        return _lm.head_logits(self.features(input_ids, attention_mask), self.output_weight())

    def features(self, input_ids, attention_mask=None):
        """The final hidden states ``(B, T, hidden_size)`` (after ``final_layer_norm``),
        which the head maps to logits: ``model(ids) == features(ids) @ output_weight().T``."""
        _lm.check_inputs(input_ids, attention_mask, None)
        cos, sin = (jnp.asarray(a) for a in rotary_angles(self.config, input_ids.shape[1]))
        x = self.embed_in(input_ids)
        for layer in self.layers:
            x = layer(x, attention_mask, cos, sin)
        return self.final_layer_norm(x)

    def output_weight(self):
        """The head's ``(vocab_size, hidden_size)`` matrix: ``embed_out``'s, or ``embed_in``'s
        when tied."""
        head = self.embed_in if self.config.tie_word_embeddings else self.embed_out
        return head.weight[...]
