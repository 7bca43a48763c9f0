"""benchmarks/accelerator.py --smoke runs every row, quickly, and writes its JSON and Markdown
(its timings are not tested). A fresh process, so its ``jax.clear_caches()`` does not touch
the rest of the suite."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import time

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "accelerator.py"


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_accelerator_smoke(tmp_path):
    out = tmp_path / "acc"
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert elapsed < 90
    report = json.loads((out / "accelerator.json").read_text())
    assert report["smoke"] is True
    assert set(report["workloads"]) == {"W0", "W1", "W2", "W3"}
    for name, entry in report["workloads"].items():
        ours = entry.get("slt_jax")
        assert ours is not None, (name, entry.get("status"))
        assert _positive(ours["chain_steps_per_s"]), (name, ours)
        assert _positive(ours["warm_s"]) and ours["compile_s"] >= 0
        assert _positive(ours["flops_per_s"])
        assert math.isfinite(ours["llc"])
        assert entry["devinterp"]["status"]  # measured, or why not
    checkpoints = report["checkpoints"]
    for path in ("batched", "loop"):
        assert _positive(checkpoints[path]["chain_steps_per_s"]), checkpoints
    assert _positive(report["calibrate"]["chain_steps_per_s"]), report["calibrate"]
    sharded = report["sharded"]
    assert sharded["status"] == "measured" or sharded["status"].startswith("not available")
    if sharded["status"] == "measured":
        assert _positive(sharded["chain_steps_per_s"])
    if report["environment"]["backend"] == "cpu":
        assert report["environment"]["peak_flops"] is None
        assert report["workloads"]["W1"]["slt_jax"]["mfu"] is None  # MFU: n/a on a CPU
    lm = report["lm"]
    assert set(lm) == {"pythia160m_smoke", "heads"}
    for row in (lm["pythia160m_smoke"]["slt_jax"], lm["heads"]["slt_jax"]):
        assert _positive(row["chain_steps_per_s"]) and _positive(row["tokens_per_s"]), row
        assert math.isfinite(row["llc"]) and row["mfu"] is None  # no peak on a CPU
    for peer in ("devinterp", "canonical"):
        assert lm["pythia160m_smoke"][peer]["status"]  # measured, or why not
    markdown = (out / "accelerator.md").read_text()
    assert "| W1: " in markdown and "calibrate" in markdown and "sharded" in markdown
    assert "| pythia160m_smoke | slt_jax |" in markdown and "| heads | slt_jax |" in markdown
