"""Step time of Llama-family and Gemma 2 models against a GPT-NeoX of the same size (issue 26,
item 3).

Both native models with random weights (no hub, no torch): width 256, 4 layers, 8 heads of
64, vocabulary 5000, windows of 128 + 1 tokens, batch 8, 4 chains x 20 SGLD steps,
``estimator="plain"`` and ``diagnostic_every=0`` (one gradient per step). The Llama's MLP
is SwiGLU of width 683 (three matrices, the parameters of NeoX's two of width 1024), so the
two have the same parameter count up to the norms and biases; a third row is the same Llama
with grouped-query attention (2 key/value heads), and a fourth a Gemma 2 of the same shapes
(GeGLU of width 683, 2 key/value heads, heads of 32, window 64 on alternate layers, both
soft-caps, tied head; its loss takes whole logits: the final cap is not linear). Compilation
is timed apart: the first call of each model compiles (``cold``); then the ``--repeats``
warm calls go round the models in turn (A, B, C, A, B, C, ...), so that a change in the
machine's load hits all of them alike; ``warm`` is each model's median, reported as
chain-steps per second (the centre loss ``L_n(w*)`` of each call, 4 minibatches, is included
in every call alike).

    python benchmarks/bench_lm_families.py [--repeats 3] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np

WIDTH, LAYERS, HEADS, VOCAB, SEQ, BATCH, CHAINS = 256, 4, 8, 5000, 128, 8, 4


def models():
    import slt_jax as sj

    common = dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS)
    common |= dict(num_attention_heads=HEADS, max_position_embeddings=SEQ)
    neox = sj.lm.GPTNeoXConfig(**common, intermediate_size=4 * WIDTH, rotary_pct=0.25)
    llama = sj.lm.LlamaConfig(**common, intermediate_size=683)
    gqa = sj.lm.LlamaConfig(**common, intermediate_size=683, num_key_value_heads=2)
    gemma2 = sj.lm.Gemma2Config(
        **common,
        intermediate_size=683,
        num_key_value_heads=2,
        head_dim=WIDTH // HEADS,
        query_pre_attn_scalar=WIDTH // HEADS,
        sliding_window=SEQ // 2,
    )
    return {
        "gpt_neox": (sj.lm.GPTNeoX, neox),
        "llama": (sj.lm.Llama, llama),
        "llama-gqa2": (sj.lm.Llama, gqa),
        "gemma2-gqa2": (sj.lm.Gemma2, gemma2),
    }


def prepare(name, cls, config, steps: int):
    """``(call, parameter count)``: one ``sj.estimate_llc`` of the model, blocking."""
    import jax
    from flax import nnx

    import slt_jax as sj

    model = cls(config, rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    size = sum(x.size for x in jax.tree.leaves(params))
    tokens = np.random.default_rng(0).integers(0, VOCAB, (4 * BATCH, SEQ + 1)).astype(np.int32)
    options = dict(
        num_chains=CHAINS,
        num_steps=steps,
        batch_size=BATCH,
        step_size=1e-7,
        localization=100.0,
        nbeta=30.0,
        estimator="plain",
        diagnostic_every=0,
        init_loss_batches=4,
    )

    def call() -> float:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sj.estimate_llc(loss_fn, params, tokens, **options)
        jax.block_until_ready(result.loss_trace)
        return time.perf_counter() - start

    return call, int(size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import jax

    print(f"devices: {jax.devices()}")
    calls, rows = {}, []
    for name, (cls, config) in models().items():
        calls[name], size = prepare(name, cls, config, args.steps)
        cold = calls[name]()
        rows.append({"model": name, "parameters": size, "cold_s": cold, "warm_runs_s": []})
        print(f"{name:11s} {size / 1e6:6.2f}M params  cold {cold:6.2f} s", flush=True)
    for _ in range(args.repeats):  # round robin: the machine's load hits every model alike
        for row in rows:
            row["warm_runs_s"].append(calls[row["model"]]())
    for row in rows:
        warm = statistics.median(row["warm_runs_s"])
        row |= {
            "warm_s": warm,
            "compile_s_approx": row["cold_s"] - warm,
            "chain_steps_per_s": CHAINS * args.steps / warm,
        }
        runs = ", ".join(f"{t:.2f}" for t in row["warm_runs_s"])
        print(
            f"{row['model']:11s} warm {warm:6.2f} s (median of {runs})  "
            f"{row['chain_steps_per_s']:6.2f} chain-steps/s  "
            f"compile ≈ {row['compile_s_approx']:.1f} s"
        )
    base = rows[0]["chain_steps_per_s"]
    for row in rows[1:]:
        print(f"{row['model']} / gpt_neox warm speed: {row['chain_steps_per_s'] / base:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
