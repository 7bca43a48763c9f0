"""The 2-simplicial Transformer (Clift et al. 2020): the attention layer against a loop
reference, its symmetries, the pair-difference task, training and checkpoints."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax.models import simplicial

# One set of shapes throughout, so that the parameter initialisers compile once.
D_MODEL, HEADS, D_HEAD = 16, 2, 8
TASK = simplicial.PairDifferenceTask(modulus=7, set_size=3)  # learnt in ~150 steps
TINY = dict(vocab_size=14, d_model=D_MODEL, d_head=D_HEAD, d_mlp=32, num_blocks=1)


def layer(logits="trilinear", seed=0):
    return simplicial.SimplicialAttention(
        D_MODEL, HEADS, D_HEAD, logits=logits, rngs=nnx.Rngs(seed)
    )


@functools.partial(nnx.jit, static_argnames="causal")
def call(module, x, context=None, mask=None, causal=False):
    """``module(x, context, mask=mask, causal=causal)``, compiled once per shape."""
    return module(x, context, mask=mask, causal=causal)


def inputs(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def reference(module, x, context, allowed):
    """The layer by loops over (b, h, i, j, k) in float64: its docstring's equations."""
    x, context = np.asarray(x, np.float64), np.asarray(context, np.float64)
    weights = np.asarray(module.query_keys[...], np.float64)
    w_value = np.asarray(module.value_map[...], np.float64)
    bilinear = np.asarray(module.bilinear[...], np.float64)
    batch, length, _ = x.shape
    size = context.shape[1]
    out = np.zeros((batch, length, D_MODEL))
    pattern = np.zeros((batch, HEADS, length, size, size))
    for b, h, i in itertools.product(range(batch), range(HEADS), range(length)):
        p = x[b, i] @ weights[:, 0, h]
        scores = np.full((size, size), -np.inf)
        for j, k in itertools.product(range(size), range(size)):
            if not (allowed[i, j] and allowed[i, k]):
                continue
            l1, l2 = context[b, j] @ weights[:, 1, h], context[b, k] @ weights[:, 2, h]
            if module.logits == "trilinear":
                scores[j, k] = sum(p[a] * l1[a] * l2[a] for a in range(D_HEAD)) / math.sqrt(D_HEAD)
            else:  # ‖(a·b)c − (a·c)b + (b·c)a‖ / d, the vector form
                vector = (p @ l1) * l2 - (p @ l2) * l1 + (l1 @ l2) * p
                scores[j, k] = np.sqrt(vector @ vector) / D_HEAD
        a = np.exp(scores - scores.max())
        a /= a.sum()
        pattern[b, h, i] = a
        for j, k in itertools.product(range(size), range(size)):
            uj, uk = context[b, j] @ w_value[:, h], context[b, k] @ w_value[:, h]
            out[b, i] += a[j, k] * np.einsum("a,b,abm->m", uj, uk, bilinear[h])
    return out, pattern


@pytest.mark.parametrize("logits", ["trilinear", "triple"])
def test_layer_equals_loop_reference(logits):
    module = layer(logits)
    x, context = inputs(2, 3, D_MODEL), inputs(2, 4, D_MODEL, seed=1)
    y, pattern = call(module, x, context)
    assert y.shape == (2, 3, D_MODEL) and pattern.shape == (2, HEADS, 3, 4, 4)
    expected_y, expected_pattern = reference(module, x, context, np.ones((3, 4), bool))
    np.testing.assert_allclose(pattern, expected_pattern, atol=1e-6)
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-5)
    # causal self-attention, and a key mask on top of it
    x = inputs(2, 4, D_MODEL, seed=2)
    y, pattern = call(module, x, causal=True)
    causal = np.tril(np.ones((4, 4), bool))
    expected_y, expected_pattern = reference(module, x, x, causal)
    np.testing.assert_allclose(pattern, expected_pattern, atol=1e-6)
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-5)
    keys = np.array([True, False, True, True])
    y, _ = call(module, x, mask=np.broadcast_to(keys, (4, 4)), causal=True)
    np.testing.assert_allclose(y, reference(module, x, x, causal & keys)[0], rtol=1e-4, atol=1e-5)
    y_1d, _ = call(module, x, mask=keys, causal=True)  # a 1-D mask applies to every query
    np.testing.assert_array_equal(y_1d, y)


