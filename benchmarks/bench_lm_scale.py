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
import sys


def corpus(quick: bool) -> dict:
    """Time to the first step and to the result against corpus size."""
    raise NotImplementedError("filled by the corpus-size work of issue 25")


def checkpoints(quick: bool) -> dict:
    """Peak host anonymous memory against the number of checkpoints."""
    raise NotImplementedError("filled by the lazy-checkpoint work of issue 25")


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
