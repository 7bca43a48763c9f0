"""`slt-jax llc` on a directory of Hugging Face checkpoints with a token file: the LLC of
every checkpoint and the refined LLC of every head, and the bad inputs it refuses."""

import json
import warnings

import numpy as np
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax._src.cli import main

CONFIG = sj.lm.GPTNeoXConfig(
    vocab_size=32,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
)
SEQ = 8
SAMPLER = ["--chains", "2", "--steps", "24", "--batch-size", "16", "--no-progress"]
SAMPLER += ["--step-size", "1e-4", "--localization", "300", "--diagnostic-every", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_run")
    for step in (0, 50, 500):
        sj.lm.save_model(sj.lm.GPTNeoX(CONFIG, rngs=nnx.Rngs(step)), root / "run" / f"step{step}")
    rng = np.random.default_rng(0)
    rng.integers(0, CONFIG.vocab_size, 40 * (SEQ + 1)).astype(np.uint16).tofile(root / "tok.u16")
    return root


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        yield


def _llc(run, out, *extra):
    main(["llc", str(run / "run"), "--tokens", str(run / "tok.u16"), "--seq-len", str(SEQ),
          "--out", str(out), *SAMPLER, *extra])  # fmt: skip


def test_llc_and_heads_of_every_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "llc"
    _llc(run, out, "--heads", "all")
    result = sj.load_results(out)
    assert result.steps.tolist() == [0, 50, 500]
    assert np.isfinite(result.llc_mean).all()
    heads = sj.load_refined_results(out / "heads")
    assert heads.refinement.values.tolist() == ["l0h0", "l0h1", "l1h0", "l1h1"]
    assert heads.step.values.tolist() == [0, 50, 500]
    assert np.isfinite(heads.llc_mean.values).all()
    # the heads ran with the sweep's setting and on the same token windows
    config = json.loads(heads.attrs["config"])
    assert config["step_size"] == 1e-4 and config["localization"] == 300
    # the same numbers as the library called directly on one checkpoint
    model, checkpoints = sj.lm.load_checkpoints(run / "run")
    loss_fn, _ = sj.lm.next_token_loss(model)
    data = sj.TokenWindows(run / "tok.u16", seq_len=SEQ + 1, dtype="uint16")
    import jax

    params = jax.tree.map(lambda x: x[-1], checkpoints.params)
    one = sj.estimate_refined_llc(
        loss_fn, params, data, {"l1h1": "l1h1"}, layout=sj.lm.layout(model),
        num_chains=2, num_steps=24, batch_size=16, step_size=1e-4, localization=300.0,
        diagnostic_every=0,
    )  # fmt: skip
    assert one.num_selected["l1h1"] == int(heads.num_selected.sel(refinement="l1h1"))
    # and a rerun resumes: nothing left to do, the same tables
    _llc(run, out, "--heads", "all")
    again = sj.load_refined_results(out / "heads")
    np.testing.assert_array_equal(again.llc_mean.values, heads.llc_mean.values)


def test_named_components(run, tmp_path):
    out = tmp_path / "llc"
    _llc(run, out, "--heads", "l0h1, l1 mlp ,embed")
    heads = sj.load_refined_results(out / "heads")
    assert heads.refinement.values.tolist() == ["l0h1", "l1 mlp", "embed"]


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    return capsys.readouterr().err


def test_bad_input_is_a_clear_error(run, tmp_path, capsys):
    base = ["llc", str(run / "run"), "--seq-len", str(SEQ), "--out", str(tmp_path / "o")]
    big = tmp_path / "big.u16"
    np.full(40 * (SEQ + 1), CONFIG.vocab_size + 3, np.uint16).tofile(big)
    assert "outside" in _error(capsys, [*base, "--tokens", str(big), *SAMPLER])
    assert "head 5 does not exist" in _error(
        capsys, [*base, "--tokens", str(run / "tok.u16"), "--heads", "l0h5", *SAMPLER]
    )
    assert "--tokens FILE" in _error(capsys, base)
    other = tmp_path / "other" / "step1"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    (other / "model.safetensors").write_bytes(b"")
    err = _error(
        capsys, ["llc", str(tmp_path / "other"), "--tokens", str(run / "tok.u16"),
                 "--out", str(tmp_path / "o2"), *SAMPLER],
    )  # fmt: skip
    assert "bloom" in err
