"""Compact restricted chains (:mod:`slt_jax._src.restricted`) against the mask path.

The compact path is the mask path computed on the selected entries only, with the same keys
and the same noise values (the full-size draw's entries, :func:`normal_entries`), so the two
agree to float32 rounding: the loss traces and ‖w − w*‖, ‖∇log p‖, ‖noise‖ to a relative
1e-5 (a few ulps of float32, accumulated over a dozen steps). The MALA acceptance
``exp(min(0, log r))`` to 1e-3 absolute: ``log r`` holds ``Σ_i (a_i − b_i − ε/2·g_i)²/(2ε)``
over the k moving coordinates, terms of order 1/2 each computed from position differences
``a_i − b_i ≈ √ε = 1e-2`` of coordinates of size ~0.3 (float32 ulp 3e-8): a relative
rounding of ~3e-6 per term, up to ~1e-3 over k ≈ 500 terms.
"""

import os
import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax._src import refine, restricted
from slt_jax._src.engine import programs
from slt_jax._src.samplers.noise import normal_entries
from slt_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig

DIAGNOSTICS = ("weight_distance", "grad_norm", "noise_norm")
KW = dict(
    num_chains=2,
    num_steps=14,
    num_burnin=4,
    batch_size=8,
    step_size=1e-4,
    localization=100.0,
    nbeta=30.0,
    diagnostic_every=2,
    seed=3,
)


def test_normal_entries_are_the_full_draws_entries():
    for size, seed in ((1, 0), (7, 1), (1000, 2), (100_003, 3)):
        key = jax.random.fold_in(jax.random.key(seed), 11)
        index = np.random.default_rng(seed).integers(0, size, 40).astype(np.int32)
        full = jax.random.normal(key, (size,))
        np.testing.assert_array_equal(normal_entries(key, index, jnp.float32), full[index])
    keys = jax.random.split(jax.random.key(5), 3)  # under vmap, as in the chains
    index = jnp.arange(9, 40)
    some = jax.vmap(lambda k: normal_entries(k, index, jnp.float32))(keys)
    full = jax.vmap(lambda k: jax.random.normal(k, (64,))[index])(keys)
    np.testing.assert_array_equal(some, full)


