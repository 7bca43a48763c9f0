"""Throughput against device count: the same checkpoint sweep sharded over 1, 2, 4, 8 devices.

On a CPU machine the devices are forced host devices (``--xla_force_host_platform_device_count``)
that share the cores, so this checks the plumbing and shows what the cores give; on a GPU
or TPU machine it uses the real devices (``--real``: powers of two up to the device count).

    python benchmarks/bench_devices.py [--checkpoints 32] [--chains 8] [--steps 500] [--real]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(args) -> None:
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np

    import slt_jax as sj

    warnings.simplefilter("ignore")
    devices = jax.devices()[: args.child]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 5)) + rng.normal(size=(1024, 5))).astype(np.float32)

    def loss_fn(p, batch):
        return 0.5 * jnp.mean(jnp.sum((batch[0] @ p[0] @ p[1] - batch[1]) ** 2, -1))

    stacked = [
        rng.normal(size=(args.checkpoints, 5, 4)).astype(np.float32) * 0.3,
        rng.normal(size=(args.checkpoints, 4, 5)).astype(np.float32) * 0.3,
    ]
    kw = dict(
        num_chains=args.chains,
        num_steps=args.steps,
        step_size=1e-4,
        localization=100.0,
        batch_size=64,
        chunk_size=args.checkpoints,
        progress=False,
        devices=devices,
    )
    checkpoints = sj.CheckpointSet.from_stacked(stacked)
    start = time.perf_counter()
    sj.estimate_llc_checkpoints(loss_fn, checkpoints, (x, y), **kw)
    cold = time.perf_counter() - start
    runs = []
    for seed in range(1, 4):
        start = time.perf_counter()
        sj.estimate_llc_checkpoints(loss_fn, checkpoints, (x, y), seed=seed, **kw)
        runs.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "devices": len(devices),
                "platform": devices[0].platform,
                "cold": cold,
                "warm": sorted(runs)[1],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=32)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--real", action="store_true", help="use the machine's own devices")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    counts, rows = [1, 2, 4, 8], []
    for count in counts:
        env = dict(os.environ)
        if not args.real:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(count),
            "--checkpoints",
            str(args.checkpoints),
            "--chains",
            str(args.chains),
            "--steps",
            str(args.steps),
        ]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode:
            print(run.stderr[-2000:])
            break
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        if rows[-1]["devices"] < count:  # fewer real devices than asked
            break
    items = args.checkpoints * args.chains * args.steps
    print(
        f"DLN 5-4-5, {args.checkpoints} checkpoints x {args.chains} chains x {args.steps} "
        f"steps, batch 64; cold = first call incl. compile, warm = median of 3"
    )
    print(
        f"{'devices':>8}{'platform':>10}{'cold s':>9}{'warm s':>9}{'chain-steps/s':>15}"
        f"{'speed-up':>10}"
    )
    for row in rows:
        print(
            f"{row['devices']:>8}{row['platform']:>10}{row['cold']:>9.2f}{row['warm']:>9.3f}"
            f"{items / row['warm']:>15,.0f}{rows[0]['warm'] / row['warm']:>9.2f}x"
        )


if __name__ == "__main__":
    main()
