"""The native GPT-2, GPT-NeoX and Llama-family (Llama, Mistral, Qwen2) models against
transformers' own: the same logits from the
same checkpoint directories (single file, sharded, bf16/fp16, checkpoint sets), directories
that transformers loads back, parameter names that are the state dict's, and clear errors
for every bad input. Tiny models with random weights; nothing from a hub."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import jax
import jax.numpy as jnp
import lm_fixtures as fx
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

import slt_jax as sj
from slt_jax._src import families
from slt_jax._src.io import hf
from slt_jax._src.validation import path_string
from slt_jax.models import gpt2, gpt_neox, hf_lm, llama

TOL = 1e-4
transformers.logging.disable_progress_bar()
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,  # < 16 positions: the scaling matters here
}
CASES = {
    "gpt2": ("gpt2", {}),  # tied head, gelu_new
    "gpt2-untied-relu": ("gpt2", dict(tie_word_embeddings=False, activation_function="relu")),
    "gpt2-gelu-inner": (
        "gpt2",
        dict(activation_function="gelu", n_inner=48, scale_attn_by_inverse_layer_idx=True),
    ),
    "neox-parallel": ("neox", dict(rotary_pct=0.25)),  # as Pythia
    "neox-sequential": ("neox", dict(rotary_pct=0.5, use_parallel_residual=False)),
    "neox-tied-no-bias": (
        "neox",
        dict(rotary_pct=1.0, tie_word_embeddings=True, attention_bias=False, hidden_act="relu"),
    ),
    "llama": ("llama", {}),  # 4 query heads, 2 key/value heads (GQA)
    "llama3-biases-tied": (  # Llama 3.1's rotary scaling, biases on attention and MLP
        "llama",
        dict(
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
            rope_parameters=LLAMA3_ROPE,
        ),
    ),
    "qwen2": ("qwen2", {}),  # Llama with q/k/v biases
    "mistral-window": ("mistral", dict(sliding_window=5, num_key_value_heads=1)),
}
LLAMAS = [case for case, (family, _) in CASES.items() if family in ("llama", "qwen2", "mistral")]


def _build(case: str, seed: int = 0):
    family, overrides = CASES[case]
    if family in ("llama", "qwen2", "mistral"):
        return fx.llama(seed, family, **overrides)
    return (fx.gpt2 if family == "gpt2" else fx.neox)(seed, **overrides)


def _native(case: str) -> type:
    """The native class of a case, as its family record names it."""
    return families.native(families.family(_build_type(case)))[0]


def _build_type(case: str) -> str:
    family = CASES[case][0]
    return {"neox": "gpt_neox"}.get(family, family)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{case: (torch model, its save_pretrained directory)}``, built once."""
    root = tmp_path_factory.mktemp("hf")
    return {case: (m := _build(case), fx.save(m, root / case)) for case in CASES}


