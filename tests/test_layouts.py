"""Head selectors of language-model layouts (``sj.refine.Layout``): each mask is checked
functionally on the real torch model, by perturbing the parameters inside (or outside)
the mask and reading every head's q, k, v and attention output from the model's own
forward pass."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformer_lens = pytest.importorskip("transformer_lens")

import slt_jax as sj  # noqa: E402
from slt_jax._src import refine  # noqa: E402
from slt_jax.refine import Layout, components, heads  # noqa: E402

D, H, DH, T, B, V, CTX = 16, 4, 4, 5, 2, 11, 8
HEAD_COUNT = 4 * D * DH + 3 * DH  # W_Q, W_K, W_V (d × d_h each), W_O (d_h × d), 3 biases


# ---- the models, run with every head's q, k, v and the attention output recorded -----------

_RECORD: dict = {}  # layer -> {"q", "k", "v"} of the last forward pass
_GATES: dict = {}  # layer -> (H,) multipliers of each head's output z


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention that records the per-head q (B, H, T, dh) and k, v
    (B, H_kv, T, dh) the model computed, and scales head h's output z by a gate."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layer = module.layer_idx
    _RECORD[layer] = {"q": query.numpy().copy(), "k": key.numpy().copy(), "v": value.numpy().copy()}
    if layer in _GATES:  # out: (B, T, H, dh), before the model merges the heads
        out = out * torch.as_tensor(_GATES[layer], dtype=out.dtype)[None, None, :, None]
    return out, weights


transformers.AttentionInterface.register("slt_jax_test_recording", _recording_attention)


class Case:
    """One tiny model: ``params`` (flat numpy, torch names) and ``run(params, gates)``:
    ``{layer: {"q", "k", "v", "out"}}`` with the head axis second."""

    def __init__(self, model, out_proj, shared, prefix, kv_heads, tlens=False):
        self.model, self.out_proj, self.shared, self.prefix = model.eval(), out_proj, shared, prefix
        self.kv_heads, self.tlens = kv_heads, tlens
        self.params = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
        depth = prefix.count(".")
        self.num_layers = len({k.split(".")[depth] for k in self.params if k.startswith(prefix)})
        self.tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))

    def run(self, params, gates=None):
        self.model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in params.items()}, strict=False
        )
        return self._run_tlens(gates or {}) if self.tlens else self._run_hf(gates or {})

    def _run_hf(self, gates):
        outs, hooks = {}, []
        for layer in range(self.num_layers):
            module = self.model.get_submodule(self.out_proj.format(layer).removesuffix(".weight"))
            hook = lambda m, i, o, layer=layer: outs.__setitem__(layer, o.numpy().copy())  # noqa: E731
            hooks.append(module.register_forward_hook(hook))
        _GATES.clear()
        _GATES.update(gates)
        try:
            with torch.no_grad():
                self.model(self.tokens)
        finally:
            _GATES.clear()
            for hook in hooks:
                hook.remove()
        return {layer: {**_RECORD[layer], "out": outs[layer]} for layer in range(self.num_layers)}

    def _run_tlens(self, gates):
        record = {layer: {} for layer in range(self.num_layers)}

        def keep(name, layer):
            def hook(x, hook):
                record[layer][name] = x.transpose(1, 2).numpy().copy()  # (B, H, T, dh)

            return hook

        def gate(layer):
            def hook(z, hook):
                return z * torch.as_tensor(gates[layer], dtype=z.dtype)[None, None, :, None]

            return hook

        def out(layer):
            def hook(x, hook):
                record[layer]["out"] = x.numpy().copy()

            return hook

        fwd = []
        for layer in range(self.num_layers):
            fwd += [(f"blocks.{layer}.attn.hook_{c}", keep(c, layer)) for c in "qkv"]
            if layer in gates:
                fwd.append((f"blocks.{layer}.attn.hook_z", gate(layer)))
            fwd.append((f"blocks.{layer}.hook_attn_out", out(layer)))
        with torch.no_grad():
            self.model.run_with_hooks(self.tokens, fwd_hooks=fwd)
        return record


def _build(name):
    torch.manual_seed(0)
    tf = transformers
    if name == "gpt2":
        config = tf.GPT2Config(
            n_embd=D, n_head=H, n_layer=2, vocab_size=V, n_positions=CTX, bos_token_id=None,
            eos_token_id=None, attn_implementation="slt_jax_test_recording",
        )  # fmt: skip
        model = tf.GPT2LMHeadModel(config)
        return Case(model, "transformer.h.{}.attn.c_proj.weight", "attn.c_proj.bias",
                    "transformer.h.", H)  # fmt: skip
    if name == "neox":
        config = tf.GPTNeoXConfig(
            hidden_size=D, num_attention_heads=H, num_hidden_layers=2, intermediate_size=32,
            vocab_size=V, max_position_embeddings=CTX, bos_token_id=None, eos_token_id=None,
            attn_implementation="slt_jax_test_recording",
        )  # fmt: skip
        model = tf.GPTNeoXForCausalLM(config)
        return Case(model, "gpt_neox.layers.{}.attention.dense.weight", "attention.dense.bias",
                    "gpt_neox.layers.", H)  # fmt: skip
    if name == "llama":
        config = tf.LlamaConfig(
            hidden_size=D, num_attention_heads=H, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=32, vocab_size=V, max_position_embeddings=CTX, attention_bias=True,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
            attn_implementation="slt_jax_test_recording",
        )  # fmt: skip
        model = tf.LlamaForCausalLM(config)
        return Case(model, "model.layers.{}.self_attn.o_proj.weight", "self_attn.o_proj.bias",
                    "model.layers.", 2)  # fmt: skip
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "tlens":  # attention only, 2 layers
            config = HookedTransformerConfig(
                n_layers=2, d_model=D, n_heads=H, d_head=DH, n_ctx=CTX, d_vocab=V, attn_only=True,
                device="cpu", seed=0,
            )  # fmt: skip
            kv = H
        else:  # grouped-query attention (_W_K, _W_V) with an MLP
            config = HookedTransformerConfig(
                n_layers=1, d_model=D, n_heads=H, d_head=DH, n_ctx=CTX, d_vocab=V,
                n_key_value_heads=2, act_fn="gelu", device="cpu", seed=0,
            )  # fmt: skip
            kv = 2
        model = HookedTransformer(config)
    for p in model.parameters():  # TL initialises biases at 0: make every coordinate matter
        torch.nn.init.normal_(p, std=0.3)
    return Case(model, "blocks.{}.attn.W_O", "attn.b_O", "blocks.", kv, tlens=True)


CASES = ("gpt2", "neox", "llama", "tlens", "tlens_gqa")


@pytest.fixture(scope="module")
def cases():
    built = {}

    def get(name):
        if name not in built:
            built[name] = _build(name)
        return built[name]

    return get


def _same(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _changed(a, b):
    assert np.abs(a - b).max() > 1e-3


def _perturb(params, where, rng):
    """``params`` plus noise on the coordinates where ``where[name]`` is True."""
    return {
        k: v + (0.5 * rng.standard_normal(v.shape) * where[k]).astype(v.dtype) if k in where else v
        for k, v in params.items()
    }


# ---- each head's mask is exactly that head ------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_a_head_mask_moves_exactly_that_head(cases, name):
    """Perturbing the mask of ``l{l}h{h}`` changes head h's q (and its group's k, v) and
    nothing else of the layer; perturbing the rest of those weights leaves them unchanged;
    the out-projection share is exactly the weights that read head h's output z."""
    case = cases(name)
    params, rng = case.params, np.random.default_rng(1)
    layout = Layout.detect(params, num_heads=H)
    assert layout.num_kv_heads == case.kv_heads
    base = case.run(params)
    for layer in range(case.num_layers):
        for head in range(H):
            key = f"l{layer}h{head}"
            mask = components(params, key, layout)[key]
            assert refine.num_selected(mask) == HEAD_COUNT
            out_name = case.out_proj.format(layer)
            selected = {k for k, m in mask.items() if m.any()}
            assert out_name in selected and not any(k.endswith(case.shared) for k in selected)
            qkv = selected - {out_name}
            group = head // (H // case.kv_heads)
            index = {"q": head, "k": group, "v": group}
            # the mask's q/k/v coordinates move head h's q and its group's k, v only
            moved = case.run(_perturb(params, {k: mask[k] for k in qkv}, rng))
            for earlier in range(layer):
                for x in "qkv":
                    _same(moved[earlier][x], base[earlier][x])
            for x, i in index.items():
                _changed(moved[layer][x][:, i], base[layer][x][:, i])
                _same(np.delete(moved[layer][x], i, 1), np.delete(base[layer][x], i, 1))
            # every coordinate of the head is selected: the rest leaves its q, k, v alone
            moved = case.run(_perturb(params, {k: ~mask[k] for k in qkv}, rng))
            for x, i in index.items():
                _same(moved[layer][x][:, i], base[layer][x][:, i])
                _changed(np.delete(moved[layer][x], i, 1), np.delete(base[layer][x], i, 1))
            # the out-projection share: the weights that multiply head h's z, and no other
            only = np.eye(H, dtype=np.float32)[head]
            rest = 1 - only
            base_only, base_rest = case.run(params, {layer: only}), case.run(params, {layer: rest})
            inside = _perturb(params, {out_name: mask[out_name]}, rng)
            _same(case.run(inside, {layer: rest})[layer]["out"], base_rest[layer]["out"])
            _changed(case.run(inside, {layer: only})[layer]["out"], base_only[layer]["out"])
            outside = _perturb(params, {out_name: ~mask[out_name]}, rng)
            _same(case.run(outside, {layer: only})[layer]["out"], base_only[layer]["out"])
    case.run(params)  # leave the model as built


