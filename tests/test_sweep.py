"""estimate_llc_checkpoints: equals per-checkpoint runs, chunking, resume, kill, CLI."""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sweep_factory
from conftest import CountingLoss

import slt_jax as sj
import slt_jax._src.engine.programs
import slt_jax._src.io.store
import slt_jax._src.jobs.memory
from slt_jax._src.io import store

KW = dict(
    num_chains=3, num_steps=120, step_size=1e-3, localization=10.0, batch_size=64, progress=False
)
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        yield


def _assert_same(a, b, exact=False):
    for name in ("llc_trace", "loss_trace", "llc_per_chain", "diverged", "init_loss", "steps"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if exact:
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-5, err_msg=name)


def test_each_checkpoint_equals_estimate_llc_alone():
    snapshots, steps = sweep_factory.checkpoints(4)
    data = sweep_factory.data()
    res = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, data, steps=steps, seed=5, **KW
    )
    assert res.steps.tolist() == steps and res.llc_trace.shape[:2] == (4, 3)
    kw = {k: v for k, v in KW.items() if k != "progress"}
    for k, step in enumerate(steps):
        alone = sj.estimate_llc(
            sweep_factory.loss_fn,
            snapshots[k],
            data,
            seed=jax.random.fold_in(jax.random.key(5), step),
            **kw,
        )
        np.testing.assert_allclose(res.llc_trace[k], alone.llc_trace, rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(res.init_loss[k], alone.init_loss, rtol=1e-6)
        np.testing.assert_allclose(res.llc_mean[k], alone.llc_mean, rtol=1e-4, atol=1e-5)


def test_every_input_kind_and_chunking_give_the_same_result(tmp_path):
    snapshots, steps = sweep_factory.checkpoints(5)
    data = sweep_factory.data()
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(tmp_path, step, snapshot)
    reference = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, data, steps=steps, chunk_size=5, **KW
    )
    stacked = jax.tree.map(lambda *x: np.stack(x), *snapshots)
    inputs = [
        dict(checkpoints=stacked, steps=steps),
        dict(checkpoints=sj.CheckpointSet.from_stacked(stacked, steps)),
        dict(checkpoints=str(tmp_path)),
        dict(checkpoints=snapshots[::-1], steps=steps[::-1]),  # sorted by step
    ]
    for chunk in (1, 2, 3, None):
        for given in inputs:
            res = sj.estimate_llc_checkpoints(
                sweep_factory.loss_fn, data=data, **given, **{**KW, "chunk_size": chunk}
            )
            _assert_same(res, reference)


def test_one_compilation_per_chunk_shape():
    snapshots, steps = sweep_factory.checkpoints(4)
    loss_fn = CountingLoss(sweep_factory.loss_fn)
    kw = {**KW, "chunk_size": 2}
    sj.estimate_llc_checkpoints(loss_fn, snapshots, sweep_factory.data(), steps=steps, **kw)
    compiled = slt_jax._src.engine.programs.num_compiled()
    traced = loss_fn.traces
    shifted = jax.tree.map(lambda x: x + 0.01, snapshots)
    sj.estimate_llc_checkpoints(
        loss_fn,
        shifted,
        sweep_factory.data(),
        steps=steps,
        seed=3,
        **{**kw, "step_size": 5e-4, "localization": 3.0},
    )
    assert slt_jax._src.engine.programs.num_compiled() == compiled
    assert loss_fn.traces <= traced + 1  # the eval_shape validation may re-trace


