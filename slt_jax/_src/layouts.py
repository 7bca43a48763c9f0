r"""Where the attention heads, layers, MLPs and embeddings of a language model live in its
parameters: named weight refinements (``"l0h1"``, ``"l1 mlp"``, ``"embed"``) as masks.

A weight-refined LLC (Wang et al. 2024, arXiv:2410.02984) samples only a subset ``V`` of
the coordinates. For one attention head that subset is part of fused tensors: head ``h``
of a layer is the map

.. math::

    z_h = \mathrm{softmax}\bigl(q_h k_{g(h)}^\top / \sqrt{d_h}\bigr)\, v_{g(h)},\qquad
    q_h = x W_Q^{(h)} + b_Q^{(h)},\quad k_g = x W_K^{(g)} + b_K^{(g)},\quad
    v_g = x W_V^{(g)} + b_V^{(g)},\qquad
    \mathrm{out} = \textstyle\sum_h z_h W_O^{(h)} + b_O,

so its coordinates are the blocks ``W_Q^{(h)}, W_K^{(g)}, W_V^{(g)}`` (``d × d_h`` each),
their biases, and the block ``W_O^{(h)}`` (``d_h × d``) of the output projection that
reads ``z_h``. ``g(h) = h // (H / H_kv)`` is the key/value head of ``h`` (``g(h) = h`` without
grouped-query attention). The output bias ``b_O`` is added once for all heads: it belongs
to no head (it is in ``"l0 attn"`` and ``"l0"``). A :class:`Layout` says where those blocks
sit for one family of models (``d`` = model width, ``H`` heads of size ``d_h``):

========== ================================================ =================================
layout     where head ``h`` of layer ``l`` is                "l0h1" selects
========== ================================================ =================================
gpt2       ``h/{l}/attn/c_attn/weight`` (``d × 3Hd_h``,     ``3·d·d_h + 3·d_h + d_h·d``
           Conv1D ``(in, out)``): column                    (with the ``c_attn`` bias)
           ``c·H·d_h + h·d_h + i`` for ``c ∈ {q, k, v}``
           (three blocks of columns); the bias alike;
           ``c_proj/weight`` (``Hd_h × d``): rows
           ``h·d_h + i``; ``c_proj/bias`` is shared
gpt_neox   ``layers/{l}/attention/query_key_value/weight``  ``3·d_h·d + 3·d_h + d·d_h``
           (``3Hd_h × d``, torch ``(out, in)``): row
           ``h·3d_h + c·d_h + i`` (the output is viewed as
           ``(…, H, 3d_h)``, so one block of ``3d_h`` rows
           per head); the bias alike;
           ``attention/dense/weight`` (``d × Hd_h``):
           columns ``h·d_h + i``; its bias is shared
llama      ``layers/{l}/self_attn/q_proj/weight``           ``d_h·d + 2·d_h·d + d·d_h``
           (``Hd_h × d``): rows ``h·d_h + i``; ``k_proj``,  (plus ``d_h + 2·d_h`` biases
           ``v_proj`` (``H_kv d_h × d``): rows               where the model has them:
           ``g(h)·d_h + i``; ``o_proj`` (``d × Hd_h``):      Qwen2)
           columns ``h·d_h + i``
tlens      ``blocks/{l}/attn/W_Q[h]`` (``H × d × d_h``),     ``4·d·d_h + 3·d_h``
           ``b_Q[h]``, ``W_K[h]``, ``W_V[h]`` and biases
           (or ``_W_K[g(h)]``, ``_W_V[g(h)]``, ``_b_K``,
           ``_b_V`` with ``n_key_value_heads``);
           ``W_O[h]`` (``H × d_h × d``); ``b_O`` shared
slt_jax    ``layers/{l}/qkv[:, :, h]``                      ``3·d·d_h + d_h·d``
           (``d × 3 × H × d_h``) and ``layers/{l}/out[h]``
           (``H × d_h × d``), the head axes of
           :mod:`slt_jax.models.attention`
========== ================================================ =================================

With grouped-query attention a head's selection *includes its group's key and value
rows*, which it shares with the other ``H / H_kv − 1`` heads of the group: refined LLCs of
two heads of one group move some of the same coordinates. ``"l0g0"`` selects the whole
group: all its query heads, their output columns, and its key/value rows.

Parameter paths are :func:`~slt_jax.refine.path_string` paths. The dotted names of a torch
state dict work too: a flat ``{"transformer.h.0.attn.c_attn.weight": array}`` is read as
``transformer/h/0/attn/c_attn/weight``, and any model prefix before the layout's names
(``transformer/``, ``gpt_neox/``, ``model/``, a Flax ``params/``) is allowed. Weights are
in the orientation of the torch models (``c_attn`` ``(in, out)``, ``nn.Linear`` ``(out,
in)``); a port that transposes them needs its own layout.

Component names, parsed like devinterp 2.x's weight restrictions (case-insensitive,
spaces allowed; a list is the union):

* ``"l0h1"``: head 1 of layer 0 (as above); ``"l0g0"``: key/value group 0 of layer 0;
* ``"l0 attn"``: every attention parameter of layer 0, shared output bias included;
* ``"l0 mlp"``: every parameter under layer 0's ``mlp/``;
* ``"l0"``: every parameter of layer 0 (attention, MLP, layer norms);
* ``"embed"``: token embedding and, where the model has one, positional embedding;
* ``"unembed"``: the unembedding (``lm_head`` / ``embed_out`` / ``W_U`` and ``b_U``),
  not the final layer norm. A model with tied embeddings whose params have no separate
  ``lm_head`` (GPT-2's ``named_parameters``) has one matrix for both: there ``"unembed"``
  selects the token embedding ``wte`` (Llama: ``embed_tokens``);
* ``"full"``: everything.

Example::

  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_head=4, ...))
  params = {k: v.detach().numpy() for k, v in model.named_parameters()}
  layout = sj.refine.Layout.detect(params, num_heads=4)      # or Layout.from_hf_config
  refinements = sj.refine.heads(params, layout)              # {"l0h0": mask, ...}
  refinements |= sj.refine.components(params, ["l0 mlp", "embed"], layout)
  res = sj.estimate_refined_llc(loss_fn, params, data, refinements)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from slt_jax._src import families, refine
from slt_jax._src.validation import path_string

PyTree = Any


class _Split(NamedTuple):
    """The heads of a leaf: its ``axis`` is viewed as ``(before, count, width)`` with
    ``count`` = the number of query heads (or of key/value heads, ``kv``) and a head
    selects its index along ``count``. ``unit`` blocks of ``d_h`` make one ``width``;
    ``exact``: the axis is the head axis itself (``width`` = 1, no ``d_h`` in it)."""

    axis: int
    before: int = 1
    kv: bool = False
    unit: int = 1
    exact: bool = False


class _Spec(NamedTuple):
    container: str  # the layer list: h/{l}, layers/{l}, blocks/{l}
    heads: dict[str, _Split]  # within-layer path -> how heads split it
    required: tuple[tuple[str, ...], ...]  # head leaves every layer has (alternatives)
    attn: tuple[str, ...]  # within-layer globs of the attention module
    mlp: tuple[str, ...]
    embed: tuple[str, ...]  # the first is required
    unembed: tuple[tuple[str, ...], ...]  # alternatives, tried in order; first one required
    buffers: tuple[str, ...] = ()  # within-layer globs that are not parameters
    gqa: bool = False
    signature: str = ""  # within-layer path that identifies the layout


_SPECS: dict[str, _Spec] = {
    "gpt2": _Spec(
        container="h",
        heads={
            "attn/c_attn/weight": _Split(1, before=3),
            "attn/c_attn/bias": _Split(0, before=3),
            "attn/c_proj/weight": _Split(0),
        },
        required=(("attn/c_attn/weight",), ("attn/c_proj/weight",)),
        attn=("attn/*",),
        mlp=("mlp/*",),
        embed=("wte/weight", "wpe/weight"),
        unembed=(("lm_head/weight", "lm_head/bias"), ("wte/weight",)),
        buffers=("attn/bias", "attn/masked_bias"),
        signature="attn/c_attn/weight",
    ),
    "gpt_neox": _Spec(
        container="layers",
        heads={
            "attention/query_key_value/weight": _Split(0, unit=3),
            "attention/query_key_value/bias": _Split(0, unit=3),
            "attention/dense/weight": _Split(1),
        },
        required=(("attention/query_key_value/weight",), ("attention/dense/weight",)),
        attn=("attention/*",),
        mlp=("mlp/*",),
        embed=("embed_in/weight",),
        unembed=(("embed_out/weight",), ("lm_head/weight",)),
        buffers=("attention/bias", "attention/masked_bias", "attention/rotary_emb/*"),
        signature="attention/query_key_value/weight",
    ),
    "llama": _Spec(
        container="layers",
        heads={
            "self_attn/q_proj/weight": _Split(0),
            "self_attn/q_proj/bias": _Split(0),
            "self_attn/k_proj/weight": _Split(0, kv=True),
            "self_attn/k_proj/bias": _Split(0, kv=True),
            "self_attn/v_proj/weight": _Split(0, kv=True),
            "self_attn/v_proj/bias": _Split(0, kv=True),
            "self_attn/o_proj/weight": _Split(1),
        },
        required=tuple((f"self_attn/{p}_proj/weight",) for p in ("q", "k", "v", "o")),
        attn=("self_attn/*",),
        mlp=("mlp/*",),
        embed=("embed_tokens/weight",),
        unembed=(("lm_head/weight", "lm_head/bias"), ("embed_tokens/weight",)),
        buffers=("self_attn/rotary_emb/*",),
        gqa=True,
        signature="self_attn/q_proj/weight",
    ),
    "tlens": _Spec(
        container="blocks",
        heads={
            **{f"attn/{w}_{c}": _Split(0, exact=True) for w in ("W", "b") for c in "QKV"},
            **{f"attn/_{w}_{c}": _Split(0, kv=True, exact=True) for w in ("W", "b") for c in "KV"},
            "attn/W_O": _Split(0, exact=True),
        },
        required=(
            ("attn/W_Q",),
            ("attn/W_K", "attn/_W_K"),
            ("attn/W_V", "attn/_W_V"),
            ("attn/W_O",),
        ),
        attn=("attn/*",),
        mlp=("mlp/*",),
        embed=("embed/W_E", "pos_embed/W_pos"),
        unembed=(("unembed/W_U", "unembed/b_U"),),
        buffers=("attn/mask", "attn/IGNORE", "attn/rotary_sin", "attn/rotary_cos"),
        gqa=True,
        signature="attn/W_Q",
    ),
    "slt_jax": _Spec(
        container="layers",
        heads={"qkv": _Split(2, exact=True), "out": _Split(0, exact=True)},
        required=(("qkv",), ("out",)),
        attn=("qkv", "out"),
        mlp=(),
        embed=("embed", "pos_embed"),
        unembed=(("unembed",),),
        signature="qkv",
    ),
}
_DESCRIPTIONS = {
    "gpt2": "GPT-2 (h/{l}/attn/c_attn/weight)",
    "gpt_neox": "GPT-NeoX (layers/{l}/attention/query_key_value/weight)",
    "llama": "Llama / Mistral / Qwen2 (layers/{l}/self_attn/q_proj/weight)",
    "tlens": "TransformerLens HookedTransformer (blocks/{l}/attn/W_Q)",
    "slt_jax": "slt_jax.models.attention (layers/{l}/qkv)",
}
PATTERNS = (
    "'l{layer}h{head}'",
    "'l{layer}g{group}'",
    "'l{layer} attn'",
    "'l{layer} mlp'",
    "'l{layer}'",
    "'embed'",
    "'unembed'",
    "'full'",
)
_VALID = f"Valid patterns (case-insensitive, a list is a union): {', '.join(PATTERNS)}."


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the attention heads, layers, MLPs and embeddings of one family of language
    models live in a parameter pytree (see :mod:`slt_jax._src.layouts` for the math).

    Attributes:
      kind: ``"gpt2"``, ``"gpt_neox"``, ``"llama"`` (also Mistral, Qwen2), ``"tlens"``
        (TransformerLens ``HookedTransformer`` state dicts) or ``"slt_jax"``
        (:mod:`slt_jax.models.attention`).
      num_heads: ``H``, query heads per layer.
      num_kv_heads: ``H_kv``, key/value heads per layer (grouped-query attention; ``llama``
        and ``tlens`` only); default ``num_heads``. ``H_kv`` must divide ``H``.
      num_layers: if given, the parameters must have exactly this many layers.

    Build one with :meth:`detect` (from the parameter paths), :meth:`from_hf_config` (from
    a ``config.json``) or directly: ``Layout("llama", num_heads=32, num_kv_heads=8)``.
    :meth:`mask`, :func:`~slt_jax.refine.components` and :func:`~slt_jax.refine.heads`
    turn component names into the boolean masks that
    :func:`slt_jax.estimate_refined_llc` takes as selectors (Wang et al. 2024,
    arXiv:2410.02984).

    Example::

      layout = Layout.from_hf_config(json.load(open("config.json")))
      layout.mask(params, "l0h1")              # head 1 of layer 0, q/k/v/o blocks
      layout.mask(params, ["l0h1", "l0h2"])    # the union of two heads
    """

    kind: str
    num_heads: int
    num_kv_heads: int | None = None
    num_layers: int | None = None

    def __post_init__(self):
        if self.kind not in _SPECS:
            raise ValueError(f"unknown layout kind {self.kind!r}; known: {_known()}.")
        for name in ("num_heads", "num_kv_heads", "num_layers"):
            value = getattr(self, name)
            if value is None and name != "num_heads":
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"Layout `{name}` must be a positive int, got {value!r}.")
            object.__setattr__(self, name, int(value))
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}."
            )
        if self.num_kv_heads != self.num_heads and not _SPECS[self.kind].gqa:
            raise ValueError(
                f"layout {self.kind!r} has no grouped-query attention: num_kv_heads must "
                f"equal num_heads ({self.num_heads}), got {self.num_kv_heads}."
            )

    @property
    def group_size(self) -> int:
        """``H / H_kv``: query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def detect(
        cls, params: PyTree, *, num_heads: int | None = None, num_kv_heads: int | None = None
    ) -> Layout:
        """The layout whose layer-0 attention weights are among ``params``' paths.

        ``num_heads`` cannot be read from the fused GPT-2, GPT-NeoX and Llama weights and
        must be given there; TransformerLens and slt_jax weights have a head axis, from
        which ``num_heads`` (and ``num_kv_heads``) are read and checked against the given
        ones. For Llama, ``num_kv_heads`` defaults to what the ``k_proj`` rows imply.

        Raises:
          ValueError: if no known layout (or more than one) matches, listing the known ones.
        """
        paths = [_normal(p) for p in refine.leaf_paths(params)]
        found = []
        for kind, spec in _SPECS.items():
            rel = f"{spec.container}/0/{spec.signature}"
            if any(p == rel or p.endswith("/" + rel) for p in paths):
                found.append(kind)
        if len(found) != 1:
            what = "no known layout" if not found else f"several layouts ({found})"
            raise ValueError(
                f"{what} matches the parameter paths {paths[:6]}{' …' if len(paths) > 6 else ''}"
                f"; known layouts (layer 0's attention weight): {_known()}."
            )
        kind = found[0]
        shapes = {p: np.shape(leaf) for p, leaf in zip(paths, jax.tree.leaves(params), strict=True)}

        def shape(rel):
            full = f"{_SPECS[kind].container}/0/{rel}"
            hits = [s for p, s in shapes.items() if p == full or p.endswith("/" + full)]
            return hits[0] if hits else None

        if kind in ("tlens", "slt_jax"):
            heads = shape("attn/W_Q")[0] if kind == "tlens" else shape("qkv")[2]
            if num_heads is not None and num_heads != heads:
                raise ValueError(
                    f"num_heads={num_heads}, but the {kind} weights have {heads} heads."
                )
            num_heads = heads
            grouped = shape("attn/_W_K") if kind == "tlens" else None
            kv = grouped[0] if grouped is not None else heads
            if num_kv_heads is not None and num_kv_heads != kv:
                raise ValueError(
                    f"num_kv_heads={num_kv_heads}, but the {kind} weights have {kv} key/value "
                    "heads."
                )
            num_kv_heads = kv
        elif num_heads is None:
            raise ValueError(
                f"the {_DESCRIPTIONS[kind]} layout fuses its heads: pass num_heads= (the "
                "model config's n_head / num_attention_heads)."
            )
        elif kind == "llama" and num_kv_heads is None:
            q, k = shape("self_attn/q_proj/weight"), shape("self_attn/k_proj/weight")
            if k is not None and q[0] % num_heads == 0 and k[0] % (q[0] // num_heads) == 0:
                num_kv_heads = k[0] // (q[0] // num_heads)
        return cls(kind, num_heads=num_heads, num_kv_heads=num_kv_heads)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | Any) -> Layout:
        """The layout of a Hugging Face model from its ``config.json`` (a dict, or a
        ``PretrainedConfig``): its ``model_type``'s record (``_src/families.py``: gpt2,
        gpt_neox, llama, mistral, qwen2) gives the layout kind and the config keys of the
        head, key/value-head and layer counts (``n_head`` / ``num_attention_heads``,
        ``num_key_value_heads``, ``n_layer`` / ``num_hidden_layers``)."""
        if not isinstance(config, Mapping):
            if not hasattr(config, "to_dict"):
                raise TypeError("`config` must be a config.json dict or a PretrainedConfig.")
            config = config.to_dict()
        model_type = config.get("model_type")
        if model_type not in families.FAMILIES:
            raise ValueError(
                f"model_type {model_type!r} has no layout; supported: {sorted(families.FAMILIES)}."
            )
        record = families.FAMILIES[model_type]
        heads = config.get(record.heads_key, config.get("num_attention_heads"))
        if heads is None:
            raise ValueError(
                f"the config has neither `{record.heads_key}` nor `num_attention_heads`."
            )
        layers = config.get(record.layers_key, config.get("num_hidden_layers"))
        kv = config.get(record.kv_heads_key) if record.kv_heads_key else None
        return cls(record.layout, num_heads=heads, num_kv_heads=kv, num_layers=layers)

    # ---- masks -----------------------------------------------------------------------

    def parses(self, names: str | Sequence[str]) -> bool:
        """Whether ``names`` (a name or a list of names) are all component names."""
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, Sequence) or not names:
            return False
        return all(isinstance(n, str) and _parse(n) is not None for n in names)

    def mask(self, params: PyTree, names: str | Sequence[str], *, name: str | None = None):
        """The boolean mask pytree (shaped like ``params``) of a component name or the union
        of a list of them. Errors (unknown or out-of-range names, missing leaves) are
        raised here, before anything is compiled."""
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("no component name given.")
        parsed = []
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"a component name must be a string, got {n!r}.")
            p = _parse(n)
            if p is None:
                raise ValueError(f"unknown component name {n!r}. {_VALID}")
            parsed.append(p)
        model = _Resolved(self, params)
        leaves = [np.zeros(s, bool) for s in model.shapes]
        for n, p in zip(names, parsed, strict=True):
            for i, m in model.select(n, *p):
                leaves[i] |= m
        label = name or (names[0] if len(names) == 1 else "+".join(names))
        return refine.mask(params, jax.tree.unflatten(model.treedef, leaves), name=label)


def components(
    params: PyTree, names: str | Sequence[str] | Mapping[str, str | Sequence[str]], layout: Layout
) -> dict[str, PyTree]:
    """``{name: mask}`` for component names (:mod:`slt_jax._src.layouts`): a name, a list of
    names (one mask each) or ``{key: name or list of names}`` (a list is a union). The
    masks are selectors for :func:`slt_jax.estimate_refined_llc`.

    Example: ``components(params, {"l0": ["l0h0", "l0h1"], "mlp": "l0 mlp"}, layout)``.
    """
    if isinstance(names, str):
        names = [names]
    if isinstance(names, Mapping):
        items = [(str(k), v) for k, v in names.items()]
    elif isinstance(names, Sequence):
        items = [(n, n) for n in names]
    else:
        raise TypeError("`names` must be a name, a list of names or a mapping {key: names}.")
    if not items:
        raise ValueError("no component name given.")
    return {key: layout.mask(params, value, name=key) for key, value in items}


def heads(params: PyTree, layout: Layout) -> dict[str, PyTree]:
    """``{"l0h0": mask, "l0h1": mask, …}``: one refinement per attention head of every
    layer (see the table in :mod:`slt_jax._src.layouts` for what each selects)."""
    model = _Resolved(layout, params)
    names = [f"l{i}h{h}" for i in range(model.num_layers) for h in range(layout.num_heads)]
    return components(params, names, layout)


# ---- parsing and resolution ----------------------------------------------------------------

_NAME_PATTERNS = (
    (re.compile(r"l\s*(\d+)\s*h\s*(\d+)"), "head"),
    (re.compile(r"l\s*(\d+)\s*g\s*(\d+)"), "group"),
    (re.compile(r"l\s*(\d+)\s*(attn|mlp)?"), "layer"),
)


def _parse(name: str):
    """``(what, layer, index)`` for a component name, ``None`` if it is not one."""
    text = name.strip().lower()
    if text in ("embed", "unembed", "full"):
        return text, None, None
    for pattern, what in _NAME_PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            if what == "layer":
                return m[2] or "layer", int(m[1]), None
            return what, int(m[1]), int(m[2])
    return None


def _normal(path: str) -> str:
    return path.replace(".", "/")


def _known() -> str:
    return "; ".join(f"{k!r}: {d}" for k, d in _DESCRIPTIONS.items())


def _span(n: int, what: str) -> str:
    """``"heads 0–3"`` / ``"head 0 only"``."""
    return f"{what} 0 only" if n == 1 else f"{what}s 0–{n - 1}"


class _Resolved:
    """The leaves of ``params`` sorted by layer and role for one layout."""

    def __init__(self, layout: Layout, params: PyTree):
        self.layout, self.spec = layout, _SPECS[layout.kind]
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.paths = [_normal(path_string(p)) for p, _ in flat]
        self.shapes = [np.shape(leaf) for _, leaf in flat]
        layer_re = re.compile(rf"(?:^|.*/){re.escape(self.spec.container)}/(\d+)/(.+)")
        self.layers: dict[int, dict[str, int]] = {}
        self.top: list[int] = []
        for i, path in enumerate(self.paths):
            m = layer_re.fullmatch(path)
            if m is None:
                self.top.append(i)
                continue
            rel = self.layers.setdefault(int(m[1]), {})
            if m[2] in rel:
                raise ValueError(
                    f"two parameters are layer {m[1]}'s {m[2]}: {self.paths[rel[m[2]]]} and "
                    f"{path}; pass the parameters of one model."
                )
            rel[m[2]] = i
        self.num_layers = len(self.layers)
        if sorted(self.layers) != list(range(self.num_layers)) or not self.layers:
            raise ValueError(
                f"the {_DESCRIPTIONS[layout.kind]} layout finds layers {sorted(self.layers)} "
                f"in the parameter paths {self.paths[:4]}…; expected layers 0, 1, …"
            )
        if layout.num_layers is not None and layout.num_layers != self.num_layers:
            raise ValueError(
                f"the layout has num_layers={layout.num_layers}, the parameters have "
                f"{self.num_layers} layers."
            )
        for layer in range(self.num_layers):
            self._check_layer(layer)

    def _where(self, layer: int, rel: str) -> str:
        return f"{self.spec.container}/{layer}/{rel}"

    def _check_layer(self, layer: int):
        rel = self.layers[layer]
        for alternatives in self.spec.required:
            if not any(a in rel for a in alternatives):
                raise ValueError(
                    f"the {self.layout.kind!r} layout expects the parameter "
                    f"{' or '.join(self._where(layer, a) for a in alternatives)}, which is "
                    f"missing; layer {layer} has {sorted(rel)}."
                )
        sizes = {}
        for name, split in self.spec.heads.items():
            if name not in rel:
                continue
            shape = self.shapes[rel[name]]
            count = self.layout.num_kv_heads if split.kv else self.layout.num_heads
            if len(shape) <= split.axis:
                raise ValueError(
                    f"{self.paths[rel[name]]} has shape {shape}: no axis {split.axis} for heads."
                )
            n = shape[split.axis]
            if split.exact and n != count:
                what = "key/value heads" if split.kv else "heads"
                raise ValueError(
                    f"{self.paths[rel[name]]} has shape {shape}: {n} {what} on axis "
                    f"{split.axis}, but the layout has {count}."
                )
            if not split.exact:
                if n % (split.before * count * split.unit):
                    raise ValueError(
                        f"{self.paths[rel[name]]} of shape {shape} cannot be split into "
                        f"{split.before}×{count} heads along axis {split.axis}."
                    )
                sizes[name] = n // (split.before * count * split.unit)
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"layer {layer}: the head sizes implied by num_heads={self.layout.num_heads}, "
                f"num_kv_heads={self.layout.num_kv_heads} disagree ({sizes}); check the "
                "head counts."
            )

    # ---- selections: lists of (leaf index, mask) ----

    def select(self, name: str, what: str, layer: int | None, index: int | None):
        if what == "full":
            return [(i, np.ones(s, bool)) for i, s in enumerate(self.shapes)]
        if what in ("embed", "unembed"):
            return [(i, np.ones(self.shapes[i], bool)) for i in self._top(what)]
        if layer >= self.num_layers:
            raise ValueError(
                f"{name!r}: layer {layer} does not exist: the model has "
                f"{_span(self.num_layers, 'layer')}. {_VALID}"
            )
        rel = self.layers[layer]
        if what == "head":
            if index >= self.layout.num_heads:
                raise ValueError(
                    f"{name!r}: head {index} does not exist: layer {layer} has "
                    f"{_span(self.layout.num_heads, 'head')}. {_VALID}"
                )
            return self._heads(layer, [index], [index // self.layout.group_size])
        if what == "group":
            if index >= self.layout.num_kv_heads:
                raise ValueError(
                    f"{name!r}: group {index} does not exist: layer {layer} has key/value "
                    f"{_span(self.layout.num_kv_heads, 'group')} ({self.layout.num_heads} "
                    f"heads share {self.layout.num_kv_heads} key/value heads). {_VALID}"
                )
            size = self.layout.group_size
            return self._heads(layer, range(index * size, (index + 1) * size), [index])
        buffer = lambda r: any(fnmatch.fnmatchcase(r, g) for g in self.spec.buffers)  # noqa: E731
        globs = {"layer": ("*",), "attn": self.spec.attn, "mlp": self.spec.mlp}[what]
        hits = [
            (i, np.ones(self.shapes[i], bool))
            for r, i in rel.items()
            if any(fnmatch.fnmatchcase(r, g) for g in globs) and not buffer(r)
        ]
        if not hits:
            raise ValueError(
                f"{name!r}: layer {layer} has no {what.upper()} parameters in the "
                f"{self.layout.kind!r} "
                f"layout (looked for {[self._where(layer, g) for g in globs]}; layer "
                f"{layer} has {sorted(rel)})."
            )
        return hits

    def _heads(self, layer, query_heads, kv_heads):
        result = []
        for name, split in self.spec.heads.items():
            i = self.layers[layer].get(name)
            if i is None:
                continue
            shape = self.shapes[i]
            count = self.layout.num_kv_heads if split.kv else self.layout.num_heads
            n = shape[split.axis]
            vector = np.zeros((split.before, count, n // (split.before * count)), bool)
            vector[:, list(kv_heads if split.kv else query_heads)] = True
            view = [1] * len(shape)
            view[split.axis] = n
            result.append((i, np.broadcast_to(vector.reshape(view), shape).copy()))
        return result

    def _top(self, what: str) -> list[int]:
        def find(template):
            hits = [
                i
                for i in self.top
                if self.paths[i] == template or self.paths[i].endswith("/" + template)
            ]
            if len(hits) > 1:
                raise ValueError(
                    f"several parameters are the {what} {template}: "
                    f"{[self.paths[i] for i in hits]}; pass the parameters of one model."
                )
            return hits

        if what == "embed":
            first, *rest = self.spec.embed
            found = find(first)
            if not found:
                raise ValueError(
                    f"'embed': the {self.layout.kind!r} layout expects the parameter {first}, "
                    f"which is missing (top-level parameters: "
                    f"{[self.paths[i] for i in self.top]})."
                )
            return found + [i for t in rest for i in find(t)]
        for first, *rest in self.spec.unembed:
            found = find(first)
            if found:
                return found + [i for t in rest for i in find(t)]
        expected = " or ".join(alt[0] for alt in self.spec.unembed)
        raise ValueError(
            f"'unembed': the {self.layout.kind!r} layout expects the parameter {expected}, "
            f"which is missing (top-level parameters: {[self.paths[i] for i in self.top]})."
        )