@pytest.mark.parametrize("name", CASES)
def test_heads_and_shared_biases_make_up_the_attention(cases, name):
    case = cases(name)
    params = case.params
    layout = Layout.detect(params, num_heads=H)
    masks = heads(params, layout)
    assert list(masks) == [f"l{i}h{h}" for i in range(case.num_layers) for h in range(H)]
    for layer in range(case.num_layers):
        attn = components(params, f"l{layer} attn", layout)[f"l{layer} attn"]
        union = jax.tree.map(
            lambda *m: np.logical_or.reduce(m), *[masks[f"l{layer}h{h}"] for h in range(H)]
        )
        for k in params:
            if k.startswith(f"{case.prefix}{layer}.") and k.endswith(case.shared):
                assert attn[k].all() and not union[k].any()
                union[k] = np.ones_like(union[k])
        assert jax.tree.all(jax.tree.map(np.array_equal, union, attn))
        group = H // case.kv_heads
        if group == 1:  # heads are disjoint
            total = sum(refine.num_selected(masks[f"l{layer}h{h}"]) for h in range(H))
            assert total == refine.num_selected(union) - sum(
                v.size for k, v in params.items() if k.startswith(f"{case.prefix}{layer}.")
                and k.endswith(case.shared)
            )  # fmt: skip
        for g in range(case.kv_heads):  # a group is its query heads with its k, v
            key = f"l{layer}g{g}"
            got = components(params, key, layout)[key]
            want = jax.tree.map(
                lambda *m: np.logical_or.reduce(m),
                *[masks[f"l{layer}h{h}"] for h in range(g * group, (g + 1) * group)],
            )
            assert jax.tree.all(jax.tree.map(np.array_equal, got, want))
            assert refine.num_selected(got) == group * (2 * D * DH + DH) + 2 * (D * DH + DH)


