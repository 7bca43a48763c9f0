"""SGLD throughput on the digits MLP: slt_jax's engine against a hand-written jitted scan.

Both run the same update (DESIGN.md §1) on the same model, chains vmapped, steps in one
``lax.scan``; the baseline draws minibatch indices with ``randint`` and records only the
loss, i.e. the least a script could do. Compile time is measured apart (``lower`` +
``compile``); run time is the median of ``--repeats`` calls of the compiled program.

    python benchmarks/bench_sgld_digits.py [--chains 8] [--steps 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import slt_jax as sj
from slt_jax._src.engine import programs


def handwritten_sgld(loss_fn, num_steps, batch_size, step_size, localization, nbeta):
    """The reference: a plain vmapped scan of the SGLD update, written out by hand."""

    def chain(key, center, data):
        n = data[0].shape[0]

        def step(w, key):
            batch_key, noise_key = jax.random.split(key)
            idx = jax.random.randint(batch_key, (batch_size,), 0, n)
            batch = jax.tree.map(lambda a: a[idx], data)
            loss, grad = jax.value_and_grad(loss_fn)(w, batch)
            leaves, treedef = jax.tree.flatten(w)
            noise = jax.tree.unflatten(
                treedef,
                [
                    jax.random.normal(k, x.shape, x.dtype)
                    for k, x in zip(jax.random.split(noise_key, len(leaves)), leaves, strict=True)
                ],
            )
            w = jax.tree.map(
                lambda w, g, c, z: (
                    w
                    - step_size / 2 * (nbeta * g + localization * (w - c))
                    + jnp.sqrt(step_size) * z
                ),
                w,
                grad,
                center,
                noise,
            )
            return w, loss

        _, losses = jax.lax.scan(step, center, jax.random.split(key, num_steps))
        return losses

    return jax.jit(jax.vmap(chain, in_axes=(0, None, None)))


def time_compiled(compiled, args, repeats):
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    data = sj.examples.load_digits()
    model = sj.examples.MLP((64, 32, 10), rngs=nnx.Rngs(0))
    sj.examples.train_classifier(model, data, num_steps=300)
    loss_fn, params = sj.nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    data = jax.device_put((jnp.asarray(data[0]), jnp.asarray(data[1])))
    n = data[0].shape[0]
    eps, gamma, nbeta = 1e-4, 100.0, n / float(jnp.log(n))
    keys = jax.random.split(jax.random.key(0), args.chains)
    mesh = programs.resolve_mesh()
    centers = jax.tree.map(lambda x: jnp.broadcast_to(x, (args.chains, *x.shape)), params)

    rows = []
    for estimator in ("plain", "paired"):
        # The compiled program every entry point runs (items sharded over the devices).
        config, _ = sj.LLCConfig(
            num_chains=args.chains,
            num_steps=args.steps,
            num_burnin=0,
            step_size=eps,
            localization=gamma,
            nbeta=nbeta,
            batch_size=args.batch_size,
            estimator=estimator,
            diagnostic_every=0,
        ).resolve(n)
        placed = programs.place(programs.Items(keys, centers, config.arrays()), data, mesh)
        program = programs.program(loss_fn, config.static(), programs.NO_PLUGINS, mesh)
        start = time.perf_counter()
        compiled = program.lower(*placed).compile()
        compile_s = time.perf_counter() - start
        run_s = time_compiled(compiled, placed, args.repeats)
        rows.append((f"slt_jax engine ({estimator})", compile_s, run_s))

    baseline = handwritten_sgld(loss_fn, args.steps, args.batch_size, eps, gamma, nbeta)
    start = time.perf_counter()
    compiled = baseline.lower(keys, params, data).compile()
    compile_s = time.perf_counter() - start
    rows.append(
        (
            "hand-written scan",
            compile_s,
            time_compiled(compiled, (keys, params, data), args.repeats),
        )
    )

    # End to end through the public API (cached program, host-side diagnostics included).
    kw = dict(
        num_chains=args.chains,
        num_steps=args.steps,
        num_burnin=0,
        step_size=eps,
        localization=gamma,
        batch_size=args.batch_size,
    )
    sj.estimate_llc(loss_fn, params, data, **kw)
    ends = []
    for seed in range(args.repeats):
        start = time.perf_counter()
        sj.estimate_llc(loss_fn, params, data, seed=seed, **kw)
        ends.append(time.perf_counter() - start)
    rows.append(("estimate_llc end to end (paired)", float("nan"), statistics.median(ends)))

    chain_steps = args.chains * args.steps
    reference = rows[2][2]
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"digits MLP 64-32-10 ({num_params} params), n={n}, batch {args.batch_size}, "
        f"{args.chains} chains x {args.steps} steps, device {jax.devices()[0].platform}, "
        f"median of {args.repeats}"
    )
    print(f"{'program':<34}{'compile s':>10}{'run s':>9}{'chain-steps/s':>15}{'vs hand':>9}")
    for name, compile_s, run_s in rows:
        print(
            f"{name:<34}{compile_s:>10.2f}{run_s:>9.3f}{chain_steps / run_s:>15,.0f}"
            f"{reference / run_s:>9.2f}"
        )


if __name__ == "__main__":
    main()