def _max_diff(ours, ref, mask=None) -> float:
    keep = np.ones(ref.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    return float(np.abs(np.asarray(ours) - ref)[keep].max())


def _params(model) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {path_string(p): np.asarray(x) for p, x in flat}


# --- the same function as transformers -------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(saved, case):
    torch_model, path = saved[case]
    model = sj_model = hf_lm.load_model(path)
    assert type(sj_model) is _native(case)
    assert type(sj_model) is {"gpt2": gpt2.GPT2, "neox": gpt_neox.GPTNeoX}.get(
        CASES[case][0], llama.Llama
    )
    ids, mask = fx.tokens()
    ref = fx.torch_logits(torch_model, ids)
    assert np.abs(ref).max() > 1.0  # the perturbed weights make the comparison mean something
    logits = model(jnp.asarray(ids))
    assert logits.shape == (3, fx.LENGTH, fx.VOCAB) and logits.dtype == jnp.float32
    plain = _max_diff(logits, ref)
    # HF's logits at padded positions differ (a fully masked row); compare the others.
    padded = _max_diff(model(ids, mask), fx.torch_logits(torch_model, ids, mask), mask)
    print(f"\n{case}: max |Δlogits| {plain:.2e} without mask, {padded:.2e} with padding")
    assert plain < TOL and padded < TOL
    if case == "neox-parallel":  # fewer positions than the model has (a compilation each)
        shorter = model(ids[:, :7])
        np.testing.assert_allclose(shorter, fx.torch_logits(torch_model, ids[:, :7]), atol=TOL)


@pytest.mark.parametrize("case", list(CASES))
def test_parameter_names_and_layouts_are_the_state_dicts(saved, case):
    torch_model, path = saved[case]
    params = _params(hf_lm.load_model(path))
    prefix = families.family(_build_type(case)).prefix
    tied = torch_model.config.tie_word_embeddings
    expected = {}
    for key, tensor in torch_model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue  # the tied head is the input embedding
        if key == "lm_head.weight" and case.startswith("neox"):
            key = "embed_out.weight"  # transformers 5's name in memory; files say embed_out
        expected[key.removeprefix(prefix).replace(".", "/")] = tensor.numpy()
    assert set(params) == set(expected)
    for name, x in params.items():  # HF's own layout: no transposes
        np.testing.assert_array_equal(x, expected[name], err_msg=name)
        assert x.dtype == np.float32
    everything = nnx.state(hf_lm.load_model(path))  # no state but the parameters
    assert len(jax.tree.leaves(everything)) == len(params)


def test_sharded_and_half_precision_directories_load_the_same(saved, tmp_path):
    torch_model, path = saved["neox-parallel"]
    ids, _ = fx.tokens()
    ref = _params(hf_lm.load_model(path))
    fx.save(torch_model, tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / hf.INDEX).is_file()
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    sharded = _params(hf_lm.load_model(tmp_path / "sharded"))
    assert sharded.keys() == ref.keys()
    assert all(np.array_equal(sharded[k], ref[k]) for k in ref)
    for dtype in (torch.bfloat16, torch.float16):  # widened to float32, exactly
        half = _build("neox-parallel").to(dtype)
        loaded = _params(hf_lm.load_model(fx.save(half, tmp_path / str(dtype))))
        for key, tensor in half.state_dict().items():
            name = key.removeprefix("gpt_neox.").replace(".", "/").replace("lm_head", "embed_out")
            np.testing.assert_array_equal(loaded[name], tensor.float().numpy(), err_msg=name)
            assert loaded[name].dtype == np.float32


# --- writing directories that transformers loads ---------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "gpt2",
        "gpt2-untied-relu",
        "neox-sequential",
        "neox-tied-no-bias",
        "llama3-biases-tied",
        "qwen2",
        "mistral-window",
    ],
)
def test_save_model_round_trips_through_transformers(saved, tmp_path, case):
    ids, mask = fx.tokens(1)
    model = hf_lm.load_model(saved[case][1])
    shards = 30_000 if case == "neox-sequential" else None
    hf_lm.save_model(model, tmp_path / "ours", max_shard_bytes=shards)
    assert (tmp_path / "ours" / hf.INDEX).is_file() == (shards is not None)
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    back.eval()
    assert type(back) is type(saved[case][0])
    diff = _max_diff(model(ids, mask), fx.torch_logits(back, ids, mask), mask)
    print(f"\n{case}: saved, loaded by transformers: max |Δlogits| {diff:.2e}")
    assert diff < TOL
    again = hf_lm.load_model(tmp_path / "ours")  # and back into slt_jax
    np.testing.assert_array_equal(again(ids), model(ids))
    assert again.config == model.config


@pytest.mark.parametrize("cls", ["gpt2", "neox"])
def test_a_new_native_model_saves_as_transformers_loads_it(tmp_path, cls):
    ids, _ = fx.tokens(2)
    if cls == "gpt2":
        config = gpt2.GPT2Config(**fx.GPT2, tie_word_embeddings=False, activation_function="gelu")
        model = gpt2.GPT2(config, rngs=nnx.Rngs(3))
    else:
        config = gpt_neox.GPTNeoXConfig(**fx.NEOX, rotary_pct=0.5, rotary_emb_base=500.0)
        model = gpt_neox.GPTNeoX(config, rngs=nnx.Rngs(3))
    assert gpt2.GPT2Config.from_dict(gpt2.GPT2Config().to_dict()) == gpt2.GPT2Config()
    assert type(config).from_dict(config.to_dict()) == config
    back = transformers.AutoModelForCausalLM.from_pretrained(hf_lm.save_model(model, tmp_path))
    diff = _max_diff(model(ids), fx.torch_logits(back.eval(), ids))
    print(f"\nnew native {cls}, saved, loaded by transformers: max |Δlogits| {diff:.2e}")
    assert diff < TOL
    with pytest.raises(TypeError, match="GPT2 or GPTNeoX"):
        hf_lm.save_model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), tmp_path / "other")


