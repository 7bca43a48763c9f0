r"""The next-token loss of a language model, and the export of per-token results.

Public as ``sj.lm``: :func:`next_token_loss` turns a model that maps token ids to logits
into the ``(loss_fn, params)`` pair every estimator takes; :func:`check_tokens` checks a
batch before anything is compiled. (The export of results, ``sj.lm.to_zarr`` and
``sj.lm.to_netcdf``, is ``_src/io/export.py``'s; the names here are kept for old imports.)

**The loss.** A batch holds ``B`` windows of ``T + 1`` token ids ``x_{b,0..T}`` (what
``sj.TokenWindows(tokens, seq_len=T + 1)`` yields), optionally with an attention mask
``m_{b,0..T}`` (1 = real token, 0 = padding, as Hugging Face data sets hold it). Position
``t`` predicts token ``t + 1`` from tokens ``≤ t``:

.. math::

    \ell_{b,t}(w) = -\log \mathrm{softmax}(f_w(x_{b,0..T-1}))_{t,\;x_{b,t+1}},
    \qquad t = 0, \dots, T-1,

and the target ``x_{b,t+1}`` counts iff ``m_{b,t+1} = 1`` (Hugging Face's ``labels = -100``
at padding). The batch loss is the mean over examples of each example's mean over its
counted targets,

.. math:: L_B(w) = \frac1B \sum_b \frac{\sum_t c_{b,t}\,\ell_{b,t}(w)}{\sum_t c_{b,t}},
    \qquad c_{b,t} = m_{b,t+1},

so ``L_n`` is a mean of per-example losses, as the minibatch estimators assume (each window
weighs the same, whatever its padding). devinterp 2.x (``devinterp.slt.lm_loss``,
arXiv:2410.02984's setting) stores the ``(batch, token_pos)`` losses of unpadded windows and
averages over both axes; without padding the two means are the same number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.cross_entropy import linear_cross_entropy, linear_token_nll

# The export moved to _src/io/export.py; these names stay for old imports.
from slt_jax._src.io.export import to_netcdf as to_netcdf  # noqa: F401
from slt_jax._src.io.export import to_zarr as to_zarr  # noqa: F401

PyTree = Any


def _is_abstract(x) -> bool:
    return isinstance(x, jax.core.Tracer | jax.ShapeDtypeStruct)


def _split_batch(batch) -> tuple[Any, Any]:
    """``(input_ids (B, T+1), attention_mask (B, T+1) or None)`` of a batch, checked
    (shapes and dtypes only: this runs while the loss is traced)."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError(
                f"a dict batch needs an 'input_ids' entry (and optionally 'attention_mask'); "
                f"got keys {sorted(batch)}."
            )
        ids, mask = batch["input_ids"], batch.get("attention_mask")
    else:
        ids, mask = batch, None
    if not hasattr(ids, "shape") or not hasattr(ids, "dtype"):
        ids = np.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"token ids must be an integer array, got dtype {ids.dtype}; pass the token "
            "windows themselves (e.g. sj.TokenWindows), not embeddings or one-hot vectors."
        )
    if len(ids.shape) != 2:
        raise ValueError(
            f"token ids must have shape (batch, T + 1), got {tuple(ids.shape)}; a data set of "
            "windows has one window per example (sj.TokenWindows(tokens, seq_len=T + 1))."
        )
    if ids.shape[1] < 2:
        raise ValueError(
            f"token windows of {ids.shape[1]} token(s) have no next token to predict; the "
            "next-token loss needs windows of at least 2 tokens (seq_len >= 2)."
        )
    if mask is not None:
        if not hasattr(mask, "shape"):
            mask = np.asarray(mask)
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)}, but input_ids has "
                f"{tuple(ids.shape)}; they must match (one mask entry per token)."
            )
    return ids, mask


def check_tokens(batch: PyTree, vocab_size: int | None) -> None:
    """Check a batch (or data set) of token windows by value, before anything is compiled.

    Raises ``ValueError`` on token ids outside ``[0, vocab_size)`` (naming the example and
    the position), an attention mask with entries other than 0 and 1, or an example whose
    every target is padding (its mean loss would be 0/0); ``TypeError``/``ValueError`` on the
    shape and dtype errors of :func:`next_token_loss`. Abstract (traced) batches are only
    checked for shape.

    Example:
      >>> import numpy as np, slt_jax as sj
      >>> sj.lm.check_tokens(np.array([[1, 2, 7]]), vocab_size=4)
      Traceback (most recent call last):
      ...
      ValueError: token id 7 at example 0, position 2 is outside the vocabulary [0, 4).
    """
    ids, mask = _split_batch(batch)
    if _is_abstract(ids) or (mask is not None and _is_abstract(mask)):
        return
    ids = np.asarray(ids)
    if vocab_size is not None:
        bad = (ids < 0) | (ids >= vocab_size)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(
                f"token id {int(ids[b, t])} at example {b}, position {t} is outside the "
                f"vocabulary [0, {vocab_size})."
            )
    if mask is None:
        return
    mask = np.asarray(mask)
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only.")
    empty = ~mask[:, 1:].astype(bool).any(axis=1)
    if empty.any():
        raise ValueError(
            f"example {int(np.argmax(empty))} has no counted target (its attention_mask is 0 "
            "at every position after the first), so its mean next-token loss is undefined; "
            "drop it from the data set."
        )


