"""``step_size="auto"`` on a language model: the LLC and per-head refined LLCs, two seeds.

No known answer exists for a trained transformer, so this checks what can be checked: that
the one command a user runs,

    python -m slt_jax llc RUN --tokens FILE --seq-len 32 --heads all --step-size auto \\
        --batch-size 8 --seed S --out OUT

chooses a healthy setting (R-hat, ESS, MALA acceptance at the chosen setting), that the
per-head refined LLCs are run at the one setting the LLC's calibration chose (the field
compares components at one setting), what the calibration costs against the estimate it
calibrates, and that the estimates are stable to a second seed (``--seed 1``: a fresh
calibration and fresh chains).

The model: a tiny GPT-NeoX (2 layers, width 32, 2 heads per layer, vocab 64; the
Pythia architecture) trained with Adam on the synthetic language of notebook 09
(``slt_jax.models.attention.SyntheticLanguage``: a sparse Markov chain with copied
segments), saved as Hugging Face model directories at a few steps (``RUN/step<k>/``) with
the corpus as a raw ``uint16`` token file. Nothing is downloaded. ``--workdir`` keeps the
model, the token file and the results (a second call reuses the trained model; results
directories are started afresh; ``--reuse`` reads back those of the same commands).

Printed: per checkpoint λ̂ ± se for both seeds and their z difference
``(λ̂₀ − λ̂₁)/√(se₀² + se₁²)``; the chosen setting per seed (ε, γ, nβ, verified or not,
the chosen ``num_steps``); the calibration's chain-steps and their ratio to the final
estimate's chain-steps (chains × steps × checkpoints); per-head refined λ̂ for both
seeds; R-hat, ESS and the mean MALA acceptance at the chosen setting; wall times.

    python benchmarks/lm_auto.py [--quick] [--workdir DIR] [--reuse] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SEQ = 32  # predicted tokens per window (windows of SEQ + 1 tokens)
VOCAB = 64
# Batch 8 (not the default 256): what keeps a full run (both seeds) near 15-20 minutes on a
# 2-core CPU; chains and steps are the CLI's defaults.
FULL = dict(
    sequences=4096, train_steps=2000, checkpoints=(500, 1000, 2000), batch=8, chains=8, steps=None
)
QUICK = dict(sequences=512, train_steps=200, checkpoints=(100, 200), batch=8, chains=2, steps=200)
TRAIN_BATCH, LEARNING_RATE = 128, 3e-3  # Adam


def build(workdir: pathlib.Path, settings: dict) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """A trained tiny GPT-NeoX saved at ``settings["checkpoints"]`` and its token file
    (reused when ``workdir`` holds one built with the same settings)."""
    import jax
    import optax
    from flax import nnx

    import slt_jax as sj
    from slt_jax.models import attention

    run_dir, token_file, stamp = workdir / "run", workdir / "tokens.u16", workdir / "model.json"
    wanted = {k: settings[k] for k in ("sequences", "train_steps", "checkpoints")}
    wanted["checkpoints"] = list(wanted["checkpoints"])
    if stamp.exists() and json.loads(stamp.read_text()).get("settings") == wanted:
        return run_dir, token_file, json.loads(stamp.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    language = attention.SyntheticLanguage(
        vocab_size=VOCAB, branching=4, min_copy=8, max_copy=12, seed=0
    )
    train = language.sample(settings["sequences"], length=SEQ + 1, seed=0)
    train.tokens.astype(np.uint16).ravel().tofile(token_file)
    config = sj.lm.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        rotary_pct=0.25,
        max_position_embeddings=64,
    )
    model = sj.lm.GPTNeoX(config, rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    start, losses = time.perf_counter(), {}
    for t in range(1, settings["train_steps"] + 1):
        batch = train.tokens[rng.integers(0, len(train.tokens), TRAIN_BATCH)]
        params, opt_state, _ = step(params, opt_state, batch)
        if t in settings["checkpoints"]:
            nnx.update(model, params)
            sj.lm.save_model(model, str(run_dir / f"step{t}"))
            losses[t] = float(loss_fn(params, train.tokens[:1024]))
    info = {
        "settings": wanted,
        "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
        "windows": int(len(train.tokens)),
        "train_loss": losses,
        "train_seconds": time.perf_counter() - start,
    }
    stamp.write_text(json.dumps(info))
    return run_dir, token_file, info


def command(run_dir, token_file, out, seed: int, settings: dict) -> list[str]:
    """The command a user runs; ``--quick`` adds only what makes it tiny."""
    cmd = [sys.executable, "-m", "slt_jax", "llc", str(run_dir), "--tokens", str(token_file)]
    cmd += ["--seq-len", str(SEQ), "--heads", "all", "--step-size", "auto"]
    cmd += ["--batch-size", str(settings["batch"]), "--seed", str(seed), "--out", str(out)]
    cmd += ["--no-progress"]
    if settings["chains"] != FULL["chains"]:
        cmd += ["--chains", str(settings["chains"])]
    if settings["steps"] is not None:
        cmd += ["--steps", str(settings["steps"])]
    return cmd


def run_seed(
    run_dir, token_file, workdir: pathlib.Path, seed: int, settings: dict, reuse: bool = False
) -> dict:
    """Run the command for one seed and read back what it wrote (``reuse``: read the
    results the same command left in ``workdir`` instead of running it again)."""
    import slt_jax as sj

    out = workdir / f"llc_seed{seed}"
    cmd = command(run_dir, token_file, out, seed, settings)
    timing = out / "lm_auto_run.json"  # the command and its wall time, beside its results
    if reuse and timing.exists() and json.loads(timing.read_text())["command"] == cmd[1:]:
        wall = json.loads(timing.read_text())["wall_seconds"]
    else:
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"seed {seed} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        timing.write_text(json.dumps({"command": cmd[1:], "wall_seconds": wall}))
    manifest = json.loads((out / "manifest.json").read_text())
    heads_manifest = json.loads((out / "heads" / "manifest.json").read_text())
    llc = sj.load_results(out)
    heads = sj.load_refined_results(out / "heads")
    cal = manifest["calibration"]
    config = llc.config
    final_chain_steps = config.num_chains * config.num_steps * len(llc.steps)
    acceptance = np.asarray(llc.mala_acceptance, dtype=float)
    record = {
        "seed": seed,
        "command": " ".join(["python", *cmd[1:]]),
        "wall_seconds": wall,
        "steps": [int(s) for s in llc.steps],
        "llc": [float(x) for x in np.asarray(llc.llc_mean)],
        "se": [float(x) for x in np.asarray(llc.llc_stderr)],
        "rhat": [float(x) for x in np.asarray(llc.rhat)],
        "ess": [float(x) for x in np.asarray(llc.ess)],
        # the mean over chains and recorded draws of min(1, MALA ratio): the acceptance rate
        "acceptance": [float(np.nanmean(a)) for a in acceptance.reshape(len(llc.steps), -1)],
        "diverged": [int(np.sum(d)) for d in np.asarray(llc.diverged)],
        "setting": {
            "step_size": cal["step_size"],
            "localization": cal["localization"],
            "nbeta": cal["nbeta"],
            "trusted": cal["trusted"],
            "calibrate_on": cal["calibrate_on"],
            "num_chains": config.num_chains,
            "num_steps": config.num_steps,
            "num_burnin": config.num_burnin,
        },
        "calibration_chain_steps": int(cal["chain_steps"]),
        "final_chain_steps": int(final_chain_steps),
        "calibration_explanation": cal["explanation"],
        "heads_setting": {
            name: heads_manifest["config"].get(name)
            for name in ("step_size", "localization", "nbeta", "num_steps", "num_chains")
        },
        "heads": {
            name: {
                "llc": [float(x) for x in np.asarray(r.llc_mean)],
                "se": [float(x) for x in np.asarray(r.llc_stderr)],
                "rhat": [float(x) for x in np.asarray(r.rhat)],
            }
            for name, r in heads.results.items()
        },
    }
    return record


def z_difference(a: float, sa: float, b: float, sb: float) -> float:
    return (a - b) / math.sqrt(sa**2 + sb**2) if sa > 0 or sb > 0 else float("nan")


def table(runs: list[dict]) -> str:
    """One plain-text table of the seeds' figures."""
    a, b = runs[0], runs[-1]
    lines = ["setting chosen per seed:"]
    for r in runs:
        s = r["setting"]
        lines.append(
            f"  seed {r['seed']}: eps={s['step_size']:.3g} gamma={s['localization']:.3g} "
            f"nbeta={s['nbeta']:.4g} {'verified' if s['trusted'] else 'NOT verified'} "
            f"(on step {s['calibrate_on']}); chains={s['num_chains']} steps={s['num_steps']} "
            f"burn-in={s['num_burnin']}; calibration {r['calibration_chain_steps']:,} "
            f"chain-steps = {r['calibration_chain_steps'] / r['final_chain_steps']:.2f}x the "
            f"estimate's {r['final_chain_steps']:,}; wall {r['wall_seconds']:.0f}s; heads "
            f"at eps={r['heads_setting']['step_size']:.3g} "
            f"gamma={r['heads_setting']['localization']:.3g}"
        )
    lines.append("")
    lines.append(
        f"{'step':>6} | {'LLC seed ' + str(a['seed']):>16} | {'LLC seed ' + str(b['seed']):>16} "
        f"| {'z':>6} | R-hat (s0/s1) | ESS (s0/s1)  | MALA acc. (s0/s1) | diverged"
    )
    for i, step in enumerate(a["steps"]):
        z = z_difference(a["llc"][i], a["se"][i], b["llc"][i], b["se"][i])
        lines.append(
            f"{step:>6} | {a['llc'][i]:>8.2f} ± {a['se'][i]:<5.2f} | "
            f"{b['llc'][i]:>8.2f} ± {b['se'][i]:<5.2f} | {z:>6.2f} | "
            f"{a['rhat'][i]:.3f}/{b['rhat'][i]:.3f} | {a['ess'][i]:>5.0f}/{b['ess'][i]:<5.0f} | "
            f"{a['acceptance'][i]:.3f}/{b['acceptance'][i]:.3f}       | "
            f"{a['diverged'][i]}/{b['diverged'][i]}"
        )
    lines.append("")
    lines.append(f"{'head':>6} {'step':>6} | {'seed ' + str(a['seed']):>16} | "
                 f"{'seed ' + str(b['seed']):>16} | {'z':>6} | R-hat (s0/s1)")  # fmt: skip
    for name in a["heads"]:
        ha, hb = a["heads"][name], b["heads"][name]
        for i, step in enumerate(a["steps"]):
            z = z_difference(ha["llc"][i], ha["se"][i], hb["llc"][i], hb["se"][i])
            lines.append(
                f"{name:>6} {step:>6} | {ha['llc'][i]:>8.2f} ± {ha['se'][i]:<5.2f} | "
                f"{hb['llc'][i]:>8.2f} ± {hb['se'][i]:<5.2f} | {z:>6.2f} | "
                f"{ha['rhat'][i]:.3f}/{hb['rhat'][i]:.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke run)")
    parser.add_argument("--workdir", default=None, help="keep the model and results here")
    parser.add_argument("--seeds", default="0,1", help="the two seeds (comma-separated)")
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read the results a previous run of the same commands left in --workdir",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="lm_auto_"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir, token_file, model = build(workdir, settings)
    print(
        f"tiny GPT-NeoX: {model['parameters']} parameters, {model['windows']} windows of "
        f"{SEQ + 1} tokens; checkpoints {model['settings']['checkpoints']} (train loss "
        f"{', '.join(f'{v:.3f}' for v in model['train_loss'].values())})"
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_seed(run_dir, token_file, workdir, seed, settings, args.reuse) for seed in seeds]
    print(f"command: {runs[0]['command']}")
    print(table(runs))
    report = {
        "quick": args.quick,
        "platform": platform.platform(),
        "model": model,
        "runs": runs,
    }
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
