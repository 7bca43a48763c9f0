r"""A two-layer attention-only transformer on a synthetic language with bigram and induction
structure: the setting of Wang et al. 2024 (refined LLCs of attention heads) at laptop scale.

The model (Elhage et al. 2021's attention-only transformer) embeds tokens and positions and
adds, per layer, causal multi-head self-attention to the residual stream; there are no MLPs.
Each layer keeps its weights fused with an explicit head axis, so a head is a slice:

.. math::

    [q, k, v]_{t,h} = \mathrm{LN}(x_t)\, W_{QKV}[:, :, h],\qquad
    x_t \leftarrow x_t + \sum_h \sum_{s \le t} A^h_{ts}\, v_{s,h} W_O[h],\qquad
    A^h_{ts} = \mathrm{softmax}_s\bigl(q_{t,h} \cdot k_{s,h} / \sqrt{d_{head}}\bigr),

with ``W_QKV`` of shape ``(d_model, 3, H, d_head)`` and ``W_O`` of shape ``(H, d_head,
d_model)``. :func:`head_refinements` turns those slices into weight refinements for
:func:`slt_jax.estimate_refined_llc`.

The language (:class:`SyntheticLanguage`), a sparse random Markov chain in which a segment
of random tokens is repeated, grows a bigram circuit (embedding to unembedding) and an
induction circuit (Olsson et al. 2022): a previous-token head in layer 0 and heads in layer
1 that attend to the token after the earlier occurrence of the current one. :func:`metrics`
measures both. With the defaults, :func:`train` shows the induction transition between steps
600 and 1400 (the loss on repeated tokens falls from ~4 nats to ~0.5).

References:
  Wang, Hoogland, van Wingerden, Furman, Murfet (2024), "Differentiation and specialization
  of attention heads via the refined local learning coefficient", arXiv:2410.02984.
  Olsson et al. (2022), "In-context learning and induction heads", arXiv:2209.11895.
  Elhage et al. (2021), "A mathematical framework for transformer circuits".

Example (a few minutes on a laptop CPU)::

  model, history = attention.train(checkpoint_dir="runs/attention")
  params, (loss_fn, data, _) = nnx.state(model, nnx.Param), attention.factory()
  rllc = sj.estimate_refined_llc(loss_fn, params, data, attention.head_refinements(params))
"""

from __future__ import annotations

import dataclasses
import functools
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
_EVAL_SEED = 1_000_003  # the held-out sequences of `train`'s history, the same for every run


class AttentionLayer(nnx.Module):
    """Causal multi-head self-attention on the residual stream (pre-LayerNorm, no biases)."""

    def __init__(self, d_model, num_heads, d_head, *, layer_norm: bool, rngs: nnx.Rngs):
        normal = _init.normal  # the values of nnx.initializers.normal, compiled faster
        self.qkv = nnx.Param(normal(d_model**-0.5)(rngs.params(), (d_model, 3, num_heads, d_head)))
        self.out = nnx.Param(
            normal((num_heads * d_head) ** -0.5)(rngs.params(), (num_heads, d_head, d_model))
        )
        self.norm = nnx.LayerNorm(d_model, rngs=rngs) if layer_norm else None

    def __call__(self, x):
        """``(x + attention(x), pattern)``; ``pattern[b, h, t, s]`` is ``A^h_{ts}``."""
        h = x if self.norm is None else self.norm(x)
        q, k, v = jnp.einsum("btm,mchd->cbthd", h, self.qkv[...])
        scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
        length = x.shape[-2]
        causal = np.tril(np.ones((length, length), bool))
        pattern = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(scores.dtype).min), -1)
        z = jnp.einsum("bhts,bshd->bthd", pattern, v)
        return x + jnp.einsum("bthd,hdm->btm", z, self.out[...]), pattern


