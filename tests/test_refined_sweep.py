"""estimate_refined_llc_checkpoints: one refined-LLC table per checkpoint, equal to
estimate_refined_llc on each, written as it goes and resumed."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax._src.jobs.refined_sweep import (
    estimate_refined_llc_checkpoints,
    load_refined_results,
)

X = np.linspace(-1, 1, 256)[:, None]
Y = 2 * X[:, 0]
SETTINGS = dict(num_steps=300, step_size=2e-3, localization=1.0, num_chains=4)
REFINEMENTS = {"a": "a", "both": "*"}


def loss(w, b):
    return 0.5 * jnp.mean((b[0] * w["a"] + w["b"] - b[1][:, None]) ** 2)


CHECKPOINTS = [{"a": np.array([a]), "b": np.array([0.0])} for a in (1.8, 1.9, 2.0)]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        yield


def test_each_checkpoint_equals_estimate_refined_llc_on_it():
    ds = estimate_refined_llc_checkpoints(
        loss, CHECKPOINTS, (X, Y), REFINEMENTS, steps=[5, 50, 500], progress=False, **SETTINGS
    )
    assert ds.llc_mean.dims == ("step", "refinement")
    assert ds.step.values.tolist() == [5, 50, 500]
    assert ds.num_selected.values.tolist() == [1, 2]
    for k, centre in enumerate(CHECKPOINTS):
        one = sj.estimate_refined_llc(loss, centre, (X, Y), REFINEMENTS, **SETTINGS)
        for i, name in enumerate(REFINEMENTS):
            np.testing.assert_allclose(ds.llc_mean.values[k, i], one[name].llc_mean, rtol=1e-6)
            np.testing.assert_allclose(ds.llc_stderr.values[k, i], one[name].llc_stderr, rtol=1e-6)


def test_it_resumes_and_refuses_other_settings(tmp_path, monkeypatch):
    from slt_jax._src.jobs import refined_sweep

    out = tmp_path / "heads"
    first = estimate_refined_llc_checkpoints(
        loss,
        CHECKPOINTS[:2],
        (X, Y),
        REFINEMENTS,
        steps=[5, 50],
        out=out,
        progress=False,
        **SETTINGS,
    )
    calls = []
    real = refined_sweep.RefinedSweep.run_chunk
    monkeypatch.setattr(
        refined_sweep.RefinedSweep, "run_chunk", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    full = estimate_refined_llc_checkpoints(
        loss,
        CHECKPOINTS,
        (X, Y),
        REFINEMENTS,
        steps=[5, 50, 500],
        out=out,
        progress=False,
        **SETTINGS,
    )
    assert len(calls) == 1  # only the new checkpoint ran
    np.testing.assert_array_equal(full.llc_mean.values[:2], first.llc_mean.values)
    back = load_refined_results(out)
    np.testing.assert_array_equal(back.llc_mean.values, full.llc_mean.values)
    assert back.refinement.values.tolist() == ["a", "both"]
    with pytest.raises(ValueError, match="other settings"):
        estimate_refined_llc_checkpoints(
            loss,
            CHECKPOINTS,
            (X, Y),
            REFINEMENTS,
            steps=[5, 50, 500],
            out=out,
            **{**SETTINGS, "num_steps": 400},
        )
    with pytest.raises(ValueError, match="data differ"):
        estimate_refined_llc_checkpoints(
            loss, CHECKPOINTS, (X, 2 * Y), REFINEMENTS, steps=[5, 50, 500], out=out, **SETTINGS
        )
    moved = [CHECKPOINTS[0], CHECKPOINTS[2], CHECKPOINTS[1]]  # other params at steps 50, 500
    with pytest.raises(ValueError, match="other checkpoints at steps"):
        estimate_refined_llc_checkpoints(
            loss, moved, (X, Y), REFINEMENTS, steps=[5, 50, 500], out=out, **SETTINGS
        )


def test_bad_input_is_refused_before_sampling(tmp_path):
    with pytest.raises(ValueError, match="auto"):
        estimate_refined_llc_checkpoints(
            loss, CHECKPOINTS, (X, Y), REFINEMENTS, step_size="auto", localization=1.0
        )
    with pytest.raises(ValueError, match="selects no coordinate"):
        estimate_refined_llc_checkpoints(loss, CHECKPOINTS, (X, Y), {"none": "nothing*"})
    (tmp_path / "x.txt").write_text("not results")
    with pytest.raises(ValueError, match="not empty"):
        estimate_refined_llc_checkpoints(
            loss, CHECKPOINTS, (X, Y), REFINEMENTS, out=tmp_path, **SETTINGS
        )
    with pytest.raises(ValueError, match="no refined-LLC results"):
        load_refined_results(tmp_path)


def test_a_host_source_is_checked_once_for_the_whole_sweep(monkeypatch):
    tokens = np.random.default_rng(0).integers(0, 5, 40 * 4).astype(np.uint16)
    windows = sj.TokenWindows(tokens, seq_len=4, vocab_size=5)
    calls = []
    real = sj.TokenWindows.check
    monkeypatch.setattr(
        sj.TokenWindows, "check", lambda self, v=None: calls.append(v) or real(self, v)
    )

    def token_loss(w, b):
        return 0.5 * jnp.sum(w["a"] ** 2) + 0.0 * jnp.mean(b)

    estimate_refined_llc_checkpoints(
        token_loss, CHECKPOINTS, windows, REFINEMENTS, progress=False,
        **{**SETTINGS, "batch_size": 8},
    )  # fmt: skip
    assert calls == [None]  # three checkpoints, one read of the source
    bad = sj.TokenWindows(np.full(16, 9, np.uint16), seq_len=4, vocab_size=5)
    for _ in range(2):  # a failed check is not remembered
        with pytest.raises(ValueError, match="outside the vocabulary"):
            estimate_refined_llc_checkpoints(
                token_loss, CHECKPOINTS, bad, REFINEMENTS, **{**SETTINGS, "batch_size": 4}
            )
