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


def restricted(quick: bool) -> dict:
    """Restricted chains against mask chains: memory, FLOPs and time."""
    raise NotImplementedError("filled by the restricted-chain work of issue 25")


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
