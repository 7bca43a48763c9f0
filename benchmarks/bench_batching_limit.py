"""The most batching can gain on this device, measured without slt_jax.

A hand-written SGLD step (minibatch gradient of a small model, Gaussian noise, no
diagnostics) for ``B`` chains vmapped in one jitted ``lax.scan``, for ``B`` from 1 to 4096:
the time per chain-step at each ``B``. The batched sweep of ``estimate_llc_checkpoints`` runs
``checkpoints × chains`` items where a loop of ``estimate_llc`` runs ``chains`` at a time, so
the ratio of the per-chain-step times at those two widths bounds the speed-up any
implementation built on XLA's vmap can reach on the device (less what the loop spends
outside the compiled program, which the ``call overhead`` line measures).

  python benchmarks/bench_batching_limit.py [--steps 200] [--repeats 5] [--json PATH]

Models: the toy model of superposition (5 features in 2 dimensions, batch 64) and a tanh
MLP 2-24-24-1 (697 parameters, batch 128), as in ``bench_checkpoints.py``. A single large
matmul gives the device's dense rate for scale.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def tms_loss(w, x):
    W, b = w["W"], w["b"]
    y = jax.nn.relu(x @ W.T @ W + b)
    return jnp.mean((y - x) ** 2)


def mlp_loss(w, xy):
    x, y = xy[:, :2], xy[:, 2:]
    h = jnp.tanh(x @ w["W1"] + w["b1"])
    h = jnp.tanh(h @ w["W2"] + w["b2"])
    return jnp.mean((h @ w["W3"] + w["b3"] - y) ** 2)


def models():
    key = jax.random.key(0)
    tms = (
        tms_loss,
        {"W": jax.random.normal(key, (2, 5)) * 0.5, "b": jnp.zeros(5)},
        jax.random.uniform(key, (1024, 5)),
        64,
    )
    shapes = {"W1": (2, 24), "b1": (24,), "W2": (24, 24), "b2": (24,), "W3": (24, 1), "b3": (1,)}
    mlp_params = {
        k: 0.3 * jax.random.normal(jax.random.fold_in(key, i), s)
        for i, (k, s) in enumerate(shapes.items())
    }
    mlp = (mlp_loss, mlp_params, jax.random.normal(key, (1024, 3)), 128)
    return {"TMS 5→2 (15 params)": tms, "tanh MLP 2-24-24-1 (697 params)": mlp}


def sgld_program(loss_fn, data, batch_size, num_steps, eps=1e-4, nbeta=100.0, gamma=100.0):
    grad = jax.grad(loss_fn)

    def step(carry, key):
        w, center = carry
        k_idx, k_noise = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])
        g = grad(w, data[idx])
        leaves, tree = jax.tree.flatten(w)
        noise = jax.tree.unflatten(
            tree,
            [
                jax.random.normal(k, x.shape)
                for k, x in zip(jax.random.split(k_noise, len(leaves)), leaves, strict=True)
            ],
        )
        w = jax.tree.map(
            lambda w, g, c, z: w - 0.5 * eps * (nbeta * g + gamma * (w - c)) + jnp.sqrt(eps) * z,
            w,
            g,
            center,
            noise,
        )
        return (w, center), loss_fn(w, data[idx])

    def chain(key, w0):
        _, losses = jax.lax.scan(step, (w0, w0), jax.random.split(key, num_steps))
        return losses

    return jax.jit(jax.vmap(chain))


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 8, 64, 512, 4096])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    a = jnp.ones((1024, 1024))
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    dense = 2 * 1024**3 / median_time(lambda: matmul(a), args.repeats) / 1e9
    print(f"device: {jax.devices()[0].device_kind}; 1024² f32 matmul: {dense:.1f} GFLOP/s")
    report = {"device": jax.devices()[0].device_kind, "matmul_gflops": dense, "models": {}}
    for name, (loss_fn, params, data, batch_size) in models().items():
        program = sgld_program(loss_fn, data, batch_size, args.steps)
        rows = {}
        print(f"\n{name}, batch {batch_size}, {args.steps} steps per call")
        print(f"{'chains':>7} {'µs/step':>10} {'µs/chain-step':>14}")
        for width in args.widths:
            keys = jax.random.split(jax.random.key(1), width)
            starts = jax.tree.map(lambda x, w=width: jnp.broadcast_to(x, (w, *x.shape)), params)
            jax.block_until_ready(program(keys, starts))  # compile
            seconds = median_time(lambda p=program, k=keys, s=starts: p(k, s), args.repeats)
            rows[width] = seconds / args.steps / width * 1e6
            print(f"{width:>7d} {seconds / args.steps * 1e6:>10.1f} {rows[width]:>14.3f}")
        # What a loop pays outside the compiled program: a call with one step.
        one = sgld_program(loss_fn, data, batch_size, 1)
        keys = jax.random.split(jax.random.key(1), 8)
        starts = jax.tree.map(lambda x: jnp.broadcast_to(x, (8, *x.shape)), params)
        jax.block_until_ready(one(keys, starts))
        overhead = median_time(lambda p=one, k=keys, s=starts: p(k, s), args.repeats * 20) * 1e6
        ceiling = rows[min(args.widths, key=lambda w: abs(w - 8))] / rows[max(args.widths)]
        print(
            f"call overhead ≈ {overhead:.0f} µs; per-chain-step ratio 8 vs "
            f"{max(args.widths)} chains: {ceiling:.2f}×"
        )
        report["models"][name] = {
            "us_per_chain_step": {str(k): v for k, v in rows.items()},
            "call_overhead_us": overhead,
            "ratio_8_vs_widest": ceiling,
        }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
