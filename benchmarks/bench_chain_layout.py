"""The chain axis as a vmap, a map, or a vmap within a map, on models of several sizes.

A vmapped chain step batches every matmul over the chains; on XLA's CPU backend batched
matmuls of medium size run slower than the same matmuls one chain at a time, so a
``lax.map`` over the chains can win there. This script times one compiled chain program
(``programs.run_items``, SGLD, ``--chains`` chains) per layout, model and batch size,
compile time apart, and prints the ratios against vmap: the measurements behind the
default layout rule (``slt_jax._src.engine.programs.default_layout``: on CPU, ``"map"``
when parameters × batch rows ≥ ``MAP_THRESHOLD``).

The models: tanh MLPs from 0.3k to 400k parameters at several batch sizes, and a
GPT-2-like transformer (pre-layer-norm, 2 blocks of causal attention and a 4× MLP, d = 64,
vocabulary 512, context 64, tied embeddings: 136,960 parameters) at batch 16 sequences × 64
tokens. The number of steps of each model is chosen so that one run does about
``--flop`` FLOPs (at least 10 steps, at most ``--steps``). The layouts of one cell are
compiled first and then timed round-robin (``--repeats`` rounds), so that load on a shared
machine falls on all of them alike; the median is reported. Default run options otherwise
(paired estimator, diagnostics every 10 draws: what a user's run does).

    python benchmarks/bench_chain_layout.py [--chains 8] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
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


GPT_SMALL = dict(vocab=512, d_model=64, heads=4, layers=2, context=64)


def gpt2_like(vocab=512, d_model=64, heads=4, layers=2, context=64, n=512, seed=0):
    """A GPT-2-like decoder (pre-LN blocks: causal attention, 4x GELU MLP; learned positions,
    tied unembedding) on random tokens, next-token cross-entropy: (loss_fn, params, data).
    The default size has 136,960 parameters."""
    rng = np.random.default_rng(seed)

    def dense(a, b):
        return {
            "w": jnp.asarray(rng.normal(size=(a, b)) * 0.02, jnp.float32),
            "b": jnp.zeros(b, jnp.float32),
        }

    def norm():
        return {"scale": jnp.ones(d_model, jnp.float32), "bias": jnp.zeros(d_model, jnp.float32)}

    params = {
        "embed": jnp.asarray(rng.normal(size=(vocab, d_model)) * 0.02, jnp.float32),
        "pos": jnp.asarray(rng.normal(size=(context, d_model)) * 0.01, jnp.float32),
        "blocks": [
            {
                "ln1": norm(),
                "qkv": dense(d_model, 3 * d_model),
                "proj": dense(d_model, d_model),
                "ln2": norm(),
                "fc": dense(d_model, 4 * d_model),
                "out": dense(4 * d_model, d_model),
            }
            for _ in range(layers)
        ],
        "ln_f": norm(),
    }
    tokens = rng.integers(0, vocab, size=(n, context + 1)).astype(np.int32)
    data = (jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]))

    def layer_norm(x, p):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]

    def loss_fn(p, batch):
        inputs, targets = batch
        length = inputs.shape[1]
        x = p["embed"][inputs] + p["pos"][:length]
        causal = jnp.tril(jnp.ones((length, length), bool))
        for block in p["blocks"]:
            h = layer_norm(x, block["ln1"])
            qkv = h @ block["qkv"]["w"] + block["qkv"]["b"]
            q, k, v = jnp.split(qkv.reshape(*h.shape[:2], 3 * heads, -1), 3, axis=2)
            scores = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5  # weak type
            scores = jnp.where(causal, scores, -1e9)
            z = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1), v)
            x = x + z.reshape(h.shape) @ block["proj"]["w"] + block["proj"]["b"]
            h = layer_norm(x, block["ln2"])
            h = jax.nn.gelu(h @ block["fc"]["w"] + block["fc"]["b"])
            x = x + h @ block["out"]["w"] + block["out"]["b"]
        logits = layer_norm(x, p["ln_f"]) @ p["embed"].T
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))

    return loss_fn, params, data


def num_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# name -> (builder, batch sizes, FLOPs per parameter per batch row for one step: 6 for an
# MLP (forward and backward); the transformer's rows are sequences of `context` tokens)
MODELS = {
    "mlp 16-16-4 (0.3k)": (lambda: mlp((16, 16, 4)), (32, 128, 512), 6),
    "mlp 64-64-10 (5k)": (lambda: mlp((64, 64, 10)), (32, 128, 512), 6),
    "mlp 64-128-128-10 (26k)": (lambda: mlp((64, 128, 128, 10)), (32, 128, 512), 6),
    "mlp 128-256-256-10 (101k)": (lambda: mlp((128, 256, 256, 10)), (32, 128, 512), 6),
    "mlp 256-512-512-10 (400k)": (lambda: mlp((256, 512, 512, 10)), (32, 128), 6),
    "gpt2-like 2x64, ctx 64 (137k)": (
        lambda: gpt2_like(**GPT_SMALL),
        (16,),
        6 * GPT_SMALL["context"],
    ),
}
LAYOUTS = [("vmap", 1), ("map", 1), ("map", 2), ("map", 4)]


def compiled_program(loss_fn, params, data, *, chains, steps, batch_size, layout, **options):
    """The compiled item program of ``chains`` chains from ``params`` and its arguments,
    with the time its lowering and compilation took."""
    config, key = sj.LLCConfig(
        num_chains=chains,
        num_steps=steps,
        step_size=1e-5,
        localization=100.0,
        batch_size=batch_size,
        chain_layout=layout[0],
        chain_batch=layout[1],
        **options,
    ).resolve(len(jax.tree.leaves(data)[0]))
    keys = jax.random.split(key, chains)
    centers = jax.tree.map(lambda x: jnp.broadcast_to(x, (chains, *x.shape)), params)
    mesh = programs.resolve_mesh()
    placed = programs.place(programs.Items(keys, centers, config.arrays()), data, mesh)
    program = programs.program(loss_fn, config.static(), programs.NO_PLUGINS, mesh)
    start = time.perf_counter()
    compiled = program.lower(*placed).compile()
    return compiled, placed, time.perf_counter() - start


def time_once(compiled, placed) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*placed))
    return time.perf_counter() - start


def bench_cell(loss_fn, params, data, batch_size, steps, args) -> list[dict]:
    built = []
    for layout in LAYOUTS:
        compiled, placed, compile_s = compiled_program(
            loss_fn,
            params,
            data,
            chains=args.chains,
            steps=steps,
            batch_size=batch_size,
            layout=layout,
        )
        time_once(compiled, placed)  # warm-up
        built.append((layout, compiled, placed, compile_s, []))
    for _ in range(args.repeats):
        for _, compiled, placed, _, times in built:
            times.append(time_once(compiled, placed))
    base = statistics.median(built[0][4])
    return [
        dict(
            layout=f"{layout[0]}/{layout[1]}",
            compile_s=compile_s,
            run_s=statistics.median(times),
            runs_s=times,
            chain_steps_per_s=args.chains * steps / statistics.median(times),
            speedup_vs_vmap=base / statistics.median(times),
        )
        for layout, _, _, compile_s, times in built
    ]


def _cell(c: dict) -> str:
    return f"{c['run_s']:.3f} ({c['compile_s']:.1f}) {c['speedup_vs_vmap']:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="the most steps of a run")
    parser.add_argument("--flop", type=float, default=2e10, help="FLOPs of one run (sets steps)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=None, help="substrings of model names, comma-sep.")
    parser.add_argument("--batches", default=None, help="batch sizes for every model, comma-sep.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(
        f"{jax.devices()[0].device_kind}, {args.chains} chains, median of {args.repeats}; "
        f"per layout: run s (compile s) speed-up vs vmap; MAP_THRESHOLD now "
        f"{programs.MAP_THRESHOLD:,}",
        flush=True,
    )
    print(
        f"{'model':<32}{'batch':>6}{'P x B':>12}{'steps':>6}"
        + "".join(f"{f'{a}/{b}':>22}" for a, b in LAYOUTS)
    )
    rows = []
    wanted = None if args.models is None else args.models.split(",")
    for name, (build, batches, flop_per_param_row) in MODELS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        loss_fn, params, data = build()
        size = num_params(params)
        if args.batches:
            batches = [int(b) for b in args.batches.split(",")]
        for batch_size in batches:
            per_step = flop_per_param_row * size * batch_size * args.chains
            steps = int(np.clip(args.flop / per_step, 10, args.steps))
            cells = bench_cell(loss_fn, params, data, batch_size, steps, args)
            rows.append(
                dict(
                    model=name,
                    params=size,
                    batch_size=batch_size,
                    steps=steps,
                    params_x_batch=size * batch_size,
                    layouts=cells,
                )
            )
            print(
                f"{name:<32}{batch_size:>6}{size * batch_size:>12,}{steps:>6}"
                + "".join(f"{_cell(c):>22}" for c in cells),
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    device=jax.devices()[0].device_kind,
                    chains=args.chains,
                    repeats=args.repeats,
                    rows=rows,
                ),
                f,
                indent=1,
            )
    return rows


if __name__ == "__main__":
    main()