def _selected(mask):
    """The leaves a mask selects, each of which it must select whole."""
    chosen = {k for k, m in mask.items() if m.any()}
    assert all(mask[k].all() for k in chosen)
    return chosen


@pytest.mark.parametrize(
    "name, embed, unembed",
    [
        ("gpt2", {"transformer.wte.weight", "transformer.wpe.weight"}, {"transformer.wte.weight"}),
        ("neox", {"gpt_neox.embed_in.weight"}, {"lm_head.weight"}),
        ("llama", {"model.embed_tokens.weight"}, {"lm_head.weight"}),
        ("tlens_gqa", {"embed.W_E", "pos_embed.W_pos"}, {"unembed.W_U", "unembed.b_U"}),
    ],
)
def test_layers_mlps_and_embeddings(cases, name, embed, unembed):
    case = cases(name)
    params = case.params
    layout = Layout.detect(params, num_heads=H)
    for layer in range(case.num_layers):
        inside = {k for k in params if k.startswith(f"{case.prefix}{layer}.")}
        got = components(params, [f"l{layer} mlp", f"l{layer}"], layout)
        assert _selected(got[f"l{layer} mlp"]) == {k for k in inside if ".mlp." in k}
        assert _selected(got[f"l{layer}"]) == inside  # attention, MLP and layer norms
    got = components(params, ["embed", "unembed"], layout)
    assert _selected(got["embed"]) == embed
    assert _selected(got["unembed"]) == unembed  # GPT-2's named_parameters: tied to wte


def test_gpt2_unembed_is_lm_head_when_present_and_neox_old_names(cases):
    gpt2 = cases("gpt2")
    state = {k: v.numpy() for k, v in gpt2.model.state_dict().items()}  # has lm_head.weight
    layout = Layout.from_hf_config(gpt2.model.config.to_dict())
    assert _selected(components(state, "unembed", layout)["unembed"]) == {"lm_head.weight"}
    neox = dict(cases("neox").params)
    neox["embed_out.weight"] = neox.pop("lm_head.weight")  # transformers < 4.50's name
    layout = Layout.detect(neox, num_heads=H)
    assert _selected(components(neox, "unembed", layout)["unembed"]) == {"embed_out.weight"}