class AttentionOnlyTransformer(nnx.Module):
    """Token and learned positional embeddings, ``num_layers`` causal attention layers with
    residual connections (no MLPs), a final LayerNorm and an unembedding.

    ``model(tokens)`` maps int tokens ``(batch, T)`` (``T <= context_length``) to logits
    ``(batch, T, vocab_size)``; with ``return_patterns=True`` it returns ``(logits,
    patterns)``, ``patterns[b, layer, h, t, s]`` the attention of position ``t`` to ``s``.
    Parameter paths: ``embed``, ``pos_embed``, ``layers/{l}/qkv``, ``layers/{l}/out``,
    ``layers/{l}/norm/*``, ``final_norm/*``, ``unembed``.
    """

    def __init__(
        self,
        vocab_size: int = 64,
        d_model: int = 64,
        num_heads: int = 4,
        d_head: int = 16,
        context_length: int = 64,
        num_layers: int = 2,
        *,
        layer_norm: bool = True,
        rngs: nnx.Rngs,
    ):
        normal = _init.normal  # the values of nnx.initializers.normal, compiled faster
        self.embed = nnx.Param(normal(1.0)(rngs.params(), (vocab_size, d_model)))
        self.pos_embed = nnx.Param(normal(1.0)(rngs.params(), (context_length, d_model)))
        layer = functools.partial(AttentionLayer, d_model, num_heads, d_head, layer_norm=layer_norm)
        self.layers = nnx.List([layer(rngs=rngs) for _ in range(num_layers)])
        self.final_norm = nnx.LayerNorm(d_model, rngs=rngs) if layer_norm else None
        self.unembed = nnx.Param(normal(d_model**-0.5)(rngs.params(), (d_model, vocab_size)))

    def __call__(self, tokens, *, return_patterns: bool = False):
        x = self.embed[...][tokens] + self.pos_embed[...][: tokens.shape[-1]]
        patterns = []
        for layer in self.layers:
            x, pattern = layer(x)
            patterns.append(pattern)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = x @ self.unembed[...]
        return (logits, jnp.stack(patterns, axis=1)) if return_patterns else logits


