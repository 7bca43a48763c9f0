"""Hugging Face language-model directories in and out of the native Flax NNX models
(:class:`~slt_jax.models.gpt2.GPT2`, :class:`~slt_jax.models.gpt_neox.GPTNeoX`,
:class:`~slt_jax.models.llama.Llama` for Llama, Mistral and Qwen2), without PyTorch:
``config.json``'s ``model_type`` picks the family record (``_src/families.py``), which
names the model; the safetensors weights are its parameters.

Public as ``sj.lm.load_model``, ``sj.lm.save_model`` and ``sj.lm.load_checkpoints``.

Example::

  import slt_jax as sj
  model = sj.lm.load_model("pythia-70m")         # a directory save_pretrained wrote
  model, checkpoints = sj.lm.load_checkpoints("pythia-70m-revisions")  # step0/, step1000/, ...
  loss_fn, params = sj.lm.next_token_loss(model)
  sj.lm.save_model(model, "copy")                # AutoModelForCausalLM.from_pretrained("copy")
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from slt_jax._src import families
from slt_jax._src.io import hf
from slt_jax._src.io.checkpoints import CheckpointSet, load_checkpoint_set
from slt_jax._src.io.formats import _step_from_name
from slt_jax._src.layouts import Layout
from slt_jax._src.validation import path_string

__all__ = ["MODELS", "layout", "load_checkpoints", "load_model", "save_model"]


class _Models(Mapping):
    """``{model_type: (model class, config class)}`` from the family records, each
    imported when it is looked up."""

    def __getitem__(self, model_type):
        return families.native(families.FAMILIES[model_type])

    def __iter__(self):
        return iter(families.FAMILIES)

    def __len__(self):
        return len(families.FAMILIES)


MODELS = _Models()


def _abstract(config_dict: dict[str, Any], where: str) -> nnx.Module:
    """The model a ``config.json`` describes, with shapes but no values (nothing computed)."""
    cls, config_cls = families.native(families.family(config_dict.get("model_type"), where))
    config = config_cls.from_dict(config_dict)
    return nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))


def _shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {path_string(p): tuple(x.shape) for p, x in flat}


def _filled(abstract: nnx.Module, values: dict[str, Any]) -> nnx.Module:
    """``abstract`` with its parameters set to ``values`` (by path), as float32 jax arrays."""
    graphdef, state = nnx.split(abstract)
    state = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(values[path_string(p)], x.dtype), state
    )
    return nnx.merge(graphdef, state)


def load_model(path: str | os.PathLike) -> nnx.Module:
    """The native model of the Hugging Face model directory ``path``.

    ``config.json``'s ``model_type`` picks :class:`~slt_jax.models.gpt2.GPT2` (``"gpt2"``),
    :class:`~slt_jax.models.gpt_neox.GPTNeoX` (``"gpt_neox"``, Pythia) or
    :class:`~slt_jax.models.llama.Llama` (``"llama"``, ``"mistral"``, ``"qwen2"``) and its
    config;
    the weights (``model.safetensors`` or a sharded index, as ``save_pretrained`` writes;
    16-bit floats widened to float32) become its ``nnx.Param`` s, float32, by name: the
    state-dict key without the base model's prefix. Buffers (causal masks, rotary
    frequencies) in the file are ignored, and so is an output embedding tied to the input.

    Every mismatch is a ``ValueError`` raised before anything is computed: no
    ``config.json``, another ``model_type``, a tensor missing, of another shape, or not
    finite, an unexpected tensor (each named, with its file), a shard the index names that
    is not there, ``pytorch_model.bin`` weights only.

    Example::

      model = sj.lm.load_model("tiny-gpt2")
      logits = model(input_ids)          # (B, T, vocab_size), float32
    """
    root = pathlib.Path(path)
    abstract = _abstract(hf.read_config(root), str(root / hf.CONFIG))
    _, params = hf.read_params(root, _shapes(abstract))
    return _filled(abstract, params)


def save_model(
    model: nnx.Module, path: str | os.PathLike, *, max_shard_bytes: int | None = None
) -> pathlib.Path:
    """Write ``model`` (a native :class:`~slt_jax.models.gpt2.GPT2`,
    :class:`~slt_jax.models.gpt_neox.GPTNeoX` or :class:`~slt_jax.models.llama.Llama`) as a
    Hugging Face model directory:
    ``config.json`` (``model.config.to_dict()``) and its parameters under their state-dict
    keys in ``model.safetensors``, or in shards of at most ``max_shard_bytes`` bytes with
    ``model.safetensors.index.json``. ``transformers.AutoModelForCausalLM.from_pretrained``
    loads the directory, and so does :func:`load_model`. Files are written under temporary
    names, then renamed. Returns the directory.
    """
    families.of_model(model)  # a TypeError for anything else
    config = model.config.to_dict()
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    params = {path_string(p): jax.device_get(x) for p, x in flat}
    return hf.write(path, config, hf.state_dict(config, params), max_shard_bytes=max_shard_bytes)


def load_checkpoints(directory: str | os.PathLike) -> tuple[nnx.Module, CheckpointSet]:
    """A training run's Hugging Face model directories, one per step, as ``(model,
    checkpoints)``.

    ``directory`` holds one model directory per step, named by it: Pythia's revisions
    (``step0/``, ``step1000/``, ``step143000/``), a ``transformers.Trainer``'s
    ``checkpoint-500/``, or ``step_100/``; the final model a ``Trainer`` leaves at the top
    is ignored. All must share the first one's architecture (a ``config.json`` that differs
    is a ``ValueError`` naming it). ``model`` is built from the first (lowest-step) config
    and holds that checkpoint's weights; ``checkpoints`` is a
    :class:`~slt_jax.CheckpointSet` sorted by step whose ``params`` are structured like
    ``nnx.state(model, nnx.Param)``, each leaf stacked over the K checkpoints, so
    ``nnx.update(model, checkpoints.read(k))`` loads the k-th.

    The set is lazy: listing reads every ``config.json`` and the safetensors headers (the
    shapes are checked against the model's there, and a weight file cut short or still
    being written is an error naming it), and only the first checkpoint's weights, for
    ``model``; the others are read when a sweep's chunk needs them (``checkpoints.read``).

    Example::

      model, checkpoints = sj.lm.load_checkpoints("pythia-14m")
      loss_fn, params = sj.lm.next_token_loss(model)
      result = sj.estimate_llc_checkpoints(loss_fn, checkpoints, data)
    """
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise ValueError(f"`directory` {str(root)!r} is not a directory.")
    candidates = [
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and hf.has_weights(p)
    ]
    if not candidates:
        raise ValueError(
            f"no Hugging Face model directories (config.json and model.safetensors) in {root}."
        )
    first = min(candidates, key=lambda p: (_step_from_name(p), p.name))
    abstract = _abstract(hf.read_config(first), str(first / hf.CONFIG))
    checkpoints = load_checkpoint_set(root, like=nnx.state(abstract, nnx.Param), format="hf")
    flat = jax.tree_util.tree_flatten_with_path(checkpoints.read(0))[0]
    return _filled(abstract, {path_string(p): x for p, x in flat}), checkpoints


def layout(model: nnx.Module):
    """Where the heads, layers, MLPs and embeddings of ``model`` (a native
    :class:`~slt_jax.models.gpt2.GPT2`, :class:`~slt_jax.models.gpt_neox.GPTNeoX` or
    :class:`~slt_jax.models.llama.Llama`) are in its parameters: the
    :class:`~slt_jax.refine.Layout` that :func:`slt_jax.refine.heads` and
    :func:`slt_jax.refine.components` read names such as ``"l0h1"`` or ``"l1 mlp"`` with
    (the family record's layout kind and head counts).

    Example::

      refinements = sj.refine.heads(params, sj.lm.layout(model))   # {"l0h0": mask, ...}
    """
    families.of_model(model)  # a TypeError for anything else
    return Layout.from_hf_config(model.config.to_dict())
