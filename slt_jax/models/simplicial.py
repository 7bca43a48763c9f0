r"""The 2-simplicial Transformer of Clift, Doryn, Murfet & Wallbridge (ICLR 2020) beside an
ordinary (relational) Transformer, on a small relational-reasoning task with a 3-way relation.

**2-simplicial attention** (:class:`SimplicialAttention`). Each entity ``i`` of a sequence
``x`` (the queries) attends to *pairs* ``(j, k)`` of entities of a context ``c`` (default
``x``). Per head, learned linear maps give a query ``p_i = W^P x_i``, two keys ``l^1_j =
W^{L_1} c_j``, ``l^2_k = W^{L_2} c_k`` and a value ``u_j = W^U c_j`` in
:math:`\mathbb R^{d}` (``d = d_head``); then

.. math::

    A_{ijk} = \frac{\exp s_{ijk}}{\sum_{j',k'} \exp s_{ij'k'}},\qquad
    y_i = \sum_h \sum_{j,k} A^h_{ijk}\, B_h(u^h_j \otimes u^h_k),

the softmax taken jointly over the allowed pairs ``(j, k)`` (with a key mask ``m_{ij}``,
pair ``(j, k)`` is allowed for query ``i`` iff ``m_{ij}`` and ``m_{ik}``; ``causal=True``
is ``m_{ij} = [j ≤ i]``), and :math:`B_h : \mathbb R^d\otimes\mathbb R^d \to \mathbb
R^{d_{model}}` a learned linear map (``bilinear[h]``, shape ``(d, d, d_model)``), so the
update is a tensor product of value vectors mapped back to the model width. Two logits:

* ``logits="trilinear"`` (default): :math:`s_{ijk} = \frac{1}{\sqrt d}\sum_{a=1}^d p_{i,a}
  l^1_{j,a} l^2_{k,a}`, the trilinear form that later work on 2-simplicial attention uses
  (Roy et al. 2025); the ``1/√d`` gives logits of unit variance at initialisation;
* ``logits="triple"``: the paper's *unsigned scalar triple product* (their Section 2),
  :math:`\langle a,b,c\rangle = \lVert (a\cdot b)c - (a\cdot c)b + (b\cdot c)a\rVert`, with
  :math:`\langle a,b,c\rangle^2 = (a\cdot b)^2|c|^2 + (b\cdot c)^2|a|^2 + (a\cdot c)^2|b|^2
  - 2(a\cdot b)(a\cdot c)(b\cdot c)`, here :math:`s_{ijk} = \langle p_i, l^1_j,
  l^2_k\rangle / d` (the ``1/d`` is ours: it keeps the logits O(1) at initialisation).

Both are symmetric under exchanging the two keys, so exchanging ``W^{L_1} ↔ W^{L_2}`` and
transposing ``B_h`` (``bilinear[h, a, b] ↔ bilinear[h, b, a]``) leaves the layer unchanged.
Without a mask the layer is equivariant: permuting the context leaves ``y`` unchanged, and
permuting ``x`` (the context too, for self-attention) permutes ``y``. The cost is
``O(T·S²·d)`` per head; the paper restricts ``j, k`` to a few *virtual entities* to cut it
to ``O(N²)``; our sets are small, so every pair is attended to.

**Blocks** (:class:`Block`, the paper's pseudo-code): ``x = LN(e)``; ``a = [Attn₁(x),
LN(Attn₂(x))]`` (1-simplicial heads, and the layer-normed 2-simplicial heads that the paper
found necessary for stable training); ``e' = LN(e + W₂ ReLU(W₁ a + b₁) + b₂)``. With
``num_simplicial_heads=0`` it is the ordinary Transformer block of their relational agent.
:class:`SetTransformer` embeds tokens (no positional encodings: the input is a set), applies
``num_blocks`` blocks, max-pools over the entities (as their agents do) and classifies.

**The task** (:class:`PairDifferenceTask`), a stand-in for the paper's bridge BoxWorld, whose
bridges are found by reasoning about 2-simplices (a pair of boxes sharing a lock or a key):
given a target ``t ∈ {1, …, p-1}`` and a set of ``N`` distinct residues ``x_1, …, x_N`` mod
``p`` (default ``p = 19``, ``N = 5``), is there an (ordered) pair with ``x_j - x_k ≡ t``
(mod ``p``)? The label is a 3-way relation between the target and two elements. One
2-simplicial head can read it off a trilinear form of Fourier features (``cos(ω(x_j - x_k
- t))`` is a sum of products of one feature of each of ``t, x_j, x_k``); a pairwise dot
product of linear maps of the entities cannot, so an ordinary Transformer first has to
combine ``t`` with the elements in its feed-forward layers, a modular-arithmetic table.
In notebook 07 (one seed) the simplicial model leaves the chance plateau first; a wider
relational model (35k parameters against its 43k) catches up by the end of training.

References:
  Clift, Doryn, Murfet, Wallbridge (2020), "Logic and the 2-simplicial Transformer",
  ICLR 2020, arXiv:1909.00668.
  Roy, Chou, Duvvuri, Chen, Yu, Wang, Zaheer, Anil (2025), "Fast and Simplex: 2-Simplicial
  Attention in Triton", arXiv:2507.02754.

Example (a few minutes on a laptop CPU; notebook 07 runs it with a third, wide relational
model as a control)::

  for arch in ("relational", "simplicial"):
      model, history = simplicial.train(arch, checkpoint_dir=f"runs/{arch}")
      loss_fn, data, like = simplicial.factory(arch)
      res = sj.estimate_llc_checkpoints(loss_fn, f"runs/{arch}", data, like=like)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slt_jax._src import refine
from slt_jax._src.io.adapters import nnx_loss
from slt_jax._src.io.checkpoints import save_checkpoint
from slt_jax._src.training import checkpoint_schedule
from slt_jax.models import _init

PyTree = Any
ARCHITECTURES = ("relational", "simplicial")
_EVAL_SEED = 1_000_003  # the held-out examples of `train`'s history, the same for every run
_MAX_SAMPLING_ROUNDS = 1000  # rejection rounds before a class is declared too rare


def _masked_softmax(scores, allowed, num_axes: int):
    """Softmax of ``scores`` jointly over its last ``num_axes`` axes, restricted to the
    ``allowed`` entries: disallowed entries get 0, and a query with no allowed entry at all
    attends to nothing (its row is all 0, so its update is 0)."""
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    shape = scores.shape
    flat = scores.reshape(*shape[: len(shape) - num_axes], -1)
    pattern = jax.nn.softmax(flat, axis=-1).reshape(shape)
    # a fully masked row would otherwise come out uniform over the masked entries
    return jnp.where(allowed, pattern, 0.0)


def trilinear_logits(p, l1, l2):
    r"""``s[..., i, j, k] = Σ_a p[..., i, a] l1[..., j, a] l2[..., k, a] / √d``."""
    return jnp.einsum("...ia,...ja,...ka->...ijk", p, l1, l2) / np.sqrt(p.shape[-1])


def triple_product_logits(p, l1, l2):
    r"""The unsigned scalar triple product ``⟨p_i, l1_j, l2_k⟩ / d`` of Clift et al.,
    computed from the pairwise dot products (its square, as in their Section 2), shape
    ``(..., T, S, S)``."""
    ab = jnp.einsum("...ia,...ja->...ij", p, l1)[..., :, :, None]
    ac = jnp.einsum("...ia,...ka->...ik", p, l2)[..., :, None, :]
    bc = jnp.einsum("...ja,...ka->...jk", l1, l2)[..., None, :, :]
    aa = jnp.sum(p * p, -1)[..., :, None, None]
    bb = jnp.sum(l1 * l1, -1)[..., None, :, None]
    cc = jnp.sum(l2 * l2, -1)[..., None, None, :]
    square = ab**2 * cc + bc**2 * aa + ac**2 * bb - 2 * ab * ac * bc
    # the square is ≥ 0 in exact arithmetic; keep rounding (and the gradient at 0) finite
    tiny = jnp.finfo(square.dtype).tiny
    return jnp.sqrt(jnp.maximum(square, tiny)) / p.shape[-1]


_LOGITS = {"trilinear": trilinear_logits, "triple": triple_product_logits}


def _key_mask(mask, causal, length, context_length):
    """The key mask ``(..., T, S)`` (``None``: every key), a 1-D mask ``(S,)`` applying to
    every query."""
    allowed = None if mask is None else jnp.atleast_2d(jnp.asarray(mask, bool))
    if causal:
        tril = np.tril(np.ones((length, context_length), bool))
        allowed = tril if allowed is None else allowed & tril
    return allowed


class SimplicialAttention(nnx.Module):
    """Multi-head 2-simplicial attention (the module docstring has the equations).

    Parameters: ``query_keys`` ``(d_model, 3, H, d_head)`` (``W^P, W^{L_1}, W^{L_2}``
    fused), ``value_map`` ``(d_model, H, d_head)`` (``W^U``) and ``bilinear`` ``(H, d_head,
    d_head, d_model)`` (``B``); no biases.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        d_head: int = 16,
        *,
        logits: str = "trilinear",
        rngs: nnx.Rngs,
    ):
        if logits not in _LOGITS:
            raise ValueError(f"logits must be one of {sorted(_LOGITS)}, got {logits!r}.")
        normal = _init.normal  # the values of nnx.initializers.normal, compiled faster
        shape = (d_model, 3, num_heads, d_head)
        self.query_keys = nnx.Param(normal(d_model**-0.5)(rngs.params(), shape))
        self.value_map = nnx.Param(
            normal(d_model**-0.5)(rngs.params(), (d_model, num_heads, d_head))
        )
        std = (num_heads * d_head**2) ** -0.5
        shape = (num_heads, d_head, d_head, d_model)
        self.bilinear = nnx.Param(normal(std)(rngs.params(), shape))
        self.logits = logits

    def __call__(self, x, context=None, *, mask=None, causal: bool = False):
        """``(y, pattern)`` for queries ``x`` ``(..., T, d_model)`` and a ``context``
        ``(..., S, d_model)`` (default ``x``): ``y`` ``(..., T, d_model)`` and
        ``pattern[..., h, i, j, k] = A^h_{ijk}``. ``mask`` (broadcastable to ``(..., T,
        S)``, bool; a 1-D ``(S,)`` mask applies to every query) marks the keys each query may
        use; ``causal`` adds ``j, k ≤ i``. A query left with no key attends to nothing: its
        pattern row and its update are 0."""
        context = x if context is None else context
        weights = self.query_keys[...]
        p = jnp.einsum("...tm,mhd->...htd", x, weights[:, 0])
        l1, l2 = jnp.einsum("...sm,mchd->c...hsd", context, weights[:, 1:])
        u = jnp.einsum("...sm,mhd->...hsd", context, self.value_map[...])
        scores = _LOGITS[self.logits](p, l1, l2)
        allowed = _key_mask(mask, causal, x.shape[-2], context.shape[-2])
        if allowed is not None:
            allowed = allowed[..., None, :, :, None] & allowed[..., None, :, None, :]
        else:
            allowed = True
        pattern = _masked_softmax(scores, allowed, num_axes=2)
        # Σ_jk A_ijk u_j ⊗ u_k, contracted in two steps: O(T·S²·d + T·S·d²)
        half = jnp.einsum("...hijk,...hkb->...hijb", pattern, u)
        pairs = jnp.einsum("...hja,...hijb->...hiab", u, half)
        return jnp.einsum("...hiab,habm->...im", pairs, self.bilinear[...]), pattern


