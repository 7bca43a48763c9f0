"""The persistent compilation cache: W1's compile time in a fresh process, cold and cached.

W1 of ``bench_devinterp.py`` (ReLU MLP 64-128-128-10 on the digits, 26,122 parameters,
8 chains x 500 steps, batch 256). Each measurement is a fresh Python process that builds
the workload, then times ``sj.estimate_llc`` twice: cold (trace, compile, sample) and warm
(the compiled program reused); compile = cold − warm. Three processes per repetition:

1. no persistent cache (the default);
2. ``sj.enable_compilation_cache(tmp)`` on an empty temporary directory (a cache miss:
   compiles and writes the cache);
3. the same directory again (a cache hit: reads the programs back).

Reported: the medians over ``--repeats`` repetitions (each with its own directory) and the
ratio of process 2's compile time to process 3's.

    python benchmarks/bench_compile_cache.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings


def child(cache: str | None) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import slt_jax as sj

    if cache is not None:
        sj.enable_compilation_cache(cache)
    from bench_devinterp import problem_w1_w2

    problem, _ = problem_w1_w2(quick=False, num_checkpoints=2)

    def call():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sj.estimate_llc(
                problem.loss_fn, problem.params, problem.data, seed=0, **problem.sampler
            )
        return time.perf_counter() - start, float(res.llc_mean)

    cold, llc = call()
    warm, llc_warm = call()
    entries = len(os.listdir(cache)) if cache is not None else None
    return dict(
        cold_s=cold,
        warm_s=warm,
        compile_s=cold - warm,
        llc=llc,
        llc_warm=llc_warm,
        cache_entries=entries,
    )


def run_child(cache: str | None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", cache or "none"]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(None if args.child == "none" else args.child)))
        return None
    runs = {"no cache": [], "cache, empty": [], "cache, filled": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="slt_jax_cache_") as tmp:
            for name, cache in (("no cache", None), ("cache, empty", tmp), ("cache, filled", tmp)):
                result = run_child(cache)
                runs[name].append(result)
                print(
                    f"repeat {repeat + 1}: {name:<14} cold {result['cold_s']:6.2f} s  warm "
                    f"{result['warm_s']:5.2f} s  compile {result['compile_s']:5.2f} s  "
                    f"λ̂ {result['llc']:.4f}  entries {result['cache_entries']}",
                    flush=True,
                )
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("cold_s", "warm_s", "compile_s")}
        for name, rs in runs.items()
    }
    ratio = med["cache, empty"]["compile_s"] / med["cache, filled"]["compile_s"]
    same = all(
        a["llc"] == b["llc"]
        for a, b in zip(runs["cache, empty"], runs["cache, filled"], strict=True)
    )
    print(f"medians of {args.repeats}:")
    for name, m in med.items():
        print(
            f"  {name:<14} cold {m['cold_s']:6.2f}  warm {m['warm_s']:5.2f}  "
            f"compile {m['compile_s']:5.2f}"
        )
    print(f"compile, empty cache / filled cache: {ratio:.1f}x; λ̂ identical: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(runs=runs, medians=med, ratio=ratio, identical=same), f, indent=1)
    return med


if __name__ == "__main__":
    main()
