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


# ---- batched across checkpoints (issue 25, item 3) ------------------------------------------


def test_chunks_share_one_compilation_and_equal_the_unchunked_sweep():
    from slt_jax._src.engine import programs

    settings = {**SETTINGS, "num_chains": 5}  # shapes no other test compiles
    whole = estimate_refined_llc_checkpoints(
        loss, CHECKPOINTS, (X, Y), REFINEMENTS, steps=[5, 50, 500], progress=False, **settings
    )
    before = programs.num_compiled()
    chunked = estimate_refined_llc_checkpoints(
        loss, CHECKPOINTS, (X, Y), REFINEMENTS, steps=[5, 50, 500], progress=False,
        chunk_size=2, **settings,
    )  # fmt: skip
    # Chunks [5, 50] and [500 + padding] share each program: one per shape group of the
    # refinements (compact chains: "a" moves one leaf, "both" two).
    assert programs.num_compiled() - before == 2
    assert isinstance(chunked, sj.RefinedCheckpointsResult)
    for name in REFINEMENTS:
        assert chunked[name].steps.tolist() == [5, 50, 500]
        np.testing.assert_allclose(chunked[name].llc_mean, whole[name].llc_mean, rtol=1e-6)
        np.testing.assert_allclose(
            chunked[name].llc_per_chain, whole[name].llc_per_chain, rtol=1e-6
        )
    one = chunked.checkpoint(2)
    assert isinstance(one, sj.RefinedLLCResult) and one.num_selected == {"a": 1, "both": 2}
    ds = chunked.to_xarray()
    assert ds.llc_per_chain.dims == ("checkpoint", "refinement", "chain")
    assert ds.step.values.tolist() == [5, 50, 500]
    assert ds.num_selected.values.tolist() == [1, 2]
    assert "step" in chunked.table() and chunked.table().count("\n") == 2 + 3 * 2 - 1