class DotProductAttention(nnx.Module):
    """Multi-head (1-simplicial) dot-product attention, mapped back to ``d_model``.

    ``A^h_{ij} = softmax_j(q_i·k_j/√d)``, ``y_i = Σ_h Σ_j A^h_{ij} v_j W_O[h]``; parameters
    ``qkv`` ``(d_model, 3, H, d_head)`` and ``out`` ``(H, d_head, d_model)``, no biases.
    """

    def __init__(self, d_model: int, num_heads: int = 2, d_head: int = 16, *, rngs: nnx.Rngs):
        normal = _init.normal  # the values of nnx.initializers.normal, compiled faster
        shape = (d_model, 3, num_heads, d_head)
        self.qkv = nnx.Param(normal(d_model**-0.5)(rngs.params(), shape))
        std = (num_heads * d_head) ** -0.5
        self.out = nnx.Param(normal(std)(rngs.params(), (num_heads, d_head, d_model)))

    def __call__(self, x, context=None, *, mask=None, causal: bool = False):
        """``(y, pattern)``, ``pattern[..., h, i, j] = A^h_{ij}``; arguments as in
        :class:`SimplicialAttention`."""
        context = x if context is None else context
        weights = self.qkv[...]
        q = jnp.einsum("...tm,mhd->...htd", x, weights[:, 0])
        k, v = jnp.einsum("...sm,mchd->c...hsd", context, weights[:, 1:])
        scores = jnp.einsum("...hid,...hjd->...hij", q, k) / np.sqrt(q.shape[-1])
        allowed = _key_mask(mask, causal, x.shape[-2], context.shape[-2])
        allowed = True if allowed is None else allowed[..., None, :, :]
        pattern = _masked_softmax(scores, allowed, num_axes=1)
        z = jnp.einsum("...hij,...hjd->...hid", pattern, v)
        return jnp.einsum("...hid,hdm->...im", z, self.out[...]), pattern


