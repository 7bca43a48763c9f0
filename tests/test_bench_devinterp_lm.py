"""benchmarks/bench_devinterp_lm.py --quick runs and writes a valid report (timings untested).

devinterp 2.x is not in the test environment (it is the ``compare`` extra, in a venv of its
own): the benchmark then runs slt_jax alone on the tiny GPT-NeoX and reports devinterp as
absent. Where devinterp 2.x is installed, both sides run and are checked too. The run is a
fresh process (its workers are more), so nothing it does touches the rest of the suite.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_devinterp_lm.py"

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
    reason="building the tiny GPT-NeoX needs torch and transformers (the test extra)",
)


def _devinterp_2() -> bool:
    if not all(importlib.util.find_spec(m) for m in ("devinterp", "datasets")):
        return False
    from importlib.metadata import version

    return version("devinterp").startswith("2.")


def test_quick_writes_a_report(tmp_path):
    out_json, out_md = tmp_path / "report.json", tmp_path / "report.md"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["quick"] is True
    assert report["nbeta"] > 0 and report["model"]["num_params"] > 0
    assert math.isfinite(report["model"]["final_loss"])

    ours = report["slt_jax"]
    assert ours["status"] == "measured", ours
    assert ours["same_function_relative_difference"] < 1e-4
    assert ours["run_s"] > 0 and ours["cold_s"] >= ours["run_s"] * 0.5
    assert ours["chain_steps_per_s"] > 0 and ours["peak_rss_mib"] > 0
    assert math.isfinite(ours["llc"]) and ours["stderr"] >= 0
    assert math.isfinite(ours["llc_all_steps"]["llc"])
    assert len(ours["runs"]) == 2  # cold and warm
    settings = report["settings"]
    assert len(ours["runs"][0]["llc_per_chain"]) == settings["num_chains"]

    theirs = report["devinterp"]
    if _devinterp_2():
        assert theirs["status"] == "measured", theirs
        assert math.isfinite(theirs["llc"]) and theirs["run_s"] > 0
        assert abs(report["init_loss_difference"]) < 1e-4
        assert isinstance(report["agreement"]["agree"], bool)
    else:
        assert theirs["status"].startswith("absent"), theirs
        assert report["devinterp_status"].startswith("absent")
        assert "agreement" not in report
    table = out_md.read_text()
    assert "| slt_jax |" in table and "| devinterp |" in table
