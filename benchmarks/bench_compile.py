"""Compile cost of one chain program, against another commit of slt_jax, side by side.

Each case builds the chain program ``estimate_llc`` compiles (``orchestrate.lower`` of one
group of chains) and reports the seconds spent lowering it and compiling it with XLA
(process CPU seconds: single-threaded passes, steadier than wall time on a shared
machine), the size of XLA's optimized program (HLO lines, fusions) and the warm time of a
call. Each measurement runs in a fresh process; ``--against REF`` runs the same cases
with slt_jax checked out at ``REF`` (a temporary ``git worktree``) in the same invocation,
alternating, and prints medians of ``--repeats`` and the ratio; ``--xla-flags FLAGS``
compares this commit compiled with those XLA flags added (e.g. the test suite's
``--xla_cpu_use_fusion_emitters=false``) against XLA's defaults, the same way.

Cases: ``mlp`` (64-32-10 on 512 rows, batch 64); ``neox`` (GPT-NeoX 2 × 16 wide,
vocab 32, seq 8, batch 16); ``pythia14m`` (NeoX 128 × 6, vocab 50304, seq 128, batch 8);
each with 4 chains, 100 steps (25 burn-in), the default diagnostics (every 10 draws) and
the default estimator. Run:

    python benchmarks/bench_compile.py --against 12c7db8 --repeats 3
    python benchmarks/bench_compile.py --xla-flags=--xla_cpu_use_fusion_emitters=false
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = ("mlp", "neox", "pythia14m")


def _problem(case: str):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import slt_jax as sj

    rng = np.random.default_rng(0)
    if case == "mlp":
        x = rng.normal(size=(512, 64)).astype(np.float32)
        y = rng.integers(0, 10, 512)
        params = {
            "w1": jnp.asarray(rng.normal(size=(64, 32)) / 8, jnp.float32),
            "b1": jnp.zeros(32),
            "w2": jnp.asarray(rng.normal(size=(32, 10)) / 6, jnp.float32),
            "b2": jnp.zeros(10),
        }

        def loss_fn(p, batch):
            xb, yb = batch
            logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
            picked = jnp.take_along_axis(logits, yb[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)

        return loss_fn, params, (x, y), 64
    if case == "neox":
        shape = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
        shape.update(intermediate_size=32, max_position_embeddings=32)
        seq, rows, batch = 8, 64, 16
    else:
        shape = dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6)
        shape.update(num_attention_heads=4, intermediate_size=512, max_position_embeddings=2048)
        seq, rows, batch = 128, 64, 8
    model = sj.lm.GPTNeoX(sj.lm.GPTNeoXConfig(**shape), rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    tokens = rng.integers(0, shape["vocab_size"], (rows, seq + 1)).astype(np.int32)
    return loss_fn, params, tokens, batch


def measure(case: str) -> dict:
    """One case in this process (the slt_jax on ``sys.path``)."""
    import time
    import warnings

    import jax
    import jax.numpy as jnp

    import slt_jax as sj
    from slt_jax._src.engine import programs
    from slt_jax._src.jobs import orchestrate

    warnings.simplefilter("ignore")
    loss_fn, params, data, batch = _problem(case)
    config = sj.LLCConfig(
        num_chains=4, num_steps=100, batch_size=batch, step_size=1e-5, localization=100.0
    )
    config, key = orchestrate.prepare(loss_fn, params, data, config)
    one = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
    group = orchestrate.Group(config, 0, jax.random.split(key, config.num_chains))
    mesh = programs.resolve_mesh(None)
    c0 = time.process_time()
    lowered = orchestrate.lower(loss_fn, one, data, [group], mesh=mesh)
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    hlo = compiled.as_text()
    # the warm call: the public entry point, whose program is now compiled
    sj.estimate_llc(loss_fn, params, data, config=config, seed=0)
    t3 = time.perf_counter()
    sj.estimate_llc(loss_fn, params, data, config=config, seed=1)
    return dict(
        lower_s=c1 - c0,
        compile_cpu_s=c2 - c1,
        compile_wall_s=t2 - t1,
        hlo_lines=hlo.count("\n"),
        fusions=hlo.count(" fusion("),
        warm_s=time.perf_counter() - t3,
        commit=_commit(pathlib.Path(sj.__file__).resolve().parents[1]),
    )


def _commit(root: pathlib.Path) -> str:
    run = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return run.stdout.strip() + ("+" if dirty else "")


def _child(root: pathlib.Path, case: str, xla_flags: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"}
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    run = subprocess.run(
        [sys.executable, __file__, "--child", case], env=env, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", help="a git commit to compare with (e.g. 12c7db8)")
    parser.add_argument("--xla-flags", help="XLA flags to compare with XLA's defaults")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    if args.against and args.xla_flags:
        parser.error("--against and --xla-flags: one comparison at a time")
    roots = {"this": (ROOT, "")}
    if args.xla_flags:
        roots = {"defaults": (ROOT, ""), "this": (ROOT, args.xla_flags)}
    base = args.against or ("defaults" if args.xla_flags else None)
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            ref = pathlib.Path(tmp) / "ref"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), args.against],
                check=True,
                capture_output=True,
            )
            roots = {args.against: (ref, ""), "this": (ROOT, "")}
        try:
            results = {name: {} for name in roots}
            for case in args.cases.split(","):
                for _ in range(args.repeats):
                    for name, (root, flags) in roots.items():
                        results[name].setdefault(case, []).append(_child(root, case, flags))
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)])
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeats} fresh processes")
    keys = ("lower_s", "compile_cpu_s", "compile_wall_s", "hlo_lines", "fusions", "warm_s")
    print(f"{'case':10s} {'slt_jax':10s} " + " ".join(f"{k:>14s}" for k in keys))
    for case in args.cases.split(","):
        medians = {}
        for name in roots:
            rows = results[name][case]
            medians[name] = {k: statistics.median(r[k] for r in rows) for k in keys}
            label = rows[0]["commit"] + ("+flags" if roots[name][1] else "")
            print(f"{case:10s} {label:10s} " + " ".join(f"{medians[name][k]:14.3f}" for k in keys))
        if base:
            ratio = {k: medians["this"][k] / medians[base][k] for k in keys}
            print(f"{case:10s} {'ratio':10s} " + " ".join(f"{ratio[k]:14.2f}" for k in keys))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
