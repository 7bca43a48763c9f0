"""``benchmarks/lm_auto.py --quick`` end to end: ``step_size="auto"`` on a tiny GPT-NeoX
through the command line, the LLC and per-head refined LLCs at one shared setting, for two
seeds (slow: it trains a model and runs the CLI twice)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import types

import jax
import numpy as np
import pytest

from slt_jax._src.jobs import escalate
from slt_jax._src.jobs.autogrid import Scales

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


@dataclasses.dataclass(frozen=True)
class _Stage:
    """What the escalation reads of a judged stage (cells: step size × localization)."""

    localizations: np.ndarray
    problems: tuple
    results: tuple
    shape: tuple
    fits: tuple = ()
    recommended: dict | None = None
    trusted: bool = False
    explanation: str = "(the stage's explanation)"


def test_escalation_stopped_early_does_not_say_the_budget_was_spent(monkeypatch):
    """The LM case of benchmarks/lm_auto.py: at γ the chains wander, so the escalation
    localizes more; at 10γ the step is healthy but the localization shrinks λ̂, and γ, the
    weaker one, was left, so no further stage can verify the setting: the escalation stops
    after two stages of a 2e6 budget. The fallback's explanation said "the budget was
    spent"; it says why it stopped and what was spent."""
    monkeypatch.setattr(
        escalate, "measure_scales", lambda *a, **k: Scales(100, 50.0, 0.5, 40.0, 1.0)
    )
    prepared = types.SimpleNamespace(
        config=types.SimpleNamespace(nbeta=50.0, batch_size=8), loss_fn=None, params=None, data=None
    )

    def stage(step_sizes, localizations, chains, steps, key):
        cells = [(e, g) for e in step_sizes for g in localizations]  # ε-major, as a grid
        config = lambda e, g: types.SimpleNamespace(  # noqa: E731
            step_size=e, localization=g, nbeta=50.0, num_chains=chains, diagnostic_every=0
        )
        results = tuple(
            types.SimpleNamespace(config=config(e, g), llc_mean=10.0, llc_stderr=0.1)
            for e, g in cells
        )
        first.extend(localizations[:1] if not first else [])  # the first stage's γ
        problems = tuple(
            ("wandering",) if g == first[0] else ("localization_bias",) for _, g in cells
        )
        shape = (len(step_sizes), len(localizations), 1)
        return _Stage(np.asarray(localizations), problems, results, shape)

    first = []

    outcome = escalate.run(
        stage,
        prepared,
        localization=None,
        num_steps=1000,
        budget=2_000_000,
        key=jax.random.key(0),
        final_chains=None,
    )
    assert len(outcome.stages) == 2 and outcome.chain_steps == 16_000
    explanation = outcome.calibration.explanation
    assert outcome.calibration.trusted is False
    assert "budget was spent" not in explanation
    assert "of the cells with no other problem, the one whose biases are least" in explanation
    assert "no further stage could verify it (16,000 of 2,000,000 chain-steps spent)" in explanation
