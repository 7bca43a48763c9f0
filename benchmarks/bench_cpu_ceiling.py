"""The matmul ceiling of this CPU for one GPT-2-shape chain step, in XLA and in torch
(issue 26, item 2: "where a fundamental limit stops you, show it").

The shape is the issue's: GPT-2, width d = 256, 2 layers, 8 heads of 32, vocabulary
V = 5000, sequence T = 256, batch B = 8 (N = B·T = 2048 tokens), MLP 4d. One chain step is
the forward and backward pass of the next-token loss. Its matrix products (``GEMMS``), each
``C[M, N] = A[M, K] · B[K, N]`` (batched over ``B·H`` for attention), are per layer

====================  =====================  ==========================
name                  forward (M, K, N)      count
====================  =====================  ==========================
``qkv``               (2048, 256, 768)       L
``scores``            64 × (256, 32, 256)    L  (q kᵀ, per batch × head)
``mix``               64 × (256, 256, 32)    L  (softmax · v)
``out``               (2048, 256, 256)       L
``fc``                (2048, 256, 1024)      L
``proj``              (2048, 1024, 256)      L
``head``              (2048, 256, 5000)      1  (tied embedding)
====================  =====================  ==========================

and the backward pass of each forward product takes two more of the same FLOPs:
``dA = dC · Bᵀ`` (``"nt"``) and ``dB = Aᵀ · dC`` (``"tn"``). FLOPs = 2·M·K·N each; the step
is 3 × 12.76 = 38.3 GFLOP (causal attention computes the full T × T scores, as both
libraries do).

Parts, each in its own process:

* ``gemm``: every distinct product timed alone, the best (and the median) of ``--repeats``
  calls after one warm-up (the best: other jobs on a shared machine only add time): XLA
  (``jax.jit`` of ``jnp.einsum`` on float32 arrays, the transposes folded into the
  contraction as autodiff writes them) and torch (``A @ B``, ``dC @ B.mT``, ``A.mT @ dC``,
  ``torch.set_num_threads(2)``, float32), in GFLOP/s per product and for the step (the sum
  of times × counts);
* ``step``: the whole step of one chain, float32, best and median of ``--repeats``: slt_jax
  (``jax.jit(jax.value_and_grad(sj.lm.next_token_loss(sj.lm.GPT2(...))))``) and torch
  (``transformers``' ``GPT2LMHeadModel``, eager attention as canonical-interp runs it,
  ``F.cross_entropy``, ``backward()``), in seconds and GFLOP/s;
* ``--flags``: the XLA parts again under each ``XLA_FLAGS`` setting in ``FLAG_SETS``
  (which of the dots and reductions YNNPACK takes, vector width, Eigen threading, fast
  math), each in a fresh process,
  ``--passes`` times in alternating order (the best pass kept), so that a change of load
  does not favour the sets that ran first. The ``gemm`` and ``step`` parts also run
  ``--passes`` times per framework, alternating, and keep each product's best time.

The load average (``os.getloadavg()``) is recorded beside every part: this machine is shared.

    python benchmarks/bench_cpu_ceiling.py --peer-python /work/venvs/peers311/bin/python \\
        [--repeats 7] [--flags [--passes 2]] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

B, T, D, LAYERS, HEADS, VOCAB = 8, 256, 256, 2, 8, 5000
N_TOK, DH = B * T, D // HEADS
# name: (batch, M, K, N, count per step)
GEMMS = {
    "qkv": (1, N_TOK, D, 3 * D, LAYERS),
    "scores": (B * HEADS, T, DH, T, LAYERS),
    "mix": (B * HEADS, T, T, DH, LAYERS),
    "out": (1, N_TOK, D, D, LAYERS),
    "fc": (1, N_TOK, D, 4 * D, LAYERS),
    "proj": (1, N_TOK, 4 * D, D, LAYERS),
    "head": (1, N_TOK, D, VOCAB, 1),
}
PASSES = ("nn", "nt", "tn")  # forward C = A B; backward dA = dC Bᵀ, dB = Aᵀ dC
_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# jax 0.10.2's XLA:CPU hands dots ("individual_dot") and reductions to YNNPACK by default.
# Checked on the compiled step (``fusions`` in the step part's output): the XNNPACK
# (``--xla_cpu_experimental_xnn_fusion_type=dot``, ``..._xnn_graph_fusion_mode=...GREEDY``,
# ``--xla_cpu_use_xnnpack=false``) and oneDNN (``--xla_cpu_use_onednn=true``,
# ``--xla_cpu_experimental_onednn_custom_call=true``) flags leave the program unchanged.
FLAG_SETS = {
    "default": "",
    "ynn dots only": _YNN + "-reduce",
    "ynn reductions only": _YNN + "-individual_dot",
    "ynn off": _YNN + "-dot,-eltwise,-reduce,-individual_dot",
    "ynn + fused dot, eltwise": _YNN + "+dot,+eltwise",
    "vector width 512": "--xla_cpu_prefer_vector_width=512",
    "eigen 1 thread": "--xla_cpu_multi_thread_eigen=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def flops(batch: int, m: int, k: int, n: int) -> float:
    return 2.0 * batch * m * k * n


def step_flops() -> float:
    """FLOPs of one chain step's matrix products: 3 × the forward's."""
    return sum(3 * flops(*g[:4]) * g[4] for g in GEMMS.values())


def operands(batch: int, m: int, k: int, n: int, kind: str):
    """Shapes of the two operands of pass ``kind`` of the product (M, K) · (K, N)."""
    lead = (batch,) if batch > 1 else ()
    a, b, c = (*lead, m, k), (*lead, k, n), (*lead, m, n)
    return {"nn": (a, b), "nt": (c, b), "tn": (a, c)}[kind]


def _median_time(fn, repeats: int) -> list[float]:
    """``[best, median]`` seconds of ``repeats`` calls after a warm-up call."""
    fn()  # warm-up (compilation, allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return [min(times), statistics.median(times)]


# ---- workers ----------------------------------------------------------------------------


def gemm_xla(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    specs = {"nn": "...mk,...kn->...mn", "nt": "...mn,...kn->...mk", "tn": "...mk,...mn->...kn"}
    out = {}
    for name, (batch, m, k, n, _) in GEMMS.items():
        for kind in PASSES:
            x, y = (
                jax.random.normal(jax.random.key(i), s, jnp.float32)
                for i, s in enumerate(operands(batch, m, k, n, kind))
            )
            f = jax.jit(lambda x, y, s=specs[kind]: jnp.einsum(s, x, y))
            out[f"{name}/{kind}"] = _median_time(
                lambda f=f, x=x, y=y: f(x, y).block_until_ready(), repeats
            )
    return out


def gemm_torch(repeats: int) -> dict:
    import torch

    torch.set_num_threads(2)
    ops = {"nn": lambda a, b: a @ b, "nt": lambda c, b: c @ b.mT, "tn": lambda a, c: a.mT @ c}
    out = {}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, (batch, m, k, n, _) in GEMMS.items():
            for kind in PASSES:
                shapes = operands(batch, m, k, n, kind)
                x, y = (torch.randn(s, generator=gen) for s in shapes)
                out[f"{name}/{kind}"] = _median_time(
                    lambda x=x, y=y, op=ops[kind]: op(x, y), repeats
                )
    return out


def step_xla(repeats: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    import slt_jax as sj

    config = sj.lm.GPT2Config(
        vocab_size=VOCAB, n_positions=T + 1, n_embd=D, n_layer=LAYERS, n_head=HEADS
    )
    loss_fn, params = sj.lm.next_token_loss(sj.lm.GPT2(config, rngs=nnx.Rngs(0)))
    batch = np.random.default_rng(0).integers(0, VOCAB, (B, T + 1)).astype(np.int32)
    step = jax.jit(jax.value_and_grad(loss_fn)).lower(params, batch).compile()
    text = step.as_text()
    fusions = {k: text.count(k) for k in ("__ynn_fusion", "__xnn_fusion", "onednn")}
    seconds = _median_time(lambda: jax.block_until_ready(step(params, batch)), repeats)
    return {"step": seconds, "fusions": fusions}


def step_torch(repeats: int) -> dict:
    import numpy as np
    import torch
    import transformers
    from torch.nn import functional as F

    torch.set_num_threads(2)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=T + 1, n_embd=D, n_layer=LAYERS, n_head=HEADS,
        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, VOCAB, (B, T + 1)))

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(ids[:, :-1], use_cache=False).logits
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()

    return {"step": _median_time(step, repeats)}


WORKERS = {
    ("gemm", "xla"): gemm_xla,
    ("gemm", "torch"): gemm_torch,
    ("step", "xla"): step_xla,
    ("step", "torch"): step_torch,
}


# ---- parent -----------------------------------------------------------------------------


def run(part: str, framework: str, python: str, repeats: int, xla_flags: str = "") -> dict:
    env = dict(os.environ)
    if framework == "torch":
        env.pop("PYTHONPATH", None)
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    cmd = [
        python,
        os.path.abspath(__file__),
        "--worker",
        part,
        framework,
        "--repeats",
        str(repeats),
    ]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0:
        return {"status": f"failed (exit {proc.returncode})", "error": proc.stderr[-1500:]}
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"status": "measured", "times": times, "load": [load_before, os.getloadavg()[0]]}


def best_of(entries: list[dict]) -> dict:
    """The passes of one part and framework as one: for every timed key the best time of
    all passes and the median of their medians; each pass's load kept."""
    ok = [e for e in entries if e["status"] == "measured"]
    if not ok:
        return entries[0]
    times = {}
    for key, value in ok[0]["times"].items():
        if isinstance(value, list):
            best = min(e["times"][key][0] for e in ok)
            times[key] = [best, statistics.median(e["times"][key][1] for e in ok)]
        else:
            times[key] = value
    loads = [e["load"] for e in ok]
    return {"status": "measured", "times": times, "load": [min(x[0] for x in loads),
            max(x[1] for x in loads)], "passes": ok}  # fmt: skip