@pytest.mark.parametrize("kind", ["simplicial", "dot"])
def test_query_with_no_key_attends_to_nothing(kind):
    """Causal attention with key 0 masked leaves query 0 no key: its pattern row and its
    update are exactly 0 (not a uniform average over masked keys); other rows unchanged."""
    if kind == "simplicial":
        module = layer()
    else:
        module = simplicial.DotProductAttention(D_MODEL, HEADS, D_HEAD, rngs=nnx.Rngs(1))
    x = inputs(2, 4, D_MODEL, seed=4)
    keys = np.array([False, True, True, True])
    y, pattern = call(module, x, mask=keys, causal=True)
    assert float(jnp.abs(pattern[:, :, 0]).max()) == 0.0
    assert float(jnp.abs(y[:, 0]).max()) == 0.0
    np.testing.assert_allclose(pattern[:, :, 1:].sum(tuple(range(3, pattern.ndim))), 1.0, atol=1e-6)
    # the other queries are the masked attention over their allowed keys
    full, full_pattern = call(
        module, x, mask=np.broadcast_to(keys, (4, 4)) | np.eye(4, dtype=bool), causal=True
    )
    allowed = np.tril(np.ones((4, 4), bool)) & keys
    if kind == "simplicial":
        expected_y, expected_pattern = reference(module, x, x, allowed | np.eye(4, dtype=bool))
        np.testing.assert_allclose(y[:, 1:], expected_y[:, 1:], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pattern[:, :, 1:], expected_pattern[:, :, 1:], atol=1e-6)
    np.testing.assert_allclose(y[:, 1:], full[:, 1:], atol=1e-6)
    np.testing.assert_allclose(pattern[:, :, 1:], full_pattern[:, :, 1:], atol=1e-7)


def test_triple_product_identity_and_bounds():
    """The paper's facts: ⟨a,b,c⟩ is symmetric, 0 for orthogonal, ‖a‖‖b‖‖c‖ if dependent."""
    a, b, c = (np.asarray(inputs(5, seed=s)) for s in range(3))

    def triple(a, b, c):
        return float(
            simplicial.triple_product_logits(*(jnp.asarray(v)[None] for v in (a, b, c)))[0, 0, 0]
        )

    value = triple(a, b, c) * 5
    for perm in itertools.permutations((a, b, c)):
        assert triple(*perm) * 5 == pytest.approx(value, rel=1e-5)
    vector = (a @ b) * c - (a @ c) * b + (b @ c) * a
    assert value == pytest.approx(np.linalg.norm(vector), rel=1e-5)
    norms = np.linalg.norm(a) * np.linalg.norm(b) * np.linalg.norm(c)
    assert 0 < value < norms
    assert triple(a, 2 * a, -a) * 5 == pytest.approx(2 * np.linalg.norm(a) ** 3, rel=1e-5)
    e = np.eye(5)
    assert triple(3 * e[0], e[1], 2 * e[2]) < 1e-6


@pytest.mark.parametrize("logits", ["trilinear", "triple"])
def test_permutations_and_key_swap(logits):
    module = layer(logits)
    x, context = inputs(2, 3, D_MODEL), inputs(2, 5, D_MODEL, seed=1)
    y, pattern = call(module, x, context)
    perm = np.array([3, 0, 4, 1, 2])
    y_keys, pattern_keys = call(module, x, context[:, perm])  # permuting the keys: same output
    np.testing.assert_allclose(y_keys, y, atol=1e-5)
    np.testing.assert_allclose(pattern_keys, pattern[..., perm, :][..., perm], atol=1e-6)
    y_self, pattern_self = call(module, context)
    y_perm, pattern_perm = call(module, context[:, perm])  # permuting every position permutes y
    np.testing.assert_allclose(y_perm, y_self[:, perm], atol=1e-5)
    expected = pattern_self[:, :, perm][..., perm, :][..., perm]
    np.testing.assert_allclose(pattern_perm, expected, atol=1e-6)
    # exchanging the two keys' maps and transposing B exchanges j and k: same output
    swapped = layer(logits)
    weights = module.query_keys[...]
    swapped.query_keys[...] = weights[:, jnp.array([0, 2, 1])]
    swapped.bilinear[...] = jnp.swapaxes(module.bilinear[...], 1, 2)
    y_swap, pattern_swap = call(swapped, x, context)
    np.testing.assert_allclose(y_swap, y, atol=1e-5)
    np.testing.assert_allclose(pattern_swap, jnp.swapaxes(pattern, -1, -2), atol=1e-6)


