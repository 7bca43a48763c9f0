"""slt_jax beside devinterp 2.x and canonical-interp on language models (issue 26, item 1).

The same Hugging Face checkpoints (random weights: a native slt_jax model built from a
config, written with ``sj.lm.save_model``, which ``transformers`` loads), the same token
windows and the same SGLD settings (ε, γ, nβ, batch, chains, steps), each library in its
own process, one after another:

* ``slt_jax``: ``sj.estimate_llc(loss_fn, params, windows, estimator="plain",
  diagnostic_every=0)`` with ``sj.lm.next_token_loss(sj.lm.load_model(dir))`` (one
  ``value_and_grad`` per step, as the peers);
* ``ceiling``: a hand-written minimal JAX SGLD program on the same loss (a ``lax.scan`` of
  ``value_and_grad``, a uniform minibatch and the update, ``vmap``-ed over chains): what a
  step costs with no library around it;
* ``devinterp``: ``devinterp.slt.llc.llc`` 2.x (chains one after another), on the model
  ``from_pretrained``;
* ``canonical``: canonical-interp's ``LLCEstimator.estimate_llc`` (all chains in one
  ``torch.func.vmap``, ``torch.compile``-d, its defaults), on the same model, with
  ``F.cross_entropy`` over the flattened ``(B·T, V)`` logits.

Shapes (``SHAPES``): ``gpt2`` — GPT-2, 256 wide, 2 layers, 8 heads, vocab 5000, seq 256 (the
refined-LLC paper's width); ``pythia14m`` — GPT-NeoX 128 × 6, 4 heads, vocab 50304, seq
128 (Pythia-14m's shape). Batch 8, 4 chains, ε = 1e-4, γ = 300, nβ = 30 (the field's
Pythia settings), ``--steps`` steps (no burn-in: every step is a draw).

Timing: cold = the first call in a fresh process (slt_jax and canonical-interp: trace and
compile included), warm = the same call again with another seed; compile = cold − warm.
devinterp compiles nothing: one tiny call first (torch's start-up, outside the clock), then
the timed call. chain-steps/s = chains × steps / seconds; tokens/s = that × batch × seq.
Memory: the peak resident set during the call (``VmHWM`` reset before it) and its growth
over the resident set before the call. λ̂ of each: nβ·(mean loss over the draws − L_n(w*)),
its standard error across chains (sd / √C); two libraries agree when
``|Δ| / √(se₁² + se₂²) ≤ 2``, and a speed ratio only counts where they agree.

The peers need PyTorch (CPU build) in their own environment (benchmarks/README.md):

    python benchmarks/bench_lm_peers.py --peer-python /work/venvs/peers311/bin/python \\
        --shapes gpt2 pythia14m --steps 20 --json out.json --markdown out.md
    python benchmarks/bench_lm_peers.py --quick   # tiny shapes, slt_jax and the ceiling

``--repeats R`` runs every library R times, each run a fresh process (cold and warm calls),
round robin over the libraries; the report gives the median of each figure, the warm
chain-steps/s of every run and the 1-minute load average before and after each run.

canonical-interp 0.2.7 declares Python ≥ 3.12 and imports ``itertools.batched`` (3.12);
its code runs on 3.11 otherwise. Where the peer Python is 3.11 the worker supplies
``itertools.batched`` before importing it (installed with ``pip install --no-deps
--ignore-requires-python canonical-interp==0.2.7``); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_devinterp_lm import _maxrss_mib, _timed  # noqa: E402

SHAPES = {
    "gpt2": dict(
        kind="gpt2",
        # n_positions ≥ T + 1: devinterp feeds whole windows (T + 1 tokens) to the model
        config=dict(vocab_size=5000, n_positions=257, n_embd=256, n_layer=2, n_head=8),
        seq_len=256,
    ),
    "pythia14m": dict(
        kind="gpt_neox",
        config=dict(
            vocab_size=50304,
            hidden_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=2048,
            rotary_pct=0.25,
        ),
        seq_len=128,
    ),
    # --quick: tiny, seconds
    "tiny_gpt2": dict(
        kind="gpt2",
        config=dict(vocab_size=512, n_positions=33, n_embd=32, n_layer=1, n_head=2),
        seq_len=32,
    ),
    "tiny_neox": dict(
        kind="gpt_neox",
        config=dict(
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        seq_len=32,
    ),
}
SGLD = dict(step_size=1e-4, localization=300.0, nbeta=30.0, batch_size=8, num_chains=4)
NUM_WINDOWS = 64  # n: L_n(w*) is taken over all of them by every library


def make_checkpoint(shape: dict, path: pathlib.Path, seed: int = 0) -> None:
    """A random-weight native model of ``shape`` saved where ``transformers`` loads it."""
    from flax import nnx

    import slt_jax as sj

    if shape["kind"] == "gpt2":
        model = sj.lm.GPT2(sj.lm.GPT2Config(**shape["config"]), rngs=nnx.Rngs(seed))
    else:
        model = sj.lm.GPTNeoX(sj.lm.GPTNeoXConfig(**shape["config"]), rngs=nnx.Rngs(seed))
    sj.lm.save_model(model, path)


def per_chain_llc(trace: np.ndarray, init_loss: float, nbeta: float) -> np.ndarray:
    return nbeta * (np.asarray(trace, np.float64).mean(axis=1) - init_loss)


# ---- workers (each in its own process) -----------------------------------------------------


def worker_slt_jax(work: pathlib.Path, opts: dict) -> dict:
    import jax

    import slt_jax as sj

    windows = np.load(work / "windows.npy")
    loss_fn, params = sj.lm.next_token_loss(sj.lm.load_model(work / "model"))
    kw = dict(opts["sgld"], num_steps=opts["steps"], num_burnin=0)
    kw |= dict(estimator="plain", diagnostic_every=0)
    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, seed in (("cold", 0), ("warm", 1)):
            seconds, res, memory = _timed(
                lambda seed=seed: sj.estimate_llc(loss_fn, params, windows, seed=seed, **kw)
            )
            trace = np.asarray(res.loss_trace)
            runs.append(
                dict(label=label, seconds=seconds, **memory, init_loss=float(res.init_loss))
                | dict(trace=trace.tolist())
            )
    return dict(runs=runs, backend=jax.default_backend(), ru_maxrss_mib=_maxrss_mib())


def worker_ceiling(work: pathlib.Path, opts: dict) -> dict:
    """A minimal hand-written SGLD program on the same loss: the ceiling of the engine."""
    import jax
    import jax.numpy as jnp

    import slt_jax as sj

    windows = jnp.asarray(np.load(work / "windows.npy"))
    loss_fn, params = sj.lm.next_token_loss(sj.lm.load_model(work / "model"))
    s, steps = opts["sgld"], opts["steps"]
    eps, gamma, nbeta, b = s["step_size"], s["localization"], s["nbeta"], s["batch_size"]
    value_and_grad = jax.value_and_grad(loss_fn)

    def chain(key, center):
        def step(w, t):
            k_batch, k_noise = jax.random.split(jax.random.fold_in(key, t))
            batch = windows[jax.random.randint(k_batch, (b,), 0, windows.shape[0])]
            loss, grad = value_and_grad(w, batch)
            leaves, treedef = jax.tree.flatten(w)
            keys = jax.random.split(k_noise, len(leaves))
            noise = treedef.unflatten(
                [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
            )
            w = jax.tree.map(
                lambda w, g, c, z: w - eps / 2 * (nbeta * g + gamma * (w - c)) + eps**0.5 * z,
                w,
                grad,
                center,
                noise,
            )
            return w, loss

        return jax.lax.scan(step, center, jnp.arange(steps))[1]

    program = jax.jit(jax.vmap(chain, (0, None)))
    init_loss = float(jax.jit(loss_fn)(params, windows))
    runs = []
    for label, seed in (("cold", 0), ("warm", 1)):
        keys = jax.random.split(jax.random.key(seed), s["num_chains"])
        seconds, trace, memory = _timed(
            lambda keys=keys: np.asarray(jax.block_until_ready(program(keys, params)))
        )
        runs.append(dict(label=label, seconds=seconds, **memory, init_loss=init_loss))
        runs[-1]["trace"] = trace.tolist()
    return dict(runs=runs, ru_maxrss_mib=_maxrss_mib())


def _torch_setup(work: pathlib.Path, opts: dict, **load):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(opts["torch_threads"])
    windows = np.load(work / "windows.npy").astype(np.int64)
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), **load).eval()
    return torch, model.to(opts.get("device", "cpu")), windows


def worker_devinterp(work: pathlib.Path, opts: dict) -> dict:
    from datasets import Dataset
    from devinterp.slt.llc import llc

    torch, model, windows = _torch_setup(work, opts)
    s = opts["sgld"]
    dataset = Dataset.from_dict({"input_ids": windows}).with_format("torch")
    common = dict(
        lr=s["step_size"],
        n_beta=s["nbeta"],
        localization=s["localization"],
        batch_size=s["batch_size"],
        num_init_loss_batches=len(windows) // s["batch_size"],
        match_sampling_input_ids_across_chains=False,
        device=opts.get("device", "cpu"),
    )

    def call(path, chains, draws, seed, **over):
        # devinterp returns the stored result when output_path already holds a finished run
        # with the same settings (devinterp.slt.sampling.sample: "Cache"), so a repeat in the
        # same work directory would time a read, not a run: start from an empty path.
        shutil.rmtree(path, ignore_errors=True)
        out = llc(
            model,
            dataset,
            {},
            num_chains=chains,
            num_draws=draws,
            num_burnin_steps=0,
            init_seed=seed,
            output_path=str(path),
            **(common | over),
        )
        return out.load()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call(work / "devinterp_warmup.zarr", 1, 2, 999, num_init_loss_batches=1)
        seconds, ds, memory = _timed(
            lambda: call(work / "devinterp_run.zarr", s["num_chains"], opts["steps"], 100)
        )
    trace = np.asarray(ds["loss_trace"].values, np.float64)
    run = dict(label="warm", seconds=seconds, **memory, init_loss=float(ds["init_loss"]))
    run["trace"] = trace.tolist()
    return dict(runs=[run], torch_threads=torch.get_num_threads(), ru_maxrss_mib=_maxrss_mib())


def worker_canonical(work: pathlib.Path, opts: dict) -> dict:
    import itertools

    if not hasattr(itertools, "batched"):  # Python < 3.12: canonical-interp's one 3.12 need

        def batched(iterable, n):
            it = iter(iterable)
            while chunk := tuple(itertools.islice(it, n)):
                yield chunk

        itertools.batched = batched
    from canonical_interp import LLCEstimator

    # eager attention: torch.func's vmap of grad has no derivative for CPU SDPA's flash
    # backward (aten::_scaled_dot_product_flash_attention_for_cpu_backward)
    torch, model, windows = _torch_setup(work, opts, attn_implementation="eager")
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, use_cache=False).logits

    wrapped = Logits(model)
    s = opts["sgld"]
    ids = torch.as_tensor(windows)
    loader = DataLoader(
        TensorDataset(ids[:, :-1], ids[:, 1:]),
        batch_size=s["batch_size"],
        shuffle=True,
        drop_last=True,
    )

    def criterion(logits, y):
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, seed in (("cold", 0), ("warm", 1)):
            estimator = LLCEstimator(
                draws=opts["steps"],
                chains=s["num_chains"],
                burnin_steps=0,
                learning_rate=s["step_size"],
                localization=s["localization"],
                nbeta=s["nbeta"],
            )
            seconds, _, memory = _timed(
                lambda e=estimator, seed=seed: e.estimate_llc(
                    wrapped,
                    loader,
                    criterion_fn=criterion,
                    seed=seed,
                    show_progress=False,
                    devices=opts.get("device", "cpu"),
                )
            )
            run = dict(label=label, seconds=seconds, **memory)
            run["init_loss"] = float(estimator.original_loss)
            run["trace"] = estimator.array_log_l.numpy().astype(np.float64).tolist()
            runs.append(run)
    return dict(runs=runs, torch_threads=torch.get_num_threads(), ru_maxrss_mib=_maxrss_mib())


WORKERS = {
    "slt_jax": worker_slt_jax,
    "ceiling": worker_ceiling,
    "devinterp": worker_devinterp,
    "canonical": worker_canonical,
}


# ---- parent ----------------------------------------------------------------------------


def run_worker(kind: str, python: str, work: pathlib.Path, opts: dict, timeout: float) -> dict:
    (work / "opts.json").write_text(json.dumps(opts))
    out = work / f"{kind}.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    if kind in ("devinterp", "canonical"):
        env.pop("PYTHONPATH", None)
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--workdir", str(work)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
        return {"status": f"failed (exit {proc.returncode})", "error": tail}
    return json.loads(out.read_text()) | {"status": "measured"}


def summarize(raw: dict, opts: dict) -> dict:
    """Per run: seconds, chain-steps/s, tokens/s, memory, λ̂ ± se (across chains)."""
    if raw.get("status") != "measured":
        return raw
    s, steps = opts["sgld"], opts["steps"]
    chain_steps = s["num_chains"] * steps
    out = {"status": "measured", "runs": {}}
    for run in raw["runs"]:
        trace = np.asarray(run["trace"], np.float64)
        llc = per_chain_llc(trace, run["init_loss"], s["nbeta"])
        out["runs"][run["label"]] = dict(
            seconds=run["seconds"],
            chain_steps_per_s=chain_steps / run["seconds"],
            tokens_per_s=chain_steps * s["batch_size"] * opts["seq_len"] / run["seconds"],
            peak_rss_mib=run["peak_rss_mib"],
            rss_growth_mib=run["rss_growth_mib"],
            llc=float(llc.mean()),
            llc_se=float(llc.std(ddof=1) / np.sqrt(len(llc))) if len(llc) > 1 else None,
        )
    runs = out["runs"]
    if "cold" in runs and "warm" in runs:
        out["compile_s"] = max(runs["cold"]["seconds"] - runs["warm"]["seconds"], 0.0)
    return out


def combine(entries: list[dict]) -> dict:
    """One entry from ``--repeats`` runs of a library (each a fresh process): the median of
    every per-run figure (seconds, chain-steps/s, tokens/s, memory) and of the compile time;
    λ̂ ± se from the first run (the seeds are the same in every run); the warm chain-steps/s
    and the load average of each run listed. A failure in any run is the entry."""
    failed = [e for e in entries if e.get("status") != "measured"]
    if failed:
        return failed[0] | {"load": [e.get("load") for e in entries]}
    out = {"status": "measured", "repeats": len(entries), "runs": {}}
    for label in entries[0]["runs"]:
        runs = [e["runs"][label] for e in entries]
        merged = {k: float(np.median([r[k] for r in runs])) for k in runs[0] if k != "llc_se"}
        merged |= {k: runs[0][k] for k in ("llc", "llc_se")}
        out["runs"][label] = merged
    if all("compile_s" in e for e in entries):
        out["compile_s"] = float(np.median([e["compile_s"] for e in entries]))
    out["warm_runs_cs_per_s"] = [e["runs"]["warm"]["chain_steps_per_s"] for e in entries]
    out["load"] = [e.get("load") for e in entries]
    return out


def agreement(a: dict, b: dict) -> float | None:
    if a.get("llc_se") is None or b.get("llc_se") is None:
        return None
    se = (a["llc_se"] ** 2 + b["llc_se"] ** 2) ** 0.5
    return abs(a["llc"] - b["llc"]) / se if se > 0 else None


def _load(pair) -> str:
    return "?" if not pair else f"{pair[0]:.1f}-{pair[1]:.1f}"


def markdown(report: dict) -> str:
    lines = [
        f"# slt_jax beside its PyTorch peers on language models ({report['date']})",
        "",
        f"`{report['command']}`; {report['environment']}",
        "",
        "| shape | library | warm cs/s | cold cs/s | compile s | tokens/s warm | peak RSS "
        "growth MiB | λ̂ ± se | z vs slt_jax | warm cs/s of each run | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, libs in report["shapes"].items():
        ours = libs.get("slt_jax", {}).get("runs", {}).get("warm")
        for lib, entry in libs.items():
            if entry.get("status") != "measured":
                lines.append(f"| {shape} | {lib} | {entry.get('status')} |||||||||")
                continue
            runs = entry["runs"]
            warm, cold = runs.get("warm"), runs.get("cold")
            z = agreement(ours, warm) if ours and lib != "slt_jax" else None
            lines.append(
                f"| {shape} | {lib} | {warm['chain_steps_per_s']:.3g} | "
                f"{cold['chain_steps_per_s'] if cold else float('nan'):.3g} | "
                f"{entry.get('compile_s', float('nan')):.3g} | {warm['tokens_per_s']:.4g} | "
                f"{warm['rss_growth_mib']:.0f} | {warm['llc']:.3g} ± {warm['llc_se']:.2g} | "
                f"{'' if z is None else f'{z:.2f}'} | "
                + ", ".join(f"{x:.3g}" for x in entry.get("warm_runs_cs_per_s", []))
                + " | "
                + ", ".join(_load(x) for x in entry.get("load", []))
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["gpt2", "pythia14m"], choices=SHAPES)
    parser.add_argument("--libraries", nargs="+", default=list(WORKERS), choices=list(WORKERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each library (fresh processes, "
        "round robin over the libraries); the report gives medians"
    )  # fmt: skip
    parser.add_argument("--peer-python", default=None, help="Python with torch and the peers")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--quick", action="store_true", help="tiny shape, slt_jax + ceiling")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work = pathlib.Path(args.workdir)
        opts = json.loads((work / "opts.json").read_text())
        out = WORKERS[args.worker](work, opts)
        (work / f"{args.worker}.json").write_text(json.dumps(out))
        return out
    if args.quick:
        args.shapes, args.steps = ["tiny_neox"], min(args.steps, 6)
        args.libraries = [x for x in args.libraries if x in ("slt_jax", "ceiling")]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python benchmarks/bench_lm_peers.py", *sys.argv[1:]]),
        "environment": f"{os.cpu_count()} CPUs, torch threads {args.torch_threads}",
        "sgld": SGLD,
        "steps": args.steps,
        "shapes": {},
    }
    for name in args.shapes:
        shape = SHAPES[name]
        opts = dict(sgld=SGLD, steps=args.steps, seq_len=shape["seq_len"])
        opts["torch_threads"] = args.torch_threads
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp)
            make_checkpoint(shape, work / "model")
            rng = np.random.default_rng(0)
            vocab = shape["config"]["vocab_size"]
            windows = rng.integers(0, vocab, (NUM_WINDOWS, shape["seq_len"] + 1))
            np.save(work / "windows.npy", windows.astype(np.int32))
            results, entries = {}, {lib: [] for lib in args.libraries}
            for repeat in range(args.repeats):  # round robin: a change of load hits all alike
                for lib in args.libraries:
                    python = sys.executable
                    if lib in ("devinterp", "canonical"):
                        if args.peer_python is None:
                            results[lib] = {"status": "skipped (no --peer-python)"}
                            continue
                        python = args.peer_python
                    print(f"[{name}] {lib}, run {repeat + 1}/{args.repeats} ...", flush=True)
                    before = os.getloadavg()[0]
                    raw = run_worker(lib, python, work, opts, args.timeout)
                    entry = summarize(raw, opts) | {"load": [before, os.getloadavg()[0]]}
                    entries[lib].append(entry)
                    shown = entry.get("error", json.dumps(entry)[:400])
                    print(f"[{name}] {lib}: {entry['status']}\n{shown}", flush=True)
            for lib, runs in entries.items():
                if runs:
                    results[lib] = combine(runs)
        report["shapes"][name] = results
    text = markdown(report)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    return report


if __name__ == "__main__":
    main()
