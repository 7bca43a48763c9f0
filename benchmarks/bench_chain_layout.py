"""The chain axis as a vmap, a map, or a vmap within a map, on models of several sizes.

A vmapped chain step batches every matmul over the chains; on XLA's CPU backend batched
matmuls of medium size run slower than the same matmuls one chain at a time, so a
``lax.map`` over the chains can win there. This script times one compiled chain program
(``programs.run_items``, ``--steps`` steps of SGLD, ``--chains`` chains) per layout and
model, compile time apart, median of ``--repeats``, and prints the ratios against vmap: the
measurements behind the default layout rule (``slt_jax._src.engine.programs.default_layout``).

    python benchmarks/bench_chain_layout.py [--chains 8] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax._src.engine import programs


def mlp(widths, n=2048, seed=0):
    """A tanh MLP regression of the given widths: (loss_fn, params, data)."""
    rng = np.random.default_rng(seed)
    params = [
        {"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32), "b": jnp.zeros(b)}
        for a, b in zip(widths[:-1], widths[1:], strict=True)
    ]
    x = jnp.asarray(rng.normal(size=(n, widths[0])), jnp.float32)
    y = jnp.asarray(rng.normal(size=(n, widths[-1])), jnp.float32)

    def loss_fn(p, batch):
        h, target = batch
        for layer in p[:-1]:
            h = jnp.tanh(h @ layer["w"] + layer["b"])
        out = h @ p[-1]["w"] + p[-1]["b"]
        return 0.5 * jnp.mean(jnp.sum((out - target) ** 2, axis=1))

    return loss_fn, params, (x, y)


MODELS = {
    "mlp 16-16-4 (0.3k)": (16, 16, 4),
    "mlp 64-64-10 (5k)": (64, 64, 10),
    "mlp 128-256-256-10 (101k)": (128, 256, 256, 10),
    "mlp 256-512-512-10 (400k)": (256, 512, 512, 10),
}


def time_layout(loss_fn, params, data, layout, args):
    config, key = sj.LLCConfig(
        num_chains=args.chains, num_steps=args.steps, num_burnin=0, step_size=1e-5,
        localization=100.0, batch_size=args.batch_size, diagnostic_every=0,
        chain_layout=layout[0], chain_batch=layout[1],
    ).resolve(len(data[0]))
    keys = jax.random.split(key, args.chains)
    centers = jax.tree.map(lambda x: jnp.broadcast_to(x, (args.chains, *x.shape)), params)
    mesh = programs.resolve_mesh()
    placed = programs.place(programs.Items(keys, centers, config.arrays()), data, mesh)
    program = programs.program(loss_fn, config.static(), programs.NO_PLUGINS, mesh)
    start = time.perf_counter()
    compiled = program.lower(*placed).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*placed))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*placed))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    layouts = [("vmap", 1), ("map", 1), ("map", 2), ("map", 4)]
    print(
        f"{jax.devices()[0].device_kind}, {args.chains} chains x {args.steps} steps, batch "
        f"{args.batch_size}, median of {args.repeats}; run s (compile s), ratio vs vmap"
    )
    print(f"{'model':<28}" + "".join(f"{f'{a}/{b}':>22}" for a, b in layouts))
    for name, widths in MODELS.items():
        loss_fn, params, data = mlp(widths)
        row, base = [], None
        for layout in layouts:
            compile_s, run_s = time_layout(loss_fn, params, data, layout, args)
            base = base or run_s
            row.append(f"{run_s:8.3f} ({compile_s:4.1f}) {base / run_s:4.2f}x")
        print(f"{name:<28}" + "".join(f"{cell:>22}" for cell in row))


if __name__ == "__main__":
    main()
