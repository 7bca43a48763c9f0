"""What a language-model run costs against what it does not ask to compute (issue 25).

Three parts, each in fresh processes where memory is measured:

- ``corpus``: time to the first step (and to the result) of ``sj.estimate_llc`` on a token
  file streamed from the host, against the file's size (10M to 600M tokens), with the
  bounded ``L_n(w*)`` estimate and with the exact full-data pass.
- ``checkpoints``: peak host anonymous memory of ``sj.estimate_llc_checkpoints`` over a
  directory of K Hugging Face GPT-NeoX checkpoints (lazy checkpoint sets), against K.
- ``restricted``: restricted chains (only the selected coordinates move) against the mask
  path on a GPT-NeoX with every head and MLP as a component: XLA memory analysis per chain,
  FLOPs per chain-step (cost analysis) and time.

    python benchmarks/bench_lm_scale.py [--part corpus|checkpoints|restricted|all] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

#: The corpus part's model and run: a 1-layer GPT-2 (d = 64, 4 heads, vocabulary 512) on
#: windows of 33 tokens, 2 chains x 20 steps of batch 32, at the field's nβ = 30 and γ = 300
#: (a fixed nβ: the chains' work, and their stability, do not change with the corpus size).
CORPUS_MODEL = dict(vocab_size=512, n_positions=32, n_embd=64, n_layer=1, n_head=4)
CORPUS_RUN = dict(
    num_chains=2, num_steps=20, batch_size=32, step_size=1e-4, localization=300.0, nbeta=30.0
)
CORPUS_SEQ = 33


def corpus(quick: bool) -> dict:
    """Time to the first step and to the result against corpus size.

    For each size (10M, 60M, 600M tokens; ``quick``: 1M and 10M) a raw ``uint16`` token file
    of random ids is written to a temporary directory, and ``sj.estimate_llc`` runs on
    ``sj.TokenWindows`` of it, in a fresh process each (nothing compiled before), with the
    automatic ``init_loss_batches`` (a bounded sample on these sizes) and, up to 60M tokens,
    with the exact full-data pass. Reported, in seconds: the token check (one streaming read
    of the file), ``L_n(w*)``, the time to the first step (everything before the chains
    start), the sampling (the chains' compilation and steps) and the total; and ``L_n(w*)``
    with its standard error. The files are deleted after.
    """
    import shutil
    import subprocess
    import tempfile

    sizes = [1_000_000, 10_000_000] if quick else [10_000_000, 60_000_000, 600_000_000]
    exact_up_to = 60_000_000
    rows = []
    directory = tempfile.mkdtemp(prefix="slt_jax-corpus-")
    try:
        for size in sizes:
            path = os.path.join(directory, f"tokens-{size}.u16")
            _write_tokens(path, size, CORPUS_MODEL["vocab_size"])
            modes = [None, "exact"] if size <= exact_up_to else [None]
            for mode in modes:
                code = (
                    f"import sys, json; sys.path.insert(0, {_HERE!r}); import bench_lm_scale as b; "
                    f"print(json.dumps(b._corpus_run({path!r}, {mode!r})))"
                )
                out = subprocess.run(
                    [sys.executable, "-c", code], check=True, capture_output=True, text=True
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"tokens": size, **row})
                print(_corpus_row(rows[-1]), flush=True)
            os.remove(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(_corpus_table(rows))
    return {"model": CORPUS_MODEL, "run": CORPUS_RUN, "seq_len": CORPUS_SEQ, "rows": rows}


_HERE = os.path.dirname(os.path.abspath(__file__))


def _write_tokens(path: str, size: int, vocab: int, chunk: int = 50_000_000) -> None:
    """A raw ``uint16`` file of ``size`` random ids below ``vocab`` (written as a memmap)."""
    import numpy as np

    tokens = np.memmap(path, dtype=np.uint16, mode="w+", shape=(size,))
    rng = np.random.default_rng(0)
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        tokens[start:stop] = rng.integers(0, vocab, stop - start, dtype=np.uint16)
    tokens.flush()
    del tokens


def _corpus_run(path: str, mode) -> dict:
    """One ``sj.estimate_llc`` on the token file ``path`` (in a fresh process), timed."""
    import time

    from flax import nnx

    import slt_jax as sj
    from slt_jax._src import validation
    from slt_jax._src.engine import stream
    from slt_jax._src.jobs import orchestrate

    spent = {"check": 0.0, "init_loss": 0.0, "sampling": 0.0}
    marks = {}

    def timed(module, name, label):
        inner = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            marks.setdefault(label, start)
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        setattr(module, name, wrapper)

    timed(validation, "check_data", "check")
    timed(orchestrate, "center_losses", "init_loss")
    timed(stream, "run_items", "sampling")
    model = sj.lm.GPT2(sj.lm.GPT2Config(**CORPUS_MODEL), rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    start = time.perf_counter()
    data = sj.TokenWindows(path, seq_len=CORPUS_SEQ, dtype="uint16")
    result = sj.estimate_llc(
        loss_fn, params, data, **CORPUS_RUN, init_loss_batches=mode, diagnostic_every=0
    )
    total = time.perf_counter() - start
    return {
        "mode": result.init_loss_batches,
        "windows": len(data),
        "check_s": spent["check"],
        "init_loss_s": spent["init_loss"],
        "first_step_s": marks["sampling"] - start,
        "sampling_s": spent["sampling"],
        "total_s": total,
        "beyond_sampling_s": total - spent["sampling"],
        "init_loss": result.init_loss,
        "init_loss_stderr": result.init_loss_stderr,
        "llc_mean": result.llc_mean,
    }


def _corpus_row(r: dict) -> str:
    return (
        f"{r['tokens'] / 1e6:>6.0f}M  {str(r['mode']):>6}  {r['check_s']:>7.1f}  "
        f"{r['init_loss_s']:>8.1f}  {r['first_step_s']:>10.1f}  {r['sampling_s']:>8.1f}  "
        f"{r['total_s']:>7.1f}  {r['beyond_sampling_s']:>8.1f}  "
        f"{r['init_loss']:.5f} ± {r['init_loss_stderr']:.5f}  {r['llc_mean']:.3f}"
    )


def _corpus_table(rows) -> str:
    header = (
        f"{'tokens':>7}  {'L_n':>6}  {'check':>7}  {'L_n(w*)':>8}  {'first step':>10}  "
        f"{'sampling':>8}  {'total':>7}  {'- sampl.':>8}  L_n(w*) ± se        λ̂ (paired)"
    )
    lines = [header, "-" * len(header)] + [_corpus_row(r) for r in rows]
    lines.append(
        "seconds; L_n: 'exact' or the number of sampled batches of 32 windows; first step: "
        "everything before the chains start; sampling: their compilation and steps"
    )
    return "\n".join(lines)


_NEOX = dict(
    vocab_size=4096,
    hidden_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=1024,
    max_position_embeddings=64,
)
_SEQ = 32


def checkpoints(quick: bool) -> dict:
    """Peak host anonymous memory against the number of checkpoints.

    K Hugging Face GPT-NeoX directories (``step0/`` … , ~4.4M parameters each) and a token
    file are written once; then ``sj.lm.load_checkpoints`` and ``sj.estimate_llc_checkpoints``
    (``chunk_size=2``, 2 chains × 10 steps, results to a directory) run in a fresh
    subprocess per K, which samples its ``RssAnon`` (``/proc/self/status``) every 5 ms on a
    thread: the peak, the wall time, and the same with the set read into memory first
    (``load_checkpoint_set(..., lazy=False)``, the behaviour before lazy sets).
    """
    import shutil
    import tempfile

    sizes = (2, 8) if quick else (4, 16, 64)
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_ckpts_"))
    try:
        _write_run(root, max(sizes))
        rows = []
        for k in sizes:
            for mode in ("lazy", "eager"):
                rows.append({"K": k, "mode": mode, **_fresh_sweep(root, k, mode)})
                r = rows[-1]
                print(
                    f"K={k:3d} {mode:5s}: peak RssAnon {r['peak_anon_mb']:7.1f} MB, "
                    f"ru_maxrss {r['maxrss_mb']:7.1f} MB, {r['wall_s']:6.1f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lazy = {r["K"]: r["peak_anon_mb"] for r in rows if r["mode"] == "lazy"}
    print(
        f"lazy: peak at K={sizes[-1]} minus peak at K={sizes[0]}: "
        f"{lazy[sizes[-1]] - lazy[sizes[0]]:+.1f} MB"
    )
    return {"model": _NEOX, "chunk_size": 2, "rows": rows}


def _write_run(root: pathlib.Path, k: int) -> None:
    """K step directories of one model's weights, each perturbed (distinct checkpoints)."""
    import numpy as np
    from flax import nnx

    import slt_jax as sj
    from slt_jax._src.io import hf

    model = sj.lm.GPTNeoX(sj.lm.GPTNeoXConfig(**_NEOX), rngs=nnx.Rngs(0))
    base = sj.lm.save_model(model, root / "base")
    config, tensors = hf.read_config(base), hf.read_tensors(base)
    rng = np.random.default_rng(0)
    for step in range(k):
        noisy = {n: x + 1e-3 * rng.standard_normal(x.shape, np.float32) for n, x in tensors.items()}
        hf.write(root / "run" / f"step{100 * step}", config, noisy)
    tokens = rng.integers(0, _NEOX["vocab_size"], 64 * (_SEQ + 1)).astype(np.uint16)
    tokens.tofile(root / "tokens.u16")


_WORKER = """
import resource, sys, threading, time, pathlib, tempfile, shutil
peak = [0]
def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
def sample():
    while True:
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
root, k, mode = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import slt_jax as sj
run = pathlib.Path(tempfile.mkdtemp(prefix="bench_run_"))
for step in range(k):
    (run / f"step{100 * step}").symlink_to(root / "run" / f"step{100 * step}")
start = time.perf_counter()
model, cs = sj.lm.load_checkpoints(run)
if mode == "eager":
    cs = sj.load_checkpoint_set(run, like=cs.template, format="hf", lazy=False)
loss_fn, _ = sj.lm.next_token_loss(model)
data = sj.TokenWindows(root / "tokens.u16", seq_len=SEQ + 1, dtype="uint16")
out = run / "results"
sj.estimate_llc_checkpoints(loss_fn, cs, data, chunk_size=2, num_chains=2, num_steps=10,
    batch_size=4, step_size=1e-5, localization=100.0, diagnostic_every=0, out=out,
    progress=False)
wall = time.perf_counter() - start
peak[0] = max(peak[0], rss_anon())
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
shutil.rmtree(run)
print("RESULT", peak[0], maxrss, wall)
"""


def _fresh_sweep(root: pathlib.Path, k: int, mode: str) -> dict:
    """One sweep over the first ``k`` checkpoints in a fresh process: its figures."""
    import os
    import subprocess
    import warnings

    code = _WORKER.replace("SEQ", str(_SEQ))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(k), mode],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
    if done.returncode or not line:
        warnings.warn(f"K={k} {mode} failed:\n{done.stderr[-3000:]}", stacklevel=2)
        return {"peak_anon_mb": float("nan"), "maxrss_mb": float("nan"), "wall_s": float("nan")}
    peak, maxrss, wall = line[-1].split()[1:]
    return {
        "peak_anon_mb": int(peak) / 2**20,
        "maxrss_mb": int(maxrss) / 2**20,
        "wall_s": float(wall),
    }


