"""Refined LLCs of every attention head: one call against a Python loop of one call per head.

A two-layer attention-only transformer (pure JAX; fused per-layer weights ``qkv`` of shape
``(d_model, 3, H, d_head)`` and ``out`` of shape ``(H, d_head, d_model)``, so each head is
a slice of a tensor) is trained briefly with Adam on a synthetic copy task. One refinement
per head (``2H`` in all, :func:`slt_jax.refine.head_masks`) is estimated (a) by one call of
``sj.estimate_refined_llc`` with all ``2H`` refinements (refinements × chains vmapped in one
compiled program) and (b) by ``2H`` calls with one refinement each. Cold = a fresh loss
function and ``jax.clear_caches()`` (tracing and compilation included), warm = the same
call again; medians of ``--repeats``, compile = cold − warm. Both paths use the chain keys
``split(key(seed), C)`` for every head, so per-head estimates should agree to float rounding.

    python benchmarks/bench_refined.py [--chains 4] [--steps 200] [--batch-size 16]
                                       [--repeats 3] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as sj
from slt_jax._src.engine.programs import num_compiled

# ------------------------------------------------------------------------------------ model


def init_params(key, vocab, d_model, heads, d_head, context, layers=2):
    keys = iter(jax.random.split(key, 3 + 2 * layers))

    def normal(shape, fan_in):
        return jax.random.normal(next(keys), shape) / np.sqrt(fan_in)

    params = {
        "embed": normal((vocab, d_model), d_model),
        "pos": normal((context, d_model), d_model),
        "unembed": normal((d_model, vocab), d_model),
    }
    for layer in range(layers):
        params[f"layer{layer}"] = {
            "qkv": normal((d_model, 3, heads, d_head), d_model),
            "out": normal((heads, d_head, d_model), heads * d_head),
        }
    return params


def forward(params, tokens):
    """Logits ``(B, T, vocab)`` of causal attention-only layers with residual connections."""
    t = tokens.shape[-1]
    x = params["embed"][tokens] + params["pos"][:t]
    causal = jnp.tril(jnp.ones((t, t), bool))
    for layer in sorted(k for k in params if k.startswith("layer")):
        w = params[layer]
        q, k, v = jnp.einsum("btd,dshe->sbthe", x, w["qkv"])
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(q.shape[-1])
        attn = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        z = jnp.einsum("bhqk,bkhe->bqhe", attn, v)
        x = x + jnp.einsum("bqhe,hed->bqd", z, w["out"])
    return x @ params["unembed"]


def loss_fn(params, tokens):
    """Mean next-token cross-entropy."""
    logits = forward(params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def make_data(num, vocab, context, seed=0):
    """Sequences whose first half follows a sparse random bigram chain (4 successors per
    token) and whose second half copies the first: bigram statistics and an induction-like
    copy are both learnable."""
    rng = np.random.default_rng(seed)
    successors = np.stack([rng.choice(vocab, 4, replace=False) for _ in range(vocab)])
    half = context // 2
    seqs = np.empty((num, half), np.int32)
    seqs[:, 0] = rng.integers(vocab, size=num)
    for i in range(1, half):
        seqs[:, i] = successors[seqs[:, i - 1], rng.integers(4, size=num)]
    return np.concatenate([seqs, seqs], axis=1)[:, :context]


def train(params, data, steps, batch=128, lr=3e-3, seed=0):
    optimizer = optax.adam(lr)
    index = np.random.default_rng(seed).integers(len(data), size=(steps, batch))
    data = jnp.asarray(data)

    @jax.jit
    def run(params, index):
        def step(carry, idx):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, data[idx])
            updates, state = optimizer.update(grads, state)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), index)
        return params, losses

    params, losses = run(params, index)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params), np.asarray(losses)


# ------------------------------------------------------------------------------------ paths


def run(loss, params, data, groups, common, seed) -> dict:
    """``{head: LLCResult}`` from one ``estimate_refined_llc`` call per group of heads."""
    results = {}
    for group in groups:
        results.update(sj.estimate_refined_llc(loss, params, data, group, seed=seed, **common))
    return results


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(args) -> dict:
    data = make_data(args.examples, args.vocab, args.context)
    dims = (args.vocab, args.d_model, args.heads, args.d_head, args.context)
    params = init_params(jax.random.key(0), *dims)
    t_train, (params, losses) = timed(lambda: train(params, data, args.train_steps))
    print(
        f"trained {args.train_steps} Adam steps in {t_train:.1f}s: loss {losses[0]:.3f} → "
        f"{losses[-10:].mean():.3f} (full data {float(loss_fn(params, data)):.3f})",
        file=sys.stderr,
    )
    masks = {}
    for layer in range(2):
        spec = {f"layer{layer}/qkv": 2, f"layer{layer}/out": 0}
        masks.update(sj.refine.head_masks(params, spec, args.heads, prefix=f"L{layer}H"))
    common = dict(num_chains=args.chains, num_steps=args.steps, batch_size=args.batch_size)
    common.update(step_size=args.step_size, localization=args.localization)
    paths = {"batched": [masks], "loop": [{k: m} for k, m in masks.items()]}
    times = {f"{p}_{t}": [] for p in paths for t in ("cold", "warm")}
    compiles, diffs, llc, health = {}, [], {}, {}
    for repeat in range(args.repeats):
        # Alternate which path goes first, so that neither always runs on a cooler machine.
        for path in list(paths)[:: 1 if repeat % 2 == 0 else -1]:
            # slt_jax caches programs per loss function: a new one and cleared caches make
            # the first call trace and compile again.
            f = lambda p, batch: loss_fn(p, batch)  # noqa: E731
            jax.clear_caches()
            before = num_compiled()
            call = lambda f=f, g=paths[path], s=repeat: run(f, params, data, g, common, s)  # noqa: E731
            cold, first = timed(call)
            compiles[path] = num_compiled() - before
            warm, second = timed(call)
            llc[path] = np.array([second[k].llc_mean for k in masks])
            health[path] = {k: sorted(r.health()) for k, r in second.items() if r.health()}
            if not np.array_equal([first[k].llc_mean for k in masks], llc[path], equal_nan=True):
                print(f"  warning: {path} is not deterministic across calls", file=sys.stderr)
            times[f"{path}_cold"].append(cold)
            times[f"{path}_warm"].append(warm)
        diffs.append(float(np.max(np.abs(llc["batched"] - llc["loop"]))))
        print(
            f"  repeat {repeat + 1}/{args.repeats}  "
            + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            + f"  max|Δλ̂| {diffs[-1]:.2e}",
            file=sys.stderr,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(
        params=sum(int(np.size(p)) for p in jax.tree.leaves(params)),
        coords_per_head=sj.refine.num_selected(masks["L0H0"]),
        refinements=len(masks),
        n=len(data),
        train_loss=float(loss_fn(params, data)),
        times=times,
        median=med,
        compile={p: med[f"{p}_cold"] - med[f"{p}_warm"] for p in paths},
        ratio={t: med[f"loop_{t}"] / med[f"batched_{t}"] for t in ("cold", "warm")},
        programs_compiled=compiles,
        max_abs_diff=max(diffs),
        llc={p: dict(zip(masks, map(float, v), strict=True)) for p, v in llc.items()},
        all_finite_positive=bool(all(np.all(np.isfinite(v) & (v > 0)) for v in llc.values())),
        health_problems=health,
    )


def table(r: dict) -> str:
    m, n = r["median"], r["refinements"]
    rows = [
        "| path | calls | programs compiled | cold s | warm s | compile s |",
        "|---|---|---|---|---|---|",
    ]
    for path, label, calls in (
        ("batched", f"one call, {n} refinements", 1),
        ("loop", "one call per head", n),
    ):
        rows.append(
            f"| {path}: {label} | {calls} | {r['programs_compiled'][path]} "
            f"| {m[path + '_cold']:.2f} | {m[path + '_warm']:.2f} | {r['compile'][path]:.2f} |"
        )
    rows.append(
        f"\nratio loop / batched: cold {r['ratio']['cold']:.2f}×, warm {r['ratio']['warm']:.2f}×"
        f"; max |λ̂ batched − λ̂ loop| over heads and repeats {r['max_abs_diff']:.2e}\nper-head "
        "λ̂ (batched): " + ", ".join(f"{k} {v:.2f}" for k, v in r["llc"]["batched"].items())
    )
    rows.append(
        f"all finite and > 0: {r['all_finite_positive']}; health problems (last repeat): "
        f"{r['health_problems']['batched'] or 'none'}"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--vocab", type=int, default=64)
    add("--d-model", type=int, default=64)
    add("--heads", type=int, default=4, help="heads per layer (H); 2H refinements")
    add("--d-head", type=int, default=16)
    add("--context", type=int, default=32)
    add("--examples", type=int, default=4096, help="number of sequences (n)")
    add("--train-steps", type=int, default=300, help="Adam steps, batch 128")
    add("--chains", type=int, default=4, help="chains per refinement")
    add("--steps", type=int, default=200, help="SGLD steps per chain")
    add("--batch-size", type=int, default=16)
    add("--step-size", type=float, default=1e-3)
    add("--localization", type=float, default=100.0)
    add("--repeats", type=int, default=3, help="repeats; medians reported")
    add("--json", help="write the figures as JSON here ('-': stdout)")
    add("--quick", action="store_true", help="smoke test: tiny model, 2 chains, 20 steps, once")
    args = parser.parse_args()
    if args.quick:
        args.vocab, args.d_model, args.heads, args.d_head, args.context = 16, 16, 2, 8, 8
        args.examples, args.train_steps, args.batch_size = 256, 20, 16
        args.chains, args.steps, args.repeats = 2, 20, 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        r = bench(args)
    print(
        f"2-layer attention-only transformer: vocab {args.vocab}, d_model {args.d_model}, "
        f"{args.heads} heads × d_head {args.d_head}, context {args.context}; {r['params']} "
        f"params, {r['coords_per_head']} per head; n = {r['n']}, loss at w* "
        f"{r['train_loss']:.3f}. {args.chains} chains × {args.steps} steps per head, batch "
        f"{args.batch_size}, ε {args.step_size:g}, γ {args.localization:g}; medians of "
        f"{args.repeats}; JAX {jax.__version__}, {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)); cold = first call incl. compile, warm = again"
    )
    print(table(r))
    if args.json:
        device = dict(platform=jax.devices()[0].platform, device_count=jax.device_count())
        versions = dict(jax=jax.__version__, python=platform.python_version())
        report = dict(date=datetime.date.today().isoformat(), **versions, **device)
        text = json.dumps(dict(report, args=vars(args), **r), indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()
