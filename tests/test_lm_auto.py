"""``benchmarks/lm_auto.py --quick`` end to end: ``step_size="auto"`` on a tiny GPT-NeoX
through the command line, the LLC and per-head refined LLCs at one shared setting, for two
seeds (slow: it trains a model and runs the CLI twice)."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("lm_auto", ROOT / "benchmarks" / "lm_auto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_lm_auto_quick_end_to_end(tmp_path):
    bench = _bench()
    report = bench.main(["--quick", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    runs = report["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    steps = list(bench.QUICK["checkpoints"])
    for run in runs:
        assert run["steps"] == steps
        # both seeds give finite estimates and standard errors at every checkpoint
        assert all(math.isfinite(x) for x in run["llc"] + run["se"])
        setting = run["setting"]
        assert setting["step_size"] > 0 and setting["localization"] > 0 and setting["nbeta"] > 0
        # one shared setting: the heads ran at the LLC calibration's ε, γ, nβ and length
        heads = run["heads_setting"]
        for name in ("step_size", "localization", "nbeta"):
            assert heads[name] == setting[name], name
        assert heads["num_steps"] == setting["num_steps"]
        assert heads["num_chains"] == setting["num_chains"]
        # every attention head: 2 layers × 2 heads, each finite at every checkpoint
        assert sorted(run["heads"]) == ["l0h0", "l0h1", "l1h0", "l1h1"]
        for head in run["heads"].values():
            assert all(math.isfinite(x) for x in head["llc"])
        # the calibration's cost is recorded, and compared with the estimate's
        assert run["calibration_chain_steps"] > 0
        assert run["final_chain_steps"] == setting["num_chains"] * setting["num_steps"] * len(steps)
    assert (tmp_path / "r.json").exists()
    table = bench.table(runs)
    assert "calibration" in table and "l1h1" in table
