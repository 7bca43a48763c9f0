r"""GPT-2 (Radford et al. 2019) as a Flax NNX module whose parameters are those of a
Hugging Face ``GPT2LMHeadModel``, by name and layout, so that its checkpoints load as they are.

A pre-LayerNorm decoder with learned positions. For tokens :math:`x_1, \dots, x_T`,

.. math::

    h^{(0)}_t = W_{te}[x_t] + W_{pe}[t - 1],\qquad
    a = h + \mathrm{Attn}(\mathrm{LN}_1(h)),\qquad
    h \leftarrow a + W_{proj}\, \mathrm{gelu}(W_{fc}\, \mathrm{LN}_2(a)),

and the logits are :math:`\mathrm{LN}_f(h^{(L)})\, W_{te}^\top` (the head tied to the token
embedding, or its own ``lm_head`` when ``tie_word_embeddings`` is false). Attention is causal
and multi-head, :math:`\mathrm{softmax}(q k^\top / \sqrt{d_{head}})\, v` per head, with
:math:`[q | k | v] = x\, W_{attn} + b_{attn}`. The activation is ``gelu_new``, GELU's tanh
approximation :math:`\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))`, by default.

Parameters (``nnx.state(model, nnx.Param)`` paths, HF keys without ``transformer.``):
``wte/weight`` ``(V, d)``, ``wpe/weight`` ``(n_positions, d)``, and per layer ``h/{i}/``:
``ln_1/weight|bias``, ``attn/c_attn/weight`` ``(d, 3d)`` (Conv1D layout, ``[q | k | v]``)
and ``bias``, ``attn/c_proj/weight|bias`` ``(d, d)``, ``ln_2/weight|bias``,
``mlp/c_fc/weight`` ``(d, n_inner)``, ``mlp/c_proj/weight`` ``(n_inner, d)`` with biases;
then ``ln_f/weight|bias`` and, untied only, ``lm_head/weight`` ``(V, d)``. The causal mask
buffers of older files (``attn.bias``, ``attn.masked_bias``) are no parameters.

References:
  Radford, Wu, Child, Luan, Amodei, Sutskever (2019), "Language models are unsupervised
  multitask learners". Hendrycks, Gimpel (2016), "Gaussian error linear units (GELUs)",
  arXiv:1606.08415. Hugging Face ``transformers``' ``modeling_gpt2.py``.

Example::

  import slt_jax as sj
  from flax import nnx
  model = sj.lm.GPT2(sj.lm.GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2,
                                      n_head=4), rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((1, 16), jnp.int32))          # (1, 16, 97)
  sj.lm.save_model(model, "tiny-gpt2")                    # transformers loads this directory
  model = sj.lm.load_model("tiny-gpt2")                   # ... or one save_pretrained wrote
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from slt_jax.models import _lm

__all__ = ["GPT2", "GPT2Config"]


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """A GPT-2 architecture, with the field names of Hugging Face's ``config.json``.

    ``n_inner`` (the MLP width) ``None`` means ``4 * n_embd``. ``activation_function`` is one
    of ``transformers``' names (``gelu_new``, ``gelu``, ``relu``, ``gelu_fast``,
    ``quick_gelu``, ``silu``, …). ``scale_attn_weights`` divides attention scores by
    ``sqrt(d_head)``; ``scale_attn_by_inverse_layer_idx`` also by the layer's index + 1.
    ``initializer_range`` is the standard deviation of the random initial weights.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        _lm.check_positive(self, ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"))
        if self.n_inner is not None:
            _lm.check_positive(self, ("n_inner",))
        _lm.check_heads(self.n_embd, self.n_head, ("n_embd", "n_head"))
        _lm.check_activation(self.activation_function, "activation_function")

    @property
    def inner_size(self) -> int:
        """The MLP width: ``n_inner``, or ``4 * n_embd``."""
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPT2Config:
        """The config of a ``config.json`` dict (unknown keys ignored; a ``model_type``
        other than ``"gpt2"`` and cross-attention are ``ValueError``)."""
        config = _lm.config_from_dict(cls, d, "gpt2")
        if d.get("add_cross_attention"):
            raise ValueError("GPT-2 with cross-attention (add_cross_attention) is not supported.")
        return config

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` loads as a ``GPT2LMHeadModel``
        (dropout 0: the native model has none)."""
        out = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
        out |= dataclasses.asdict(self)
        return out | {"attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0}


class Attention(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        self.c_attn = _lm.Conv1D(d, 3 * d, std=std, rngs=rngs)
        self.c_proj = _lm.Conv1D(d, d, std=std, rngs=rngs)
        self.num_heads = config.n_head
        scale = (d // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
        self.scale = scale / (layer_idx + 1) if config.scale_attn_by_inverse_layer_idx else scale

    def __call__(self, x, attention_mask):
        b, t, d = x.shape
        q, k, v = (
            y.reshape(b, t, self.num_heads, d // self.num_heads)
            for y in jnp.split(self.c_attn(x), 3, axis=-1)
        )
        z = _lm.causal_attention(q, k, v, attention_mask, scale=self.scale)
        return self.c_proj(z.reshape(b, t, d))


class MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        self.c_fc = _lm.Conv1D(d, config.inner_size, std=std, rngs=rngs)
        self.c_proj = _lm.Conv1D(config.inner_size, d, std=std, rngs=rngs)
        self.activation = config.activation_function

    def __call__(self, x):
        return self.c_proj(_lm.ACTIVATIONS[self.activation](self.c_fc(x)))


class Block(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, rngs: nnx.Rngs):
        self.ln_1 = _lm.LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = Attention(config, layer_idx, rngs=rngs)
        self.ln_2 = _lm.LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, attention_mask):
        x = x + self.attn(self.ln_1(x), attention_mask)
        return x + self.mlp(self.ln_2(x))


class GPT2(nnx.Module):
    """GPT-2 with a language-model head (``GPT2LMHeadModel``), parameters named as its
    state dict (see the module docstring), randomly initialised as ``transformers`` does
    (normal with std ``initializer_range``; biases 0, LayerNorms 1 and 0).

    ``model(input_ids, attention_mask=None)`` maps int ``input_ids`` ``(B, T)``, ``T <=
    n_positions``, to float32 logits ``(B, T, vocab_size)``. ``attention_mask`` ``(B, T)``
    of 1 and 0 (padding) keeps padded tokens out of every other token's attention, as in
    ``transformers``; positions are ``0..T-1`` whatever the mask, also as there. The
    logits at padded positions mean nothing. ``model.config`` is the :class:`GPT2Config`.
    """

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, not {type(config).__name__}.")
        self.config = config
        d, std = config.n_embd, config.initializer_range
        self.wte = _lm.Embedding(config.vocab_size, d, std=std, rngs=rngs)
        self.wpe = _lm.Embedding(config.n_positions, d, std=std, rngs=rngs)
        self.h = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = _lm.LayerNorm(d, config.layer_norm_epsilon)
        if not config.tie_word_embeddings:
            self.lm_head = _lm.Linear(d, config.vocab_size, bias=False, std=std, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None):
        return _lm.head_logits(self.features(input_ids, attention_mask), self.output_weight())

    def features(self, input_ids, attention_mask=None):
        """The final hidden states ``(B, T, n_embd)`` (after ``ln_f``), which the head maps
        to logits: ``model(ids) == features(ids) @ output_weight().T``."""
        _lm.check_inputs(input_ids, attention_mask, self.config.n_positions)
        x = self.wte(input_ids) + self.wpe.weight[...][: input_ids.shape[1]]
        for block in self.h:
            x = block(x, attention_mask)
        return self.ln_f(x)

    def output_weight(self):
        """The head's ``(vocab_size, n_embd)`` matrix: ``wte``'s when tied, else ``lm_head``'s."""
        head = self.wte if self.config.tie_word_embeddings else self.lm_head
        return head.weight[...]
