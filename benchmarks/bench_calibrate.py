"""A calibration grid in one call against a Python loop of single runs.

``sj.calibrate`` runs G = (step sizes × localizations × nβ) settings × C chains as one
vmapped compiled program. The same G cells as a loop of ``sj.estimate_llc`` calls (its
compiled program is cached after the first call: step size, localization and nβ are array
arguments) is the alternative it replaces. Both run side by side in one process for a few
toy models, each from a cold start (a fresh loss function and cleared caches: tracing and
compilation included) and warm (the compiled program cached), ``--repeats`` times; medians
are reported, with compile time (cold − warm) apart.

Every cell of the calibration uses the chain keys ``jax.random.split(key(seed), C)``
(common random numbers), exactly those of ``estimate_llc(..., seed=seed)``, so the batched
and looped estimates of a cell should agree to float rounding; the largest difference is
reported.

    python benchmarks/bench_calibrate.py [--chains 4] [--steps 1000] [--repeats 5]
                                         [--models poly,dln,tms] [--json out.json]
                                         [--breakdown] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as sj

# ------------------------------------------------------------------------------------ models
# Each maker returns (name, loss_fn, params, data, batch_size, grid); the grid's step sizes
# are scaled so that every cell is stable (no cell loses all its chains).


def model_poly(n: int = 1000):
    """y = x·w1·w2² + noise at the truth w = 0: a singular 2-parameter model (λ = 1/4)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n,)).astype(np.float32)
    y = rng.normal(size=(n,)).astype(np.float32)  # the true w1·w2² is 0

    def loss_fn(w, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((yb - xb * w[0] * w[1] ** 2) ** 2)

    params = jnp.zeros(2, jnp.float32)
    grid = dict(step_sizes=[1e-4, 1e-3, 1e-2], localizations=[1.0, 10.0, 100.0])
    return "polynomial y = x·w1·w2²", loss_fn, params, (x, y), 32, grid


def model_dln(n: int = 1024):
    """Deep linear network 5-4-5 (40 parameters) at w* = 0; the true map is 0 (pure noise)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = rng.normal(size=(n, 5)).astype(np.float32)

    def loss_fn(p, batch):
        return 0.5 * jnp.mean(jnp.sum((batch[0] @ p["W1"] @ p["W2"] - batch[1]) ** 2, -1))

    params = {"W1": jnp.zeros((5, 4), jnp.float32), "W2": jnp.zeros((4, 5), jnp.float32)}
    grid = dict(step_sizes=[1e-5, 1e-4, 1e-3], localizations=[1.0, 10.0, 100.0])
    return "deep linear 5-4-5", loss_fn, params, (x, y), 64, grid


def model_tms(n: int = 1024):
    """Toy model of superposition, 5 sparse features in 2 dimensions (15 parameters), at
    the parameters reached by full-batch Adam from a small random start."""
    rng = np.random.default_rng(2)
    x = (rng.uniform(size=(n, 5)) * (rng.uniform(size=(n, 5)) < 0.2)).astype(np.float32)

    def loss_fn(p, batch):
        out = jax.nn.relu((batch @ p["W"].T) @ p["W"] + p["b"])
        return jnp.mean(jnp.sum((out - batch) ** 2, -1))

    params = {"W": jnp.asarray(rng.normal(size=(2, 5)) * 0.3, jnp.float32), "b": jnp.zeros(5)}
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    @jax.jit
    def train(params, state):
        def step(carry, _):
            params, state = carry
            updates, state = optimizer.update(jax.grad(loss_fn)(params, x), state)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, state), None, length=3000)[0]

    params, _ = train(params, state)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    grid = dict(step_sizes=[1e-5, 1e-4, 1e-3], localizations=[1.0, 10.0, 100.0])
    return "TMS 5 features in 2 dims", loss_fn, params, x, 64, grid


MODELS = {"poly": model_poly, "dln": model_dln, "tms": model_tms}


# ------------------------------------------------------------------------------------ paths


def nbeta_axis(n: int) -> list[float | None]:
    """``None`` (calibrate and estimate_llc resolve it to n/log n), half and double of it."""
    default = n / np.log(n)
    return [None, 0.5 * default, 2.0 * default]


def fresh(loss_fn):
    """A new function object: slt_jax caches its compiled program per loss function, so a
    new one (with ``jax.clear_caches()``) makes the next call trace and compile again."""
    return lambda p, batch: loss_fn(p, batch)


def run_batched(loss_fn, params, data, cells_axes, common, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = sj.calibrate(loss_fn, params, data, **cells_axes, **common, seed=seed)
    return estimates_of(cal.results)


def run_loop(loss_fn, params, data, cells_axes, common, seed):
    estimates = []
    cells = itertools.product(
        cells_axes["step_sizes"], cells_axes["localizations"], cells_axes["nbetas"]
    )
    for eps, gamma, nbeta in cells:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sj.estimate_llc(
                loss_fn,
                params,
                data,
                step_size=eps,
                localization=gamma,
                nbeta=nbeta,
                seed=seed,
                **common,
            )
            estimates.append(res)
    return estimates_of(estimates)


def estimates_of(results) -> np.ndarray:
    """Per cell: ``λ̂`` (NaN where every chain diverged) and ``nβ·L_n(w*)``, the size of the
    float32 sums behind ``λ̂`` (``λ̂ = nβ·(L − L(w*))``), so its float32 rounding is about
    this times 2⁻²³ per draw."""
    return np.asarray(
        [
            (np.nan, np.nan)
            if r is None or r.diverged.all()
            else (r.llc_mean, r.config.nbeta * abs(r.init_loss))
            for r in results
        ],
        np.float64,
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def max_abs_diff(a: np.ndarray, b: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Largest |a − b| (divided by ``scale``) over the cells; NaN cells must be NaN on both
    sides (else inf)."""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    both = ~np.isnan(a)
    diff = np.abs(a[both] - b[both]) / (1.0 if scale is None else scale[both])
    return float(np.max(diff)) if both.any() else 0.0


def bench_model(make, args) -> dict:
    name, loss_fn, params, data, batch_size, grid = make()
    n = len(jax.tree.leaves(data)[0])
    axes = dict(grid, nbetas=nbeta_axis(n))
    if args.quick:
        axes = {k: v[:2] for k, v in axes.items()}
    num_cells = int(np.prod([len(v) for v in axes.values()]))
    num_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    common = dict(num_chains=args.chains, num_steps=args.steps, batch_size=batch_size)
    times = {k: [] for k in ("batched_cold", "batched_warm", "loop_cold", "loop_warm")}
    diffs, ulps, estimates = [], [], None
    for repeat in range(args.repeats):
        seed = repeat
        # Alternate which path goes first, so that neither always runs on a cooler machine.
        order = ("batched", "loop") if repeat % 2 == 0 else ("loop", "batched")
        out = {}
        for path in order:
            run = run_batched if path == "batched" else run_loop
            f = fresh(loss_fn)
            jax.clear_caches()
            call = lambda f=f, run=run, seed=seed: run(f, params, data, axes, common, seed)  # noqa: E731
            cold, first = timed(call)
            warm, second = timed(call)
            if max_abs_diff(first[:, 0], second[:, 0]) != 0.0:
                print(f"  warning: {path} is not deterministic across calls", file=sys.stderr)
            times[f"{path}_cold"].append(cold)
            times[f"{path}_warm"].append(warm)
            out[path] = second
        batched, loop = out["batched"][:, 0], out["loop"][:, 0]
        diffs.append(max_abs_diff(batched, loop))
        ulp = out["loop"][:, 1] * 2.0**-23
        ulps.append(max_abs_diff(batched, loop, ulp))
        estimates = dict(batched=batched, loop=loop)
        print(
            f"  {name}: repeat {repeat + 1}/{args.repeats}  "
            + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            + f"  max|Δλ̂| {diffs[-1]:.2e} ({ulps[-1]:.1f} ulp of nβ·L(w*))",
            file=sys.stderr,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(
        model=name,
        params=num_params,
        n=n,
        batch_size=batch_size,
        grid={k: [None if v is None else float(v) for v in vs] for k, vs in axes.items()},
        cells=num_cells,
        chains=args.chains,
        steps=args.steps,
        times=times,
        median=med,
        ratio_cold=med["loop_cold"] / med["batched_cold"],
        ratio_warm=med["loop_warm"] / med["batched_warm"],
        compile_batched=med["batched_cold"] - med["batched_warm"],
        compile_loop=med["loop_cold"] - med["loop_warm"],
        max_abs_diff=max(diffs),
        max_diff_f32_ulps=max(ulps),
        llc_batched=estimates["batched"].tolist(),
        llc_loop=estimates["loop"].tolist(),
        diverged_cells=int(np.isnan(estimates["batched"]).sum()),
    )


def breakdown_model(make, args) -> dict:
    """Where the warm times go: each path timed warm at ``steps`` and ``steps // 10`` steps
    (medians of ``--repeats``), split into a fixed cost per call and a cost per step; and,
    once, a loop that compiles again for every cell (a fresh loss function per call, as when
    a loss is defined inside the loop or a library makes the settings static)."""
    name, loss_fn, params, data, batch_size, grid = make()
    n = len(jax.tree.leaves(data)[0])
    axes = dict(grid, nbetas=nbeta_axis(n))
    if args.quick:
        axes = {k: v[:2] for k, v in axes.items()}
    num_cells = int(np.prod([len(v) for v in axes.values()]))
    long, short = args.steps, max(args.steps // 10, 1)
    out = dict(model=name, cells=num_cells, chains=args.chains, steps=long, short_steps=short)
    for path, run in (("batched", run_batched), ("loop", run_loop)):
        medians = {}
        for steps in (short, long):
            common = dict(num_chains=args.chains, num_steps=steps, batch_size=batch_size)
            run(loss_fn, params, data, axes, common, 0)  # compile
            medians[steps] = statistics.median(
                timed(lambda common=common, run=run: run(loss_fn, params, data, axes, common, 0))[0]
                for _ in range(args.repeats)
            )
        calls = 1 if path == "batched" else num_cells
        per_step = (medians[long] - medians[short]) / (long - short) / calls
        out[path] = dict(
            warm=medians[long],
            fixed_per_call=medians[short] / calls - short * per_step,
            per_step=per_step,
            per_chain_step=per_step / (args.chains * (num_cells if path == "batched" else 1)),
        )
    common = dict(num_chains=args.chains, num_steps=long, batch_size=batch_size)
    recompile = 0.0
    for eps, gamma, nbeta in itertools.product(*axes.values()):
        cell = dict(step_sizes=[eps], localizations=[gamma], nbetas=[nbeta])
        recompile += timed(
            lambda cell=cell: run_loop(fresh(loss_fn), params, data, cell, common, 0)
        )[0]
    out["loop_recompiling"] = recompile
    return out


def breakdown_table(rows: list[dict]) -> str:
    lines = [
        "| toy model | G × C | fixed per call ms, batched / loop | per step µs, batched "
        "(G·C chains) / loop (C chains) | per chain-step µs, batched / loop "
        "| loop compiling every cell s (ratio to batched cold) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, lo = r["batched"], r["loop"]
        lines.append(
            f"| {r['model']} | {r['cells']} × {r['chains']} "
            f"| {1e3 * b['fixed_per_call']:.1f} / {1e3 * lo['fixed_per_call']:.1f} "
            f"| {1e6 * b['per_step']:.0f} / {1e6 * lo['per_step']:.1f} "
            f"| {1e6 * b['per_chain_step']:.2f} / {1e6 * lo['per_chain_step']:.2f} "
            f"| {r['loop_recompiling']:.1f} ({r['loop_recompiling_ratio']:.0f}×) |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [
        "| toy model | params | G × C | batched cold / warm s | loop cold / warm s "
        "| ratio cold / warm | compile batched / loop s | max abs Δλ̂ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["median"]
        lines.append(
            f"| {r['model']} (batch {r['batch_size']}) | {r['params']} "
            f"| {r['cells']} × {r['chains']} "
            f"| {m['batched_cold']:.2f} / {m['batched_warm']:.2f} "
            f"| {m['loop_cold']:.2f} / {m['loop_warm']:.2f} "
            f"| {r['ratio_cold']:.1f}× / {r['ratio_warm']:.1f}× "
            f"| {r['compile_batched']:.1f} / {r['compile_loop']:.1f} "
            f"| {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4, help="chains per cell (C)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per chain")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; medians reported")
    parser.add_argument(
        "--models",
        help=f"comma-separated subset of {','.join(MODELS)} (default: all; with --quick: poly)",
    )
    parser.add_argument("--json", help="write the figures as JSON here ('-': stdout)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also split the warm times into per-call and per-step costs, and time once a "
        "loop that compiles for every cell",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test in seconds: 2×2×2 grid, 2 chains, 20 steps, once, the poly model",
    )
    args = parser.parse_args()
    if args.quick:
        args.chains, args.steps, args.repeats = 2, 20, 1
    if args.models is None:
        args.models = "poly" if args.quick else ",".join(MODELS)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")

    print(
        f"calibrate (one call) against a loop of estimate_llc, {args.chains} chains × "
        f"{args.steps} steps per cell, {args.repeats} repeats (medians); JAX {jax.__version__}, "
        f"{jax.devices()[0].platform} ({jax.device_count()} device(s)); "
        "cold = first call incl. tracing and compilation, warm = the same call again",
        file=sys.stderr,
    )
    rows = [bench_model(MODELS[name], args) for name in names]
    print(table(rows))
    if args.breakdown:
        parts = [breakdown_model(MODELS[name], args) for name in names]
        for part, row in zip(parts, rows, strict=True):
            part["loop_recompiling_ratio"] = (
                part["loop_recompiling"] / row["median"]["batched_cold"]
            )
            row["breakdown"] = part
        print()
        print(breakdown_table(parts))
    for r in rows:
        print(
            f"\n{r['model']}: largest |λ̂ batched − λ̂ looped| over all cells and repeats "
            f"{r['max_abs_diff']:.3g} (= {r['max_diff_f32_ulps']:.2f} × nβ·L_n(w*)·2⁻²³, the "
            f"float32 rounding scale of λ̂); cells where every chain diverged: "
            f"{r['diverged_cells']}",
            end="",
        )
    print()
    if args.json:
        report = dict(
            date=datetime.date.today().isoformat(),
            jax=jax.__version__,
            python=platform.python_version(),
            platform=jax.devices()[0].platform,
            device_count=jax.device_count(),
            chains=args.chains,
            steps=args.steps,
            repeats=args.repeats,
            rows=rows,
        )
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()