def test_neox_config_reads_both_rotary_spellings():
    new = {"model_type": "gpt_neox", **fx.NEOX}
    new["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 500.0,
        "partial_rotary_factor": 0.5,
    }
    old = {"model_type": "gpt_neox", **fx.NEOX, "rotary_pct": 0.5, "rotary_emb_base": 500}
    assert gpt_neox.GPTNeoXConfig.from_dict(new) == gpt_neox.GPTNeoXConfig.from_dict(old)
    assert gpt_neox.GPTNeoXConfig.from_dict(old).rotary_ndims == 4
    assert gpt_neox.GPTNeoXConfig.from_dict({"model_type": "gpt_neox"}).rotary_pct == 0.25
    with pytest.raises(ValueError, match="rotary scaling 'linear'"):
        gpt_neox.GPTNeoXConfig.from_dict({**old, "rope_scaling": {"type": "linear", "factor": 2}})


# --- the Llama family: GQA, rotary scaling, windows, biases, layouts ----------------------------


def _with_config(model, **changes):
    """A native Llama with the same parameters and a changed config."""
    other = llama.Llama(dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(model, nnx.Param))
    return other


def test_the_window_and_the_rotary_scaling_matter(saved):
    """The cases would catch a model that ignored Mistral's window or Llama 3.1's scaling."""
    ids, _ = fx.tokens()
    for case, change in (
        ("mistral-window", dict(sliding_window=None)),
        ("llama3-biases-tied", dict(rope_llama3=None)),
    ):
        torch_model, path = saved[case]
        model = hf_lm.load_model(path)
        wrong = _max_diff(_with_config(model, **change)(ids), fx.torch_logits(torch_model, ids))
        print(f"\n{case} without {list(change)}: max |Δlogits| {wrong:.2e}")
        assert wrong > 100 * TOL


def test_a_new_native_llama_saves_as_transformers_loads_it(tmp_path):
    ids, _ = fx.tokens(2)
    for model_type in ("llama", "qwen2", "mistral"):
        config = sj.lm.LlamaConfig(model_type=model_type, **fx.LLAMA, rope_theta=500.0)
        model = sj.lm.Llama(config, rngs=nnx.Rngs(3))
        assert llama.LlamaConfig.from_dict(config.to_dict()) == config
        back = transformers.AutoModelForCausalLM.from_pretrained(
            hf_lm.save_model(model, tmp_path / model_type)
        ).eval()
        assert type(back).__name__ == config.to_dict()["architectures"][0]
        diff = _max_diff(model(ids), fx.torch_logits(back, ids))
        print(f"\nnew native {model_type}, loaded by transformers: max |Δlogits| {diff:.2e}")
        assert diff < TOL


