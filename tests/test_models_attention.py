"""The attention-only transformer of Wang et al. 2024 at laptop scale, its synthetic language,
head refinements, behavioural metrics and training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax.models import attention

# A setting where the induction circuit forms in a few hundred Adam steps on 2 CPU cores.
SMALL = dict(vocab_size=64, d_model=32, num_heads=2, d_head=16, context_length=32)
LANGUAGE = attention.SyntheticLanguage(vocab_size=64, branching=4, min_copy=10, max_copy=16)
forward = jax.jit(attention.apply_fn)


@pytest.fixture(scope="module")
def params():
    return nnx.state(attention.AttentionOnlyTransformer(**SMALL, rngs=nnx.Rngs(0)), nnx.Param)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("attention_checkpoints")
    model, history = attention.train(
        num_steps=800,
        batch_size=32,
        learning_rate=1e-2,
        checkpoint_dir=directory,
        num_checkpoints=6,
        language=LANGUAGE,
        **SMALL,
    )
    return model, history, directory


def test_shapes_patterns_and_config_round_trip(params):
    tokens = np.random.default_rng(0).integers(0, 64, (3, 32))
    logits, patterns = attention._forward(params, tokens)  # log-probabilities, patterns
    assert logits.shape == (3, 32, 64) and patterns.shape == (3, 2, 2, 32, 32)
    np.testing.assert_allclose(np.exp(logits).sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-5)
    assert float(jnp.abs(jnp.triu(patterns, 1)).max()) == 0.0  # no attention to the future
    assert attention.config_of(params) == SMALL | dict(num_layers=2, layer_norm=True)
    raw = forward(params, tokens)
    np.testing.assert_allclose(jax.nn.log_softmax(raw), logits, atol=1e-5)
    assert forward(params, tokens[:, :5]).shape == (3, 5, 64)  # shorter contexts are fine
    abstract = nnx.eval_shape(
        lambda: attention.AttentionOnlyTransformer(layer_norm=False, num_layers=3, rngs=nnx.Rngs(0))
    )
    bare = attention.as_model(nnx.state(abstract, nnx.Param))
    assert bare.final_norm is None and len(bare.layers) == 3


def test_causal(params):
    tokens = np.random.default_rng(1).integers(0, 64, (3, 32))
    base = np.asarray(forward(params, tokens))
    for j in (3, 17, 31):
        changed = tokens.copy()
        changed[:, j] = (changed[:, j] + 1) % 64
        out = np.asarray(forward(params, changed))
        np.testing.assert_array_equal(out[:, :j], base[:, :j])
        assert np.abs(out[:, j:] - base[:, j:]).max() > 1e-3  # later positions do see it


def test_head_refinements_partition_each_layer():
    config = dict(vocab_size=32, d_model=16, num_heads=4, d_head=4, context_length=16)
    abstract = nnx.eval_shape(
        lambda: attention.AttentionOnlyTransformer(**config, rngs=nnx.Rngs(0))
    )
    params = nnx.state(abstract, nnx.Param)  # shapes only: masks need no values
    refinements = attention.head_refinements(params)
    assert list(refinements) == [f"L{layer}H{h}" for layer in range(2) for h in range(4)]
    d, dh = config["d_model"], config["d_head"]
    paths = sj.refine.leaf_paths(params)
    for layer in range(2):
        total = None
        for h in range(4):
            mask = refinements[f"L{layer}H{h}"]
            assert sj.refine.num_selected(mask) == d * 3 * dh + dh * d
            leaves = dict(zip(paths, map(np.asarray, jax.tree.leaves(mask)), strict=True))
            expected = np.zeros((d, 3, 4, dh), bool)
            expected[:, :, h] = True
            np.testing.assert_array_equal(leaves[f"layers/{layer}/qkv"], expected)
            assert leaves[f"layers/{layer}/out"][h].all()
            assert sum(leaves[p].sum() for p in paths if not p.startswith(f"layers/{layer}/")) == 0
            counts = np.concatenate([leaves[f"layers/{layer}/{w}"].ravel() for w in ("qkv", "out")])
            total = counts.astype(int) if total is None else total + counts
        np.testing.assert_array_equal(total, 1)  # the heads of a layer partition its weights
    only = attention.head_refinements(params, layers=[1], embeddings=True)
    assert list(only) == ["L1H0", "L1H1", "L1H2", "L1H3", "embed", "unembed"]
    assert sj.refine.num_selected(only["embed"]) == (32 + 16) * d
    assert sj.refine.num_selected(only["unembed"]) == d * 32


def test_language_copies_segments_and_follows_the_chain():
    language = attention.SyntheticLanguage(vocab_size=16, branching=3, min_copy=4, max_copy=8)
    p = language.transition
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert ((p > 0).sum(1) == 3).all()
    seqs = language.sample(4000, 33, seed=0)
    assert seqs.tokens.shape == (4000, 33) and seqs.tokens.dtype == np.int32
    again = language.sample(5, 33, seed=0).tokens
    np.testing.assert_array_equal(language.sample(5, 33, seed=0).tokens, again)
    assert (language.sample(5, 33, seed=1).tokens != again).any()
    start, to, ell = seqs.copy_from, seqs.copy_to, seqs.copy_length
    assert ((ell >= 4) & (ell <= 8) & (start + ell <= to) & (to + ell <= 33)).all()
    for i in range(0, 4000, 37):
        a, b, n = start[i], to[i], ell[i]
        np.testing.assert_array_equal(seqs.tokens[i, b : b + n], seqs.tokens[i, a : a + n])
    assert seqs.repeated().sum() == (ell - 1).sum() == seqs.first().sum()
    prev, nxt = seqs.tokens[:, :-1], seqs.tokens[:, 1:]
    markov = seqs.markov()
    counts = np.zeros((16, 16))
    np.add.at(counts, (prev[markov], nxt[markov]), 1)
    assert counts[p == 0].sum() == 0  # every Markov transition is one the chain allows
    rows = counts.sum(1, keepdims=True)
    stderr = np.sqrt(p * (1 - p) / rows)
    assert (np.abs(counts / rows - p) < 5 * stderr + 1e-9).all()
    jumps = ~markov  # into the copied segment and inside the uniform source segment
    assert (p[prev[jumps], nxt[jumps]] == 0).mean() > 0.5


def test_attention_scores_on_ideal_patterns():
    seqs = LANGUAGE.sample(64, 33, seed=3)
    t = 32
    previous = np.zeros((64, 1, 1, t, t))
    previous[..., 0, 0] = 1.0
    previous[..., np.arange(1, t), np.arange(t - 1)] = 1.0
    induction = previous.copy()
    for i in range(64):
        shift = seqs.copy_to[i] - seqs.copy_from[i]
        for q in range(seqs.copy_to[i], seqs.copy_to[i] + seqs.copy_length[i] - 1):
            induction[i, 0, 0, q] = 0.0
            induction[i, 0, 0, q, q - shift + 1] = 1.0
    prev_score, ind_score = attention.attention_scores(previous, seqs)
    assert prev_score[0, 0] == 1.0 and ind_score[0, 0] == 0.0
    prev_score, ind_score = attention.attention_scores(induction, seqs)
    assert prev_score[0, 0] < 0.9 and ind_score[0, 0] == 1.0


def test_corpus_and_factory(tmp_path, params):
    path = tmp_path / "text.txt"
    text = "the cat sat on the mat. " * 40
    path.write_text(text)
    tokens, alphabet = attention.load_corpus(path, context_length=32)
    assert tokens.shape == (len(text) // 33, 33)
    assert "".join(alphabet[i] for i in tokens[1]) == text[33:66]
    with pytest.raises(ValueError, match="alphabet"):
        attention.load_corpus(path, 32, alphabet="abc")
    loss_fn, (x, y), like = attention.factory(n=8, corpus=str(path), **SMALL)
    np.testing.assert_array_equal(x, tokens[:8, :-1])
    np.testing.assert_array_equal(y, tokens[:8, 1:])
    with pytest.raises(ValueError, match="vocab_size"):
        attention.factory(n=8, corpus=str(path), context_length=32, vocab_size=4)
    loss_fn, data, like = attention.factory(n=16, **SMALL)
    assert data[0].shape == data[1].shape == (16, 32)
    np.testing.assert_array_equal(data[0][:, 1:], data[1][:, :-1])
    assert abs(float(jax.jit(loss_fn)(like, data)) - math.log(64)) < 1.0
    assert sj.refine.leaf_paths(like) == sj.refine.leaf_paths(params)


def test_training_grows_bigram_and_induction_circuits(trained):
    model, history, directory = trained
    steps, score = history["step"], history["induction_score"]
    assert steps[0] == 0 and steps[-1] == 800
    assert history["loss"][0] > 0.9 * math.log(64)
    assert abs(score[0]) < 0.1  # at initialisation copies are as hard as first occurrences
    assert history["bigram_recall"][0] < 0.15  # chance: branching / V = 1/16
    assert history["bigram_recall"][-1] > 0.35  # the likeliest next tokens follow the chain
    assert history["bigram_loss"][-1] < history["bigram_loss"][0] - 1.0
    assert history["loss"][-1] < 0.8 * math.log(64)
    assert score[-1] > 1.0  # copies are now much easier than first occurrences
    assert history["repeated_loss"][-1] < history["first_loss"][-1] - 1.0
    # the circuit: a previous-token head in layer 0, an induction head in layer 1
    assert history["previous_token"][-1][0].max() > 3 * history["previous_token"][0][0].max()
    assert history["induction"][-1][1].max() > 5 * history["induction"][0][1].max()
    params = nnx.state(model, nnx.Param)
    checkpoints = sj.load_checkpoint_set(directory, like=params)
    np.testing.assert_array_equal(checkpoints.steps, steps)
    last = jax.tree.map(lambda x: x[-1], checkpoints.params)
    probe = LANGUAGE.sample(3, 33, seed=9).data()[0]
    np.testing.assert_allclose(forward(last, probe), forward(params, probe), atol=1e-5)


@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")  # 40 steps: a smoke test
def test_refined_llc_of_every_head(trained):
    model, _, _ = trained
    params = nnx.state(model, nnx.Param)
    data = LANGUAGE.sample(256, 33, seed=7).data()
    loss_fn, _ = sj.nnx_loss(model, attention.sequence_loss)
    result = sj.estimate_refined_llc(
        loss_fn,
        params,
        data,
        attention.head_refinements(params),
        num_chains=2,
        num_steps=40,
        step_size=1e-4,
        batch_size=64,
    )
    assert list(result) == ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert set(result.num_selected.values()) == {32 * 3 * 16 + 16 * 32}
    assert all(np.isfinite(v) for v in result.llc_mean.values())
