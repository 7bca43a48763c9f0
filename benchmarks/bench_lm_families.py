"""Step time of a Llama-family model against a GPT-NeoX of the same size (issue 26, item 3).

Both native models with random weights (no hub, no torch): width 256, 4 layers, 8 heads of
64, vocabulary 5000, windows of 128 + 1 tokens, batch 8, 4 chains x 20 SGLD steps,
``estimator="plain"`` and ``diagnostic_every=0`` (one gradient per step). The Llama's MLP
is SwiGLU of width 683 (three matrices, the parameters of NeoX's two of width 1024), so the
two have the same parameter count up to the norms and biases; a third row is the same Llama
with grouped-query attention (2 key/value heads). Compilation is timed apart: the first call
compiles (``cold``), the next ``--repeats`` calls reuse the program; ``warm`` is their
median, reported as chain-steps per second (the centre loss ``L_n(w*)`` of each call, 4
minibatches, is included in every call alike).

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
    return {
        "gpt_neox": (sj.lm.GPTNeoX, neox),
        "llama": (sj.lm.Llama, llama),
        "llama-gqa2": (sj.lm.Llama, gqa),
    }


def run(name, cls, config, steps: int, repeats: int) -> dict:
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
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sj.estimate_llc(loss_fn, params, tokens, **options)
        jax.block_until_ready(result.loss_trace)
        times.append(time.perf_counter() - start)
    warm = statistics.median(times[1:])
    row = {
        "model": name,
        "parameters": int(size),
        "cold_s": times[0],
        "warm_s": warm,
        "compile_s_approx": times[0] - warm,
        "chain_steps_per_s": CHAINS * steps / warm,
        "warm_runs_s": times[1:],
    }
    print(
        f"{name:11s} {size / 1e6:6.2f}M params  cold {times[0]:6.2f} s  warm {warm:6.2f} s "
        f"(median of {repeats})  {row['chain_steps_per_s']:6.2f} chain-steps/s",
        flush=True,
    )
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import jax

    print(f"devices: {jax.devices()}")
    rows = [run(n, c, cfg, args.steps, args.repeats) for n, (c, cfg) in models().items()]
    base = rows[0]["chain_steps_per_s"]
    for row in rows[1:]:
        print(f"{row['model']} / gpt_neox warm speed: {row['chain_steps_per_s'] / base:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
