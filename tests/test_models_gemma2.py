"""The native Gemma 2 against transformers' ``Gemma2ForCausalLM`` (eager attention): the same
logits from the same directory at a length longer than the sliding window, each of Gemma 2's
departures from Llama shown to matter, directories transformers loads back, the next-token
loss equal to transformers' own, its head layout, and clear errors for bad configs. Tiny
random models; nothing from a hub."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import lm_fixtures as fx
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import slt_jax as sj
from slt_jax.models import gemma2

TOL = 1e-4
transformers.logging.disable_progress_bar()
# head_dim 16 != hidden / heads, a scalar 12 != head_dim, a window of 5 < 16 positions, caps
# small enough that the tanh bends the perturbed model's scores and logits.
GEMMA2 = dict(
    vocab_size=fx.VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=fx.LENGTH,
    sliding_window=5,
    query_pre_attn_scalar=12,
    final_logit_softcapping=3.0,
    attn_logit_softcapping=2.0,
)
CASES = {
    "tied": {},
    "untied-biases-global-first": dict(
        tie_word_embeddings=False,
        attention_bias=True,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
    ),
}


def _torch_gemma2(seed: int = 0, **overrides):
    config = transformers.Gemma2Config(
        **(GEMMA2 | dict(bos_token_id=0, eos_token_id=0, pad_token_id=0) | overrides),
        attn_implementation="eager",
    )
    return fx.perturb(transformers.Gemma2ForCausalLM(config), seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma2")
    return {c: (m := _torch_gemma2(**o), fx.save(m, root / c)) for c, o in CASES.items()}


def _max_diff(ours, ref, mask=None) -> float:
    keep = np.ones(ref.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    return float(np.abs(np.asarray(ours) - ref)[keep].max())


@pytest.mark.parametrize("case", list(CASES))
def test_gemma2_logits_match_transformers(saved, case):
    torch_model, path = saved[case]
    model = sj.lm.load_model(path)
    assert type(model) is gemma2.Gemma2
    assert model.config.layer_types == tuple(torch_model.config.layer_types)
    ids, mask = fx.tokens()
    assert fx.LENGTH > model.config.sliding_window  # the window cuts off earlier keys
    ref = fx.torch_logits(torch_model, ids)
    assert 1.0 < np.abs(ref).max() < GEMMA2["final_logit_softcapping"]
    logits = model(jnp.asarray(ids))
    assert logits.shape == (3, fx.LENGTH, fx.VOCAB) and logits.dtype == jnp.float32
    plain = _max_diff(logits, ref)
    padded = _max_diff(model(ids, mask), fx.torch_logits(torch_model, ids, mask), mask)
    print(f"\ngemma2 {case}: max |Δlogits| {plain:.2e} without mask, {padded:.2e} with padding")
    assert plain < TOL and padded < TOL


def _with_config(model, **changes):
    other = gemma2.Gemma2(dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(model, nnx.Param))
    return other


@pytest.mark.parametrize(
    "change",
    [
        dict(sliding_window=None),
        dict(layer_types=("full_attention", "sliding_attention", "full_attention")),
        dict(attn_logit_softcapping=None),
        dict(final_logit_softcapping=None),
        dict(query_pre_attn_scalar=16),
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_gemma2_detail_matters(saved, change):
    """The comparison would catch a model that ignored any of these settings."""
    torch_model, path = saved["tied"]
    ids, _ = fx.tokens()
    wrong = _max_diff(
        _with_config(sj.lm.load_model(path), **change)(ids), fx.torch_logits(torch_model, ids)
    )
    print(f"\ngemma2 with {change}: max |Δlogits| {wrong:.2e}")
    assert wrong > 100 * TOL


def test_gemma2_saves_as_transformers_loads_it(saved, tmp_path):
    ids, mask = fx.tokens(1)
    model = sj.lm.load_model(saved["untied-biases-global-first"][1])
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        sj.lm.save_model(model, tmp_path / "copy"),
        output_loading_info=True,
        attn_implementation="eager",
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(back) is transformers.Gemma2ForCausalLM
    assert _max_diff(model(ids, mask), fx.torch_logits(back.eval(), ids, mask), mask) < TOL
    again = sj.lm.load_model(tmp_path / "copy")
    assert again.config == model.config
    np.testing.assert_array_equal(again(ids), model(ids))
    # A new native model (random init, RMSNorm weights 0, tied head), and its config.
    config = gemma2.Gemma2Config(**GEMMA2)
    assert gemma2.Gemma2Config.from_dict(config.to_dict()) == config
    new = gemma2.Gemma2(config, rngs=nnx.Rngs(3))
    back = transformers.AutoModelForCausalLM.from_pretrained(
        sj.lm.save_model(new, tmp_path / "new"), attn_implementation="eager"
    )
    assert _max_diff(new(ids), fx.torch_logits(back.eval(), ids)) < TOL


def test_gemma2_next_token_loss_is_transformers_loss(saved):
    """``sj.lm.next_token_loss`` (through the soft-capped logits) equals transformers' mean
    next-token cross-entropy (no padding: the mean over examples of per-example means is the
    mean over all tokens), and its gradient reaches every parameter."""
    torch_model, path = saved["untied-biases-global-first"]
    model = sj.lm.load_model(path)
    windows, _ = fx.tokens(4, batch=4)
    loss_fn, params = sj.lm.next_token_loss(model)
    with torch.no_grad():
        ids = torch.as_tensor(windows).long()
        ref = float(torch_model(ids, labels=ids).loss)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, jnp.asarray(windows))
    print(f"\ngemma2 next-token loss {float(loss):.6f}, transformers {ref:.6f}")
    assert abs(float(loss) - ref) < 1e-5
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_gemma2_head_layout(saved):
    model = sj.lm.load_model(saved["tied"][1])
    layout = sj.lm.layout(model)
    assert layout == sj.refine.Layout("llama", num_heads=4, num_kv_heads=2, num_layers=3)
    params = nnx.state(model, nnx.Param)
    mask = sj.refine.components(params, ["l1h3"], layout)["l1h3"]
    chosen = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(getattr(mask, "mask", mask)))
    d, dh = 32, 16  # q rows and o columns of head 3, k and v rows of its group 1
    assert chosen == 4 * d * dh


def test_gemma2_bad_configs():
    with pytest.raises(ValueError, match="layer_types must list 3 entries"):
        gemma2.Gemma2Config(**GEMMA2 | dict(layer_types=("full_attention",)))
    with pytest.raises(ValueError, match="layer_types must list"):
        gemma2.Gemma2Config(**GEMMA2 | dict(layer_types=("local",) * 3))
    with pytest.raises(ValueError, match="num_key_value_heads=3 does not divide"):
        gemma2.Gemma2Config(**GEMMA2 | dict(num_key_value_heads=3))
    with pytest.raises(ValueError, match="attn_logit_softcapping must be positive or None"):
        gemma2.Gemma2Config(**GEMMA2 | dict(attn_logit_softcapping=0.0))
    with pytest.raises(ValueError, match="bidirectional attention"):
        gemma2.Gemma2Config.from_dict({"model_type": "gemma2", "use_bidirectional_attention": 1})
    with pytest.raises(ValueError, match="model_type 'llama'; Gemma2Config reads 'gemma2'"):
        gemma2.Gemma2Config.from_dict({"model_type": "llama"})
    with pytest.raises(ValueError, match="rotary scaling 'yarn' is not supported"):
        gemma2.Gemma2Config.from_dict(
            {"model_type": "gemma2", "rope_parameters": {"rope_type": "yarn"}}
        )
    with pytest.raises(TypeError, match="config must be a Gemma2Config"):
        gemma2.Gemma2(sj.lm.LlamaConfig(), rngs=nnx.Rngs(0))