@pytest.fixture(scope="module")
def neox():
    config = GPTNeoXConfig(
        vocab_size=31,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
    )
    model = GPTNeoX(config, rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    tokens = np.random.default_rng(0).integers(0, 31, (64, 9)).astype(np.int32)
    return loss_fn, params, tokens, sj.lm.layout(model)


def _scattered(path, leaf):
    """Every 7th entry of the first layer's fused QKV weight: no slice of any axis."""
    if path == "layers/0/attention/query_key_value/weight":
        return np.arange(np.size(leaf)).reshape(np.shape(leaf)) % 7 == 2
    return False


REFINEMENTS = {
    "l0h0": "l0h0",
    "l0h1": "l0h1",
    "l0 mlp": "l0 mlp",
    "mixed": ["l0h1", "l0 mlp"],
    "scattered": _scattered,
}


def _run(neox, refinements, *, compact, monkeypatch, data=None, **kw):
    loss_fn, params, tokens, layout = neox
    masks = sj.refine.masks(params, refinements, layout=layout)
    with monkeypatch.context() as patch:
        if not compact:
            patch.setattr(restricted, "compactable", lambda *args: False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
            before = programs.num_compiled()
            res = sj.estimate_refined_llc(
                loss_fn, params, tokens if data is None else data, masks, **(KW | kw)
            )
            return res, programs.num_compiled() - before


def _assert_same(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_allclose(a[name].loss_trace, b[name].loss_trace, rtol=1e-5, err_msg=name)
        # λ̂ = nβ(mean L − L(w*)): the losses' rounding (1e-5 relative) times nβ.
        atol = KW["nbeta"] * 1e-5 * abs(float(b[name].init_loss))
        np.testing.assert_allclose(a[name].llc_per_chain, b[name].llc_per_chain, atol=atol)
        np.testing.assert_allclose(float(a[name].init_loss), float(b[name].init_loss), rtol=1e-6)
        for field in DIAGNOSTICS:
            np.testing.assert_allclose(
                getattr(a[name], field), getattr(b[name], field), rtol=1e-5, err_msg=field
            )
        np.testing.assert_allclose(a[name].mala_acceptance, b[name].mala_acceptance, atol=1e-3)
        assert a[name].mala_acceptance.size == b[name].mala_acceptance.size


@pytest.fixture(scope="module")
def compact_run(neox):
    """The compact chains of REFINEMENTS, and how many programs they compiled: the
    reference of the streamed test too (the same chains: keys are common to refinements)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run(neox, REFINEMENTS, compact=True, monkeypatch=monkeypatch)


def test_compact_chains_equal_the_mask_path_one_program_per_shape_group(
    neox, compact_run, monkeypatch
):
    _, params, _, layout = neox
    compact, compiled = compact_run
    masked, mask_compiled = _run(neox, REFINEMENTS, compact=False, monkeypatch=monkeypatch)
    _assert_same(compact, masked)
    assert compact.num_selected == masked.num_selected
    # {l0h0, l0h1}, {l0 mlp}, {mixed}, {scattered}: four programs; the mask path one.
    plans = restricted.plan(params, sj.refine.masks(params, REFINEMENTS, layout=layout), "sgld")
    assert [p.names for p in plans] == [("l0h0", "l0h1"), ("l0 mlp",), ("mixed",), ("scattered",)]
    assert compiled == 4 and mask_compiled == 1
    # A head's chain state holds its layer's attention leaves only, and of them its share.
    paths = sj.refine.leaf_paths(params)
    heads = plans[0].restriction
    assert all(paths[j].startswith("layers/0/attention/") for j in heads.leaves)
    sizes = [np.size(jax.tree.leaves(params)[j]) for j in heads.leaves]
    assert all(k * 2 <= size for k, size in zip(heads.sizes, sizes, strict=True))


@pytest.mark.slow  # beyond the default suite's time budget
def test_preconditioned_compact_chains_equal_the_mask_path(neox, monkeypatch):
    refinements = {"l0h0": "l0h0", "scattered": _scattered}
    kw = dict(sampler="rmsprop_sgld", monkeypatch=monkeypatch)
    compact, _ = _run(neox, refinements, compact=True, **kw)
    _assert_same(compact, _run(neox, refinements, compact=False, **kw)[0])


@pytest.mark.slow  # beyond the default suite's time budget
def test_observers_see_the_same_parameters(neox, monkeypatch):
    """Observables and per-token probe statistics evaluate the full parameters rebuilt from
    the compact position: equal to the mask path's."""
    _, _, tokens, _ = neox
    kw = dict(observables={"held out": tokens[:16]}, probe=tokens[:3], per_token=True)
    kw |= dict(observe_every=2, probe_trace=True, diagnostic_every=0)
    refinements = {"l0h1": "l0h1", "l0 mlp": "l0 mlp"}
    compact, _ = _run(neox, refinements, compact=True, monkeypatch=monkeypatch, **kw)
    masked, _ = _run(neox, refinements, compact=False, monkeypatch=monkeypatch, **kw)
    _assert_same(compact, masked)
    for name in refinements:
        a, b = compact.probes[name], masked.probes[name]
        np.testing.assert_allclose(a.probe_trace, b.probe_trace, rtol=1e-5)
        np.testing.assert_allclose(
            compact.observables[name].llc_mean, masked.observables[name].llc_mean, rtol=1e-4
        )


def test_streamed_data_equal_in_memory_data(neox, compact_run, monkeypatch):
    _, _, tokens, _ = neox
    refinements = {"l0h0": "l0h0", "l0h1": "l0h1", "l0 mlp": "l0 mlp"}
    # In memory: these refinements' chains of the compact run of all REFINEMENTS.
    memory = {name: compact_run[0][name] for name in refinements}
    source = sj.HostArrays(tokens, vocab_size=31, device_bytes=2 * 2 * 8 * 9 * 4 * 5)
    streamed, _ = _run(neox, refinements, data=source, compact=True, monkeypatch=monkeypatch)
    _assert_same(streamed, memory)


def test_samplers_that_cannot_be_compacted_run_the_mask_path(neox):
    _, params, _, layout = neox
    masks = sj.refine.masks(params, {"l0h0": "l0h0", "l0h1": "l0h1"}, layout=layout)
    for sampler in ("sghmc", "sgnht", "mala"):
        (only,) = restricted.plan(params, masks, sampler)
        assert isinstance(only.restriction, refine.MaskRestriction)
        assert only.names == ("l0h0", "l0h1")
    assert all(
        isinstance(p.restriction, restricted.CompactRestriction)
        for p in restricted.plan(params, masks, "sgld")
    )


def test_a_selector_that_selects_nothing_is_an_error_before_compiling(neox):
    loss_fn, params, tokens, layout = neox
    nothing = jax.tree.map(lambda x: np.zeros(np.shape(x), bool), params)
    before = programs.num_compiled()
    for refinements, match in (
        ({"none": nothing}, "selects no coordinate"),
        ({"none": "no/such/*"}, "selects no coordinate"),
        ({"none": lambda path, leaf: False}, "selects no coordinate"),
        ({"l5h0": "l5h0"}, "l5h0"),
    ):
        with pytest.raises(ValueError, match=match):
            sj.estimate_refined_llc(loss_fn, params, tokens, refinements, layout=layout, **KW)
    assert programs.num_compiled() == before
    with pytest.raises(ValueError, match="selects no coordinate"):
        restricted.plan(params, {"none": nothing}, "sgld")


def test_sharded_compact_chains_equal_one_device():
    """tests/restricted_check.py with 8 forced host devices: items and items × model meshes
    (and the mask path on 2 × 4) give one device's chains, to the float rounding of the
    partitioned arithmetic (rtol 2e-4, as tests/model_parallel_check.py)."""
    here = pathlib.Path(__file__).resolve().parent
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
        "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
        "PYTHONWARNINGS": "ignore",
    }
    run = subprocess.run(
        [sys.executable, str(here / "restricted_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]