def _model_forward(model, eval_mode: bool):
    """``(forward(params, ids, mask), features, params, config vocab size)`` of an NNX
    module; ``features(params, ids, mask) -> (hidden (B, T, d), head (V, d))`` for a module
    with ``features`` and ``output_weight`` methods (the native models), else ``None``."""
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(params, input_ids, attention_mask=None):
        module = nnx.merge(graphdef, params, rest)
        if eval_mode:
            module.eval()
        if attention_mask is None:
            return module(input_ids)
        return module(input_ids, attention_mask=attention_mask)

    def features(params, input_ids, attention_mask=None):
        module = nnx.merge(graphdef, params, rest)
        if eval_mode:
            module.eval()
        if attention_mask is None:
            return module.features(input_ids), module.output_weight()
        return module.features(input_ids, attention_mask=attention_mask), module.output_weight()

    config = getattr(model, "config", None)
    vocab = config.get("vocab_size") if isinstance(config, Mapping) else None
    vocab = getattr(config, "vocab_size", vocab)
    split_head = all(callable(getattr(model, m, None)) for m in ("features", "output_weight"))
    return forward, features if split_head else None, params, vocab


def _is_nnx_module(obj) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(obj, nnx.Module)


def next_token_loss(
    model_or_forward,
    params: PyTree = None,
    *,
    vocab_size: int | None = None,
    eval_mode: bool = True,
) -> tuple[Callable, PyTree]:
    r"""``(loss_fn, params)``: the next-token cross-entropy of a language model.

    ``loss_fn(params, batch)`` is the mean over the batch's examples of each example's mean
    next-token loss over its counted targets (the module docstring has the math and how it
    relates to devinterp's mean over ``(batch, token_pos)``; without padding they agree).

    Args:
      model_or_forward: a Flax ``nnx.Module`` whose ``model(input_ids)`` (and
        ``model(input_ids, attention_mask=mask)`` when the batch has a mask) returns logits
        ``(B, T, V)``; the LLC is taken over its ``nnx.Param`` variables, the rest of its
        state is held fixed (as :func:`slt_jax.nnx_loss`). Or a pure function
        ``forward(params, input_ids, attention_mask=None) -> logits`` with its ``params``.
      params: the parameters of a pure ``forward`` (must be ``None`` for a module).
      vocab_size: the vocabulary size ``V``; default the module's ``config.vocab_size``,
        else the logits' last dimension. Token ids are checked against it before anything
        is compiled (in a host data source by the engine; in an in-memory batch by
        :func:`check_tokens`, which ``loss_fn`` runs on concrete arrays and
        ``sj.estimate_refined_llc`` runs on its data sets).
      eval_mode: evaluate a module in inference mode (``Module.eval()`` on the copy the loss
        builds; see :func:`slt_jax.nnx_loss`). Ignored for a pure function.

    A batch is an integer array of windows ``(B, T + 1)``, or a dict
    ``{"input_ids": (B, T + 1), "attention_mask": (B, T + 1)}`` (other entries are ignored;
    the model sees ``attention_mask[:, :-1]``, the mask of its ``T`` inputs).

    Returns:
      ``(loss_fn, params)``. ``loss_fn`` carries ``vocab_size``; ``per_token(params, batch)``,
      the ``(B, T)`` losses ``ℓ_{b,t}`` with 0 at targets that do not count;
      ``token_mask(batch)``, the ``(B, T)`` bool mask of counted targets; and
      ``check_tokens(batch)``, :func:`check_tokens` with this vocabulary.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, slt_jax as sj
      >>> forward = lambda w, ids, attention_mask=None: w["logits"][ids]  # a bigram model
      >>> loss_fn, w = sj.lm.next_token_loss(forward, {"logits": jnp.zeros((4, 4))})
      >>> batch = np.array([[0, 1, 2], [3, 2, 1]])
      >>> loss_fn.vocab_size, round(float(loss_fn(w, batch)), 4)  # log 4 for uniform logits
      (4, 1.3863)
      >>> loss_fn.per_token(w, batch).shape
      (2, 2)
    """
    if _is_nnx_module(model_or_forward):
        if params is not None:
            raise TypeError("pass params only with a pure forward function, not with a module.")
        forward, features, params, config_vocab = _model_forward(model_or_forward, eval_mode)
    elif callable(model_or_forward):
        if params is None:
            raise TypeError(
                "a pure forward function needs its params: next_token_loss(forward, params)."
            )
        forward, features, config_vocab = model_or_forward, None, None
    else:
        raise TypeError(
            f"model_or_forward must be an nnx.Module or a function forward(params, input_ids, "
            f"attention_mask=None), got {type(model_or_forward).__name__}."
        )
    vocab = vocab_size if vocab_size is not None else config_vocab
    if vocab is None:
        try:
            out = jax.eval_shape(forward, params, jax.ShapeDtypeStruct((1, 1), jnp.int32))
        except Exception as error:
            raise ValueError(
                f"could not infer the vocabulary size from the model's logits ({error}); "
                "pass vocab_size=."
            ) from error
        vocab = int(out.shape[-1])
    if isinstance(vocab, bool) or not isinstance(vocab, int | np.integer) or vocab < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab!r}.")
    vocab = int(vocab)

    def token_mask(batch) -> jax.Array:
        ids, mask = _split_batch(batch)
        if mask is None:
            return jnp.ones((ids.shape[0], ids.shape[1] - 1), bool)
        return jnp.asarray(mask)[:, 1:] != 0

    def split(params, batch):
        """``(inputs, targets, mask of the inputs or None)`` of a batch, checked."""
        ids, mask = _split_batch(batch)
        if not _is_abstract(ids):
            check_tokens(batch, vocab)
        ids = jnp.asarray(ids)
        return ids[:, :-1], ids[:, 1:], None if mask is None else jnp.asarray(mask)[:, :-1]

    def check_width(width):
        if width < vocab:
            raise ValueError(
                f"the model's logits have {width} entries, fewer than vocab_size "
                f"= {vocab}: token ids up to {vocab - 1} would have no logit."
            )

    def hidden_and_head(params, inputs, mask):
        """The final hidden states, flat ``(B·T, d)``, and the head ``(V, d)``."""
        kwargs = {} if mask is None else {"attention_mask": mask}
        hidden, head = features(params, inputs, **kwargs)
        b, t = inputs.shape
        if hidden.ndim != 3 or hidden.shape[:2] != (b, t) or head.ndim != 2:
            raise ValueError(
                f"the model's features {hidden.shape} and head {head.shape} do not fit inputs "
                f"of shape {(b, t)}; expected (batch, T, d) and (V, d)."
            )
        check_width(head.shape[0])
        return hidden.reshape(b * t, hidden.shape[-1]), head

    def per_token(params, batch) -> jax.Array:
        inputs, targets, mask = split(params, batch)
        b, t = inputs.shape
        if features is not None:
            hidden, head = hidden_and_head(params, inputs, mask)
            nll = linear_token_nll(hidden, head, targets.reshape(-1)).reshape(b, t)
            return jnp.where(token_mask(batch), nll, 0.0)
        kwargs = {} if mask is None else {"attention_mask": mask}
        logits = forward(params, inputs, **kwargs)
        if logits.ndim != 3 or logits.shape[:2] != (b, t):
            raise ValueError(
                f"the model returned logits of shape {logits.shape} for inputs of shape "
                f"{(b, t)}; expected (batch, T, vocab) = ({b}, {t}, V)."
            )
        check_width(logits.shape[-1])
        z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        # log-sum-exp minus the target's logit, picked by a comparison: its gradient is
        # softmax − one-hot, one elementwise pass (a gather's would be a scatter).
        hit = jnp.arange(z.shape[-1], dtype=jnp.int32) == targets[..., None].astype(jnp.int32)
        nll = jax.nn.logsumexp(z, axis=-1) - jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
        return jnp.where(token_mask(batch), nll, 0.0)

    def loss_fn(params, batch) -> jax.Array:
        counted = token_mask(batch)
        counts = jnp.sum(counted, axis=1)
        if features is not None:
            # Σ_b Σ_t c_bt ℓ_bt / (B · count_b): the head and the softmax in chunks
            # (slt_jax._src.cross_entropy), never the whole (B, T, V) logits.
            inputs, targets, mask = split(params, batch)
            hidden, head = hidden_and_head(params, inputs, mask)
            weights = counted / (counts.shape[0] * jnp.maximum(counts, 1))[:, None]
            return linear_cross_entropy(
                hidden, head, targets.reshape(-1), weights.reshape(-1).astype(jnp.float32)
            )
        losses = per_token(params, batch)
        # An example with no counted target is an error of check_tokens; inside a compiled
        # loop (where values cannot be checked) it contributes 0, never NaN.
        return jnp.mean(jnp.sum(losses, axis=1) / jnp.maximum(counts, 1))

    loss_fn.vocab_size = vocab
    loss_fn.per_token = per_token
    loss_fn.token_mask = token_mask
    loss_fn.check_tokens = lambda batch: check_tokens(batch, vocab)
    return loss_fn, params