def test_llama_configs_read_both_rope_spellings_and_refuse_what_they_lack():
    new = {"model_type": "llama", **fx.LLAMA, "rope_parameters": LLAMA3_ROPE}
    old_scaling = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    old = {"model_type": "llama", **fx.LLAMA, "rope_theta": 500000.0, "rope_scaling": old_scaling}
    assert llama.LlamaConfig.from_dict(new) == llama.LlamaConfig.from_dict(old)
    assert llama.LlamaConfig.from_dict(new).rope_llama3 == (8.0, 1.0, 4.0, 8.0)
    assert hf.architecture(new) == hf.architecture(old)  # checkpoint sets compare these
    plain = llama.LlamaConfig.from_dict({"model_type": "qwen2", **fx.LLAMA})
    assert plain.qkv_bias and not plain.attention_bias and plain.rope_theta == 10000.0
    assert plain.kv_heads == 2 and plain.head_size == 8
    with pytest.raises(ValueError, match="rotary scaling 'yarn' is not supported"):
        llama.LlamaConfig.from_dict({**new, "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="per-layer sliding windows"):
        llama.LlamaConfig.from_dict({"model_type": "qwen2", **fx.LLAMA, "use_sliding_window": 1})
    with pytest.raises(ValueError, match="num_key_value_heads=3 does not divide"):
        llama.LlamaConfig(**{**fx.LLAMA, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="model_type 'gpt2'; LlamaConfig reads"):
        llama.LlamaConfig.from_dict({"model_type": "gpt2"})


def _rows(n, start, stop):
    out = np.zeros(n, bool)
    out[start:stop] = True
    return out


@pytest.mark.parametrize("case", ["llama", "qwen2"])
def test_llama_head_layouts_take_the_query_head_and_its_shared_group(saved, case):
    """``"l0h1"`` selects query head 1's ``q_proj`` rows and ``o_proj`` columns and the rows
    of its key/value group g(1) = 1 // (4 / 2) = 0 in ``k_proj`` and ``v_proj`` (shared with
    head 0); ``"l1g1"`` all of group 1: query heads 2, 3 and key/value head 1."""
    model = sj.lm.load_model(saved[case][1])  # sj.lm's loader is hf_lm's
    layout = sj.lm.layout(model)
    assert layout == sj.refine.Layout("llama", num_heads=4, num_kv_heads=2, num_layers=2)
    params = nnx.state(model, nnx.Param)
    d, dh = 32, 8
    masks = sj.refine.components(params, ["l0h1", "l1g1"], layout)
    for name, layer, q, kv in (("l0h1", 0, (8, 16), (0, 8)), ("l1g1", 1, (16, 32), (8, 16))):
        attn = _params_of(masks[name])
        at = f"layers/{layer}/self_attn"
        for key, value in attn.items():
            if not key.startswith(at):
                assert not value.any(), (name, key)  # nothing outside the layer's attention
        np.testing.assert_array_equal(attn[f"{at}/q_proj/weight"].all(1), _rows(32, *q))
        np.testing.assert_array_equal(attn[f"{at}/o_proj/weight"].all(0), _rows(32, *q))
        for proj in ("k_proj", "v_proj"):
            np.testing.assert_array_equal(attn[f"{at}/{proj}/weight"].all(1), _rows(16, *kv))
        biases = (q[1] - q[0]) + 2 * (kv[1] - kv[0]) if case == "qwen2" else 0
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert (f"{at}/{proj}/bias" in attn) == (case == "qwen2")
        expected = d * (q[1] - q[0]) * 2 + 2 * d * (kv[1] - kv[0]) + biases
        assert sum(int(m.sum()) for m in attn.values()) == expected
    assert sum(int(m.sum()) for m in _params_of(masks["l0h1"]).values()) == 4 * d * dh + (
        3 * dh if case == "qwen2" else 0
    )


def _params_of(mask) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(getattr(mask, "mask", mask))[0]
    return {path_string(p): np.asarray(x) for p, x in leaves}


@pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")  # 8 steps: a smoke run
def test_a_refined_llc_of_a_llama_head_runs_through_sj_lm(tmp_path):
    # a one-layer Qwen2 (grouped-query attention, q/k/v biases): l0h1 needs no second layer,
    # and the chain program of one layer compiles in about 3/4 of the time of two
    model = sj.lm.load_model(fx.save(fx.llama(0, "qwen2", num_hidden_layers=1), tmp_path))
    loss_fn, params = sj.lm.next_token_loss(model)
    windows = np.random.default_rng(0).integers(0, fx.VOCAB, (16, fx.LENGTH + 1))
    refinements = sj.refine.components(params, ["l0h1"], sj.lm.layout(model))
    result = sj.estimate_refined_llc(
        loss_fn,
        params,
        windows,
        refinements,
        num_chains=2,
        num_steps=8,
        batch_size=4,
        step_size=1e-6,
        nbeta=10.0,
        seed=0,
    )
    assert np.isfinite(np.asarray(result["l0h1"].llc_mean))


def test_llama_checkpoint_directories_load(tmp_path):
    models = {step: _build("qwen2", seed=step) for step in (10, 20)}
    for step, m in models.items():
        fx.save(m, tmp_path / f"step{step}")
    model, checkpoints = sj.lm.load_checkpoints(tmp_path)
    assert type(model) is llama.Llama and checkpoints.steps.tolist() == [10, 20]
    ids, mask = fx.tokens(3)
    nnx.update(model, checkpoints.read(1))
    assert _max_diff(model(ids, mask), fx.torch_logits(models[20], ids, mask), mask) < TOL


# --- checkpoint sets -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, saved):
    """A training run as Pythia and a Trainer write them: step dirs, the final model on top."""
    root = tmp_path_factory.mktemp("run")
    models = {step: _build("neox-sequential", seed=step) for step in (100, 1000, 50)}
    for step, name in ((100, "step100"), (1000, "step1000"), (50, "checkpoint-50")):
        fx.save(models[step], root / name)
        (root / name / "trainer_state.json").write_text("{}")
    fx.save(models[1000], root)  # the Trainer's output_dir holds the final model too
    (root / "notes.txt").write_text("a run")
    return root, models


def test_checkpoint_directories_load_sorted_by_step(run_dir):
    root, models = run_dir
    model, cs = hf_lm.load_checkpoints(root)
    assert cs.steps.tolist() == [50, 100, 1000]
    assert [s.rsplit("/", 1)[-1] for s in cs.sources] == ["checkpoint-50", "step100", "step1000"]
    assert jax.tree.structure(cs.params) == jax.tree.structure(nnx.state(model, nnx.Param))
    ids, mask = fx.tokens(3)
    for k, step in enumerate(cs.steps.tolist()):
        nnx.update(model, jax.tree.map(lambda x, k=k: x[k], cs.params))
        diff = _max_diff(model(ids, mask), fx.torch_logits(models[step], ids, mask), mask)
        print(f"\ncheckpoint set, step {step}: max |Δlogits| {diff:.2e}")
        assert diff < TOL
    plain = sj.load_checkpoint_set(root)  # the format found by itself; nested dicts
    assert plain.steps.tolist() == [50, 100, 1000]
    np.testing.assert_array_equal(
        plain.params["layers"]["0"]["attention"]["query_key_value"]["weight"][1],
        models[100].state_dict()["gpt_neox.layers.0.attention.query_key_value.weight"].numpy(),
    )


def test_a_checkpoint_of_another_architecture_is_named(run_dir, tmp_path):
    root, _ = run_dir
    shutil.copytree(root, tmp_path / "run", ignore=shutil.ignore_patterns("step1000"))
    fx.save(_build("neox-sequential"), tmp_path / "run" / "step5000")
    config = json.loads((tmp_path / "run" / "step5000" / "config.json").read_text())
    (tmp_path / "run" / "step5000" / "config.json").write_text(
        json.dumps(config | {"use_parallel_residual": True})
    )
    with pytest.raises(ValueError, match=r"step5000/config.json differs .* use_parallel_residual"):
        hf_lm.load_checkpoints(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "step5000")
    fx.save(_build("gpt2"), tmp_path / "run" / "step5000")
    with pytest.raises(ValueError, match=r"step5000/config.json differs .* model_type"):
        hf_lm.load_checkpoints(tmp_path / "run")


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gpt2", "neox-parallel", "qwen2"])
def test_jit_grad_of_a_loss_through_the_model(saved, case):
    model = hf_lm.load_model(saved[case][1])
    ids, _ = fx.tokens(4)

    def per_example(logits, targets):
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(-1)

    loss_fn, params = sj.nnx_loss(model, per_example)
    batch = (jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:]))
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)
    assert np.isfinite(loss) and jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads)) == len(
        jax.tree.leaves(grads)
    )


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture
def gpt2_files(saved):
    """``(config, tensors)`` of the tied GPT-2, to write altered copies of."""
    path = saved["gpt2"][1]
    return hf.read_config(path), hf.read_tensors(path)