def gemm_table(results: dict) -> tuple[list[str], dict]:
    """Markdown rows per product and the step totals, GFLOP/s by framework."""
    frameworks = [f for f in results if results[f]["status"] == "measured"]
    head = "| product | shape (batch × M × K × N) | pass | GFLOP | " + " | ".join(
        f"{f} best ms | {f} GFLOP/s" for f in frameworks
    )
    lines = [head + " |", "|" + "---|" * (4 + 2 * len(frameworks))]
    totals = {f: 0.0 for f in frameworks}
    for name, (batch, m, k, n, count) in GEMMS.items():
        for kind in PASSES:
            g = flops(batch, m, k, n) / 1e9
            cells = []
            for f in frameworks:
                s = results[f]["times"][f"{name}/{kind}"][0]
                totals[f] += s * count
                cells.append(f"{1e3 * s:.2f} | {g / s:.0f}")
            lines.append(
                f"| {name} ×{count} | {batch}×{m}×{k}×{n} | {kind} | {g:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    total_g = step_flops() / 1e9
    cells = " | ".join(f"{1e3 * totals[f]:.0f} | {total_g / totals[f]:.0f}" for f in frameworks)
    lines.append(f"| **step's products** | | | {total_g:.1f} | {cells} |")
    return lines, {f: total_g / totals[f] for f in frameworks}


def _flag_line(name: str, entry: dict, step_gflop: float) -> str:
    if not all(e["status"] == "measured" for e in entry.values() if isinstance(e, dict)):
        return f"{name}: {entry['gemm']['status']} {entry['gemm'].get('error', '')[-300:]}"
    _, products = gemm_table({"xla": entry["gemm"]})
    best, median = entry["step"]["times"]["step"]
    load = entry["step"]["load"][0]
    return (
        f"{name} ({FLAG_SETS[name] or 'no flags'}): products {products['xla']:.0f} GFLOP/s, "
        f"step best {best:.3f} s = {step_gflop / best:.0f} GFLOP/s, median {median:.3f} s "
        f"(load {load:.1f}; {entry['step']['times']['fusions']})"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default=None, help="a Python with torch and transformers")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--flags", action="store_true", help="also every XLA_FLAGS set in FLAG_SETS"
    )
    parser.add_argument(
        "--passes", type=int, default=2, help="runs of every part (fresh processes, "
        "alternating order); the best of all is kept"
    )  # fmt: skip
    parser.add_argument("--only-flags", nargs="*", default=None, help="names in FLAG_SETS to try")
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[tuple(args.worker)](args.repeats)))
        return 0
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
    report["step_gflop"] = step_flops() / 1e9
    pythons = {"xla": sys.executable}
    if args.peer_python:
        pythons["torch"] = args.peer_python
    for part in ("gemm", "step"):
        runs = {framework: [] for framework in pythons}
        for k in range(args.passes):  # XLA, torch, torch, XLA, ...: alike under a changing load
            for framework in list(pythons) if k % 2 == 0 else list(pythons)[::-1]:
                print(f"{part} / {framework}, pass {k + 1} ...", flush=True)
                runs[framework].append(run(part, framework, pythons[framework], args.repeats))
                print(json.dumps(runs[framework][-1])[:300], flush=True)
        report[part] = {framework: best_of(entries) for framework, entries in runs.items()}
    lines, totals = gemm_table(report["gemm"])
    print("\n".join(lines))
    for framework, entry in report["step"].items():
        if entry["status"] == "measured":
            best, median = entry["times"]["step"]
            print(
                f"whole step, {framework}: best {best:.3f} s = {report['step_gflop'] / best:.0f} "
                f"GFLOP/s, median {median:.3f} s (its products alone: "
                f"{totals.get(framework, float('nan')):.0f} GFLOP/s; "
                f"load {entry['load'][0]:.1f}-{entry['load'][1]:.1f})"
            )
    if args.flags or args.only_flags:
        names = args.only_flags or list(FLAG_SETS)
        report["flags"] = {name: [] for name in names}
        for k in range(args.passes):
            for name in names if k % 2 == 0 else names[::-1]:
                entry = {
                    p: run(p, "xla", sys.executable, args.repeats, FLAG_SETS[name])
                    for p in ("gemm", "step")
                }
                report["flags"][name].append(entry | {"xla_flags": FLAG_SETS[name]})
                print(f"pass {k + 1}: {_flag_line(name, entry, report['step_gflop'])}", flush=True)
        print("best pass of each XLA_FLAGS set:")
        for name, entries in report["flags"].items():
            ok = [e for e in entries if e["step"]["status"] == "measured"]
            best = min(ok, key=lambda e: e["step"]["times"]["step"][0]) if ok else entries[0]
            print(_flag_line(name, best, report["step_gflop"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