class Block(nnx.Module):
    """The (2-simplicial) Transformer block of Clift et al.: ``x = LN(e)``, ``a = [Attn₁(x),
    LN(Attn₂(x))]``, ``e' = LN(e + MLP(a))`` with a one-hidden-layer ReLU MLP.

    ``num_simplicial_heads=0`` gives the ordinary block (no 2-simplicial attention).
    ``block(e, mask=None, causal=False)`` returns ``(e', (pattern₁, pattern₂ or None))``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 2,
        num_simplicial_heads: int = 1,
        d_head: int = 16,
        d_mlp: int = 64,
        d_simplicial: int | None = None,
        *,
        logits: str = "trilinear",
        rngs: nnx.Rngs,
    ):
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.attention = DotProductAttention(d_model, num_heads, d_head, rngs=rngs)
        width = d_model
        if num_simplicial_heads:
            self.simplicial = SimplicialAttention(
                d_model, num_simplicial_heads, d_simplicial or d_head, logits=logits, rngs=rngs
            )
            self.simplicial_norm = nnx.LayerNorm(d_model, rngs=rngs)
            width += d_model
        else:
            self.simplicial = self.simplicial_norm = None
        self.hidden = nnx.Linear(width, d_mlp, rngs=rngs)
        self.output = nnx.Linear(d_mlp, d_model, rngs=rngs)
        self.out_norm = nnx.LayerNorm(d_model, rngs=rngs)

    def __call__(self, e, *, mask=None, causal: bool = False):
        x = self.norm(e)
        a, pattern = self.attention(x, mask=mask, causal=causal)
        parts, simplicial_pattern = [a], None
        if self.simplicial is not None:
            b, simplicial_pattern = self.simplicial(x, mask=mask, causal=causal)
            parts.append(self.simplicial_norm(b))
        h = self.output(jax.nn.relu(self.hidden(jnp.concatenate(parts, -1))))
        return self.out_norm(e + h), (pattern, simplicial_pattern)


class SetTransformer(nnx.Module):
    """Token embedding (no positions), ``num_blocks`` :class:`Block` s, max-pooling over
    the entities and a linear classifier: ``model(tokens)`` maps int tokens ``(batch, T)``
    to logits ``(batch, num_classes)``; invariant to permutations of the ``T`` tokens.

    With ``return_patterns=True`` it returns ``(logits, patterns, simplicial_patterns)``:
    ``patterns[b, l, h, i, j]`` the 1-simplicial attention of block ``l`` and
    ``simplicial_patterns[b, l, h, i, j, k]`` the 2-simplicial one (``None`` without
    2-simplicial heads). ``num_simplicial_heads=0`` is the relational (ordinary) model.
    Parameter paths: ``embed``, ``blocks/{l}/attention/{qkv,out}``,
    ``blocks/{l}/simplicial/{query_keys,value_map,bilinear}``, ``blocks/{l}/{hidden,output}/*``,
    the LayerNorms ``blocks/{l}/{norm,simplicial_norm,out_norm}/*``, ``classifier/*``.
    """

    def __init__(
        self,
        vocab_size: int = 38,
        d_model: int = 32,
        num_heads: int = 2,
        num_simplicial_heads: int = 1,
        d_head: int = 16,
        d_mlp: int = 64,
        num_blocks: int = 2,
        num_classes: int = 2,
        d_simplicial: int | None = None,
        *,
        logits: str = "trilinear",
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (vocab_size, d_model)))
        block = functools.partial(
            Block,
            d_model,
            num_heads,
            num_simplicial_heads,
            d_head,
            d_mlp,
            d_simplicial,
            logits=logits,
        )
        self.blocks = nnx.List([block(rngs=rngs) for _ in range(num_blocks)])
        self.classifier = nnx.Linear(d_model, num_classes, rngs=rngs)

    def __call__(self, tokens, *, return_patterns: bool = False):
        e = self.embed[...][tokens]
        patterns, simplicial_patterns = [], []
        for block in self.blocks:
            e, (pattern, simplicial_pattern) = block(e)
            patterns.append(pattern)
            simplicial_patterns.append(simplicial_pattern)
        logits = self.classifier(e.max(axis=-2))
        if not return_patterns:
            return logits
        two = None if simplicial_patterns[0] is None else jnp.stack(simplicial_patterns, 1)
        return logits, jnp.stack(patterns, 1), two


class Examples(NamedTuple):
    """Labelled sets: ``tokens`` ``(n, 1 + N)`` int32 (position 0 the target token ``p +
    t``, positions ``1..N`` the residues), ``labels`` ``(n,)`` int32 (1: a pair exists)."""

    tokens: np.ndarray
    labels: np.ndarray

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)``: the data set layout of :func:`slt_jax.nnx_loss`."""
        return self.tokens, self.labels


@dataclasses.dataclass(frozen=True)
class PairDifferenceTask:
    """Is there a pair ``j ≠ k`` with ``x_j - x_k ≡ t (mod p)``? (``p = modulus``.)

    An example is a target ``t`` uniform in ``{1, …, p-1}`` and ``N = set_size`` distinct
    residues uniform mod ``p``, tokenised as ``[p + t, x_1, …, x_N]`` (vocabulary ``2p``).
    :meth:`sample` returns exactly half positive examples (the rest negative), each class
    uniform among the sets of its class, in random order. Since ``t ≠ 0`` and the residues
    are distinct, a pair can never be an element with itself.

    Example: ``x_j - x_k ≡ 2`` holds for ``(2, 0)`` in ``{0, 2, 5}``; no difference is 1 in
    ``{0, 2, 4}`` mod 7
      >>> task = PairDifferenceTask(modulus=7, set_size=3)
      >>> task.labels([[7 + 2, 0, 2, 5], [7 + 1, 0, 2, 4]]).tolist()
      [1, 0]
    """

    modulus: int = 19
    set_size: int = 5

    @property
    def vocab_size(self) -> int:
        return 2 * self.modulus

    @property
    def max_negative_size(self) -> int:
        """The largest ``set_size`` with negative examples. For a target ``t`` the map ``x
        ↦ x + t`` splits the residues into ``g = gcd(t, p)`` cycles of length ``p/g``; a set
        with no difference ``t`` takes no two neighbours on a cycle, so at most ``g·⌊p/(2g)⌋``
        residues; the largest over ``t``."""
        p = self.modulus
        return max(math.gcd(t, p) * (p // math.gcd(t, p) // 2) for t in range(1, p))

    def labels(self, tokens) -> np.ndarray:
        """The label of each row of ``tokens`` ``(n, 1 + N)``, by brute force."""
        tokens = np.asarray(tokens)
        t, x = tokens[:, 0] - self.modulus, tokens[:, 1:]
        differences = (x[:, :, None] - x[:, None, :]) % self.modulus
        return (differences == t[:, None, None]).any((1, 2)).astype(np.int32)

    def witnesses(self, tokens) -> np.ndarray:
        """``w[b, j, k]``: positions ``j, k`` (of the ``1 + N`` tokens) hold a pair with
        ``x_j - x_k ≡ t``, shape ``(n, 1 + N, 1 + N)`` bool (row/column 0 all False)."""
        tokens = np.asarray(tokens)
        t, x = tokens[:, 0] - self.modulus, tokens[:, 1:]
        inner = (x[:, :, None] - x[:, None, :]) % self.modulus == t[:, None, None]
        return np.pad(inner, ((0, 0), (1, 0), (1, 0)))

    def sample(self, num_examples: int, *, seed=0) -> Examples:
        """``num_examples`` examples, half of them positive (``seed``: an int, a sequence of
        ints or a ``numpy.random.Generator``)."""
        p, size = self.modulus, self.set_size
        if not 2 <= size <= p:
            raise ValueError(f"need 2 <= set_size <= modulus; got {self}.")
        if size > self.max_negative_size:
            raise ValueError(
                f"every set of {size} residues mod {p} has a pair with each difference, so "
                f"there are no negative examples; use set_size <= {self.max_negative_size}."
            )
        if int(num_examples) < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
        rng = np.random.default_rng(seed)
        wanted = {1: num_examples // 2, 0: num_examples - num_examples // 2}
        found: dict[int, list] = {0: [], 1: []}
        for _ in range(_MAX_SAMPLING_ROUNDS):
            if all(sum(map(len, found[c])) >= wanted[c] for c in (0, 1)):
                break
            m = max(64, 2 * num_examples)
            x = np.argsort(rng.random((m, p)), axis=1)[:, :size]
            t = rng.integers(1, p, m)
            tokens = np.concatenate([p + t[:, None], x], axis=1).astype(np.int32)
            labels = self.labels(tokens)
            for c in (0, 1):
                found[c].append(tokens[labels == c])
        else:
            short = [c for c in (0, 1) if sum(map(len, found[c])) < wanted[c]]
            name = "negative" if short == [0] else "positive" if short == [1] else "any"
            raise ValueError(
                f"{self}: {name} examples are too rare to sample by rejection "
                f"({_MAX_SAMPLING_ROUNDS} rounds); choose a smaller set_size."
            )
        tokens = np.concatenate([np.concatenate(found[c])[: wanted[c]] for c in (0, 1)])
        labels = np.repeat(np.array([0, 1], np.int32), [wanted[0], wanted[1]])
        order = rng.permutation(num_examples)
        return Examples(tokens[order], labels[order])


def classification_loss(logits, labels) -> jax.Array:
    """Per-example cross-entropy, shape ``(batch,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def config_of(params: PyTree) -> dict[str, Any]:
    """The :class:`SetTransformer` keyword arguments (bar ``logits``) that ``params`` (its
    ``nnx.State`` of ``nnx.Param``, e.g. a loaded checkpoint) belong to."""
    shapes = {
        refine.path_string(p): np.shape(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    config = dict(zip(("vocab_size", "d_model"), shapes["embed"], strict=True))
    config |= dict(zip(("num_heads", "d_head"), shapes["blocks/0/attention/qkv"][2:], strict=True))
    _, heads, width = shapes.get("blocks/0/simplicial/value_map", (None, 0, None))
    config |= dict(num_simplicial_heads=heads, d_simplicial=width)
    config |= dict(d_mlp=shapes["blocks/0/hidden/kernel"][1])
    config |= dict(num_classes=shapes["classifier/kernel"][1])
    return config | dict(num_blocks=sum(p.endswith("/attention/qkv") for p in shapes))


@functools.lru_cache(maxsize=16)
def _graphdef(config: tuple):
    abstract = nnx.eval_shape(lambda: SetTransformer(**dict(config), rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def as_model(params: PyTree, logits: str = "trilinear") -> SetTransformer:
    """The model with parameters ``params`` (works on traced values, inside ``jit``)."""
    config = tuple(sorted((config_of(params) | dict(logits=logits)).items()))
    return nnx.merge(_graphdef(config), params)


def apply_fn(params: PyTree, probe, logits: str = "trilinear") -> jax.Array:
    """Logits ``(batch, num_classes)`` on probe tokens (for essential dynamics); ``logits``
    the 2-simplicial logits the model was trained with (``functools.partial`` it in)."""
    return as_model(params, logits)(jnp.asarray(probe))


@functools.partial(jax.jit, static_argnames="logits")
def _forward(params, tokens, logits="trilinear"):
    out, patterns, simplicial_patterns = as_model(params, logits)(tokens, return_patterns=True)
    return jax.nn.log_softmax(out), patterns, simplicial_patterns


def witness_attention(simplicial_patterns, examples: Examples, task: PairDifferenceTask):
    r"""How much 2-simplicial attention lands on the 2-simplices that decide the label:
    ``(blocks, heads)``, averaged over the positive ``examples``.

    A *witness triangle* is ``{0, j, k}``: the target's position and a pair with ``x_j -
    x_k ≡ t``. For each query ``i`` we sum ``A_{ijk}`` over the pairs ``(j, k)`` with
    ``{i, j, k}`` a witness triangle (three distinct positions) and take the largest sum
    over the queries. Uniform attention over the ``T²`` pairs gives ``2w/T²`` for ``w``
    unordered witness pairs ``{j, k}`` (0.056 per pair at ``T = 6``); for an odd modulus
    (``2t ≢ 0``) a pair witnesses in one order only, so ``w`` is also the number of ordered
    pairs that :meth:`PairDifferenceTask.witnesses` marks.
    """
    a = np.asarray(simplicial_patterns)  # (n, blocks, heads, T, T, T)
    w = task.witnesses(examples.tokens)
    pair = w | w.transpose(0, 2, 1)  # unordered witness pairs, positions >= 1
    length = a.shape[-1]
    target = np.zeros(length, bool)
    target[0] = True
    # query 0 (the target) with a witness pair (j, k); query i ≥ 1 with (0, k) or (k, 0)
    hit = np.zeros((len(w), length, length, length), bool)
    hit[:, 0] = pair
    hit[:, 1:, 0, :] = pair[:, 1:, :]
    hit[:, 1:, :, 0] = pair[:, 1:, :]
    mass = (a * hit[:, None, None]).sum((-2, -1)).max(-1)
    positive = examples.labels == 1
    return mass[positive].mean(0)


def metrics(params: PyTree, examples: Examples, task: PairDifferenceTask, logits="trilinear"):
    """``loss`` and ``accuracy`` on ``examples`` (host floats) and, for models with
    2-simplicial heads, ``witness`` (:func:`witness_attention`, ``(blocks, heads)``)."""
    logp, _, simplicial_patterns = _forward(params, jnp.asarray(examples.tokens), logits)
    logp = np.asarray(logp)
    labels = examples.labels
    out = {"loss": float(-logp[np.arange(len(labels)), labels].mean())}
    out["accuracy"] = float((logp.argmax(-1) == labels).mean())
    if simplicial_patterns is not None:
        out["witness"] = witness_attention(simplicial_patterns, examples, task)
    return out


def _model_config(architecture: str, config: dict) -> dict:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
    if architecture == "relational":
        if config.get("num_simplicial_heads", 0):
            raise ValueError("the relational architecture has no 2-simplicial heads.")
        config = config | dict(num_simplicial_heads=0)
    elif config.get("num_simplicial_heads", 1) < 1:
        raise ValueError("the simplicial architecture needs num_simplicial_heads >= 1.")
    return config


def train(
    architecture: str = "simplicial",
    num_steps: int = 3000,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    num_checkpoints: int = 12,
    *,
    checkpoint_steps: Sequence[int] | None = None,
    task: PairDifferenceTask | None = None,
    **config,
) -> tuple[SetTransformer, dict[str, Any]]:
    """Train a :class:`SetTransformer` with Adam on fresh examples of ``task`` (default
    :class:`PairDifferenceTask`) at every step; ``architecture="relational"`` has only
    1-simplicial heads, ``"simplicial"`` adds ``num_simplicial_heads`` (default 1)
    2-simplicial heads per block. ``config`` goes to :class:`SetTransformer` (the
    vocabulary is the task's).

    At the steps ``s`` of :func:`slt_jax.examples.checkpoint_schedule` ``(num_steps,
    num_checkpoints, checkpoint_steps)`` (``s = 0`` the initialisation) the parameters
    before step ``s`` are saved to ``checkpoint_dir`` (:func:`slt_jax.save_checkpoint`) and
    :func:`metrics` are taken on 1024 held-out examples. Returns ``(model, history)``,
    ``history[name]`` an array over those steps (``history["step"]``), and
    ``history["num_params"]``.
    """
    task = task or PairDifferenceTask()
    config = _model_config(architecture, config | dict(vocab_size=task.vocab_size))
    model = SetTransformer(**config, rngs=nnx.Rngs(seed))
    logits = config.get("logits", "trilinear")
    loss_fn, params = nnx_loss(model, classification_loss)
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    held_out = task.sample(1024, seed=_EVAL_SEED)
    rng, opt_state = np.random.default_rng([seed, 1]), optimizer.init(params)
    history: dict[str, list] = {"step": []}
    record = set(checkpoint_schedule(num_steps, num_checkpoints, checkpoint_steps))
    for s in range(num_steps + 1):
        if s in record:
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, s, params)
            history["step"].append(s)
            for name, value in metrics(params, held_out, task, logits).items():
                history.setdefault(name, []).append(value)
        if s < num_steps:
            batch = jax.tree.map(jnp.asarray, task.sample(batch_size, seed=rng).data())
            params, opt_state, _ = step(params, opt_state, batch)
    nnx.update(model, params)
    out: dict[str, Any] = {k: np.asarray(v) for k, v in history.items()}
    out["num_params"] = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    return model, out


def factory(
    architecture: str = "simplicial",
    n: int = 2048,
    seed: int = 0,
    *,
    task: PairDifferenceTask | None = None,
    **config,
) -> tuple[Any, tuple[np.ndarray, np.ndarray], PyTree]:
    """A model factory for the command line, e.g. ``--model
    slt_jax.models.simplicial:factory``: ``(loss_fn, data, like)`` with ``n`` examples of
    ``task`` (default :class:`PairDifferenceTask`, half positive, drawn with ``seed``), the
    mean cross-entropy, and the parameter template (of ``architecture``, ``config`` as in
    :func:`train`) that checkpoints are loaded into."""
    task = task or PairDifferenceTask()
    config = _model_config(architecture, config | dict(vocab_size=task.vocab_size))
    data = task.sample(n, seed=[seed, 2]).data()
    model = SetTransformer(**config, rngs=nnx.Rngs(seed))
    loss_fn, like = nnx_loss(model, classification_loss)
    return loss_fn, data, like