def test_a_directory_without_config_json(tmp_path, saved):
    shutil.copy(saved["gpt2"][1] / hf.WEIGHTS, tmp_path)
    with pytest.raises(ValueError, match="has no config.json"):
        hf_lm.load_model(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        hf_lm.load_model(tmp_path / "nope")


def test_another_architecture(tmp_path, gpt2_files):
    config, tensors = gpt2_files
    hf.write(tmp_path / "bloom", config | {"model_type": "bloom"}, tensors)
    with pytest.raises(
        ValueError, match=r"model_type 'bloom' is not supported.*'gpt2', 'gpt_neox', 'llama'"
    ):
        hf_lm.load_model(tmp_path / "bloom")
    neox_config = {"model_type": "gpt_neox", **fx.NEOX}  # GPT-2 weights under a NeoX config
    hf.write(tmp_path / "as-neox", neox_config, tensors)
    with pytest.raises(
        ValueError, match=r"lacks the tensors 'gpt_neox.embed_in.weight'.*look like a gpt2"
    ):
        hf_lm.load_model(tmp_path / "as-neox")
    with pytest.raises(ValueError, match="model_type 'gpt2'; GPTNeoXConfig reads 'gpt_neox'"):
        gpt_neox.GPTNeoXConfig.from_dict(config)
    with pytest.raises(ValueError, match="model_type 'gpt_neox'; GPT2Config reads 'gpt2'"):
        gpt2.GPT2Config.from_dict(neox_config)


def test_a_missing_tensor_is_named_with_its_file(tmp_path, gpt2_files):
    config, tensors = gpt2_files
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    hf.write(tmp_path, config, tensors)
    where = re.escape(str(tmp_path / hf.WEIGHTS))
    with pytest.raises(
        ValueError, match=rf"{where} lacks the tensor 'transformer.h.1.mlp.c_fc.bias'"
    ):
        hf_lm.load_model(tmp_path)


def test_a_misshaped_tensor_is_named_with_both_shapes(tmp_path, gpt2_files):
    config, tensors = gpt2_files
    tensors["transformer.h.0.attn.c_attn.weight"] = tensors["transformer.h.0.attn.c_attn.weight"].T
    hf.write(tmp_path, config, tensors)
    with pytest.raises(
        ValueError, match=r"'transformer.h.0.attn.c_attn.weight' has shape \(96, 32\).*\(32, 96\)"
    ):
        hf_lm.load_model(tmp_path)


def test_unexpected_tensors_are_named_and_buffers_ignored(tmp_path, gpt2_files):
    config, tensors = gpt2_files
    causal = np.tril(np.ones((1, 1, fx.LENGTH, fx.LENGTH), bool))  # as older transformers saved
    buffers = {f"h.{i}.attn.{b}": causal for i in range(2) for b in ("bias", "masked_bias")}
    plain = {k.removeprefix("transformer."): x for k, x in tensors.items()}  # original GPT-2 files
    hf.write(
        tmp_path / "buffers", config, plain | buffers | {"lm_head.weight": plain["wte.weight"]}
    )
    np.testing.assert_array_equal(
        _params(hf_lm.load_model(tmp_path / "buffers"))["h/0/attn/c_attn/weight"],
        tensors["transformer.h.0.attn.c_attn.weight"],
    )
    extra = {"transformer.h.0.attn.q_attn.weight": np.ones((32, 32), np.float32)}
    hf.write(tmp_path / "extra", config, tensors | extra)
    with pytest.raises(ValueError, match="unexpected tensor 'transformer.h.0.attn.q_attn.weight'"):
        hf_lm.load_model(tmp_path / "extra")


def test_non_finite_values_are_named(tmp_path, gpt2_files):
    config, tensors = gpt2_files
    tensors["transformer.ln_f.weight"] = tensors["transformer.ln_f.weight"].copy()
    tensors["transformer.ln_f.weight"][3] = np.nan
    hf.write(tmp_path, config, tensors)
    with pytest.raises(ValueError, match="'transformer.ln_f.weight' has non-finite values"):
        hf_lm.load_model(tmp_path)


def test_a_sharded_index_naming_a_missing_shard(tmp_path, gpt2_files):
    config, tensors = gpt2_files
    hf.write(tmp_path, config, tensors, max_shard_bytes=20_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / hf.WEIGHTS).exists()
    shards[1].unlink()
    with pytest.raises(ValueError, match=rf"to the shard '{shards[1].name}', which is not in"):
        hf_lm.load_model(tmp_path)
    index = json.loads((tmp_path / hf.INDEX).read_text())
    assert index["metadata"]["total_size"] == sum(x.nbytes for x in tensors.values())
    hf.write(tmp_path, config, tensors)  # a single file again: the shards and index go
    assert sorted(p.name for p in tmp_path.iterdir()) == [hf.CONFIG, hf.WEIGHTS]
    assert hf_lm.load_model(tmp_path).config.n_layer == 2


def test_pytorch_pickles_only_say_to_resave_with_safetensors(tmp_path, saved):
    saved["gpt2"][0].save_pretrained(tmp_path, safe_serialization=False)
    if (tmp_path / hf.WEIGHTS).exists():  # transformers 5 writes safetensors whatever asked
        (tmp_path / hf.WEIGHTS).unlink()
        torch.save(saved["gpt2"][0].state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin.*safe_serialization=True"):
        hf_lm.load_model(tmp_path)


def test_bad_configs_and_inputs(saved):
    with pytest.raises(ValueError, match="n_embd=30 is not a multiple of n_head=4"):
        gpt2.GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation_function='swiglu' is not supported"):
        gpt2.GPT2Config(activation_function="swiglu")
    model = hf_lm.load_model(saved["gpt2"][1])
    with pytest.raises(ValueError, match="input_ids has 17 positions; the model has 16"):
        model(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        model(jnp.zeros((1, 4)))