def _nest(flat, prefix, rename=None, lists=False):
    """A native (Flax-port) pytree: the torch names without the model prefix, nested."""
    tree = {}
    for key, value in flat.items():
        key = (rename or {}).get(key, key).removeprefix(prefix)
        node, *parts = tree, *key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if lists:
        tree["h"] = [tree["h"][str(i)] for i in range(len(tree["h"]))]
    return tree


@pytest.mark.parametrize(
    "name, prefix, rename, lists, path",
    [
        ("gpt2", "transformer.", None, False, "h/0/attn/c_attn/weight"),
        ("gpt2", "transformer.", None, True, "h/0/attn/c_attn/weight"),
        ("neox", "gpt_neox.", {"lm_head.weight": "embed_out.weight"}, False,
         "layers/0/attention/query_key_value/weight"),
    ],
)  # fmt: skip
def test_nested_native_paths_give_the_same_masks(cases, name, prefix, rename, lists, path):
    flat = cases(name).params
    nested = _nest(flat, prefix, rename, lists)
    assert path in refine.leaf_paths(nested)
    for tree in (nested, {"params": {"transformer": nested}}):  # any model prefix
        layout = Layout.detect(tree, num_heads=H)
        names = [*heads(flat, layout), "l1 attn", "l0 mlp", "l1", "embed", "unembed", "l0g1"]
        want = components(flat, names, layout)
        got = components(tree, names, layout)
        for key in names:
            by_path = dict(zip(refine.leaf_paths(tree), jax.tree.leaves(got[key]), strict=True))
            for k, m in want[key].items():
                k = (rename or {}).get(k, k).removeprefix(prefix).replace(".", "/")
                k = ("params/transformer/" + k) if "params" in tree else k
                np.testing.assert_array_equal(by_path[k], m, err_msg=f"{key} {k}")


def test_names_parse_like_devinterp(cases):
    params = cases("gpt2").params
    layout = Layout.from_hf_config(cases("gpt2").model.config)  # a PretrainedConfig works too
    want = components(params, "l0h1", layout)["l0h1"]
    for spelling in ("L0H1", " l0 h1 ", "l0 H 1"):
        got = layout.mask(params, spelling)
        assert jax.tree.all(jax.tree.map(np.array_equal, got, want))
    union = components(params, {"both": ["l0h1", "l1 mlp"]}, layout)["both"]
    assert refine.num_selected(union) == HEAD_COUNT + refine.num_selected(
        layout.mask(params, "l1 mlp")
    )
    assert refine.num_selected(layout.mask(params, "full")) == sum(v.size for v in params.values())
    # through refine.masks (what estimate_refined_llc calls) with a layout
    resolved = refine.masks(params, {"a": "l0h1", "b": "*wte*"}, layout=layout)
    assert jax.tree.all(jax.tree.map(np.array_equal, resolved["a"], want))
    assert _selected(resolved["b"]) == {"transformer.wte.weight"}  # not a name: a glob
    with pytest.raises(ValueError, match="mixes component names and glob patterns"):
        refine.mask(params, ["l0h1", "*wte*"], layout=layout)
    with pytest.raises(ValueError, match="head 9 does not exist"):  # before any compilation
        refine.masks(params, {"a": "l0h9"}, layout=layout)


