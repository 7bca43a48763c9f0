"""Checkpoint sweeps: one batched call against a Python loop, and memory against chunk size.

Part 1 (speed): a toy MLP (≤ 1k parameters), 64 checkpoints of one training run.
``estimate_llc_checkpoints`` (checkpoints × chains vmapped in one compiled program) against
a loop of ``estimate_llc`` calls, both end to end from a cold start (compile included), then
warm. Part 2 (memory): the digits MLP, XLA's memory analysis of the compiled sweep and the
measured peak resident memory of a fresh process, for several chunk sizes; then the chunk
the automatic choice picks for a given budget.

    python benchmarks/bench_checkpoints.py [--part speed|memory|both]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import slt_jax as sj

SAMPLER = dict(num_chains=8, num_steps=500, step_size=1e-4, localization=100.0, batch_size=128)


def _snapshots_along_training(loss_fn, params, data, num_checkpoints, learning_rate):
    optimizer = optax.adam(learning_rate)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params, data)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state

    snapshots = []
    for _ in range(num_checkpoints):
        for _ in range(20):
            params, state = step(params, state)
        snapshots.append(params)
    return snapshots


def toy_tms(num_checkpoints):
    """Toy model of superposition, 5 features in 2 dimensions (15 parameters)."""
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(1024, 5)) * (rng.uniform(size=(1024, 5)) < 0.2)).astype(np.float32)

    def loss_fn(p, batch):
        out = jax.nn.relu((batch @ p["W"].T) @ p["W"] + p["b"])
        return jnp.mean(jnp.sum((out - batch) ** 2, -1))

    params = {"W": jnp.asarray(rng.normal(size=(2, 5)) * 0.3, jnp.float32), "b": jnp.zeros(5)}
    return loss_fn, _snapshots_along_training(loss_fn, params, x, num_checkpoints, 1e-2), x


def toy_dln(num_checkpoints):
    """Deep linear network 5-4-5 (40 parameters) fitting a rank-2 map."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 5)).astype(np.float32)
    truth = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 5))
    y = (x @ truth + rng.normal(size=(1024, 5))).astype(np.float32)

    def loss_fn(p, batch):
        return 0.5 * jnp.mean(jnp.sum((batch[0] @ p[0] @ p[1] - batch[1]) ** 2, -1))

    params = [jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32) for s in ((5, 4), (4, 5))]
    return (
        loss_fn,
        _snapshots_along_training(loss_fn, params, (x, y), num_checkpoints, 1e-2),
        (x, y),
    )


