"""Minibatches streamed from the host against the data set on the device, side by side.

The same chains (same keys, same minibatch indices, so the same λ̂) on a tanh MLP
regression: the data as device arrays (minibatches drawn inside the compiled loop), and as
``sj.HostArrays`` over a memmap with several block sizes (``device_bytes``): the host
gathers each block of steps' minibatches for every chain and sends it while the previous
block runs. Cold (a fresh loss function: tracing and compilation) and warm (the same call
again) medians of ``--repeats``; compile = cold − warm.

    python benchmarks/bench_streaming.py [--chains 8] [--steps 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax._src.engine import programs, stream


def problem(n=20000, d=64, hidden=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    params = {
        "w1": jnp.asarray(rng.normal(size=(d, hidden)) / np.sqrt(d), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(hidden, 1)) / np.sqrt(hidden), jnp.float32),
    }
    # The teacher is w*: a minimum of the population loss.
    clean = np.tanh(x @ np.asarray(params["w1"])) @ np.asarray(params["w2"])
    y = (clean + 0.1 * rng.normal(size=clean.shape)).astype(np.float32)
    return params, x, y


def make_loss():
    def loss_fn(p, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((jnp.tanh(xb @ p["w1"]) @ p["w2"] - yb) ** 2)

    return loss_fn


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    params, x, y = problem()
    folder = pathlib.Path(tempfile.mkdtemp())
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    mapped = (np.load(folder / "x.npy", mmap_mode="r"), np.load(folder / "y.npy", mmap_mode="r"))
    kw = dict(
        num_chains=args.chains,
        num_steps=args.steps,
        step_size=1e-5,
        nbeta=1000.0,
        localization=100.0,
        batch_size=args.batch_size,
    )
    row_bytes = (x.shape[1] + 1) * 4
    per_step = args.chains * args.batch_size * row_bytes
    variants = {"device arrays": (x, y)}
    for steps in (10, 100, 1000):
        variants[f"host, {steps}-step blocks"] = sj.HostArrays(
            mapped, device_bytes=2 * per_step * steps
        )
    print(
        f"jax {jax.__version__} on {jax.default_backend()}: {args.chains} chains × "
        f"{args.steps} steps, batch {args.batch_size}, n = {len(x)}, "
        f"{x.nbytes / 2**20:.1f} MiB of data"
    )
    rows, reference = [], None
    for name, data in variants.items():
        cold, warm = [], []
        for _ in range(args.repeats):
            loss_fn = make_loss()
            start = time.perf_counter()
            result = sj.estimate_llc(loss_fn, params, data, **kw)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            sj.estimate_llc(loss_fn, params, data, **kw)
            warm.append(time.perf_counter() - start)
            programs._PROGRAMS.clear()
        if reference is None:
            reference = result
        same = float(np.max(np.abs(np.asarray(result.llc_trace) - np.asarray(reference.llc_trace))))
        k = (
            stream.block_steps(data, result.config.static(), args.chains, programs.resolve_mesh())
            if isinstance(data, sj.HostSource)
            else args.steps
        )
        rows.append(
            (
                name,
                k,
                statistics.median(cold) - statistics.median(warm),
                statistics.median(warm),
                same,
                float(result.llc_mean),
            )
        )
    base = rows[0][3]
    print(
        "| data | steps per block | compile s | run s | chain-steps/s | run vs device "
        "| max |Δλ̂ trace| | λ̂ |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, k, comp, run, same, llc in rows:
        rate = args.chains * args.steps / run
        print(
            f"| {name} | {k} | {comp:.2f} | {run:.3f} | {rate:,.0f} | {run / base:.2f}× "
            f"| {same:.1e} | {llc:.3f} |"
        )


if __name__ == "__main__":
    main()