def test_causal_layers_and_dot_product_attention():
    rng = np.random.default_rng(3)
    x = inputs(2, 6, D_MODEL, seed=3)
    dot = simplicial.DotProductAttention(D_MODEL, HEADS, D_HEAD, rngs=nnx.Rngs(1))
    for module in (layer(), dot):
        base, _ = call(module, x, causal=True)
        for j in (2, 5):
            changed = x.at[:, j].set(jnp.asarray(rng.normal(size=(2, D_MODEL)), jnp.float32))
            out, _ = call(module, changed, causal=True)
            np.testing.assert_allclose(out[:, :j], base[:, :j], atol=1e-6)
            assert float(jnp.abs(out[:, j:] - base[:, j:]).max()) > 1e-4
    y, pattern = call(dot, x, causal=True)
    q, k, v = (np.einsum("btm,mhd->bhtd", x, dot.qkv[...][:, c]) for c in range(3))
    scores = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(D_HEAD)
    scores = np.where(np.tril(np.ones((6, 6), bool)), scores, -np.inf)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    np.testing.assert_allclose(pattern, a, atol=1e-6)
    expected = np.einsum("bhij,bhjd,hdm->bim", a, v, dot.out[...])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_models_shapes_invariance_and_config():
    # 1024 examples: the shape of train()'s held-out set, so its compiled forward is reused
    tokens = TASK.sample(1024, seed=0).tokens
    for heads in (0, HEADS):
        config = TINY | dict(num_simplicial_heads=heads)
        params = nnx.state(simplicial.SetTransformer(**config, rngs=nnx.Rngs(0)), nnx.Param)
        expected = dict(num_heads=2, num_classes=2, d_simplicial=D_HEAD if heads else None)
        assert simplicial.config_of(params) == config | expected
        # the model rebuilt from its parameters alone (as from a checkpoint)
        logp, patterns, two = simplicial._forward(params, tokens)
        assert logp.shape == (1024, 2) and patterns.shape == (1024, 1, 2, 4, 4)
        np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)
        if heads:
            assert two.shape == (1024, 1, HEADS, 4, 4, 4)
            np.testing.assert_allclose(two.sum((-2, -1)), 1.0, atol=1e-5)
        else:
            assert two is None
        perm = np.array([2, 0, 3, 1])  # the target token moves too: a set model
        np.testing.assert_allclose(simplicial._forward(params, tokens[:, perm])[0], logp, atol=1e-5)


def test_task_labels_balance_and_witnesses():
    task = simplicial.PairDifferenceTask(modulus=13, set_size=5)
    examples = task.sample(401, seed=0)
    tokens, labels = examples
    assert tokens.shape == (401, 6) and tokens.dtype == np.int32
    assert labels.sum() == 200  # half positive (the odd one out is negative)
    t, x = tokens[:, 0] - 13, tokens[:, 1:]
    assert ((t >= 1) & (t < 13)).all() and ((x >= 0) & (x < 13)).all()
    assert all(len(set(row)) == 5 for row in x)
    for row, label in zip(tokens, labels, strict=True):
        pairs = [
            (a, b) for a, b in itertools.permutations(row[1:], 2) if (a - b) % 13 == row[0] - 13
        ]
        assert label == int(bool(pairs))
    witnesses = task.witnesses(tokens)
    np.testing.assert_array_equal(witnesses.any((1, 2)), labels == 1)
    j, k = np.nonzero(witnesses[0])
    assert ((x[0, j - 1] - x[0, k - 1]) % 13 == t[0]).all()
    np.testing.assert_array_equal(task.sample(7, seed=3).tokens, task.sample(7, seed=3).tokens)
    # the witness-attention score: 1 on a witness triangle, 2w/T² for uniform attention
    positive = simplicial.Examples(tokens[labels == 1][:20], labels[labels == 1][:20])
    ideal = np.zeros((20, 1, 1, 6, 6, 6))
    for b in range(20):
        j, k = np.argwhere(task.witnesses(positive.tokens)[b])[0]
        ideal[b, 0, 0, 0, j, k] = 1.0
        ideal[b, 0, 0, 1:, 0, 0] = 1.0
    assert simplicial.witness_attention(ideal, positive, task)[0, 0] == 1.0
    uniform = np.full((20, 1, 1, 6, 6, 6), 1 / 36)
    w = task.witnesses(positive.tokens).sum((1, 2))
    score = simplicial.witness_attention(uniform, positive, task)[0, 0]
    assert score == pytest.approx(np.mean(2 * w / 36))