def toy_mlp(num_checkpoints):
    """A 2-24-24-1 tanh MLP (697 parameters) on 1024 noisy sine points."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(1024, 2)).astype(np.float32)
    y = (np.sin(2 * x[:, :1]) * np.cos(x[:, 1:]) + 0.1 * rng.normal(size=(1024, 1))).astype(
        np.float32
    )

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(2, 24, rngs=rngs)
            self.b = nnx.Linear(24, 24, rngs=rngs)
            self.c = nnx.Linear(24, 1, rngs=rngs)

        def __call__(self, x):
            return self.c(jnp.tanh(self.b(jnp.tanh(self.a(x)))))

    loss_fn, params = sj.nnx_loss(Net(nnx.Rngs(0)), lambda o, t: 0.5 * jnp.sum((o - t) ** 2, -1))
    snapshots = _snapshots_along_training(loss_fn, params, (x, y), num_checkpoints, 1e-2)
    return loss_fn, snapshots, (x, y)


TOYS = {"tms": (toy_tms, 64), "dln": (toy_dln, 64), "mlp": (toy_mlp, 128)}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def speed(num_checkpoints: int = 64) -> None:
    print(
        f"{num_checkpoints} checkpoints x {SAMPLER['num_chains']} chains x "
        f"{SAMPLER['num_steps']} steps, n=1024, device {jax.devices()[0].platform}; "
        "cold = first call incl. compile, warm = second call"
    )
    print(
        f"{'toy':<22}{'batched cold':>13}{'warm':>7}{'loop cold':>11}{'warm':>7}"
        f"{'ratio cold':>12}{'warm':>7}{'compile b/l':>13}"
    )
    for name, (make, batch_size) in TOYS.items():
        loss_fn, snapshots, data = make(num_checkpoints)
        steps = list(range(0, 20 * num_checkpoints, 20))
        kw = {**SAMPLER, "batch_size": batch_size}
        num_params = sum(p.size for p in jax.tree.leaves(snapshots[0]))

        def batched(seed, loss_fn=loss_fn, snapshots=snapshots, data=data, steps=steps, kw=kw):
            return sj.estimate_llc_checkpoints(
                loss_fn, snapshots, data, steps=steps, seed=seed, progress=False, **kw
            )

        def loop(seed, loss_fn=loss_fn, snapshots=snapshots, data=data, kw=kw):
            return [
                sj.estimate_llc(loss_fn, s, data, seed=seed + k, **kw)
                for k, s in enumerate(snapshots)
            ]

        jax.clear_caches()
        b_cold, _ = timed(lambda: batched(0))
        b_warm, _ = timed(lambda: batched(1))
        jax.clear_caches()
        l_cold, _ = timed(lambda: loop(0))
        l_warm, _ = timed(lambda: loop(100))
        print(
            f"{f'{name} ({num_params} params, b={batch_size})':<22}{b_cold:>13.2f}"
            f"{b_warm:>7.2f}{l_cold:>11.2f}{l_warm:>7.2f}{l_cold / b_cold:>11.1f}x"
            f"{l_warm / b_warm:>6.1f}x{b_cold - b_warm:>7.1f}/{l_cold - l_warm:.1f}"
        )


def digits_checkpoints(num: int):
    data = sj.examples.load_digits()
    model = sj.examples.MLP((64, 32, 10), rngs=nnx.Rngs(0))
    loss_fn, params = sj.nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    stacked = jax.tree.map(
        lambda p: np.stack([np.asarray(p) * (1 + 0.01 * k) for k in range(num)]), params
    )
    return loss_fn, sj.CheckpointSet.from_stacked(stacked), data


def child(chunk: int, num: int) -> None:
    """Run one sweep in this (fresh) process and print its memory figures as JSON."""
    loss_fn, checkpoints, data = digits_checkpoints(num)
    before = _high_water_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sj.estimate_llc_checkpoints(
            loss_fn,
            checkpoints,
            data,
            chunk_size=chunk,
            progress=False,
            **{**SAMPLER, "batch_size": 256},
        )
    print(json.dumps({"peak_rss_mib": _high_water_mib(), "setup_rss_mib": before}))


def _high_water_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is reset by exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def program_mib(chunk: int, num: int) -> float:
    from slt_jax._src.engine import programs
    from slt_jax._src.jobs import orchestrate
    from slt_jax._src.jobs.memory import program_bytes

    loss_fn, checkpoints, data = digits_checkpoints(num)
    config, key = sj.LLCConfig(**{**SAMPLER, "batch_size": 256}).resolve(len(data[0]))
    indices = np.arange(chunk)
    keys = orchestrate.checkpoint_keys(key, indices, config.num_chains)
    groups = [orchestrate.Group(config, j, keys[j]) for j in range(chunk)]
    centers = jax.tree.map(lambda x: x[indices], checkpoints.params)
    lowered = orchestrate.lower(loss_fn, centers, data, groups, mesh=programs.resolve_mesh())
    return program_bytes(lowered.compile()) / 2**20


def memory() -> None:
    num = 32
    print(
        f"digits MLP 64-32-10 (2410 params), {num} checkpoints x {SAMPLER['num_chains']} "
        f"chains, batch 256"
    )
    print(
        f"{'chunk':>6}{'XLA program MiB':>17}{'peak RSS MiB':>14}{'before sweep':>14}{'growth':>8}"
    )
    sizes = {}
    for chunk in (1, 2, 4, 8, 16, 32):
        sizes[chunk] = program_mib(chunk, num)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(chunk), str(num)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        growth = figures["peak_rss_mib"] - figures["setup_rss_mib"]
        print(
            f"{chunk:>6}{sizes[chunk]:>17.1f}{figures['peak_rss_mib']:>14.0f}"
            f"{figures['setup_rss_mib']:>14.0f}{growth:>8.0f}"
        )
    from slt_jax._src.jobs.memory import auto_chunk_size

    for budget_mib in (sizes[4] * 1.05, sizes[16] * 1.05):
        chosen = auto_chunk_size(
            lambda c: program_mib(c, num) * 2**20, num, int(budget_mib * 2**20)
        )
        print(
            f"budget {budget_mib:.1f} MiB → automatic chunk {chosen} "
            f"(program {program_mib(chosen, num):.1f} MiB, within budget: "
            f"{program_mib(chosen, num) <= budget_mib})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "memory", "both"), default="both")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
            if args.part in ("speed", "both"):
                speed()
            if args.part in ("memory", "both"):
                memory()