def _neox(quick: bool):
    """A native GPT-NeoX with random weights: ~0.9M parameters (4 layers, d=128, 4 heads,
    MLP 512, vocab 512), or ~0.2M with ``quick`` (2 layers, d=64); token windows of 65."""
    import numpy as np
    from flax import nnx

    import slt_jax as sj
    from slt_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig

    d, layers, vocab = (64, 2, 256) if quick else (128, 4, 512)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * d,
        max_position_embeddings=64,
    )
    model = GPTNeoX(config, rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    tokens = np.random.default_rng(0).integers(0, vocab, (512, 65)).astype(np.int32)
    return loss_fn, params, tokens, sj.lm.layout(model)


def _compiled_parts(loss_fn, params, tokens, masks, config, *, compact: bool):
    """``[(names, compiled program, placed inputs)]``: the programs estimate_refined_llc
    runs for these refinements (one per shape group, or one masked), lowered and compiled."""
    import jax
    import numpy as np

    from slt_jax._src import restricted as _restricted
    from slt_jax._src.engine import programs
    from slt_jax._src.jobs import orchestrate

    resolved, key = orchestrate.prepare(loss_fn, params, tokens, config)
    keys = jax.random.split(key, resolved.num_chains)
    one = jax.tree.map(lambda x: np.asarray(x)[None], params)
    mesh = programs.resolve_mesh(None, jax.devices()[:1])
    if compact:
        parts = _restricted.plan(params, masks, resolved.sampler)
    else:
        from slt_jax._src import refine

        parts = [_restricted.Plan(refine.MaskRestriction(), tuple(masks), dict(masks))]
    out = []
    for part in parts:
        groups = [orchestrate.Group(resolved, 0, keys, args=part.args[n]) for n in part.names]
        items = orchestrate.items(groups, one)
        static = resolved.static()
        plugins = programs.Plugins(part.restriction)
        placed = programs.place(items, tokens, mesh, None, static.partition_rules)
        program = programs.program(loss_fn, static, plugins, mesh, items.shared)
        out.append((part.names, program.lower(*placed).compile(), placed))
    return out


def restricted(quick: bool) -> dict:
    """Restricted chains against mask chains: memory, FLOPs and time.

    Every head and every MLP of a GPT-NeoX is a component, 2 chains each, SGLD with batch
    8 × 64 tokens, chains vmapped. For the compact path (one program per shape group) and
    the mask path (one program): XLA's memory analysis (arguments + outputs + temporaries
    − aliased) per chain; XLA's FLOPs per chain-step (cost analysis of a 2-step program, one
    burn-in and one draw, diagnostics off, divided by chains × 2; the shared centre-loss
    pass is not in it); wall time per chain-step of the compiled programs (median of 3
    runs of ``steps`` steps, compilation apart).
    """
    import statistics
    import time

    import jax
    import numpy as np

    import slt_jax as sj
    from slt_jax._src.jobs import memory

    loss_fn, params, tokens, layout = _neox(quick)
    names = [f"l{i}h{h}" for i in range(layout.num_layers) for h in range(layout.num_heads)]
    names += [f"l{i} mlp" for i in range(layout.num_layers)]
    masks = sj.refine.masks(params, {n: n for n in names}, layout=layout)
    steps = 10 if quick else 20
    base = dict(num_chains=2, batch_size=8, step_size=1e-4, localization=300.0, nbeta=30.0)
    base |= dict(chain_layout="vmap")
    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    chains = 2 * len(names)
    figures = {
        "backend": jax.default_backend(),
        "parameters": num_params,
        "components": len(names),
        "chains": chains,
        "steps": steps,
    }
    print(
        f"GPT-NeoX, {num_params:,} parameters, {len(names)} components (every head and MLP), "
        f"{chains} chains, batch 8 x 64 tokens, {jax.default_backend()}"
    )
    head = ("path", "programs", "MiB/chain", "MFLOP/chain-step", "ms/chain-step")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (8, 8, 10, 17, 14), strict=True)))
    for path in ("mask", "compact"):
        compact = path == "compact"
        cost_config = sj.LLCConfig(num_steps=2, num_burnin=1, diagnostic_every=0, **base)
        flops = 0.0
        for _, compiled, _ in _compiled_parts(
            loss_fn, params, tokens, masks, cost_config, compact=compact
        ):
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops += float(cost["flops"])
        config = sj.LLCConfig(num_steps=steps, diagnostic_every=0, **base)
        parts = _compiled_parts(loss_fn, params, tokens, masks, config, compact=compact)
        total_bytes = sum(memory.program_bytes(compiled) for _, compiled, _ in parts)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _, compiled, placed in parts:
                jax.block_until_ready(compiled(*placed))
            times.append(time.perf_counter() - start)
        row = {
            "programs": len(parts),
            "bytes_per_chain": total_bytes / chains,
            "flops_per_chain_step": flops / (chains * 2),
            "seconds_per_chain_step": statistics.median(times) / (chains * steps),
        }
        figures[path] = row
        print(
            f"{path:<8} {row['programs']:>8} {row['bytes_per_chain'] / 2**20:>10.2f} "
            f"{row['flops_per_chain_step'] / 1e6:>17.1f} "
            f"{1e3 * row['seconds_per_chain_step']:>14.3f}"
        )
    for what in ("bytes_per_chain", "flops_per_chain_step", "seconds_per_chain_step"):
        ratio = figures["compact"][what] / figures["mask"][what]
        figures[f"compact/mask {what}"] = ratio
        print(f"compact / mask, {what.replace('_', ' ')}: {ratio:.3f}")
    return figures


PARTS = {"corpus": corpus, "checkpoints": checkpoints, "restricted": restricted}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    names = list(PARTS) if args.part == "all" else [args.part]
    figures = {name: PARTS[name](args.quick) for name in names}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
