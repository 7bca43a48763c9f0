r"""Memory-lean next-token cross-entropy: the output projection and the softmax taken
together, a chunk of tokens at a time, so that the ``(tokens, vocab)`` logits of a whole
minibatch are never held (Wijmans et al. 2024's "cut cross-entropy"; Hsu et al. 2024's
fused linear cross-entropy).

For final hidden states :math:`h_i \in \mathbb{R}^d`, an output matrix :math:`W \in
\mathbb{R}^{V \times d}`, targets :math:`y_i` and weights :math:`c_i`,

.. math::

    \ell_i = \log \sum_v e^{z_{iv}} - z_{i y_i}, \qquad z_i = W h_i, \qquad
    S = \sum_i c_i\, \ell_i,

and, with :math:`p_i = \mathrm{softmax}(z_i)` and :math:`e_{y}` the one-hot vector,

.. math::

    \partial S / \partial h_i = c_i\, W^\top (p_i - e_{y_i}), \qquad
    \partial S / \partial W = \sum_i c_i\, (p_i - e_{y_i})\, h_i^\top .

:func:`linear_cross_entropy` computes :math:`S`; under differentiation its forward pass
computes both gradients chunk by chunk as it goes (the same three matmuls per chunk as
autodiff's forward and backward passes, no recomputation) and keeps only them, ``(tokens,
d)`` and ``(V, d)``, for the backward pass, which scales them by the cotangent. Peak memory
for the logits is one chunk's, ``chunk × V`` floats, instead of several ``tokens × V``
arrays (logits, log-probabilities, their cotangent). It is reverse-mode only (a
``jax.custom_vjp``): no ``jax.jvp`` or ``jax.hessian`` through it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

#: Logit entries per chunk (float32: 64 MiB per chain): the chunk holds this many over
#: ``V`` tokens, at least one. Smaller chunks make the head's matmuls thin: on the Pythia-14m
#: shape (4 chains, batch 8, seq 128) 2**22 took 642 MiB of temporaries and 2**24 993 MiB
#: (whole logits: 2836 MiB), at times within the noise of a shared 2-core CPU.
CHUNK_ELEMENTS = 2**24


def chunk_tokens(num_tokens: int, vocab: int, chunk_size: int | None = None) -> int:
    """The tokens per chunk: ``chunk_size``, or :data:`CHUNK_ELEMENTS` // ``vocab``,
    at most ``num_tokens`` and at least 1."""
    size = chunk_size if chunk_size is not None else CHUNK_ELEMENTS // max(vocab, 1)
    return int(max(1, min(num_tokens, size)))


def _chunked(x, chunk: int, fill=0):
    """``x`` ``(N, ...)`` padded with ``fill`` to a multiple of ``chunk`` rows and reshaped
    to ``(N / chunk, chunk, ...)``."""
    pad = -x.shape[0] % chunk
    if pad:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
    return x.reshape(-1, chunk, *x.shape[1:])


def _logits(h, w):
    return jnp.matmul(h, w.T).astype(jnp.promote_types(w.dtype, jnp.float32))


def _token_nll(z, y):
    """``logsumexp(z) - z[y]`` per row (the target picked by a comparison, not a gather)."""
    hit = jnp.arange(z.shape[-1], dtype=jnp.int32) == y[:, None]
    return jax.nn.logsumexp(z, axis=-1) - jnp.sum(jnp.where(hit, z, 0.0), axis=-1)


def linear_token_nll(hidden, weight, targets, *, chunk_size: int | None = None) -> jax.Array:
    r"""Per-token next-token losses :math:`\ell_i` of hidden states ``(N, d)`` under the
    output matrix ``weight`` ``(V, d)``, a chunk of tokens at a time (differentiable by
    autodiff; for the gradient of a weighted sum use :func:`linear_cross_entropy`).

    Returns ``(N,)`` in float32 (or wider).

    Example:
      >>> h, w = jnp.zeros((3, 2)), jnp.zeros((4, 2))
      >>> [round(float(x), 4) for x in linear_token_nll(h, w, jnp.array([0, 1, 3]))]  # log 4
      [1.3863, 1.3863, 1.3863]
    """
    n = targets.shape[0]
    chunk = chunk_tokens(n, weight.shape[0], chunk_size)
    hs, ys = _chunked(hidden, chunk), _chunked(targets.astype(jnp.int32), chunk)
    out = jax.lax.map(lambda c: _token_nll(_logits(c[0], weight), c[1]), (hs, ys))
    return out.reshape(-1)[:n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _weighted_nll(hidden, weight, targets, weights, chunk):
    losses = linear_token_nll(hidden, weight, targets, chunk_size=chunk)
    return jnp.sum(weights.astype(losses.dtype) * losses)


def _weighted_nll_fwd(hidden, weight, targets, weights, chunk):
    n, vocab = targets.shape[0], weight.shape[0]
    wide = jnp.promote_types(weight.dtype, jnp.float32)
    hs = _chunked(hidden, chunk)
    ys = _chunked(targets.astype(jnp.int32), chunk)
    cs = _chunked(weights.astype(wide), chunk)

    def body(carry, part):
        total, grad_w = carry
        h, y, c = part
        z = _logits(h, weight)
        top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
        e = jnp.exp(z - top)  # one exp per logit serves the value and the gradient
        mass = jnp.sum(e, axis=-1, keepdims=True)
        hit = jnp.arange(vocab, dtype=jnp.int32) == y[:, None]
        lse = (top + jnp.log(mass))[:, 0]
        total = total + jnp.sum(c * (lse - jnp.sum(jnp.where(hit, z, 0.0), axis=-1)))
        dz = c[:, None] * (e / mass - hit.astype(z.dtype))
        grad_h = jnp.matmul(dz.astype(hidden.dtype), weight)
        grad_w = grad_w + jnp.matmul(dz.T, h.astype(wide))
        return (total, grad_w), grad_h

    init = (jnp.zeros((), wide), jnp.zeros(weight.shape, wide))
    (total, grad_w), grad_h = jax.lax.scan(body, init, (hs, ys, cs))
    grad_h = grad_h.reshape(-1, hidden.shape[-1])[:n]
    return total, (grad_h, grad_w.astype(weight.dtype))


def _weighted_nll_bwd(chunk, residuals, cotangent):
    grad_h, grad_w = residuals
    return (
        (cotangent * grad_h).astype(grad_h.dtype),
        (cotangent * grad_w).astype(grad_w.dtype),
        None,
        None,
    )


_weighted_nll.defvjp(_weighted_nll_fwd, _weighted_nll_bwd)


def linear_cross_entropy(
    hidden, weight, targets, weights, *, chunk_size: int | None = None
) -> jax.Array:
    r"""The weighted sum of next-token losses :math:`S = \sum_i c_i \ell_i` of hidden
    states under an output matrix, never holding more than one chunk of logits, in the
    forward pass or the backward one (see the module docstring for the math).

    Args:
      hidden: ``(N, d)`` final hidden states (after the last norm), any float type.
      weight: ``(V, d)`` output matrix (the tied embedding, or the head's weight).
      targets: ``(N,)`` integer target ids in ``[0, V)``.
      weights: ``(N,)`` weights :math:`c_i` (not differentiated: 0 drops a token).
      chunk_size: tokens per chunk (default: :func:`chunk_tokens`).
    Returns:
      A float32 (or wider) scalar. Its gradient (reverse mode) reaches ``hidden`` and
      ``weight``; ``jax.jvp`` through it is not defined.

    Example:
      >>> h, w = jnp.ones((4, 3)), jnp.eye(5, 3)
      >>> y, c = jnp.array([0, 1, 2, 4]), jnp.full(4, 0.25)
      >>> z = h @ w.T
      >>> direct = jnp.mean(jax.nn.logsumexp(z, -1) - z[jnp.arange(4), y])
      >>> bool(jnp.allclose(linear_cross_entropy(h, w, y, c, chunk_size=3), direct))
      True
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden (N, d) and weight (V, d) must share d; got {hidden.shape} and {weight.shape}."
        )
    if targets.shape != hidden.shape[:1] or weights.shape != hidden.shape[:1]:
        raise ValueError(
            f"targets {targets.shape} and weights {weights.shape} must be ({hidden.shape[0]},)."
        )
    chunk = chunk_tokens(hidden.shape[0], weight.shape[0], chunk_size)
    return _weighted_nll(hidden, weight, targets, weights, chunk)
