r"""``step_size="auto"`` with its stages compiled once (blocks of a runtime length) against
one compiled scan per stage length, side by side in fresh processes.

The escalating calibration (:mod:`slt_jax._src.jobs.escalate`) changes its run length from
stage to stage. A chain program of one scan has its length compiled in, so each new length
compiled again: on small models the compilations were half of the call's wall time. The
stages now run their chains in blocks of ``escalate.BLOCK_STEPS`` steps with the length a
runtime value (:mod:`slt_jax._src.engine.blocks`), one compilation for every stage.

Part 1 (``--cases``): the user's call, ``sj.estimate_llc(..., step_size="auto",
batch_size=B)``, on calibration-league cases, each in a fresh process, the two ways
alternating (``--block-steps 0`` is the one-scan way), ``--repeats`` times. Per way: the
median wall time, the XLA backend compile time (summed over every compilation of the
call), the chain programs compiled, the chain-steps and the estimate (the same chains
either way: they must agree).

Part 2 (``--steady``): the run time alone. One grid of 4 settings × 4 chains × ``--steps``
steps (a calibration stage) on one case, in one process: a first call per way (compiling),
then ``--repeats`` calls of each way alternating (nothing compiled: the steady state),
blocks against one scan, medians.

    python benchmarks/bench_calibration_compile.py --repeats 3
    python benchmarks/bench_calibration_compile.py --steady --steps 100000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CASES = "0/monomial/0,0/logistic_regression/1,1/linear_regression/4,1/tms/6"


def _child(case_name: str, block_steps: int) -> dict:
    """One call in this process (a fresh one): what part 1 records."""
    sys.path.insert(0, str(HERE))
    import calibration_league as league
    from jax._src import monitoring

    import slt_jax as sj
    from slt_jax._src.engine import programs
    from slt_jax._src.jobs import escalate

    escalate.BLOCK_STEPS = block_steps
    compile_s = []
    monitoring.register_event_duration_secs_listener(
        lambda name, secs, **_: (
            compile_s.append(secs) if name.endswith("backend_compile_duration") else None
        )
    )
    seed, family, index = case_name.split("/")
    case = league.draw_case(int(seed), family, int(index))
    loss_fn, w_star, data = league.build(case)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sj.estimate_llc(
            loss_fn, w_star, data, step_size="auto", batch_size=case.batch_size, seed=case.seed
        )
    return {
        "wall_s": time.perf_counter() - start,
        "compile_s": sum(compile_s),
        "chain_programs": programs.num_compiled(),
        "chain_steps": int(result.calibration.chain_steps),
        "estimate": float(result.llc_mean),
    }


def _steady(case_name: str, steps: int, repeats: int) -> dict:
    """Part 2 in this process: one stage-sized grid per way, compiled by a first call, then
    ``repeats`` warm calls of each way alternating; their times."""
    sys.path.insert(0, str(HERE))
    import calibration_league as league

    import slt_jax as sj
    from slt_jax._src.jobs import escalate, grid, orchestrate

    seed, family, index = case_name.split("/")
    case = league.draw_case(int(seed), family, int(index))
    loss_fn, w_star, data = league.build(case)
    config = sj.LLCConfig(
        step_size=1e-5, localization=1.0, num_chains=4, num_steps=steps,
        batch_size=case.batch_size, seed=0,
    )  # fmt: skip
    prepared = orchestrate.prepare_run(loss_fn, w_star, data, config)
    cells = [
        dict(step_size=e, localization=g, nbeta=None) for e in (5e-6, 1e-5) for g in (0.1, 1.0)
    ]
    ways = {"blocks": escalate.BLOCK_STEPS, "one scan": 0}
    out = {name: {"first_s": None, "warm_s": []} for name in ways}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attempt in range(repeats + 1):
            for name, k in ways.items():
                start = time.perf_counter()
                run = dataclasses.replace(prepared, block_steps=k)
                results = grid.run_grid(run, cells, config=config, common_keys=True)
                took = time.perf_counter() - start
                if attempt == 0:
                    out[name]["first_s"] = took
                else:
                    out[name]["warm_s"].append(took)
                out[name]["llc"] = float(results[0].llc_mean)
    return out


def _spawn(args: list[str]) -> dict:
    run = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=3600
    )
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steady", action="store_true")
    parser.add_argument("--steady-case", default="0/dln/6")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.child is not None:  # one measurement, printed as JSON on the last line
        if args.steady:
            out = _steady(args.child, args.steps, args.repeats)
        else:
            out = _child(args.child, args.block_steps)
        print(json.dumps(out))
        return out

    from slt_jax._src.jobs import escalate

    ways = {"blocks": escalate.BLOCK_STEPS, "one scan": 0}
    report = {"cases": {}, "block_steps": escalate.BLOCK_STEPS}
    if args.steady:
        measured = _spawn(
            ["--child", args.steady_case, "--steady", "--steps", str(args.steps)]
            + ["--repeats", str(args.repeats)]
        )
        rows = {
            name: {**r, "warm_median_s": statistics.median(r["warm_s"])}
            for name, r in measured.items()
        }
        report["steady"] = rows
        print(
            f"steady state, {args.steady_case}, 4 settings × 4 chains × {args.steps} steps "
            f"(medians of {args.repeats}):"
        )
        for name, r in rows.items():
            print(f"  {name:9s} first {r['first_s']:7.2f} s  warm {r['warm_median_s']:7.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in r['warm_s'])})  λ̂ {r['llc']:.6g}")  # fmt: skip
        ratio = rows["blocks"]["warm_median_s"] / rows["one scan"]["warm_median_s"]
        print(f"  warm time, blocks / one scan: {ratio:.3f}")
    else:
        print(f"{'case':28s} {'way':9s} {'wall s':>7s} {'compile s':>9s} {'programs':>8s} "
              f"{'chain-steps':>11s} {'λ̂':>10s}")  # fmt: skip
        for case in args.cases.split(","):
            runs = {name: [] for name in ways}
            for _ in range(args.repeats):
                for name, k in ways.items():  # alternating: the machine's drift hits both
                    runs[name].append(_spawn(["--child", case, "--block-steps", str(k)]))
            summary = {}
            for name, rs in runs.items():
                summary[name] = {
                    "wall_s": statistics.median(r["wall_s"] for r in rs),
                    "compile_s": statistics.median(r["compile_s"] for r in rs),
                    "chain_programs": rs[0]["chain_programs"],
                    "chain_steps": rs[0]["chain_steps"],
                    "estimate": rs[0]["estimate"],
                    "runs": rs,
                }
                s = summary[name]
                print(f"{case:28s} {name:9s} {s['wall_s']:7.1f} {s['compile_s']:9.1f} "
                      f"{s['chain_programs']:8d} {s['chain_steps']:11,d} {s['estimate']:10.5g}",
                      flush=True)  # fmt: skip
            b, o = summary["blocks"], summary["one scan"]
            same = b["chain_steps"] == o["chain_steps"] and abs(
                b["estimate"] - o["estimate"]
            ) <= 1e-4 * abs(o["estimate"])
            summary["wall_ratio"] = b["wall_s"] / o["wall_s"]
            summary["same_chains"] = bool(same)
            print(f"{'':28s} wall blocks / one scan: {summary['wall_ratio']:.2f}"
                  f"{'' if same else '   (the two ways disagree!)'}")  # fmt: skip
            report["cases"][case] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