def test_results_stream_to_disk_and_resume_without_recomputing(tmp_path, monkeypatch):
    snapshots, steps = sweep_factory.checkpoints(5)
    data = sweep_factory.data()
    out = tmp_path / "results"
    kw = {**KW, "chunk_size": 2}
    first = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, data, steps=steps, out=out, **kw
    )
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "chunk-00000.nc",
        "chunk-00001.nc",
        "chunk-00002.nc",
        "manifest.json",
    ]
    _assert_same(sj.load_results(out), first, exact=True)
    ds = sj.load_results(out).to_xarray()
    assert ds["llc_trace"].dims == ("checkpoint", "chain", "draw") and "config" in ds.attrs

    # Everything is on disk: re-running computes nothing.
    def fail(*args, **kwargs):
        raise AssertionError("a finished chunk was recomputed")

    monkeypatch.setattr(slt_jax._src.engine.programs, "run_items", fail)
    again = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, data, steps=steps, out=out, **kw
    )
    _assert_same(again, first, exact=True)

    # Resume after losing a chunk: only that chunk runs, and matches.
    monkeypatch.undo()
    (out / "chunk-00001.nc").unlink()
    resumed = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn,
        snapshots,
        data,
        steps=steps,
        out=out,
        chunk_size=None,
        **{k: v for k, v in kw.items() if k != "chunk_size"},
    )
    _assert_same(resumed, first, exact=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(step_size=2e-3), r"config.step_size: 0.001 \(stored\) vs 0.002 \(now\)"),
        (dict(num_chains=4), r"config.num_chains: 3 \(stored\) vs 4 \(now\)"),
        (dict(seed=1), r"key: "),
        (dict(chunk_size=3), r"chunk_size: 2 \(stored\) vs 3 \(now\)"),
    ],
)
def test_a_different_configuration_on_the_same_output_is_an_error(tmp_path, change, message):
    snapshots, steps = sweep_factory.checkpoints(4)
    data = sweep_factory.data()
    kw = {**KW, "chunk_size": 2}
    sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, data, steps=steps, out=tmp_path, **kw
    )
    with pytest.raises(ValueError, match="different configuration") as error:
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn, snapshots, data, steps=steps, out=tmp_path, **{**kw, **change}
        )
    assert error.match(message)
    with pytest.raises(ValueError, match=r"steps: \[0, 3, 10, 30\] \(stored\)"):
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn, snapshots[:3], data, steps=steps[:3], out=tmp_path, **kw
        )


def _cli(*args):
    return [sys.executable, "-m", "slt_jax", *args]