def test_from_hf_config():
    assert Layout.from_hf_config({"model_type": "gpt2", "n_head": 12, "n_layer": 12}) == Layout(
        "gpt2", num_heads=12, num_layers=12
    )
    config = {"model_type": "qwen2", "num_attention_heads": 14, "num_key_value_heads": 2}
    assert Layout.from_hf_config(config) == Layout("llama", num_heads=14, num_kv_heads=2)
    config = {"model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 2}
    assert Layout.from_hf_config(config).num_kv_heads == 32
    with pytest.raises(ValueError, match="model_type 'bert' has no layout; supported"):
        Layout.from_hf_config({"model_type": "bert", "num_attention_heads": 2})


def test_errors_name_the_range_and_the_missing_path(cases):
    params = cases("llama").params
    layout = Layout.detect(params, num_heads=H)
    with pytest.raises(ValueError, match="head 7 does not exist: layer 0 has heads 0–3.*l{layer}h"):
        components(params, "l0h7", layout)
    with pytest.raises(ValueError, match="layer 2 does not exist: the model has layers 0–1"):
        components(params, ["l0h1", "l2 mlp"], layout)
    with pytest.raises(
        ValueError, match="group 2 does not exist: layer 1 has key/value groups 0–1"
    ):
        components(params, "l1g2", layout)
    with pytest.raises(ValueError, match="unknown component name 'head0'. Valid patterns"):
        components(params, "head0", layout)
    with pytest.raises(ValueError, match="head sizes .* disagree"):  # wrong num_kv_heads
        components(params, "l0h0", Layout("llama", num_heads=H, num_kv_heads=1))
    with pytest.raises(ValueError, match="num_layers=3, the parameters have 2 layers"):
        components(params, "l0h0", Layout("llama", num_heads=H, num_kv_heads=2, num_layers=3))
    missing = {k: v for k, v in params.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    with pytest.raises(ValueError, match="layers/1/self_attn/k_proj/weight, which is missing"):
        components(missing, "l0h0", layout)
    gpt2 = dict(cases("gpt2").params)
    with pytest.raises(ValueError, match="pass num_heads="):
        Layout.detect(gpt2)
    with pytest.raises(ValueError, match="expects the parameter wte/weight, which is missing"):
        components({k: v for k, v in gpt2.items() if "wte" not in k}, "embed", Layout("gpt2", H))
    with pytest.raises(ValueError, match="no known layout matches .* known layouts .*'gpt2'"):
        Layout.detect({"encoder": {"kernel": np.zeros(3)}}, num_heads=2)
    with pytest.raises(ValueError, match="'gpt2' has no grouped-query attention"):
        Layout("gpt2", num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="unknown layout kind 'bert'"):
        Layout("bert", num_heads=4)
    tlens = cases("tlens").params
    with pytest.raises(ValueError, match="num_heads=8, but the tlens weights have 4 heads"):
        Layout.detect(tlens, num_heads=8)
    with pytest.raises(ValueError, match="layer 0 has no MLP parameters"):
        components(tlens, "l0 mlp", Layout.detect(tlens))


def test_slt_jax_attention_model_layout():
    from flax import nnx

    from slt_jax.models import attention

    abstract = nnx.eval_shape(
        lambda: attention.AttentionOnlyTransformer(
            vocab_size=V, d_model=D, num_heads=H, d_head=DH, context_length=CTX, rngs=nnx.Rngs(0)
        )
    )  # random values without running the initialisers op by op (slow on a busy CPU)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
        nnx.state(abstract, nnx.Param),
    )
    layout = Layout.detect(params)
    assert layout == Layout("slt_jax", num_heads=H)
    ours, theirs = heads(params, layout), attention.head_refinements(params, embeddings=True)
    for layer in range(2):
        for head in range(H):
            a, b = ours[f"l{layer}h{head}"], theirs[f"L{layer}H{head}"]
            assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
            assert refine.num_selected(a) == 4 * D * DH
    for key in ("embed", "unembed"):
        got = layout.mask(params, key)
        assert jax.tree.all(jax.tree.map(np.array_equal, got, theirs[key]))
    # functionally: perturbing l1h2 moves only head 2's attention pattern in layer 1
    mask = layout.mask(params, "l1h2")
    noise = jax.tree.map(lambda m: 0.5 * rng.standard_normal(m.shape), mask)
    moved = jax.tree.map(lambda w, m, e: w + jnp.where(m, e, 0.0), params, mask, noise)
    tokens = jnp.arange(12).reshape(2, 6) % V
    patterns = jax.jit(lambda p: attention.as_model(p)(tokens, return_patterns=True)[1])
    before, after = np.asarray(patterns(params)), np.asarray(patterns(moved))
    _same(after[:, 0], before[:, 0])
    _same(np.delete(after[:, 1], 2, 1), np.delete(before[:, 1], 2, 1))
    _changed(after[:, 1, 2], before[:, 1, 2])
    # the masks are selectors of estimate_refined_llc: a short run with a quadratic loss on
    # the attention weights alone (4 leaves compile faster; the layout needs no more)
    weights = {
        "layers": [
            {"qkv": ly["qkv"][...], "out": ly["out"][...]} for ly in params["layers"].values()
        ]
    }
    center = jax.tree.leaves(weights)

    def loss(w, batch):
        moved = sum(jnp.sum((a - c) ** 2) for a, c in zip(jax.tree.leaves(w), center, strict=True))
        return 0.5 * moved + 0.0 * jnp.mean(batch)

    refinements = components(weights, ["l1h2", "l0 attn"], layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_refined_llc(
            loss, weights, jnp.zeros((8, 1)), refinements, num_chains=2, num_steps=20,
            batch_size=8, nbeta=10.0, step_size=1e-4,
        )  # fmt: skip
    assert res.num_selected == {"l1h2": 4 * D * DH, "l0 attn": 4 * D * H * DH}
    assert all(np.isfinite(v) for v in res.llc_mean.values())
