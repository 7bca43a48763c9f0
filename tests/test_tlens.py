"""TransformerLens through the torch bridge: the HookedTransformer's own logits and
gradients, the state dict's parameters, buffers and tensor-valued properties left out, and
the computation kept traced (``cfg.device``)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj

torch = pytest.importorskip("torch")
transformer_lens = pytest.importorskip("transformer_lens")
if not hasattr(transformer_lens, "HookedTransformer"):
    pytest.skip("TransformerLens 4.x has no HookedTransformer", allow_module_level=True)

from slt_jax._src.io import torch_bridge  # noqa: E402
from slt_jax._src.io.tlens import tlens_forward, tlens_loss  # noqa: E402

VOCAB, CTX = 20, 12


def hooked(*, attn_only=True, normalization_type="LN", positional="standard"):
    """A two-layer HookedTransformer with random weights (the refined-LLC paper's
    attention-only architecture by default)."""
    config = transformer_lens.HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=CTX,
        d_head=4,
        n_heads=4,
        d_vocab=VOCAB,
        attn_only=attn_only,
        d_mlp=None if attn_only else 32,
        act_fn=None if attn_only else "gelu",
        normalization_type=normalization_type,
        positional_embedding_type=positional,
        device="cpu",
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.9 announces 4.0
        return transformer_lens.HookedTransformer(config)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (3, CTX))


@pytest.mark.parametrize(
    "kind",
    [
        dict(normalization_type="LN"),
        dict(normalization_type=None),
        pytest.param(dict(attn_only=False, positional="rotary"), id="mlp-rotary"),
    ],
    ids=["attn-only-LN", "attn-only-noLN", "mlp-rotary"],
)
def test_logits_and_gradients_equal_the_hooked_transformers(kind, tokens):
    model = hooked(**kind)
    forward, params = tlens_forward(model)

    def loss(p):  # TransformerLens's own next-token loss, through the bridge
        logits, value = forward(p, tokens, return_type="both")
        return value, logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    model.zero_grad()
    ref_logits, ref_loss = model(torch.as_tensor(tokens), return_type="both")
    ref_loss.backward()
    np.testing.assert_allclose(logits, ref_logits.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(value, ref_loss.item(), rtol=1e-6)
    largest = max(np.abs(p.grad.numpy()).max() for p in model.parameters())
    for name, p in model.named_parameters():
        ref = p.grad.numpy()
        if np.abs(ref).max() < 1e-6 * largest:
            # b_K without rotary: q·b_K is the same for every key and softmax ignores it,
            # so the exact gradient is 0 and both sides are rounding errors.
            assert name.endswith("attn.b_K"), name
            assert np.abs(grads[name]).max() < 1e-6 * largest, name
            continue
        scale = np.abs(ref).max()
        np.testing.assert_allclose(grads[name], ref, rtol=0, atol=1e-5 * scale, err_msg=name)
    assert model.cfg.device == "cpu"  # restored after the call


def test_params_are_the_state_dicts_parameters():
    model = hooked()
    _, params = tlens_forward(model)
    state = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    buffers = {name for name, _ in model.named_buffers()}
    assert set(params) == parameters and parameters < set(state)
    assert {"blocks.0.attn.mask", "blocks.0.attn.IGNORE"} <= buffers
    assert not buffers & set(params)
    assert params["blocks.0.attn.W_Q"].shape == (4, 16, 4)  # (H, d_model, d_head)
    assert params["embed.W_E"].shape == (VOCAB, 16)
    assert "pos_embed.W_pos" in params and "blocks.1.ln1.w" in params
    # The tensor-valued properties (stacked over layers) are not parameters; torchax's
    # extract_jax, which scans dir(module), collects them.
    torchax = torch_bridge.import_torchax()
    extracted, _ = torchax.extract_jax(model)
    properties = {"W_E", "W_Q", "W_K", "W_V", "W_O", "W_E_pos", "W_U"}
    assert properties <= set(extracted) and not properties & set(params)


def test_the_computation_stays_traced():
    """cfg.device = "cpu" would copy traced tokens to the host; tlens_forward runs on
    torchax's device; the generic bridge refuses the model and points there."""
    model = hooked()
    with pytest.raises(TypeError, match="tlens_forward"):
        torch_bridge.torch_forward(model)
    forward, params = torch_bridge.bridge(model, eval_mode=True)  # without the device fix
    with pytest.raises(jax.errors.TracerArrayConversionError):
        jax.jit(forward)(params, np.zeros((1, CTX), np.int32))
    with pytest.raises(TypeError, match="TransformerLens"):
        tlens_forward(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_tlens_loss_runs_in_estimate_llc(tokens):
    model = hooked()

    def per_example(logits, targets):
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], -1)

    loss_fn, params = tlens_loss(model, per_example)
    windows = np.random.default_rng(1).integers(0, VOCAB, (64, CTX + 1))
    data = (jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_llc(
            loss_fn,
            params,
            data,
            num_chains=2,
            num_steps=40,
            step_size=1e-4,
            localization=100.0,
            batch_size=16,
        )
    assert np.isfinite(res.llc_mean) and res.llc_trace.shape == (2, 30)