def test_sigkill_mid_sweep_then_resume_equals_an_uninterrupted_run(tmp_path):
    snapshots, steps = sweep_factory.checkpoints(6)
    checkpoints = tmp_path / "ckpts"
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(checkpoints, step, snapshot)
    options = [
        "--model",
        str(ROOT / "tests" / "sweep_factory.py") + ":factory",
        "--chains",
        "4",
        "--steps",
        "4000",
        "--step-size",
        "1e-3",
        "--localization",
        "10",
        "--batch-size",
        "64",
        "--chunk-size",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(
        _cli("llc", str(checkpoints), "--out", str(killed), *options),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (killed / "chunk-00001.nc").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no chunk was written in 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = sorted(p.name for p in killed.glob("chunk-*.nc"))
    assert 2 <= len(done) < 6, done  # killed in the middle of the sweep
    for p in done:  # every file that exists is whole
        store._read(killed / p)
    run = subprocess.run(
        _cli("llc", str(checkpoints), "--out", str(killed), *options),
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    # The uninterrupted run, through the same command in this process (same XLA flags and
    # programs; one process start less).
    from slt_jax.__main__ import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["llc", str(checkpoints), "--out", str(whole), *options])
    assert not list(killed.glob(".*tmp*"))
    _assert_same(sj.load_results(killed), sj.load_results(whole), exact=True)


def test_cli_llc_then_plot(tmp_path, capsys):
    from slt_jax.__main__ import main

    snapshots, steps = sweep_factory.checkpoints(3)
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(tmp_path / "ckpts", step, snapshot, format="msgpack")
    main(
        [
            "llc",
            str(tmp_path / "ckpts"),
            "--model",
            "sweep_factory:factory",
            "--out",
            str(tmp_path / "res"),
            "--steps",
            "100",
            "--chains",
            "2",
            "--batch-size",
            "64",
            "--step-size",
            "1e-3",
            "--localization",
            "10",
            "--memory-budget",
            "1.5GiB",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert "flags" in out and "3 checkpoints in" in out
    main(["plot", str(tmp_path / "res")])
    assert (tmp_path / "res.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as exit:
        main(["llc", str(tmp_path / "ckpts"), "--model", "nocolon", "--out", str(tmp_path)])
    assert exit.value.code == 2 and "MODULE:FACTORY" in capsys.readouterr().err


def test_cli_byte_counts():
    from slt_jax._src.cli import parse_bytes

    assert parse_bytes("2e9") == parse_bytes("2GB") == parse_bytes("2000000000") == 2 * 10**9
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("512 MiB") == 2**29
    for bad in ("abc", "2XB", "0", "-5", "nan", "inf"):
        with pytest.raises(Exception, match="byte"):
            parse_bytes(bad)


def test_a_checkpoint_whose_chains_all_diverge_is_nan_and_the_sweep_goes_on():
    def loss_fn(w, batch):
        return jnp.where(jnp.abs(w[0]) > 3.0, jnp.nan, 0.5 * w[0] ** 2 * jnp.mean(batch))

    # The second centre starts beyond the cliff: every chain diverges at once.
    with pytest.warns(sj.LLCDiagnosticWarning, match=r"1 of 2 checkpoints \(steps 1\)"):
        res = sj.estimate_llc_checkpoints(
            loss_fn,
            [jnp.zeros(1), jnp.full(1, 5.0)],
            jnp.ones((100, 1)),
            num_chains=2,
            num_steps=50,
            batch_size=100,
            progress=False,
        )
    assert np.isfinite(res.llc_mean[0]) and np.isnan(res.llc_mean[1])
    assert res.diverged[1].all() and not res.diverged[0].any()


def test_mismatched_checkpoints_fail_before_sampling(monkeypatch):
    monkeypatch.setattr(slt_jax._src.engine.programs, "run_items", None)  # calling it would fail
    good = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}
    bad = {"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"checkpoint 1.*\['w'\]"):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, [good, bad], sweep_factory.data(), **KW)


def test_auto_chunk_size_fits_the_budget():
    fixed, per = 1000, 300  # a program of fixed + per·chunk bytes
    measure = lambda chunk: fixed + per * chunk  # noqa: E731
    assert slt_jax._src.jobs.memory.auto_chunk_size(measure, 64, budget=10**9) == 64
    chunk = slt_jax._src.jobs.memory.auto_chunk_size(measure, 64, budget=fixed + per * 10 + 5)
    assert chunk == 10
    assert slt_jax._src.jobs.memory.auto_chunk_size(measure, 64, budget=10) == 1


def test_automatic_chunk_follows_xla_memory_analysis():
    snapshots, steps = sweep_factory.checkpoints(6)
    data = sweep_factory.data()
    full, two = (_program_bytes(chunk, data) for chunk in (6, 2))
    assert full > two
    res = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, data, steps=steps, memory_budget=two, **KW
    )
    assert res.llc_mean.shape == (6,)


@pytest.mark.parametrize(
    "budget, error, message",
    [
        (2.5e6 + 0.5, TypeError, "whole number of bytes"),
        ("1GB", TypeError, "whole number of bytes"),
        (True, TypeError, "whole number of bytes"),
        (0, ValueError, ">= 1 byte"),
        (-1e6, ValueError, ">= 1 byte"),
        (float("inf"), TypeError, "whole number of bytes"),
    ],
)
def test_memory_budget_checked(budget, error, message):
    snapshots, steps = sweep_factory.checkpoints(2)
    with pytest.raises(error, match=message):
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn, snapshots, sweep_factory.data(), memory_budget=budget, **KW
        )


def test_memory_budget_as_an_integral_float():
    from slt_jax._src import validation as _validation

    assert _validation.check_bytes("memory_budget", 2e9) == 2_000_000_000
    assert _validation.check_bytes("memory_budget", np.int64(7)) == 7


def _program_bytes(chunk, data, chains=3):
    from slt_jax._src.jobs import orchestrate

    config, key = sj.LLCConfig(
        num_chains=chains, num_steps=120, step_size=1e-3, localization=10.0, batch_size=64
    ).resolve(512)
    centers = {"w": np.zeros((chunk, 3), np.float32), "b": np.zeros((chunk, 1), np.float32)}
    keys = orchestrate.checkpoint_keys(key, np.arange(chunk), chains)
    groups = [orchestrate.Group(config, j, keys[j]) for j in range(chunk)]
    lowered = orchestrate.lower(
        sweep_factory.loss_fn,
        centers,
        data,
        groups,
        mesh=slt_jax._src.engine.programs.resolve_mesh(),
    )
    return slt_jax._src.jobs.memory.program_bytes(lowered.compile())


def test_llc_function_inside_jit_and_a_training_scan():
    data = sweep_factory.data()
    params = {"w": jnp.zeros(3), "b": jnp.zeros(1)}
    llc = sj.llc_function(
        sweep_factory.loss_fn,
        num_chains=2,
        num_steps=80,
        step_size=1e-3,
        localization=10.0,
        batch_size=64,
    )
    key = jax.random.key(4)
    inside = jax.jit(llc)(key, params, data)
    alone = sj.estimate_llc(
        sweep_factory.loss_fn,
        params,
        data,
        num_chains=2,
        num_steps=80,
        step_size=1e-3,
        localization=10.0,
        batch_size=64,
        seed=key,
    )
    np.testing.assert_allclose(inside.llc_per_chain, alone.llc_per_chain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inside.llc_mean, alone.llc_mean, rtol=1e-4, atol=1e-5)

    @jax.jit
    def train(params, data):
        def step(params, t):
            grads = jax.grad(sweep_factory.loss_fn)(params, data)
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
            estimate = jax.lax.cond(
                t % 10 == 9,
                lambda: llc(jax.random.fold_in(key, t), params, data).llc_mean,
                lambda: jnp.nan,
            )
            return params, estimate

        return jax.lax.scan(step, params, jnp.arange(30))

    final, estimates = train(params, data)
    estimates = np.asarray(estimates)
    assert np.isnan(estimates[np.arange(30) % 10 != 9]).all()
    assert np.isfinite(estimates[9::10]).all()
    # The estimate made inside the training scan at its last step is the one made outside
    # it, for the same key and parameters.
    outside = jax.jit(llc)(jax.random.fold_in(key, 29), final, data)
    np.testing.assert_allclose(estimates[-1], outside.llc_mean, rtol=1e-4, atol=1e-5)


def test_changed_checkpoints_or_data_with_the_same_shapes_are_caught(tmp_path):
    snapshots, steps = sweep_factory.checkpoints(3)
    x, y = sweep_factory.data()
    kw = {**KW, "chunk_size": 2}
    sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, snapshots, (x, y), steps=steps, out=tmp_path, **kw
    )
    retrained = [dict(s, w=s["w"] + 1e-3) for s in snapshots]  # same shapes, new values
    with pytest.raises(ValueError, match="checkpoint_hashes"):
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn, retrained, (x, y), steps=steps, out=tmp_path, **kw
        )
    with pytest.raises(ValueError, match="data_hash"):
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn, snapshots, (x[::-1], y[::-1]), steps=steps, out=tmp_path, **kw
        )