def test_factory_and_bad_arguments():
    small = {k: v for k, v in TINY.items() if k != "vocab_size"}
    loss_fn, (x, y), like = simplicial.factory("relational", n=64, task=TASK, **small)
    assert x.shape == (64, 4) and y.shape == (64,) and y.sum() == 32
    logits = simplicial.as_model(like)(jnp.asarray(x))  # the mean cross-entropy, by hand
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    expected = -logp[np.arange(64), y].mean()
    assert float(jax.jit(loss_fn)(like, (x, y))) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(simplicial.apply_fn(like, x), logits)
    assert simplicial.config_of(like)["num_simplicial_heads"] == 0
    _, _, like = simplicial.factory("simplicial", n=8, task=TASK, num_simplicial_heads=2, **small)
    assert simplicial.config_of(like)["num_simplicial_heads"] == 2
    assert simplicial.config_of(like)["d_simplicial"] == D_HEAD
    with pytest.raises(ValueError, match="architecture"):
        simplicial.factory("bogus")
    with pytest.raises(ValueError, match="2-simplicial"):
        simplicial.factory("relational", num_simplicial_heads=1)
    with pytest.raises(ValueError, match="logits"):
        simplicial.SimplicialAttention(8, logits="cosine", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no negative examples"):
        simplicial.PairDifferenceTask(modulus=7, set_size=4).sample(8)
    with pytest.raises(ValueError, match="num_examples"):
        TASK.sample(0)
    with pytest.raises(ValueError, match="too rare"):  # 19 of the 92378 9-sets are negative
        simplicial.PairDifferenceTask(modulus=19, set_size=9).sample(64)


def test_apply_fn_uses_the_models_logits():
    config = TINY | dict(num_simplicial_heads=1)
    params = nnx.state(simplicial.SetTransformer(**config, rngs=nnx.Rngs(0)), nnx.Param)
    tokens = TASK.sample(16, seed=1).tokens
    triple = simplicial.apply_fn(params, tokens, "triple")
    model = simplicial.SetTransformer(**config, logits="triple", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(triple, model(jnp.asarray(tokens)), atol=1e-6)
    trilinear = simplicial.apply_fn(params, tokens)
    assert float(jnp.abs(triple - trilinear).max()) > 1e-3


def test_training_learns_the_task_and_writes_checkpoints(tmp_path):
    config = {k: v for k, v in TINY.items() if k != "vocab_size"} | dict(num_simplicial_heads=2)
    model, history = simplicial.train(
        "simplicial", num_steps=150, batch_size=64, learning_rate=1e-2, task=TASK,
        checkpoint_dir=tmp_path, num_checkpoints=4, **config,
    )  # fmt: skip
    steps = history["step"]
    assert steps[0] == 0 and steps[-1] == 150 and len(steps) == 4
    assert abs(history["accuracy"][0] - 0.5) < 0.1  # balanced classes: chance is 1/2
    assert history["accuracy"][-1] > 0.8
    assert history["loss"][-1] < 0.5
    assert history["witness"].shape == (4, 1, HEADS)
    params = nnx.state(model, nnx.Param)
    assert history["num_params"] == sum(np.size(p) for p in jax.tree.leaves(params))
    _, data, like = simplicial.factory("simplicial", n=16, task=TASK, **config)
    checkpoints = sj.load_checkpoint_set(tmp_path, like=like)
    np.testing.assert_array_equal(checkpoints.steps, steps)
    last = jax.tree.map(lambda x: x[-1], checkpoints.params)
    forward = jax.jit(simplicial.apply_fn)
    np.testing.assert_allclose(forward(last, data[0]), forward(params, data[0]), atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")  # short chains
def test_llc_sweep_over_both_architectures(tmp_path):
    """The notebook's pipeline at small size: train both, sweep the LLC of every checkpoint."""
    config = {k: v for k, v in TINY.items() if k != "vocab_size"}
    for architecture in simplicial.ARCHITECTURES:
        directory = tmp_path / architecture
        simplicial.train(
            architecture, num_steps=300, batch_size=64, learning_rate=1e-2, task=TASK,
            checkpoint_dir=directory, num_checkpoints=4, **config,
        )  # fmt: skip
        loss_fn, data, like = simplicial.factory(architecture, n=512, task=TASK, **config)
        result = sj.estimate_llc_checkpoints(
            loss_fn, directory, data, like=like, num_chains=2, num_steps=100, batch_size=64,
            step_size=3e-5, localization=300.0, progress=False,
        )  # fmt: skip
        assert result.steps.tolist() == [0, 1, 17, 300]
        assert np.isfinite(result.llc_mean).all()
        assert result.llc_mean[-1] > 0  # trained to a minimum: a positive LLC
