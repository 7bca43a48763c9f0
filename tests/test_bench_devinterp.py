"""benchmarks/bench_devinterp.py runs and writes a valid report (its timings are not tested).

devinterp (with torch) is the optional ``compare`` extra: where it is installed the
benchmark runs both libraries, elsewhere (CI) it reports devinterp as absent and runs
slt_jax alone. Each run is a fresh process, so the benchmark's ``jax.clear_caches()`` and
torch thread setting do not touch the rest of the suite.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_devinterp.py"


def _devinterp_ran(report) -> bool:
    """Whether the benchmark ran devinterp; never where torch or devinterp is not installed."""
    ran = not report["devinterp"].startswith(("absent", "disabled"))
    if not all(importlib.util.find_spec(name) for name in ("torch", "devinterp")):
        assert not ran and report["devinterp"].startswith("absent"), report["devinterp"]
    return ran


def _run(tmp_path, *args, timeout=300):
    out_json = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *args, "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "targets:" in run.stdout
    return json.loads(out_json.read_text())


def _check_workload(entry, *, devinterp_expected: bool):
    ours = entry["slt_jax"]
    for key in ("cold_s", "run_s", "compile_s", "chain_steps_per_s", "flops_per_s"):
        assert ours[key] > 0 or key == "compile_s", (key, ours[key])
    assert np.isfinite(ours["llc"]), ours["llc"]  # neither NaN nor ±inf
    assert entry["flop_counts"]["sgld_step"] > 0
    theirs = entry["devinterp"]
    if devinterp_expected:
        assert theirs["status"] == "measured"
        assert theirs["run_s"] > 0 and theirs["llc_stderr"] >= 0
        assert entry["same_function_relative_difference"] < 1e-4
        assert set(entry["ratio"]) >= {"cold", "warm"}
        assert isinstance(entry["agreement"]["agree"], bool)
    else:
        assert theirs["status"] != "measured" and "ratio" not in entry


def test_quick_subset_writes_a_report(tmp_path):
    """W0 at tiny size (the default suite's share; the full --quick run is marked slow)."""
    report = _run(tmp_path, "--workloads", "W0", "--no-accuracy")
    installed = _devinterp_ran(report)
    assert report["quick"] is True
    assert report["machine"]["jax_backend"]
    assert report["matmul"]["jax_flops_per_s"] > 0
    assert list(report["workloads"]) == ["W0"]
    _check_workload(report["workloads"]["W0"], devinterp_expected=installed)
    names = [t["name"] for t in report["targets"]]
    assert any(name.startswith("W0") for name in names)
    assert {t["status"] for t in report["targets"]} <= {"met", "NOT met", "not measured"}


@pytest.mark.slow
def test_quick_mode_runs_every_workload(tmp_path):
    report = _run(tmp_path, timeout=600)
    installed = _devinterp_ran(report)
    for name in ("W0", "W1", "W2"):
        _check_workload(report["workloads"][name], devinterp_expected=installed)
    assert len(report["workloads"]["W2"]["slt_jax"]["runs"][0]["llc_per_checkpoint"]) == 3
    if report["machine"]["jax_backend"] == "cpu":
        assert report["workloads"]["W3"]["status"].startswith("not measured")
    accuracy = report["accuracy_per_second"]
    assert set(accuracy) == {"W0", "regular"}
    assert accuracy["regular"]["known_llc"] > 0
    assert "reached" in accuracy["W0"]["slt_jax_paired"]


@pytest.mark.slow
def test_runs_without_devinterp(tmp_path):
    report = _run(tmp_path, "--workloads", "W0", "--no-accuracy", "--no-devinterp")
    _check_workload(report["workloads"]["W0"], devinterp_expected=False)
    assert report["devinterp"].startswith("disabled")