def test_a_second_writer_on_the_same_output_is_refused(tmp_path):
    manifest = {"config": {}, "chunk_size": 1}
    with store.ResultStore(tmp_path, manifest):
        with pytest.raises(ValueError, match="being written by another run"):
            store.ResultStore(tmp_path, manifest)
    store.ResultStore(tmp_path, manifest).close()  # released: fine again


def test_a_different_platform_only_warns(tmp_path):
    manifest = {"config": {}, "chunk_size": 1, "platform": {"jax": "0.0", "backend": "tpu"}}
    store.ResultStore(tmp_path, manifest).close()
    now = {**manifest, "platform": {"jax": "9.9", "backend": "cpu"}}
    with pytest.warns(UserWarning, match="may differ at float precision"):
        store.ResultStore(tmp_path, now).close()


# --- the loss function and the output directory are checked ------------------------------------


def _sweep(tmp_path, loss_fn=sweep_factory.loss_fn, **more):
    snapshots, steps = sweep_factory.checkpoints(3)
    kw = {**KW, "chunk_size": 2, **more}
    return sj.estimate_llc_checkpoints(
        loss_fn, snapshots, sweep_factory.data(), steps=steps, out=tmp_path, **kw
    )


def _scaled_loss(scale):
    scale = jnp.asarray(scale, jnp.float32)  # an array the loss closes over: a constant

    def loss_fn(params, batch):
        x, y = batch
        return 0.5 * jnp.mean((x @ (params["w"] * scale) + params["b"] - y) ** 2)

    return loss_fn


def test_a_changed_loss_function_on_the_same_output_is_an_error(tmp_path, monkeypatch):
    out, other = tmp_path / "out", tmp_path / "scaled"
    first = _sweep(out)
    doubled = lambda p, b: 2 * sweep_factory.loss_fn(p, b)  # noqa: E731
    monkeypatch.setattr(slt_jax._src.engine.programs, "lower_items", None)  # no compilation before
    with pytest.raises(ValueError, match="different configuration") as error:
        _sweep(out, doubled, chunk_size=None)
    assert error.match(r"loss_fn\.jaxpr_sha256: '[0-9a-f]+' \(stored\) vs '[0-9a-f]+' \(now\)")
    monkeypatch.undo()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["loss_fn"]) == {"jaxpr_sha256", "constants_sha256"}
    # The same computation, another Python function: it resumes.
    _assert_same(_sweep(out, lambda p, b: sweep_factory.loss_fn(p, b)), first, exact=True)

    # Only the values of an array it closes over differ.
    _sweep(other, _scaled_loss(np.ones(3)))
    with pytest.raises(ValueError, match="different configuration") as error:
        _sweep(other, _scaled_loss(np.full(3, 1.5)))
    assert error.match(r"loss_fn\.constants_sha256") and "jaxpr" not in str(error.value)