def test_an_interrupted_sweep_resumes_with_the_missing_chunks_only(tmp_path, monkeypatch):
    from slt_jax._src.jobs import refined_sweep

    out = tmp_path / "heads"
    args = (loss, CHECKPOINTS, (X, Y), REFINEMENTS)
    options = dict(steps=[5, 50, 500], progress=False, chunk_size=1, **SETTINGS)
    real = refined_sweep.RefinedSweep.run_chunk
    calls = []

    def crash_on_second(self, indices, chunk_size, chunk=None):
        calls.append(indices.tolist())
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, indices, chunk_size, chunk)

    monkeypatch.setattr(refined_sweep.RefinedSweep, "run_chunk", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        estimate_refined_llc_checkpoints(*args, out=out, **options)
    assert load_refined_results(out).steps.tolist() == [5]  # the finished chunk is kept
    monkeypatch.setattr(
        refined_sweep.RefinedSweep, "run_chunk", lambda *a: calls.append(a[1].tolist()) or real(*a)
    )
    calls.clear()
    resumed = estimate_refined_llc_checkpoints(*args, out=out, **options)
    assert calls == [[1], [2]]  # steps 50 and 500 only
    monkeypatch.undo()
    whole = estimate_refined_llc_checkpoints(*args, **options)
    back = load_refined_results(out)
    for name in REFINEMENTS:
        np.testing.assert_allclose(resumed[name].llc_mean, whole[name].llc_mean, rtol=1e-6)
        np.testing.assert_array_equal(back[name].llc_mean, resumed[name].llc_mean)
        np.testing.assert_array_equal(back[name].loss_trace, resumed[name].loss_trace)


def test_a_second_writer_and_other_refinements_are_refused(tmp_path):
    from slt_jax._src.io.store import ResultStore
    from slt_jax._src.jobs.refined_sweep import RefinedSweep

    out = tmp_path / "heads"
    args = (loss, CHECKPOINTS, (X, Y))
    estimate_refined_llc_checkpoints(*args, REFINEMENTS, out=out, progress=False, **SETTINGS)
    with ResultStore(out, **RefinedSweep.store_options()):  # another run holds the lock
        with pytest.raises(ValueError, match="being written by another run"):
            estimate_refined_llc_checkpoints(*args, REFINEMENTS, out=out, **SETTINGS)
    with pytest.raises(ValueError, match="refinements"):
        estimate_refined_llc_checkpoints(*args, {"a": "a"}, out=out, **SETTINGS)
    with pytest.raises(ValueError, match="masks_sha256"):  # same names, other coordinates
        estimate_refined_llc_checkpoints(*args, {"a": "b", "both": "*"}, out=out, **SETTINGS)
    with pytest.raises(ValueError, match="observe"):
        estimate_refined_llc_checkpoints(*args, REFINEMENTS, out=out, probe=(X[:3], Y[:3]),
                                         **SETTINGS)  # fmt: skip
    # an estimate_llc_checkpoints directory is not read as refined results, nor the reverse
    with pytest.raises(ValueError, match="slt_jax-refined-checkpoints"):
        sj.load_results(out)


def test_a_selector_that_selects_nothing_is_refused_before_compiling(monkeypatch):
    from slt_jax._src.engine import programs

    monkeypatch.setattr(programs, "lower_items", None)
    monkeypatch.setattr(programs, "run_items", None)
    before = programs.num_compiled()
    with pytest.raises(ValueError, match="'none'.*selects no coordinate"):
        estimate_refined_llc_checkpoints(
            loss, CHECKPOINTS, (X, Y), {"a": "a", "none": "nothing*"}, **SETTINGS
        )
    assert programs.num_compiled() == before


def test_probe_statistics_at_every_checkpoint_equal_the_single_checkpoint_call(tmp_path):
    probe = (X[::32], Y[::32])  # 8 examples
    observables = {"left": (X[:128], Y[:128]), "right": (X[128:], Y[128:])}
    options = dict(probe=probe, observables=observables, observe_every=5, probe_kernel=True)
    settings = {**SETTINGS, "num_chains": 3}
    res = estimate_refined_llc_checkpoints(
        loss, CHECKPOINTS, (X, Y), REFINEMENTS, steps=[5, 50, 500], chunk_size=2,
        out=tmp_path / "probe", progress=False, **options, **settings,
    )  # fmt: skip
    back = load_refined_results(tmp_path / "probe")
    for k, centre in enumerate(CHECKPOINTS):
        one = sj.estimate_refined_llc(loss, centre, (X, Y), REFINEMENTS, **options, **settings)
        for view in (res.checkpoint(k), back.checkpoint(k)):
            for name in REFINEMENTS:
                mine, theirs = view.probes[name], one.probes[name]
                np.testing.assert_allclose(mine.llc(), theirs.llc(), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(
                    mine.susceptibility(), theirs.susceptibility(), rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    mine.kernel_influence(), theirs.kernel_influence(), rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    view.observables[name].llc_mean,
                    one.observables[name].llc_mean,
                    rtol=1e-5,
                )
    ds = res.to_xarray()
    assert ds.probe_llc_mean.dims == ("checkpoint", "refinement", "batch")
    assert ds.susceptibility.dims == ("checkpoint", "refinement", "observable", "batch")
    assert ds.probe_llc_mean.shape == (3, 2, 8)
    assert len(res.probes["a"]) == 3 and res.observables["both"][0].names == ("left", "right")


def _bigram(w, input_ids, attention_mask=None):
    del attention_mask
    return w["logits"][input_ids]


def test_per_token_probe_statistics_at_every_checkpoint(tmp_path):
    """The "embryology" workload on a bigram LM: per-token LLCs and susceptibilities of one
    probe set at every checkpoint, equal to the single-checkpoint call's, and read back."""
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 4, (64, 7)).astype(np.int32)
    loss_fn, w = sj.lm.next_token_loss(_bigram, {"logits": jnp.zeros((4, 4))})
    checkpoints = [{"logits": rng.normal(size=(4, 4)).astype(np.float32)} for _ in range(2)]
    row0 = {"logits": np.arange(16).reshape(4, 4) < 4}
    refinements = {"row0": row0, "all": "*"}
    options = dict(probe=windows[:3], per_token=True, observables={"probe": windows[:3]})
    settings = dict(num_chains=2, num_steps=60, step_size=1e-3, localization=10.0,
                    batch_size=16, nbeta=20.0, diagnostic_every=0)  # fmt: skip
    out = tmp_path / "tokens"
    res = estimate_refined_llc_checkpoints(
        loss_fn, checkpoints, windows, refinements, out=out, progress=False, **options,
        **settings,
    )  # fmt: skip
    back = load_refined_results(out)
    for k, centre in enumerate(checkpoints):
        one = sj.estimate_refined_llc(loss_fn, centre, windows, refinements, **options, **settings)
        for view in (res.checkpoint(k), back.checkpoint(k)):
            for name in refinements:
                mine, theirs = view.probes[name], one.probes[name]
                assert mine.llc().shape == (3, 6)
                np.testing.assert_allclose(mine.llc(), theirs.llc(), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(
                    mine.susceptibility(), theirs.susceptibility(), rtol=1e-5, atol=1e-6
                )
                np.testing.assert_array_equal(mine.input_ids, theirs.input_ids)
    ds = back.to_xarray()
    assert ds.probe_llc_mean.dims == ("checkpoint", "refinement", "batch", "token_pos")
    assert ds.probe_init_loss.dims == ("checkpoint", "batch", "token_pos")


def test_more_checkpoints_rerun_only_the_chunks_whose_steps_changed(tmp_path, monkeypatch):
    from slt_jax._src.jobs import refined_sweep

    out = tmp_path / "grow"
    more = [*CHECKPOINTS, {"a": np.array([2.1]), "b": np.array([0.0])}]
    settings = {**SETTINGS, "num_chains": 2}
    first = estimate_refined_llc_checkpoints(
        loss, CHECKPOINTS, (X, Y), REFINEMENTS, steps=[5, 50, 500], chunk_size=2, out=out,
        progress=False, **settings,
    )  # fmt: skip
    real = refined_sweep.RefinedSweep.run_chunk
    calls = []
    monkeypatch.setattr(
        refined_sweep.RefinedSweep, "run_chunk", lambda *a: calls.append(a[1].tolist()) or real(*a)
    )
    grown = estimate_refined_llc_checkpoints(
        loss, more, (X, Y), REFINEMENTS, steps=[5, 50, 500, 5000], out=out, progress=False,
        **settings,
    )  # fmt: skip
    assert calls == [[2, 3]]  # the stored chunk [500] became [500, 5000]; [5, 50] is kept
    assert load_refined_results(out).steps.tolist() == [5, 50, 500, 5000]
    for name in REFINEMENTS:
        np.testing.assert_allclose(grown[name].llc_mean[:3], first[name].llc_mean, rtol=1e-6)
