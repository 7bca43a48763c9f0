"""benchmarks/calibration_league.py: cases drawn from the seed with their known λ, the quick
league's table and score, and an unknown family refused before anything runs.

A smoke test: it checks what the league records, never how well the calibration does (that
is the benchmark's job).
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import optimized_code_env

from slt_jax import theory
from slt_jax.models import tms

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "calibration_league.py"


@pytest.fixture(scope="module")
def league():
    spec = importlib.util.spec_from_file_location("calibration_league", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _expected_llc(case) -> tuple[float, int]:
    s = case.spec
    if case.family == "dln":
        return theory.dln_learning_coefficient(s["widths"], 0)
    if case.family == "normal_crossing":
        return theory.normal_crossing_learning_coefficient(s["exponents"])
    if case.family == "monomial":
        return theory.monomial_learning_coefficient(s["powers"]), 1
    if case.family == "tms":  # rank H / 2 (tms.kgon_learning_coefficient; the slow test)
        return (3 * (s["k"] + s["num_positive"]) - 1) / 2, 1
    return s["dim"] / 2, 1


def test_cases_drawn_from_the_seed(league):
    cases = league.draw_cases(0)
    assert len(cases) == league.DEFAULT_CASES >= 40
    assert {c.family for c in cases} == set(league.FAMILIES)
    again = league.draw_cases(0)
    assert cases == again  # deterministic
    assert league.draw_cases(1) != cases
    # A case depends on its seed, family and index only: selecting a family keeps its cases.
    dln = league.draw_cases(0, "dln", 7)
    assert dln == [c for c in cases if c.family == "dln"]
    lo, hi = league.N_RANGE
    for case in cases:
        assert (case.llc, case.multiplicity) == pytest.approx(_expected_llc(case))
        assert lo <= case.n <= hi
        assert case.batch_size == case.n or league.BATCH_RANGE[0] <= case.batch_size <= min(
            case.n, league.BATCH_RANGE[1]
        )
        if case.batch_size == case.n:
            assert case.n <= league.FULL_BATCH_MAX_N
        if case.family == "dln":
            assert 3 <= len(case.spec["widths"]) <= 6
            assert all(2 <= w <= 12 for w in case.spec["widths"])


@pytest.mark.slow
def test_tms_table_is_the_oracle(league):
    """TMS_KGONS holds exactly the k-gons (5 <= k <= c <= 8) where the oracle applies."""
    for c in range(5, 9):
        for k in range(5, c + 1):
            for num_positive in range(c - k + 1):
                key = (k, c, num_positive)
                if key in league.TMS_KGONS:
                    lam = tms.kgon_learning_coefficient(k, c, num_positive=num_positive)
                    assert league.TMS_KGONS[key] == lam
                else:
                    with pytest.raises(ValueError, match="saddle"):
                        tms.kgon_learning_coefficient(k, c, num_positive=num_positive)


def test_published_league_is_redrawn(league):
    """The cases of the league in benchmarks/README.md are those the seed draws today."""
    published = json.loads(
        (SCRIPT.parent / "results" / "calibration_league_seed0.json").read_text()
    )
    cases = league.draw_cases(published["seed"], published["families"], len(published["cases"]))
    for row, case in zip(published["cases"], cases, strict=True):
        assert row["case"] == case.name
        assert (row["spec"], row["n"], row["batch_size"]) == (case.spec, case.n, case.batch_size)
        assert (row["llc"], row["multiplicity"], row["seed"]) == (
            case.llc,
            case.multiplicity,
            case.seed,
        )


def test_problems_have_their_minimum_at_w_star(league):
    """w* is a stationary point of L_n (the exact minimum for the fitted families; the TMS
    k-gons are the tms module's own tested critical points)."""
    import jax

    for family in set(league.FAMILIES) - {"tms"}:
        case = league.draw_case(3, family, 0, quick=True)
        loss_fn, w_star, data = league.build(case)
        grad = jax.jit(jax.grad(loss_fn))(w_star, data)
        size = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad))
        assert size < 1e-4, (family, size)
        assert league.num_params(case) == sum(np.size(x) for x in jax.tree.leaves(w_star))