def test_equivalent_settings_resume(tmp_path):
    """seed=0 and seed=key(0) give the same chain keys; friction=50 is friction=50.0."""
    first = _sweep(tmp_path, seed=0, sampler="sghmc(friction=50)", step_size=1e-3)
    resumed = _sweep(tmp_path, seed=jax.random.key(0), sampler=sj.samplers.SGHMC(friction=50.0))
    _assert_same(resumed, first, exact=True)
    with pytest.raises(ValueError, match="different configuration"):
        _sweep(tmp_path, seed=1, sampler="sghmc(friction=50)")


def test_the_loss_is_not_compared_across_jax_versions(tmp_path):
    first = _sweep(tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["platform"]["jax"] = "0.0.1"
    manifest["loss_fn"]["jaxpr_sha256"] = "written by another version"
    path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="the loss function could not be checked") as caught:
        resumed = _sweep(tmp_path)
    assert any("JAX 0.0.1" in str(w.message) for w in caught)
    _assert_same(resumed, first, exact=True)


def test_out_must_be_new_empty_or_a_results_directory(tmp_path):
    manifest = {"config": {}, "chunk_size": 1}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for text in ('{"name": "another program"}', "not json {", "[1, 2]"):
        (foreign / "manifest.json").write_text(text)
        for attempt in (
            lambda: store.ResultStore(foreign, manifest),
            lambda: sj.load_results(foreign),
            lambda: store.stored_chunk_size(foreign),
        ):
            with pytest.raises(ValueError, match="not a slt_jax results manifest") as error:
                attempt()
            assert str(foreign / "manifest.json") in str(error.value)
    assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json"]  # no lock left

    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty \(notes.txt\) but has no manifest.json"):
        store.ResultStore(user, manifest)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]

    for bad, error in (("", ValueError), ("  ", ValueError), (3, TypeError), (b"x", TypeError)):
        with pytest.raises(error, match="`out`"):
            store.ResultStore(bad, manifest)

    # Only a run's own leftovers (the lock, torn temporary files) may be there.
    leftovers = tmp_path / "leftovers"
    leftovers.mkdir()
    (leftovers / ".lock").touch()
    (leftovers / ".manifest.json.tmp-123").write_text("{")
    store.ResultStore(leftovers, manifest).close()
    assert sorted(p.name for p in leftovers.iterdir()) == [".lock", "manifest.json"]


def test_clean_up_removes_only_the_library_temporary_files(tmp_path):
    manifest = {"config": {}, "chunk_size": 1}
    store.ResultStore(tmp_path, manifest).close()
    ours = [".chunk-00003.nc.tmp-4242", ".manifest.json.tmp-17"]
    theirs = [".vimrc.tmp-backup", ".notes.txt.tmp-1", ".chunk-1.nc.tmp-x", "chunk-00000 copy.nc"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    with store.ResultStore(tmp_path, manifest) as opened:
        assert opened.finished_chunks() == set()  # "chunk-00000 copy.nc" is no chunk
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lock", "manifest.json", *theirs])


def test_a_stray_copy_of_a_chunk_is_ignored(tmp_path):
    first = _sweep(tmp_path)
    shutil.copy(tmp_path / "chunk-00000.nc", tmp_path / "chunk-00000 copy.nc")
    shutil.copy(tmp_path / "chunk-00000.nc", tmp_path / "chunk-1.nc")
    _assert_same(_sweep(tmp_path), first, exact=True)
    _assert_same(sj.load_results(tmp_path), first, exact=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    with store.ResultStore(tmp_path, manifest) as opened:
        assert opened.finished_chunks() == {0, 1}


OUT_PROBLEMS = {
    "file": "is not a directory",
    "locked": "being written by another run",
    "foreign": "manifest.json' is not a slt_jax results manifest",
    "empty string": "empty path",
    "not empty": r"is not empty \(a.txt\)",
}


@pytest.mark.parametrize("case", OUT_PROBLEMS)
def test_out_is_checked_before_the_chunk_size_is_measured(tmp_path, monkeypatch, case):
    def fail(*args, **kwargs):
        raise AssertionError("compiled before `out` was checked")

    monkeypatch.setattr(slt_jax._src.engine.programs, "lower_items", fail)
    monkeypatch.setattr(slt_jax._src.engine.programs, "run_items", fail)
    out = "" if case == "empty string" else tmp_path / "out"
    if case == "file":
        out.write_text("x")
    elif case != "empty string":
        out.mkdir()
    if case == "foreign":
        (out / "manifest.json").write_text('{"experiment": 3}')
    elif case == "not empty":
        (out / "a.txt").write_text("x")
    with contextlib.ExitStack() as stack:
        if case == "locked":  # another run writes it and has not written its manifest yet
            lock = stack.enter_context(open(out / ".lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=OUT_PROBLEMS[case]):
            _sweep(out, chunk_size=None, memory_budget=10**9)


def test_format_picks_the_snapshots_of_a_mixed_directory(tmp_path):
    snapshots, steps = sweep_factory.checkpoints(3)
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(tmp_path, step, snapshot)
    sj.save_checkpoint(tmp_path, 7, snapshots[0], format="msgpack")
    data = sweep_factory.data()
    with pytest.raises(ValueError, match="mixes checkpoint formats.*pass format="):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, tmp_path, data, **KW)
    res = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn, tmp_path, data, format="safetensors", **KW
    )
    _assert_same(
        res,
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, steps=steps, **KW),
        exact=True,
    )
    with pytest.raises(ValueError, match="no orbax checkpoints"):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, tmp_path, data, format="orbax", **KW)
    with pytest.raises(ValueError, match="format='msgpack' applies to a checkpoint directory"):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, format="msgpack", **KW)


