"""Device memory of the compiled chain program against batch size, with the memory options.

For an MLP and a GPT-2-like transformer (the models of ``bench_chain_layout.py``), the
compiled item program (``programs.run_items``'s, ``--chains`` chains, vmapped) is lowered
and compiled at several batch sizes, plainly and with each memory option of
``sj.LLCConfig``: ``microbatch_size`` (an eighth of the batch), ``remat=True``, both,
``compute_dtype="bfloat16"``, and ``chain_layout="map"`` (one chain's activations alive at
a time). Reported per cell: XLA's memory analysis of the compiled program (temporaries,
arguments, outputs: the figures ``estimate_llc_checkpoints(..., dry_run=True)`` reports
and the automatic chunking budgets), the compile time and, at one batch size per model, the
run time of ``--steps`` steps (median of ``--repeats``), side by side.

    python benchmarks/bench_memory.py [--chains 8] [--steps 20] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chain_layout import (  # noqa: E402
    GPT_SMALL,
    compiled_program,
    gpt2_like,
    mlp,
    num_params,
    time_once,
)

# name -> (builder, batch sizes, the batch size whose variants are also run)
MODELS = {
    "mlp 64-512-512-10 (303k)": (
        lambda: mlp((64, 512, 512, 10), n=8192),
        (256, 1024, 4096),
        1024,
    ),
    "gpt2-like 2x64, ctx 64 (137k)": (
        lambda: gpt2_like(**GPT_SMALL, n=256),
        (8, 32, 128),
        32,
    ),
}


def variants(batch_size: int) -> dict[str, dict]:
    micro = max(1, batch_size // 8)
    return {
        "plain": {},
        f"microbatch {micro}": dict(microbatch_size=micro),
        "remat": dict(remat=True),
        f"microbatch {micro} + remat": dict(microbatch_size=micro, remat=True),
        "bfloat16": dict(compute_dtype="bfloat16"),
        "map over chains": dict(layout=("map", 1)),
    }


def memory(compiled) -> dict:
    analysis = compiled.memory_analysis()
    return dict(
        temp_bytes=int(analysis.temp_size_in_bytes),
        argument_bytes=int(analysis.argument_size_in_bytes),
        output_bytes=int(analysis.output_size_in_bytes),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=None, help="substrings of model names, comma-sep.")
    parser.add_argument("--variants", default=None, help="substrings of variants, comma-sep.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(
        f"{jax.devices()[0].device_kind}, {args.chains} chains vmapped, {args.steps} steps; "
        "MiB from XLA's memory analysis; run s: median of "
        f"{args.repeats} (only at the timed batch size)",
        flush=True,
    )
    print(
        f"{'model':<32}{'batch':>6} {'variant':<24}{'temp MiB':>10}{'args MiB':>10}"
        f"{'out MiB':>9}{'compile s':>10}{'run s':>8}",
        flush=True,
    )
    rows = []
    wanted = None if args.models is None else args.models.split(",")
    for name, (build, batches, timed_batch) in MODELS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        loss_fn, params, data = build()
        for batch_size in batches:
            for variant, options in variants(batch_size).items():
                if args.variants and not any(v in variant for v in args.variants.split(",")):
                    continue
                options = dict(options)
                layout = options.pop("layout", ("vmap", 1))
                compiled, placed, compile_s = compiled_program(
                    loss_fn,
                    params,
                    data,
                    chains=args.chains,
                    steps=args.steps,
                    batch_size=batch_size,
                    layout=layout,
                    **options,
                )
                row = dict(
                    model=name,
                    params=num_params(params),
                    batch_size=batch_size,
                    variant=variant,
                    compile_s=compile_s,
                    **memory(compiled),
                )
                if batch_size == timed_batch:
                    time_once(compiled, placed)
                    times = [time_once(compiled, placed) for _ in range(args.repeats)]
                    row["run_s"] = statistics.median(times)
                    row["chain_steps_per_s"] = args.chains * args.steps / row["run_s"]
                del compiled, placed
                rows.append(row)
                mib = lambda b: b / 2**20  # noqa: E731
                run = f"{row['run_s']:8.3f}" if "run_s" in row else f"{'-':>8}"
                print(
                    f"{name:<32}{batch_size:>6} {variant:<24}{mib(row['temp_bytes']):>10.1f}"
                    f"{mib(row['argument_bytes']):>10.1f}{mib(row['output_bytes']):>9.2f}"
                    f"{compile_s:>10.1f}{run}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, args=vars(args), rows=rows), f)
    return rows


if __name__ == "__main__":
    main()