def test_unknown_family_is_an_error_before_anything_runs(league, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a case ran")

    monkeypatch.setattr(league, "run_case", forbidden)
    with pytest.raises(ValueError, match="unknown league family 'dnl'.*dln"):
        league.main(["--families", "dln,dnl", "--quick"])
    with pytest.raises(ValueError, match="no league family"):
        league.check_families("")
    with pytest.raises(ValueError, match="positive integer"):
        league.draw_cases(0, "dln", 0)


def test_quick_league_table_and_score(league, tmp_path):
    # The script as a user runs it, in its own process, with LLVM at its default level (the
    # suite's level 0 would double this test's time: its chains run for tens of thousands
    # of steps; tests/conftest.py).
    out_json = tmp_path / "league.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "0", "--json", str(out_json)],
        env=optimized_code_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed, out = run.stdout, json.loads(out_json.read_text())
    assert out["score"] == league.score(out["cases"])
    rows = out["cases"]
    assert [r["case"] for r in rows] == [f"{f}/0" for f in league.QUICK_FAMILIES]
    assert [r["case"] for r in rows] == [c.name for c in league.draw_cases(0, quick=True)]
    for row in rows:
        assert row["case"] in printed
        assert row["wall_s"] > 0
        assert row["error_kind"] in (None, "CalibrationError")  # no crash
        if row["error"] is not None:
            assert row["estimate"] is None and row["cost_ratio"] is None
            continue
        assert math.isfinite(row["estimate"]) and row["stderr"] >= 0
        assert isinstance(row["trusted"], bool)
        assert row["rel_error"] == pytest.approx((row["estimate"] - row["llc"]) / row["llc"])
        # 8 chains (estimate_llc's default) × the run length the calibration chose
        final = 8 * row["num_steps"]
        assert row["chain_steps_final"] == final and row["num_steps"] >= 200
        assert row["chain_steps_total"] == row["chain_steps_calibration"] + final
        assert row["cost_ratio"] == pytest.approx(row["chain_steps_total"] / final)
    score = out["score"]
    assert set(score) >= {
        "num_cases",
        "within_15",
        "trusted_outside_25",
        "errors",
        "crashes",
        "median_cost_ratio",
        "median_wall_s",
    }
    assert score["num_cases"] == 3
    within = np.mean([r["error"] is None and abs(r["rel_error"]) <= 0.15 for r in rows])
    assert score["within_15"] == pytest.approx(within)
    assert "| family | cases | within ±15 %" in printed
    for line in ("within ±15 %", "trusted and outside ±25 %", "errors", "median cost"):
        assert line in printed


def test_dln_localized_posterior_exact_on_one_layer(tmp_path):
    """benchmarks/dln_localized_posterior.py samples f(N) = E[N·K(u)] under
    exp(−N·K(u) − ½‖u‖²). With one layer K = ½‖u‖² and the posterior is Gaussian with
    precision N + 1, so f(N) = (d/2)·N/(N + 1) exactly; the tolerance is five standard
    errors of the mean of N·K over the draws (its variance is (d/2)·(N/(N + 1))²)."""
    script = SCRIPT.parent / "dln_localized_posterior.py"
    out = tmp_path / "f.json"
    chains, draws = 4, 300
    args = ["--widths", "3-4", "--log-n", "1", "--chains", str(chains), "--warmup", "300"]
    run = subprocess.run(
        [sys.executable, str(script), *args, "--draws", str(draws), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    d, n = 12, 10.0
    expected = d / 2 * n / (n + 1)
    assert result["llc"] == d / 2  # λ of a one-layer (regular) network
    sd_of_mean = math.sqrt(d / 2 * (n / (n + 1)) ** 2 / (chains * draws))
    assert abs(row["f"] - expected) < 5 * sd_of_mean, (row, expected)
    assert row["rel_error"] == pytest.approx((row["f"] - d / 2) / (d / 2))


def test_league_exact_on_a_regular_case(league, tmp_path):
    """benchmarks/league_exact.py samples a league case's localized posterior by NUTS on the
    full data. On a linear regression with ``w*`` at the least-squares fit, ``L_n − L_n(w*)
    = ½ δᵀSδ`` (``S = XᵀX/n``), so the posterior is Gaussian with precision ``nβS + γ``
    and ``f(γ) = ½ Σ nβsᵢ/(nβsᵢ + γ)`` exactly (``sᵢ`` the eigenvalues of ``S``); the
    tolerance is five standard errors of the mean over the draws (variance
    ``½ Σ (nβsᵢ/(nβsᵢ + γ))²``)."""
    script = SCRIPT.parent / "league_exact.py"
    out = tmp_path / "exact.json"
    chains, draws, gamma = 4, 300, 100.0
    run = subprocess.run(
        [sys.executable, str(script), "--case", "1/linear_regression/6", "--gammas", str(gamma)]
        + ["--chains", str(chains), "--warmup", "300", "--draws", str(draws), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    case = league.draw_case(1, "linear_regression", 6)
    _, _, (x, _) = league.build(case)
    x = np.asarray(x, np.float64)
    s = np.linalg.eigvalsh(x.T @ x / case.n)
    nbeta = case.n / math.log(case.n)
    ratio = nbeta * s / (nbeta * s + gamma)
    expected = 0.5 * ratio.sum()
    sd_of_mean = math.sqrt(0.5 * (ratio**2).sum() / (chains * draws))
    assert abs(row["f"] - expected) < 5 * sd_of_mean, (row, expected)
    assert row["nbeta"] == pytest.approx(nbeta)
    assert row["rel_f"] == pytest.approx(row["f"] / case.llc - 1)