def test_cli_user_errors_are_messages_and_plot_names(tmp_path, capsys, monkeypatch):
    from slt_jax.__main__ import main

    snapshots, steps = sweep_factory.checkpoints(3)
    ckpts = tmp_path / "ckpts"
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(ckpts, step, snapshot)
    sj.save_checkpoint(ckpts, 7, snapshots[0], format="msgpack")
    out = tmp_path / "run.v2"
    model = ["--model", "sweep_factory:factory"]
    options = ["--steps", "40", "--chains", "2", "--batch-size", "64", "--chunk-size", "2"]
    options += ["--step-size", "1e-3", "--localization", "10", "--no-progress"]
    llc = ["llc", str(ckpts), *model, "--out", str(out), *options]

    def user_error(argv, message):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        err = capsys.readouterr().err
        assert exit.value.code == 2, err
        assert err.startswith("slt-jax: error: ") and message in err, err
        assert "Traceback" not in err

    user_error(llc, "mixes checkpoint formats")
    main([*llc, "--format", "safetensors"])
    assert "3 checkpoints in" in capsys.readouterr().out
    user_error([*llc, "--format", "safetensors", "--seed", "1"], "different configuration")
    user_error([*llc, "--format", "msgpack", "--chains", "0"], "`num_chains` must be >= 1")
    user_error([*llc, "--format", "msgpack", "--sampler", "sghmc(5.0)"], "bad sampler spec")
    user_error(["llc", str(tmp_path / "nope"), *model, "--out", str(tmp_path / "o")], "nope")
    user_error(
        ["llc", str(ckpts), "--model", "no_such_module_x:factory", "--out", str(tmp_path / "o")],
        "no_such_module_x",
    )
    user_error(["llc", str(ckpts), "--model", "nocolon", "--out", str(tmp_path)], "MODULE:FACTORY")
    user_error(["plot", str(tmp_path / "nothere")], "not a results directory")
    buggy = tmp_path / "buggy.py"
    buggy.write_text("def factory():\n    raise RuntimeError('a bug')\n")
    with pytest.raises(RuntimeError, match="a bug"):  # a real bug keeps its traceback
        main(["llc", str(ckpts), "--model", f"{buggy}:factory", "--out", str(tmp_path / "o")])

    # The default PNG sits next to the results directory, its whole name kept.
    main(["plot", str(out)])
    png = tmp_path / "run.v2.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    png.unlink()
    monkeypatch.chdir(out)
    main(["plot", "."])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_grouped_warnings_name_the_step_whose_value_they_quote():
    with pytest.warns(sj.LLCDiagnosticWarning) as caught:
        sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn,
            *sweep_factory.checkpoints(3)[:1],
            sweep_factory.data(),
            steps=[5, 6, 7],
            **{**KW, "num_steps": 20},
        )
    grouped = [str(w.message) for w in caught if "3 of 3 checkpoints" in str(w.message)]
    assert grouped and all("(steps 5, 6, 7); at step 5: " in m for m in grouped)
