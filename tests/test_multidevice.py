"""Sharding over devices and processes, on CPU (forced host devices, localhost processes)."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_each

HERE = pathlib.Path(__file__).resolve().parent


def _env(devices: int) -> dict:
    return {
        **os.environ,
        "XLA_FLAGS": " ".join(
            [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"]
        ),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "PYTHONWARNINGS": "ignore",
    }


EIGHT_DEVICE_SCRIPTS = ("multidevice_check.py", "model_parallel_check.py")


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    """The 8-device scripts, run one after the other in one process (one start of Python
    and JAX for both): each script's ``returncode``, ``stdout`` and ``stderr``."""
    return run_each({s: HERE / s for s in EIGHT_DEVICE_SCRIPTS}, env=_env(8), timeout=900)


def test_eight_devices_equal_one_with_uneven_counts_and_one_compilation(eight_devices):
    run = eight_devices["multidevice_check.py"]
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]


def test_a_model_axis_splits_each_chain_and_gives_the_same_chains(eight_devices):
    """2 × 4 (items × model) and 8-way model meshes, FSDP and tensor-parallel rules, equal
    one device; XLA's per-device argument bytes fall ~4× with the model axis; bad partition
    rules are errors before compiling (tests/model_parallel_check.py)."""
    run = eight_devices["model_parallel_check.py"]
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_pair(argv, env) -> list[tuple[int, str, str]]:
    """Run ``argv(i)`` for processes i = 0, 1 at once; ``(returncode, stdout, stderr)`` each."""
    procs = [
        subprocess.Popen(
            argv(i), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


def _run_pair(tmp_path):
    port = _free_port()
    script = str(HERE / "multiprocess_check.py")
    results = _spawn_pair(
        lambda i: [sys.executable, script, str(i), str(port), str(tmp_path)], _env(2)
    )
    for i, (code, out, err) in enumerate(results):
        assert code == 0 and f"OK {i}" in out, err[-3000:]


def test_two_processes_joined_by_jax_distributed_equal_one_process(tmp_path):
    import warnings

    import sweep_factory

    import slt_jax as sj

    _run_pair(tmp_path)
    chunks = sorted((tmp_path / "results").glob("chunk-*.nc"))
    written_at = [p.stat().st_mtime_ns for p in chunks]
    _run_pair(tmp_path)  # resumes: every chunk is on disk, none is rewritten
    assert [p.stat().st_mtime_ns for p in chunks] == written_at

    snapshots, steps = sweep_factory.checkpoints(3)
    kw = dict(num_chains=3, num_steps=150, step_size=1e-3, localization=10.0, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        single = sj.estimate_llc(sweep_factory.loss_fn, snapshots[1], sweep_factory.data(), **kw)
        sweep = sj.estimate_llc_checkpoints(
            sweep_factory.loss_fn,
            snapshots,
            sweep_factory.data(),
            steps=steps,
            chunk_size=2,
            progress=False,
            **kw,
        )
    for i in range(2):  # every process holds the whole result
        joined = np.load(tmp_path / f"process{i}.npz")
        np.testing.assert_allclose(joined["single"], single.llc_trace, rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(joined["sweep"], sweep.llc_trace, rtol=2e-5, atol=1e-5)
    # Written once, by process 0, and readable as one result.
    written = sj.load_results(tmp_path / "results")
    np.testing.assert_allclose(written.llc_trace, sweep.llc_trace, rtol=2e-5, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "results").glob("chunk-*.nc")) == [
        "chunk-00000.nc",
        "chunk-00001.nc",
    ]


@pytest.mark.slow  # ~2-4 min; test_two_processes_joined_by_jax_distributed_equal_one_process
# covers the join itself in the default suite
def test_cli_distributed_flags_join_two_processes(tmp_path):
    import sweep_factory

    import slt_jax as sj

    snapshots, steps = sweep_factory.checkpoints(2)
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(tmp_path / "ckpts", step, snapshot)
    port = _free_port()
    common = [
        "llc",
        str(tmp_path / "ckpts"),
        "--model",
        f"{HERE / 'sweep_factory.py'}:factory",
        "--out",
        str(tmp_path / "res"),
        "--chains",
        "2",
        "--steps",
        "60",
        "--batch-size",
        "64",
        "--no-progress",
        "--distributed",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
    ]
    results = _spawn_pair(
        lambda i: [sys.executable, "-m", "slt_jax", *common, "--process-id", str(i)], _env(1)
    )
    for code, _, _ in results:
        assert code == 0, "\n---\n".join(err[-1500:] for _, _, err in results)
    outputs = [(out, err) for _, out, err in results]
    # Process 0 reports; process 1 prints no table (Gloo may print its own connection line).
    assert "on 2 device(s)" in outputs[0][0] and "LLC" not in outputs[1][0]
    assert sj.load_results(tmp_path / "res").steps.tolist() == steps


def test_importing_slt_jax_leaves_the_backend_uninitialised():
    """So that `import slt_jax; jax.distributed.initialize()` works on a cluster."""
    code = (
        "import jax._src.xla_bridge as xb, slt_jax, slt_jax.__main__; "
        "assert not xb._backends, 'initialised'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
