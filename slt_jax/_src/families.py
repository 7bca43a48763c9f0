"""One record per language-model family: what a ``config.json``'s ``model_type`` means to
slt_jax, in one place.

A :class:`Family` says how the family's Hugging Face state dict is named (the base model's
prefix, the untied output embedding's key, the buffers that are no parameters), where its
heads are (the :class:`~slt_jax.refine.Layout` kind and the config keys giving the head
and layer counts), how its config is read (defaults that differ between families, the
spellings of rotary settings) and which native Flax model computes it. Three readers use
the records and nothing else: ``_src/io/hf.py`` (state-dict keys ↔ parameter names),
``_src/layouts.py`` (:meth:`Layout.from_hf_config`) and ``slt_jax/models/hf_lm.py``
(``sj.lm.load_model``, ``save_model``, ``layout``). Adding a family is one model file and
one record in :data:`FAMILIES`.

The native class is named by its import path (``"slt_jax.models.llama:Llama"``) and
imported only when a model is built: this module sits in the first import stage, below the
layouts and the Hugging Face reader, and the models come last.

Example:
  >>> from slt_jax._src import families
  >>> record = families.family("qwen2")
  >>> record.prefix, record.layout, record.kv_heads_key
  ('model.', 'llama', 'num_key_value_heads')
  >>> families.native(record)[0].__name__
  'Llama'
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FAMILIES", "Family", "family", "llama_rope", "native", "neox_rotary", "of_model"]


@dataclasses.dataclass(frozen=True)
class Family:
    """What one ``model_type`` is.

    Attributes:
      model_type: ``config.json``'s ``model_type`` (``"gpt2"``, ``"llama"``, ...).
      prefix: the base model's prefix in a causal-LM state dict (``"transformer."``); the
        native parameter names are the keys without it, ``.`` replaced by ``/``.
      head: the key of an untied output embedding in the files (``"lm_head.weight"``).
      head_aliases: other keys files use for it (transformers 5 names GPT-NeoX's
        ``embed_out`` ``lm_head`` in memory).
      buffers: state-dict key suffixes that are buffers (causal masks, rotary
        frequencies), dropped on reading.
      tied_default: ``tie_word_embeddings`` when ``config.json`` does not say.
      layout: the :class:`~slt_jax.refine.Layout` kind of its parameters.
      heads_key, kv_heads_key, layers_key: the config keys of the query-head, key/value-head
        (``None``: no grouped-query attention) and layer counts.
      native: ``"module:Class"`` of the native Flax NNX model, built as
        ``Class(config, rngs=...)``; its ``config`` attribute is the config.
      native_config: ``"module:Class"`` of its config: ``Class.from_dict(config.json
        dict)`` and ``config.to_dict()`` map ``config.json`` to it and back.
      canonical: maps a config dict to the fields that shape the function (rotary settings'
        spellings made one), to compare the snapshots of a checkpoint set; ``None``: as is.
    """

    model_type: str
    prefix: str
    head: str
    layout: str
    native: str
    native_config: str
    head_aliases: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    tied_default: bool = False
    heads_key: str = "num_attention_heads"
    kv_heads_key: str | None = None
    layers_key: str = "num_hidden_layers"
    canonical: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


def _rope_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise ValueError(f"rope_parameters {rope!r} is not an object.")
    return dict(rope)


def neox_rotary(config: Mapping[str, Any]) -> tuple[float, float]:
    """GPT-NeoX's ``(rotary_pct, rotary_emb_base)`` from either spelling: transformers 5's
    ``rope_parameters`` (``partial_rotary_factor``, ``rope_theta``), or the older
    ``rotary_pct``, ``rotary_emb_base`` / ``rope_theta``; transformers' defaults 0.25 and
    10000. Rotary scaling other than the default is a ``ValueError``."""
    rope = _rope_dict(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"rotary scaling {kind!r} is not supported (only the default rotary embedding)."
        )
    pct = rope.get("partial_rotary_factor", config.get("rotary_pct", 0.25))
    base = rope.get("rope_theta", config.get("rope_theta", config.get("rotary_emb_base", 10000)))
    return float(pct), float(base)


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def llama_rope(config: Mapping[str, Any]) -> tuple[float, dict[str, float] | None]:
    """A Llama-family config's ``(rope_theta, llama3 scaling or None)`` from either spelling
    (transformers 5's ``rope_parameters``, or ``rope_theta`` and ``rope_scaling``); the
    default base 10000. Rotary scaling other than the default and Llama 3.1's ``"llama3"``
    (its four numbers) is a ``ValueError``."""
    rope = _rope_dict(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    base = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)) or 10000.0)
    if kind == "default":
        return base, None
    if kind != "llama3":
        raise ValueError(
            f"rotary scaling {kind!r} is not supported (the default rotary embedding and "
            "Llama 3.1's 'llama3' are)."
        )
    missing = [k for k in _LLAMA3_KEYS if k not in rope]
    if missing:
        raise ValueError(f"'llama3' rotary scaling lacks {missing}.")
    return base, {k: float(rope[k]) for k in _LLAMA3_KEYS}


def _neox_canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    pct, base = neox_rotary(config)
    out = {k: v for k, v in config.items() if k not in _ROPE_KEYS}
    return out | {"rotary_pct": pct, "rotary_emb_base": base}


def _llama_canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    base, scaling = llama_rope(config)
    out = {k: v for k, v in config.items() if k not in _ROPE_KEYS}
    return out | {"rope_theta": base, "rope_llama3": scaling}


_ROPE_KEYS = ("rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor")
_ROTARY_BUFFERS = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")
_LLAMA = dict(
    prefix="model.",
    head="lm_head.weight",
    layout="llama",
    native="slt_jax.models.llama:Llama",
    native_config="slt_jax.models.llama:LlamaConfig",
    buffers=_ROTARY_BUFFERS,
    kv_heads_key="num_key_value_heads",
    canonical=_llama_canonical,
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "gpt2",
            prefix="transformer.",
            head="lm_head.weight",
            layout="gpt2",
            native="slt_jax.models.gpt2:GPT2",
            native_config="slt_jax.models.gpt2:GPT2Config",
            buffers=("attn.bias", "attn.masked_bias"),
            tied_default=True,
            heads_key="n_head",
            layers_key="n_layer",
        ),
        Family(
            "gpt_neox",
            prefix="gpt_neox.",
            head="embed_out.weight",
            layout="gpt_neox",
            native="slt_jax.models.gpt_neox:GPTNeoX",
            native_config="slt_jax.models.gpt_neox:GPTNeoXConfig",
            head_aliases=("lm_head.weight",),
            buffers=("attention.bias", "attention.masked_bias", *_ROTARY_BUFFERS),
            canonical=_neox_canonical,
        ),
        Family("llama", **_LLAMA),
        Family("mistral", **_LLAMA),
        Family("qwen2", **_LLAMA),
        Family(
            "gemma2",
            **_LLAMA
            | dict(
                native="slt_jax.models.gemma2:Gemma2",
                native_config="slt_jax.models.gemma2:Gemma2Config",
                tied_default=True,
            ),
        ),
    )
}


def family(model_type: Any, where: str = "config.json") -> Family:
    """The record of ``model_type``; a ``ValueError`` naming the known ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where}: model_type {model_type!r} is not supported; the native models are "
            f"{', '.join(map(repr, FAMILIES))}."
        )
    return FAMILIES[model_type]


def _resolve(where: str) -> type:
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def native(record: Family) -> tuple[type, type]:
    """``(model class, config class)`` of ``record``, imported now."""
    return _resolve(record.native), _resolve(record.native_config)


def of_model(model: Any) -> Family:
    """The record of a native model (by its class); a ``TypeError`` for anything else."""
    for record in FAMILIES.values():
        if type(model).__name__ == record.native.split(":")[1] and native(record)[0] is type(model):
            return _by_config(record, model)
    names = sorted({r.native.split(":")[1] for r in FAMILIES.values()})
    raise TypeError(
        f"`model` must be a native language model, {' or '.join(names)}, not "
        f"{type(model).__name__}."
    )


def _by_config(record: Family, model: Any) -> Family:
    """One native class serves several model types (Llama, Mistral, Qwen2): the model's
    config says which."""
    model_type = model.config.to_dict().get("model_type", record.model_type)
    return FAMILIES.get(model_type, record)