def config_of(params: PyTree) -> dict[str, Any]:
    """The :class:`AttentionOnlyTransformer` keyword arguments that ``params`` (its
    ``nnx.State`` of ``nnx.Param``, e.g. a loaded checkpoint) belong to."""
    shapes = {
        refine.path_string(p): np.shape(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    config = dict(zip(("vocab_size", "d_model"), shapes["embed"], strict=True))
    config |= dict(zip(("num_heads", "d_head"), shapes["layers/0/qkv"][2:], strict=True))
    config |= dict(context_length=shapes["pos_embed"][0], layer_norm="final_norm/scale" in shapes)
    return config | dict(num_layers=sum(p.endswith("/qkv") for p in shapes))


@functools.lru_cache(maxsize=16)
def _graphdef(config: tuple):
    abstract = nnx.eval_shape(lambda: AttentionOnlyTransformer(**dict(config), rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def as_model(params: PyTree) -> AttentionOnlyTransformer:
    """The model with parameters ``params`` (works on traced values, inside ``jit``)."""
    return nnx.merge(_graphdef(tuple(sorted(config_of(params).items()))), params)


def apply_fn(params: PyTree, probe) -> jax.Array:
    """Logits ``(batch, T, vocab)`` on the probe tokens: the features of essential dynamics
    (:func:`slt_jax.dynamics.essential_dynamics`)."""
    return as_model(params)(jnp.asarray(probe))


def sequence_loss(logits, targets) -> jax.Array:
    r"""Per-example loss: ``ℓ(x) = -(1/T) Σ_t log softmax(logits_t)[x_{t+1}]``, shape (batch,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(-1)


class Sequences(NamedTuple):
    """Sampled sequences: ``tokens`` ``(N, T + 1)`` int32; sequence ``i`` copies tokens
    ``[copy_from[i], copy_from[i] + copy_length[i])`` to ``copy_to[i]`` onwards. The masks
    below are ``(N, T)``, aligned with the targets ``tokens[:, 1:]``."""

    tokens: np.ndarray
    copy_from: np.ndarray
    copy_to: np.ndarray
    copy_length: np.ndarray

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)``: the data set layout of :func:`slt_jax.nnx_loss`."""
        return self.tokens[:, :-1], self.tokens[:, 1:]

    def _in(self, start, stop):
        position = np.arange(1, self.tokens.shape[1])[None]  # the position of each target
        return (position >= start[:, None]) & (position < stop[:, None])

    def repeated(self) -> np.ndarray:
        """Copied tokens after the first of their segment (predictable by induction)."""
        return self._in(self.copy_to + 1, self.copy_to + self.copy_length)

    def first(self) -> np.ndarray:
        """The same tokens at their first occurrence (not predictable from the context)."""
        return self._in(self.copy_from + 1, self.copy_from + self.copy_length)

    def markov(self) -> np.ndarray:
        """Targets outside both segments: drawn from the chain given the previous token."""
        source = self._in(self.copy_from, self.copy_from + self.copy_length)
        return ~source & ~self._in(self.copy_to, self.copy_to + self.copy_length)


@dataclasses.dataclass(frozen=True)
class SyntheticLanguage:
    r"""A sparse random Markov chain with one repeated segment per sequence.

    Row ``a`` of the transition matrix ``P`` puts Dirichlet(``concentration``) weights on
    ``branching`` random successors (``seed`` fixes ``P``). A sequence of ``T + 1`` tokens
    starts uniformly and follows ``P``, but for a source segment of ``ℓ ~ U{min_copy, ...,
    max_copy}`` tokens (default: a quarter to half of ``T + 1``; shorter segments slow the
    induction circuit down) at a uniform ``i``, repeated at a uniform ``j ≥ i + ℓ``
    (``x_{j+k} = x_{i+k}``); after a segment the chain continues from its last token.

    With ``uniform_segment`` the source tokens are uniform, so a repeated token costs
    ``log V`` without an induction circuit and about 0 with one. Otherwise they follow the
    chain and a skip-trigram shortcut ("A … B … A → B" for B a successor of A in the
    context) predicts part of the copy without a previous-token head: in our runs of the
    default model (segments of 8 to 24 tokens) none had formed after 3000 steps.
    """

    vocab_size: int = 64
    branching: int = 8
    concentration: float = 1.0
    min_copy: int | None = None
    max_copy: int | None = None
    uniform_segment: bool = True
    seed: int = 0

    @functools.cached_property
    def transition(self) -> np.ndarray:
        """``P``, shape ``(vocab_size, vocab_size)``, rows summing to one."""
        rng = np.random.default_rng(self.seed)
        p = np.zeros((self.vocab_size, self.vocab_size))
        for row in p:
            successors = rng.choice(self.vocab_size, self.branching, replace=False)
            row[successors] = rng.dirichlet(np.full(self.branching, self.concentration))
        return p

    def sample(self, num_sequences: int, length: int = 65, *, seed=0) -> Sequences:
        """``num_sequences`` sequences of ``length`` tokens (``seed``: an int, a sequence
        of ints or a ``numpy.random.Generator``)."""
        low = max(2, length // 4) if self.min_copy is None else self.min_copy
        high = length // 2 if self.max_copy is None else self.max_copy
        if not 2 <= low <= high <= length // 2:
            raise ValueError(f"need 2 <= min_copy <= max_copy <= {length // 2}; got {self}.")
        rng = np.random.default_rng(seed)
        n, rows = num_sequences, np.arange(num_sequences)
        ell = rng.integers(low, high + 1, n)
        src = (rng.random(n) * (length - 2 * ell + 1)).astype(int)
        dst = src + ell + (rng.random(n) * (length - src - 2 * ell + 1)).astype(int)
        cumulative = np.cumsum(self.transition, axis=1)
        tokens = np.empty((n, length), np.int32)
        tokens[:, 0] = rng.integers(0, self.vocab_size, n)
        for t in range(1, length):
            u = rng.random(n)[:, None]
            fresh = np.minimum((cumulative[tokens[:, t - 1]] < u).sum(1), self.vocab_size - 1)
            if self.uniform_segment:
                uniform = rng.integers(0, self.vocab_size, n)
                fresh = np.where((t >= src) & (t < src + ell), uniform, fresh)
            copied = tokens[rows, np.clip(t - dst + src, 0, length - 1)]
            tokens[:, t] = np.where((t >= dst) & (t < dst + ell), copied, fresh)
        return Sequences(tokens, src, dst, ell)


def load_corpus(
    path: str | os.PathLike, context_length: int = 64, *, alphabet: str | None = None
) -> tuple[np.ndarray, str]:
    """A text file as character tokens: ``(tokens, alphabet)``, ``tokens`` of shape
    ``(N, context_length + 1)`` from consecutive non-overlapping windows, token ``i`` the
    character ``alphabet[i]`` (default: the file's sorted distinct characters)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    alphabet = "".join(sorted(set(text))) if alphabet is None else alphabet
    index = {c: i for i, c in enumerate(alphabet)}
    if missing := set(text) - set(index):
        raise ValueError(f"characters {sorted(missing)[:10]} of {path} are not in the alphabet.")
    ids = np.fromiter((index[c] for c in text), np.int32, len(text))
    window = context_length + 1
    if len(ids) < window:
        raise ValueError(f"{path} has {len(ids)} characters, fewer than one window ({window}).")
    return ids[: len(ids) // window * window].reshape(-1, window), alphabet


def head_refinements(
    params: PyTree, layers: Sequence[int] | None = None, *, embeddings: bool = False
) -> dict[str, PyTree]:
    """One weight refinement per attention head, ``{"L0H0": mask, ...}``: head ``h`` of
    layer ``l`` moves its slices ``qkv[:, :, h, :]`` and ``out[h]`` (``d_model·3·d_head +
    d_head·d_model`` coordinates; LayerNorms belong to no head), built with
    :func:`slt_jax.refine.head_masks`. With ``embeddings``, also ``"embed"`` (token and
    positional) and ``"unembed"``."""
    config = config_of(params)
    layers = range(config["num_layers"]) if layers is None else layers
    result = {}
    for layer in layers:
        weights = {f"layers/{layer}/qkv": -2, f"layers/{layer}/out": 0}
        result |= refine.head_masks(params, weights, config["num_heads"], prefix=f"L{layer}H")
    if embeddings:
        result["embed"] = refine.mask(params, ["embed", "pos_embed"], name="embed")
        result["unembed"] = refine.mask(params, "unembed", name="unembed")
    return result


def attention_scores(patterns, sequences: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """``(previous_token, induction)``, each ``(layers, heads)``, from ``patterns[b, l, h,
    t, s]`` (:class:`AttentionOnlyTransformer` with ``return_patterns=True``) on
    ``sequences``: the mean attention of position ``t`` to ``t - 1`` and, over the copied
    positions ``copy_to <= t < copy_to + copy_length - 1``, to the token after the earlier
    occurrence of the current one, ``t - (copy_to - copy_from) + 1``."""
    patterns = np.asarray(patterns)
    previous = np.diagonal(patterns, -1, -2, -1).mean((0, -1))
    start, length = sequences.copy_to[:, None], sequences.copy_length[:, None]
    query = np.arange(patterns.shape[-1])[None]
    key = np.clip(query - (start - sequences.copy_from[:, None]) + 1, 0, None)
    copied = (query >= start) & (query < start + length - 1)
    attention = np.take_along_axis(patterns, key[:, None, None, :, None], -1)[..., 0]
    return previous, (attention * copied[:, None, None]).sum((0, -1)) / copied.sum()


@jax.jit
def _forward(params, inputs):
    logits, patterns = as_model(params)(inputs, return_patterns=True)
    return jax.nn.log_softmax(logits), patterns


def metrics(params: PyTree, sequences: Sequences, language: SyntheticLanguage | None = None):
    r"""Behavioural metrics on ``sequences`` (host floats and ``(layers, heads)`` arrays).

    * ``loss``; ``repeated_loss`` and ``first_loss``, the loss on copied tokens and on the
      same tokens at their first occurrence, and ``induction_score = first_loss -
      repeated_loss`` (nats; > 0 once an induction circuit helps);
    * with ``language``: ``bigram_loss = -E_t Σ_b P(x_t, b) log q_t(b)`` over the
      Markov positions (outside the segments), its floor ``bigram_entropy = E_t H(P(x_t,
      ·))``, and ``bigram_recall``, the fraction of the model's ``branching`` most likely
      next tokens that are successors of ``x_t`` (not lowered by hedging for segments);
    * ``previous_token`` and ``induction``, ``(layers, heads)``: :func:`attention_scores`.
    """
    inputs, targets = sequences.data()
    logp, patterns = (np.asarray(a) for a in _forward(params, jnp.asarray(inputs)))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    repeated, first = sequences.repeated(), sequences.first()
    out = {"loss": float(nll.mean()), "repeated_loss": float(nll[repeated].mean())}
    out["first_loss"] = float(nll[first].mean())
    out["induction_score"] = out["first_loss"] - out["repeated_loss"]
    if language is not None:
        p = language.transition[inputs]
        where = sequences.markov()
        out["bigram_loss"] = float(-(p * logp).sum(-1)[where].mean())
        entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
        out["bigram_entropy"] = float(entropy[where].mean())
        top = np.argsort(-logp[where], -1)[:, : language.branching]
        out["bigram_recall"] = float((np.take_along_axis(p[where], top, -1) > 0).mean())
    out["previous_token"], out["induction"] = attention_scores(patterns, sequences)
    return out


def train(
    num_steps: int = 3000,
    batch_size: int = 32,
    learning_rate: float = 1e-2,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    num_checkpoints: int = 20,
    *,
    checkpoint_steps: Sequence[int] | None = None,
    language: SyntheticLanguage | None = None,
    **config,
) -> tuple[AttentionOnlyTransformer, dict[str, np.ndarray]]:
    """Train with Adam on freshly sampled sequences of ``language`` (default
    :class:`SyntheticLanguage` over the model's vocabulary); ``config`` goes to
    :class:`AttentionOnlyTransformer`.

    At log-spaced steps ``s`` (:func:`slt_jax.examples.log_spaced_steps`, ``s = 0`` the
    initialisation, ``s = num_steps`` the end) the parameters before step ``s`` are saved to
    ``checkpoint_dir`` (:func:`slt_jax.save_checkpoint`) and :func:`metrics` are taken on 512
    held-out sequences; ``checkpoint_steps`` replaces the log-spaced steps by your own (for
    example denser around a transition; the end is always included). Returns
    ``(model, history)``, ``history[name]`` an array over those steps (``history["step"]``).
    """
    model = AttentionOnlyTransformer(**config, rngs=nnx.Rngs(seed))
    vocab_size, length = model.embed.shape[0], model.pos_embed.shape[0] + 1
    language = language or SyntheticLanguage(vocab_size=vocab_size)
    loss_fn, params = nnx_loss(model, sequence_loss)
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    held_out = language.sample(512, length, seed=_EVAL_SEED)
    rng, opt_state = np.random.default_rng([seed, 1]), optimizer.init(params)
    history: dict[str, list] = {"step": []}
    record = set(checkpoint_schedule(num_steps, num_checkpoints, checkpoint_steps))
    for s in range(num_steps + 1):
        if s in record:
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, s, params)
            history["step"].append(s)
            for name, value in metrics(params, held_out, language).items():
                history.setdefault(name, []).append(value)
        if s < num_steps:
            batch = jax.tree.map(jnp.asarray, language.sample(batch_size, length, seed=rng).data())
            params, opt_state, _ = step(params, opt_state, batch)
    nnx.update(model, params)
    return model, {k: np.asarray(v) for k, v in history.items()}


def factory(
    n: int = 1024,
    seed: int = 0,
    *,
    language: SyntheticLanguage | None = None,
    corpus: str | os.PathLike | None = None,
    **config,
) -> tuple[Any, tuple[np.ndarray, np.ndarray], PyTree]:
    """A model factory for the command line, ``--model slt_jax.models.attention:factory``:
    ``(loss_fn, data, like)`` with ``n`` sequences of ``language`` (default: as in
    :func:`train`) or the first ``n`` windows of a character-level ``corpus`` file, the mean
    of :func:`sequence_loss`, and the parameter template that checkpoints are loaded into."""
    context = config.get("context_length", 64)
    if corpus is not None:
        tokens, alphabet = load_corpus(corpus, context)
        if config.setdefault("vocab_size", len(alphabet)) < len(alphabet):
            raise ValueError(f"vocab_size {config['vocab_size']} < {len(alphabet)} characters.")
        data = (tokens[:n, :-1], tokens[:n, 1:])
    else:
        language = language or SyntheticLanguage(vocab_size=config.get("vocab_size", 64))
        data = language.sample(n, context + 1, seed=seed).data()
    model = AttentionOnlyTransformer(**config, rngs=nnx.Rngs(seed))
    loss_fn, like = nnx_loss(model, sequence_loss)
    return loss_fn, data, like
