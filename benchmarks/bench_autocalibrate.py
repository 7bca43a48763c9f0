"""What the automatic calibration costs against the one estimate it calibrates.

For each model, side by side in one process:

* ``sj.calibrate(loss_fn, params, data)`` with no grid (the two stages, default budget at
  ``--steps``): wall time cold (a fresh loss function: tracing and both stages'
  compilation included) and warm (the same call again: compiled programs cached), and the
  chain-steps it ran;
* ``sj.estimate_llc`` at the recommended setting with ``--chains`` chains × ``--steps``:
  cold and warm the same way.

Compile time is cold − warm. Medians over ``--repeats``; the ratios compare the warm run
times and the chain-steps. The recommended λ̂ is printed beside the known λ.

    python benchmarks/bench_autocalibrate.py [--steps 4000] [--chains 8] [--repeats 3]
                                             [--models quadratic,kgon,dln] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax import theory
from slt_jax.models import tms


def model_quadratic():
    h = jnp.asarray([1.0, 0.5, 0.1, 2.0])
    loss = lambda w, batch: 0.5 * jnp.sum(h * w**2)  # noqa: E731
    return "quadratic d=4 (λ=2)", loss, jnp.zeros(4), jnp.zeros((1000, 1)), 1000, {}, 2.0


def model_kgon():
    point = tms.kgon(6, 6)
    params = {"W": jnp.asarray(point.W, jnp.float32), "b": jnp.asarray(point.b, jnp.float32)}
    loss = lambda p, batch: tms.population_loss(p["W"], p["b"])  # noqa: E731
    return "TMS hexagon, nβ=1e4 (λ=8.5)", loss, params, jnp.zeros((4, 1)), 4, {"nbeta": 1e4}, 8.5


def model_dln(n: int = 100_000):
    widths = (5, 4, 5)
    rng = np.random.default_rng(0)
    data = (
        jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
        jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
    )

    def loss(params, batch):
        x, y = batch
        for w in params:
            x = x @ w
        return 0.5 * jnp.mean(jnp.sum((x - y) ** 2, axis=1))

    params = [jnp.zeros((a, b)) for a, b in zip(widths[:-1], widths[1:], strict=False)]
    lam = theory.dln_learning_coefficient(widths, 0)[0]
    return "DLN 5-4-5 at 0, n=1e5, b=500 (λ=8)", loss, params, data, 500, {}, lam


MODELS = {"quadratic": model_quadratic, "kgon": model_kgon, "dln": model_dln}


def _fresh(loss):
    """A new function object: a cold start traces and compiles again."""
    return lambda p, b: loss(p, b)


def _time(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(getattr(out, "results", [out]))[:1] or 0)
    return time.perf_counter() - start, out


def bench(name, loss, params, data, batch_size, extra, lam, args):
    nbetas = [extra["nbeta"]] if "nbeta" in extra else [None]
    rows = {"calibrate": {"cold": [], "warm": []}, "estimate": {"cold": [], "warm": []}}
    cal = res = None
    for _ in range(args.repeats):
        fresh = _fresh(loss)

        def calibrate(fresh=fresh):
            return sj.calibrate(
                fresh, params, data, nbetas=nbetas, num_steps=args.steps, batch_size=batch_size
            )

        cold, cal = _time(calibrate)
        warm, cal = _time(calibrate)
        rows["calibrate"]["cold"].append(cold)
        rows["calibrate"]["warm"].append(warm)

        def estimate(fresh=fresh, cal=cal):
            return sj.estimate_llc(
                fresh,
                params,
                data,
                num_chains=args.chains,
                num_steps=args.steps,
                batch_size=batch_size,
                **cal.recommended,
            )

        cold, res = _time(estimate)
        warm, res = _time(estimate)
        rows["estimate"]["cold"].append(cold)
        rows["estimate"]["warm"].append(warm)
    med = {k: {w: statistics.median(v) for w, v in d.items()} for k, d in rows.items()}
    cal_steps = cal.num_chain_steps
    est_steps = args.chains * args.steps
    best = cal.result(**cal.recommended)
    return {
        "model": name,
        "lambda": lam,
        "recommended": cal.recommended,
        "trusted": bool(cal.trusted),
        "calibration_llc": [best.llc_mean, best.llc_stderr],
        "estimate_llc": [res.llc_mean, res.llc_stderr],
        "calibrate_s": med["calibrate"],
        "estimate_s": med["estimate"],
        "compile_s": {k: med[k]["cold"] - med[k]["warm"] for k in med},
        "chain_steps": {"calibrate": cal_steps, "estimate": est_steps},
        "ratio_run_time": med["calibrate"]["warm"] / med["estimate"]["warm"],
        "ratio_chain_steps": cal_steps / est_steps,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="quadratic,kgon,dln")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
    out = []
    for key in args.models.split(","):
        row = bench(*MODELS[key](), args)
        out.append(row)
        print(json.dumps(row, default=float))
    print(
        f"\n{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}, "
        f"{args.steps} steps, estimate with {args.chains} chains, medians of {args.repeats}\n"
    )
    print(
        "| model | calibrate run (s) | compile (s) | chain-steps | estimate run (s) | compile (s) "
        "| chain-steps | run-time ratio | chain-step ratio | recommended λ̂ (λ) | verified |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in out:
        c, e = r["calibrate_s"], r["estimate_s"]
        print(
            f"| {r['model']} | {c['warm']:.2f} | {r['compile_s']['calibrate']:.2f} | "
            f"{r['chain_steps']['calibrate']:,} | {e['warm']:.2f} | "
            f"{r['compile_s']['estimate']:.2f} | {r['chain_steps']['estimate']:,} | "
            f"{r['ratio_run_time']:.1f}× | "
            f"{r['ratio_chain_steps']:.0f}× | {r['estimate_llc'][0]:.3g} ± "
            f"{r['estimate_llc'][1]:.2g} ({r['lambda']:g}) | {r['trusted']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()
