"""Everything worth measuring on a lent GPU or TPU, in one script of at most ~8 minutes.

Rows (each with compile time apart from run time: cold = first call, trace and compile
included; warm = the same call again; compile = cold − warm):

* ``W0``-``W3``: the workloads of ``bench_devinterp.py`` (built by its own builders):
  slt_jax's ``estimate_llc`` (``estimate_llc_checkpoints`` for W2), and devinterp on the
  same function where torch and devinterp are installed (on CUDA when torch sees a GPU),
  else reported as skipped. devinterp runs chains one after another, so it gets at most
  ``DEVINTERP_MAX_CHAINS`` chains (W2: its first ``DEVINTERP_MAX_CHECKPOINTS``
  checkpoints) and the two are compared by chain-steps/s.
* ``checkpoints``: a checkpoint sweep in one call against a Python loop of
  ``estimate_llc`` (the tanh MLP of ``bench_checkpoints.py``).
* ``calibrate``: ``sj.calibrate`` on a 3 × 3 grid (the DLN of ``bench_calibrate.py``).
* ``lm``: language models (``accelerator_lm.py``): Pythia-160M- and Pythia-410M-shaped
  GPT-NeoX LLCs (random weights, seq 512, batch 8, as many chains as fit), a per-head
  refined sweep, and the same LLC rows for devinterp 2.x and canonical-interp where they
  import: chain-steps/s, tokens/s, MFU, peak memory.
* ``sharded``: W1 with ``mesh=jax.make_mesh((items, model), ("items", "model"))`` (a
  ``(1, 1)`` mesh on one device; with an even device count, ``model = 2``), reported as
  "not available" where ``estimate_llc`` does not take a mesh with a model axis.

Throughput: chain-steps/s of the warm call. FLOPs: XLA's ``cost_analysis()`` of one SGLD
step, one forward pass and the full-data loss (``bench_devinterp.flop_counts``: the
analysis of a whole ``while`` loop counts its body once), times how often slt_jax runs
each; MFU = FLOP/s of the warm call over the device's dense peak for float32 programs
(TF32 on NVIDIA, the bfloat16 passes XLA uses for float32 at default precision on TPU),
from ``PEAKS`` by ``device_kind``; "n/a" for other devices (a CPU).

A global time budget (``--budget-s``, 480) is checked before each row: a row that would
start past it is reported as skipped; the LM rows have their own (``--lm-budget-s``,
240). ``--smoke`` runs every row tiny (CPU, < 1 minute), compiled with XLA's cheapest
code generation (``SMOKE_XLA_FLAGS``): it checks the script, not speed.

    python benchmarks/accelerator.py --out results/accelerator      # on the GPU / TPU
    python benchmarks/accelerator.py --smoke --out /tmp/acc           # anywhere, tiny

Writes ``accelerator.json`` and ``accelerator.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time
import traceback
import warnings

# --smoke: XLA's cheapest code generation, set before JAX is imported. Compilation is
# almost all of a tiny run's time (it halves, the runs' own times do not matter here).
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--smoke" in sys.argv[1:]:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import accelerator_lm  # noqa: E402
import bench_devinterp as bd  # noqa: E402

import slt_jax as sj  # noqa: E402

# Dense peak FLOP/s for float32 programs: TF32 tensor cores on NVIDIA (data sheets, SXM
# parts; PCIe H100 scaled), bfloat16 on TPU (XLA runs float32 matmuls as bfloat16 passes at
# default precision). Matched as substrings of `device_kind`, first match wins.
PEAKS = [
    ("H200", 494.7e12),
    ("H100 PCIe", 378e12),
    ("H100", 494.7e12),
    ("A100", 156e12),
    ("L4", 60e12),
    ("A10", 62.5e12),
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
]
DEVINTERP_MAX_CHAINS = 8
DEVINTERP_MAX_CHECKPOINTS = 4


def device_peak(kind: str) -> float | None:
    for name, peak in PEAKS:
        if name in kind:
            return peak
    return None


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def cold_warm(fn) -> tuple[dict, object, object]:
    """``fn`` twice after ``jax.clear_caches()``: the timings (cold, warm, compile = cold −
    warm) and both results."""
    jax.clear_caches()
    start = time.perf_counter()
    first = _quiet(fn)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = _quiet(fn)
    warm = time.perf_counter() - start
    return dict(cold_s=cold, warm_s=warm, compile_s=max(cold - warm, 0.0)), first, second


def throughput(timing: dict, chain_steps: int, flops: float | None, peak: float | None) -> dict:
    out = dict(timing, chain_steps=chain_steps, chain_steps_per_s=chain_steps / timing["warm_s"])
    if flops is not None and math.isfinite(flops):
        out["flops"] = flops
        out["flops_per_s"] = flops / timing["warm_s"]
        out["mfu"] = out["flops_per_s"] / peak if peak else None
    else:
        out["mfu"] = None
    return out


# ------------------------------------------------------------------------------- workloads


def workload_flops(problem: bd.Problem) -> float:
    counts = bd.flop_counts(problem)
    items = len(problem.checkpoints or [None])
    return (
        problem.sampler["num_chains"] * items * counts["slt_jax_per_chain"]
        + items * counts["full_data_loss"]
    )


def slt_jax_workload(problem: bd.Problem, peak) -> dict:
    if problem.checkpoints is None:

        def call():
            return sj.estimate_llc(
                problem.loss_fn, problem.params, problem.data, seed=0, **problem.sampler
            )

    else:

        def call():
            return sj.estimate_llc_checkpoints(
                problem.loss_fn,
                problem.checkpoints,
                problem.data,
                steps=problem.checkpoint_steps,
                seed=0,
                progress=False,
                **problem.sampler,
            )

    timing, _, res = cold_warm(call)
    out = throughput(timing, bd._chain_steps(problem), workload_flops(problem), peak)
    out["llc"] = float(np.nanmean(np.asarray(res.llc_mean)))
    return out


def devinterp_workload(problem: bd.Problem, status: tuple[bool, str]) -> dict:
    available, why = status
    if not available:
        return dict(status=f"skipped: devinterp {why}")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())
    chains = min(problem.sampler["num_chains"], DEVINTERP_MAX_CHAINS)
    sampler = dict(problem.sampler, num_chains=chains)
    small = dataclasses.replace(problem, sampler=sampler)
    if problem.checkpoints is not None:
        small = dataclasses.replace(
            small,
            checkpoints=problem.checkpoints[:DEVINTERP_MAX_CHECKPOINTS],
            checkpoint_steps=problem.checkpoint_steps[:DEVINTERP_MAX_CHECKPOINTS],
        )
    bd.check_same_function(small, device)
    tensors = bd.torch_data(small, device)
    bd.run_devinterp(small, 1, tensors, device)  # warm-up (CUDA, torch), outside the clock
    if small.checkpoints is None:
        run = bd.run_devinterp(small, 0, tensors, device)
    else:
        run = bd.run_devinterp_checkpoints(small, 0, tensors, device)
    steps = bd._chain_steps(small)
    return dict(
        status=f"measured on {device} ({why})",
        chains=sampler["num_chains"],
        checkpoints=len(small.checkpoints or [None]),
        run_s=run.seconds,
        chain_steps=steps,
        chain_steps_per_s=steps / run.seconds,
        llc=run.llc,
    )


def build_workloads(smoke: bool) -> list[bd.Problem]:
    w0 = bd.problem_w0(smoke)
    w1, w2 = bd.problem_w1_w2(smoke, num_checkpoints=2 if smoke else 32)
    w3 = bd.problem_w3(smoke)
    if smoke:  # the tiniest runs that still exercise every code path
        w0.sampler.update(num_steps=40, num_burnin=10)
        w1.sampler.update(num_steps=20, num_burnin=5)
        w2.sampler.update(num_steps=20, num_burnin=5)
        w3.sampler.update(num_steps=10, num_burnin=2)
    return [w0, w1, w2, w3]


# ------------------------------------------------------------------------- the other rows


def checkpoints_row(smoke: bool, peak) -> dict:
    import bench_checkpoints as bc

    num = 4 if smoke else 64
    loss_fn, snapshots, data = bc.toy_mlp(num)
    kw = dict(bc.SAMPLER, batch_size=128)
    if smoke:
        kw.update(num_chains=2, num_steps=20)
    steps = list(range(0, 20 * num, 20))

    def batched():
        return sj.estimate_llc_checkpoints(
            loss_fn, snapshots, data, steps=steps, seed=0, progress=False, **kw
        )

    def loop():
        return [sj.estimate_llc(loss_fn, s, data, seed=k, **kw) for k, s in enumerate(snapshots)]

    chain_steps = num * kw["num_chains"] * kw["num_steps"]
    b, _, _ = cold_warm(batched)
    lo, _, _ = cold_warm(loop)
    return dict(
        label=f"tanh MLP 2-24-24-1 (697 params), {num} checkpoints",
        batched=throughput(b, chain_steps, None, peak),
        loop=throughput(lo, chain_steps, None, peak),
        ratio_cold=lo["cold_s"] / b["cold_s"],
        ratio_warm=lo["warm_s"] / b["warm_s"],
    )


def calibrate_row(smoke: bool, peak) -> dict:
    import bench_calibrate as bcal

    name, loss_fn, params, data, batch_size, grid = bcal.model_dln()
    chains, steps = (2, 40) if smoke else (8, 2000)
    if smoke:
        grid = {k: v[:2] for k, v in grid.items()}
    cells = int(np.prod([len(v) for v in grid.values()]))

    def call():
        return sj.calibrate(
            loss_fn,
            params,
            data,
            **grid,
            num_chains=chains,
            num_steps=steps,
            batch_size=batch_size,
            seed=0,
        )

    timing, _, cal = cold_warm(call)
    out = throughput(timing, cells * chains * steps, None, peak)
    out.update(label=f"{name}, {cells} cells x {chains} chains x {steps} steps", cells=cells)
    out["recommended"] = None if cal.recommended is None else str(cal.recommended)
    return out


def sharded_row(problem: bd.Problem, peak) -> dict:
    devices = jax.device_count()
    model = 2 if devices % 2 == 0 else 1
    shape = (devices // model, model)
    try:
        mesh = jax.make_mesh(shape, ("items", "model"))

        def call():
            return sj.estimate_llc(
                problem.loss_fn, problem.params, problem.data, seed=0, mesh=mesh, **problem.sampler
            )

        timing, _, res = cold_warm(call)
    except (NotImplementedError, TypeError, ValueError) as error:
        return dict(status=f"not available: {type(error).__name__}: {error}"[:300], mesh=shape)
    out = throughput(timing, bd._chain_steps(problem), workload_flops(problem), peak)
    out.update(status="measured", mesh=shape, llc=float(res.llc_mean))
    return out


# ------------------------------------------------------------------------------- reporting


def _f(value, spec="{:.3g}") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return spec.format(value)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Accelerator benchmark ({'smoke' if report['smoke'] else 'full'})",
        "",
        f"{env['device_kind']} × {env['device_count']} ({env['backend']}), JAX {env['jax']}, "
        f"{env['date']}; peak {_f(env['peak_flops'])} FLOP/s; devinterp: {env['devinterp']}; "
        f"total {report['total_s']:.0f} s."
        + (f" XLA_FLAGS: `{env['xla_flags']}`." if env.get("xla_flags") else ""),
        "",
        "| row | library | compile s | warm run s | chain-steps/s | FLOP/s | MFU | λ̂ | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name, lib, r, note=""):
        if "warm_s" not in r:
            lines.append(f"| {name} | {lib} | | | | | | | {r.get('status', note)} |")
            return
        lines.append(
            f"| {name} | {lib} | {_f(r.get('compile_s'), '{:.2f}')} | {_f(r['warm_s'], '{:.3f}')}"
            f" | {_f(r['chain_steps_per_s'], '{:,.0f}')} | {_f(r.get('flops_per_s'))}"
            f" | {_f(r.get('mfu'), '{:.1%}')} | {_f(r.get('llc'), '{:.3f}')} | {note} |"
        )

    for name, w in report["workloads"].items():
        if "slt_jax" not in w:
            lines.append(f"| {name} | | | | | | | | {w.get('status', '')} |")
            continue
        row(f"{name}: {w['label']}", "slt_jax", w["slt_jax"])
        d = w["devinterp"]
        if "run_s" in d:
            lines.append(
                f"| | devinterp | – | {d['run_s']:.3f} | {d['chain_steps_per_s']:,.0f} | | "
                f"| {d['llc']:.3f} | {d['chains']} chains, {d['checkpoints']} checkpoint(s); "
                f"slt_jax/devinterp chain-steps/s "
                f"{w['slt_jax']['chain_steps_per_s'] / d['chain_steps_per_s']:.1f}× |"
            )
        else:
            lines.append(f"| | devinterp | | | | | | | {d['status']} |")
    c = report["checkpoints"]
    if "batched" in c:
        row(f"checkpoints: {c['label']}", "batched", c["batched"])
        row(
            "",
            "loop",
            c["loop"],
            f"loop/batched: {c['ratio_cold']:.2f}× cold, {c['ratio_warm']:.2f}× warm",
        )
    else:
        row("checkpoints", "", c)
    cal = report["calibrate"]
    row(
        f"calibrate: {cal.get('label', '')}",
        "slt_jax",
        cal,
        f"recommended {cal.get('recommended')}" if "warm_s" in cal else "",
    )
    s = report["sharded"]
    row(f"sharded: W1, mesh {tuple(s.get('mesh', ()))}", "slt_jax", s, s.get("status", ""))
    lines += accelerator_lm.markdown_rows(report.get("lm", {}), _f)
    lines += ["", "Compile = cold − warm; chain-steps/s and FLOP/s of the warm call."]
    return "\n".join(lines) + "\n"


def guarded(name: str, budget: Budget, need: float, fn) -> dict:
    """``fn()``, or why it did not run (the time budget, or an error, with its traceback
    printed): the script reports every row it can."""
    if budget.left() < need:
        return dict(status=f"skipped: time budget ({budget.left():.0f} s left)")
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as error:  # report and go on: one broken row does not lose the rest
        traceback.print_exc()
        return dict(status=f"error: {type(error).__name__}: {error}"[:300])
    print(f"  {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for accelerator.json / .md")
    parser.add_argument("--smoke", action="store_true", help="everything tiny (CPU, < 1 min)")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--lm-budget-s", type=float, default=240.0, help="the LM rows' budget")
    parser.add_argument("--no-devinterp", action="store_true")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    kind = jax.devices()[0].device_kind
    peak = device_peak(kind) if jax.default_backend() != "cpu" else None
    status = (False, "disabled (--no-devinterp)") if args.no_devinterp else bd.devinterp_status()
    env = dict(
        device_kind=kind,
        device_count=jax.device_count(),
        backend=jax.default_backend(),
        jax=jax.__version__,
        python=platform.python_version(),
        peak_flops=peak,
        devinterp=status[1],
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    print(f"{kind} x {jax.device_count()}, peak {peak}, devinterp: {status[1]}", flush=True)
    # The rows' reserve: a row is started only with this many seconds left.
    need = 1.0 if args.smoke else 30.0
    problems = build_workloads(args.smoke)
    workloads = {}
    for problem in problems:
        entry = dict(
            label=problem.label,
            num_params=problem.num_params,
            settings=dict(problem.sampler),
            num_checkpoints=len(problem.checkpoints or [None]),
        )
        result = guarded(problem.name, budget, need, lambda p=problem: slt_jax_workload(p, peak))
        if "warm_s" not in result:
            entry["status"] = result["status"]
        else:
            entry["slt_jax"] = result
            entry["devinterp"] = guarded(
                f"{problem.name} devinterp",
                budget,
                need * 2,
                lambda p=problem: devinterp_workload(p, status),
            )
        workloads[problem.name] = entry
    report = dict(smoke=args.smoke, environment=env, workloads=workloads)
    report["checkpoints"] = guarded(
        "checkpoints", budget, need, lambda: checkpoints_row(args.smoke, peak)
    )
    report["calibrate"] = guarded(
        "calibrate", budget, need, lambda: calibrate_row(args.smoke, peak)
    )
    report["sharded"] = guarded("sharded", budget, need, lambda: sharded_row(problems[1], peak))
    lm_budget = Budget(args.lm_budget_s)  # the LM rows' own budget, after the others'
    report["lm"] = accelerator_lm.lm_rows(args.smoke, peak, guarded, lm_budget, need, cold_warm)
    report["total_s"] = time.perf_counter() - budget.start
    (out / "accelerator.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "accelerator.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
