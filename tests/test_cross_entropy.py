"""The memory-lean cross-entropy (slt_jax._src.cross_entropy): the same value and gradients
as the direct computation through full logits, in float64 to rounding (so a wrong term
shows), for chunks that divide the tokens and chunks that do not; and the native models'
loss through it equal to the loss through their logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax._src import cross_entropy as ce


def _direct(h, w, y, c):
    z = h @ w.T
    return jnp.sum(c * (jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0]))


def _problem(n=11, d=5, v=7, seed=0):
    rng = np.random.default_rng(seed)
    h, w = rng.normal(size=(n, d)), rng.normal(size=(v, d))
    y = rng.integers(0, v, n)
    c = rng.uniform(size=n) * (rng.uniform(size=n) > 0.3)  # some tokens dropped
    return h, w, y, c


@pytest.mark.parametrize("chunk", [1, 4, 11, None])
def test_value_and_gradients_equal_the_direct_ones_in_float64(chunk):
    with jax.enable_x64(True):
        h, w, y, c = (jnp.asarray(a) for a in _problem())
        value, grads = jax.value_and_grad(ce.linear_cross_entropy, (0, 1))(
            h, w, y, c, chunk_size=chunk
        )
        expected, expected_grads = jax.value_and_grad(_direct, (0, 1))(h, w, y, c)
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        for got, want in zip(grads, expected_grads, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
        per_token = ce.linear_token_nll(h, w, y, chunk_size=chunk)
        np.testing.assert_allclose(jnp.sum(c * per_token), expected, rtol=1e-12)


def test_under_vmap_each_chain_gets_its_own_gradient():
    with jax.enable_x64(True):
        h, w, y, c = (jnp.asarray(a) for a in _problem())
        ws = jnp.stack([w, 2 * w, -w])
        got = jax.vmap(jax.grad(ce.linear_cross_entropy, 1), (None, 0, None, None))(h, ws, y, c)
        for k in range(3):
            np.testing.assert_allclose(got[k], jax.grad(_direct, 1)(h, ws[k], y, c), rtol=1e-10)


def test_shapes_are_checked():
    h, w, y, c = (jnp.asarray(a, jnp.float32) for a in _problem())
    with pytest.raises(ValueError, match="share d"):
        ce.linear_cross_entropy(h, w[:, :3], y.astype(int), c)
    with pytest.raises(ValueError, match="targets"):
        ce.linear_cross_entropy(h, w, y[:3].astype(int), c)


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "llama_tied"])
def test_native_model_loss_equals_the_loss_through_its_logits(kind):
    if kind.startswith("llama"):  # grouped-query attention, untied and tied heads
        config = sj.lm.LlamaConfig(
            vocab_size=61,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=9,
            tie_word_embeddings=kind == "llama_tied",
        )
        model = sj.lm.Llama(config, rngs=nnx.Rngs(1))
    elif kind == "gpt2":
        model = sj.lm.GPT2(
            sj.lm.GPT2Config(vocab_size=61, n_positions=9, n_embd=16, n_layer=1, n_head=2),
            rngs=nnx.Rngs(1),
        )
    else:
        config = sj.lm.GPTNeoXConfig(
            vocab_size=61,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=9,
        )
        model = sj.lm.GPTNeoX(config, rngs=nnx.Rngs(1))
    lean, params = sj.lm.next_token_loss(model)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def forward(p, ids, attention_mask=None):
        return nnx.merge(graphdef, p, rest)(ids, attention_mask=attention_mask)

    full, _ = sj.lm.next_token_loss(forward, params)
    ids = np.random.default_rng(0).integers(0, 61, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding: fewer counted targets
    for batch in (ids, {"input_ids": ids, "attention_mask": mask}):
        (a, ga), (b, gb) = (jax.value_and_grad(f)(params, batch) for f in (lean, full))
        # float32: the two sum the same terms in another order (rounding ~1e-7 relative)
        np.testing.assert_allclose(a, b, rtol=1e-5)
        for x, z in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
            np.testing.assert_allclose(x, z, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            lean.per_token(params, batch), full.per_token(params, batch), rtol=1e-5, atol=1e-6
        )
