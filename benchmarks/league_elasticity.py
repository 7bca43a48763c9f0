"""The localization check of ``step_size="auto"`` on league cases: the elasticity a cell
reads from its own draws against the finite differences of λ̂ over a decade of γ.

For each case named, at the step size the league's call chose, SGLD runs at ``γ/10``, ``γ``
and ``10γ`` (the γ the call chose; 4 chains, the case's data and batch size, the league's
run length capped by ``--steps``, half burn-in, distances recorded every 10 draws). Each
cell's elasticity ``e = d log λ̂/d log γ = −(γ/2)·Cov(nβ L_n, ‖w − w*‖²)/λ̂``
(:func:`slt_jax._src.estimators.diagnostics.localization_elasticity`) is printed beside
``Δ log λ̂ / Δ log γ`` between the neighbouring cells, the slope it estimates at first order.

    python benchmarks/league_elasticity.py \\
        --league benchmarks/results/calibration_league_final36_seed0.json \\
        --cases tms/0,tms/3,monomial/0,logistic_regression/1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import calibration_league as league  # noqa: E402

import slt_jax as sj  # noqa: E402
from slt_jax._src.estimators.diagnostics import localization_elasticity  # noqa: E402

#: Distances recorded every this many draws.
EVERY = 10


def case_rows(case, step_size: float, localization: float, steps: int) -> dict:
    """SGLD at ``localization·{0.1, 1, 10}``: λ̂, its elasticity and the finite slopes."""
    loss_fn, w_star, data = league.build(case)
    cells = []
    for gamma in (localization / 10, localization, localization * 10):
        start = time.perf_counter()
        result = sj.estimate_llc(
            loss_fn,
            w_star,
            data,
            step_size=step_size,
            localization=gamma,
            batch_size=case.batch_size,
            num_chains=4,
            num_steps=steps,
            seed=1,
            diagnostic_every=EVERY,
        )
        e, se = localization_elasticity(result)
        cells.append(
            {
                "localization": gamma,
                "llc": float(result.llc_mean),
                "rel_error": (float(result.llc_mean) - case.llc) / case.llc,
                "elasticity": e,
                "elasticity_stderr": se,
                "wall_s": time.perf_counter() - start,
            }
        )
    values = [cell["llc"] for cell in cells]
    slopes = [float(np.log(values[k + 1] / values[k]) / np.log(10)) for k in range(2)]
    return {
        "case": case.name,
        "llc": case.llc,
        "step_size": step_size,
        "num_steps": steps,
        "cells": cells,
        "finite_slopes": slopes,  # γ/10 → γ, γ → 10γ
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--league", required=True, help="a calibration_league.py JSON")
    parser.add_argument("--cases", required=True, help="comma-separated case names")
    parser.add_argument("--steps", type=int, default=80_000, help="the most steps per chain")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    saved = json.loads(Path(args.league).read_text())
    rows = {r["case"]: r for r in saved["cases"]}
    unknown = [name for name in args.cases.split(",") if name not in rows]
    if unknown:
        raise ValueError(f"--cases names cases not in {args.league}: {unknown}")
    out = []
    print(f"{'case':24s} {'γ':>9s} {'λ̂ err':>8s} {'e ± se':>16s}   slope to next γ")
    for name in args.cases.split(","):
        row = rows[name]
        if row["estimate"] is None:
            print(f"{name:24s} (no estimate in the league: skipped)")
            continue
        family, index = name.split("/")
        case = league.draw_case(saved["seed"], family, int(index))
        steps = min(int(row["num_steps"]), args.steps)
        result = case_rows(case, row["step_size"], row["localization"], steps)
        out.append(result)
        for k, cell in enumerate(result["cells"]):
            slope = result["finite_slopes"][k] if k < 2 else float("nan")
            print(
                f"{name if k == 0 else '':24s} {cell['localization']:9.3g} "
                f"{100 * cell['rel_error']:+7.1f}% "
                f"{cell['elasticity']:+8.3f} ± {cell['elasticity_stderr']:.3f}   {slope:+.3f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": saved["seed"], "rows": out}, indent=1))
    return out


if __name__ == "__main__":
    main()
