"""The memory model of docs/scale.md against XLA's memory analysis, on small GPT-NeoX-like
models (the parameter structure of Pythia: untied embed / unembed, parallel attention and
MLP, rotary on a quarter of each head, 4x MLP, biases, two LayerNorms per layer).

For each size and memory option, ``sj.estimate_llc_checkpoints(..., dry_run=True)``
compiles the sweep's program and returns a ``sj.RunPlan`` with XLA's per-device argument,
output and temporary bytes; the script prints them next to what the formulas of
docs/scale.md predict (``predict`` below: the same formulas), as a markdown table.

    .venv/bin/python benchmarks/scale_check.py [--sizes s1,s2,s3] [--json out.json]

Everything is float32 unless a variant says otherwise; one checkpoint, ``--chains``
chains on one device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import slt_jax as sj


@dataclasses.dataclass(frozen=True)
class Size:
    d: int  # hidden size
    layers: int
    heads: int
    vocab: int
    seq: int  # T, tokens per sequence

    @property
    def num_params(self) -> int:  # the formula of docs/scale.md
        d, L, V = self.d, self.layers, self.vocab
        return 2 * V * d + L * (12 * d * d + 13 * d) + 2 * d


SIZES = {
    "s1": Size(d=64, layers=2, heads=4, vocab=512, seq=64),
    "s2": Size(d=128, layers=4, heads=4, vocab=2048, seq=128),
    "s3": Size(d=256, layers=4, heads=8, vocab=4096, seq=128),
}


# --- the model: GPT-NeoX in jax.numpy -----------------------------------------------------


def init_params(size: Size, seed: int = 0, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    d, V = size.d, size.vocab

    def dense(n_in, n_out, bias=True):
        out = {"weight": rng.normal(0, 0.02, (n_in, n_out)).astype(dtype)}
        if bias:
            out["bias"] = np.zeros(n_out, dtype)
        return out

    def norm():
        return {"weight": np.ones(d, dtype), "bias": np.zeros(d, dtype)}

    layers = {
        str(i): {
            "input_layernorm": norm(),
            "post_attention_layernorm": norm(),
            "attention": {"query_key_value": dense(d, 3 * d), "dense": dense(d, d)},
            "mlp": {"dense_h_to_4h": dense(d, 4 * d), "dense_4h_to_h": dense(4 * d, d)},
        }
        for i in range(size.layers)
    }
    return {
        "embed_in": {"weight": rng.normal(0, 0.02, (V, d)).astype(dtype)},
        "layers": layers,
        "final_layer_norm": norm(),
        "embed_out": dense(d, V, bias=False),
    }


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["weight"] + p["bias"]


def _rotary(x, fraction=0.25):
    """Rotary embedding on the first ``fraction`` of each head's dimensions (Pythia: 0.25)."""
    T, hd = x.shape[-3], x.shape[-1]
    r = max(2, int(hd * fraction)) // 2 * 2
    inv = 1.0 / (10000 ** (jnp.arange(0, r, 2, dtype=jnp.float32) / r))
    angle = jnp.arange(T, dtype=jnp.float32)[:, None] * inv[None, :]  # (T, r/2)
    cos, sin = (
        jnp.concatenate([f(angle)] * 2, -1)[:, None, :].astype(x.dtype) for f in (jnp.cos, jnp.sin)
    )
    rot, rest = x[..., :r], x[..., r:]
    half = jnp.concatenate([-rot[..., r // 2 :], rot[..., : r // 2]], -1)
    return jnp.concatenate([rot * cos + half * sin, rest], -1)


def _block(x, p, heads):
    """One GPT-NeoX layer, parallel residual: x + attn(ln1(x)) + mlp(ln2(x))."""
    b, T, d = x.shape
    hd = d // heads
    qkv = _layer_norm(x, p["input_layernorm"]) @ p["attention"]["query_key_value"]["weight"]
    qkv = (qkv + p["attention"]["query_key_value"]["bias"]).reshape(b, T, heads, 3 * hd)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q, k = _rotary(q), _rotary(k)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(jnp.asarray(hd, x.dtype))
    causal = jnp.tril(jnp.ones((T, T), bool))
    probs = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(x.dtype).min), axis=-1)
    attn = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, T, d)
    attn = attn @ p["attention"]["dense"]["weight"] + p["attention"]["dense"]["bias"]
    h = _layer_norm(x, p["post_attention_layernorm"]) @ p["mlp"]["dense_h_to_4h"]["weight"]
    h = jax.nn.gelu(h + p["mlp"]["dense_h_to_4h"]["bias"])
    mlp = h @ p["mlp"]["dense_4h_to_h"]["weight"] + p["mlp"]["dense_4h_to_h"]["bias"]
    return x + attn + mlp


def stack_layers(params: dict) -> dict:
    """The layers' leaves stacked on a leading layer axis (for a ``lax.scan`` over layers)."""
    layers = [params["layers"][k] for k in sorted(params["layers"], key=int)]
    return dict(params, layers=jax.tree.map(lambda *x: np.stack(x), *layers))


def make_loss(size: Size, remat_layers: bool = False, scan: bool = False):
    """Mean next-token cross entropy of a batch of ``(b, T + 1)`` token sequences. ``scan``:
    the layers (stacked: :func:`stack_layers`) in a ``lax.scan``; ``remat_layers``: each
    layer under ``jax.checkpoint`` (what ``nnx.remat`` / ``nn.remat`` do)."""
    block = jax.checkpoint(_block, static_argnums=2) if remat_layers else _block

    def loss_fn(params, tokens):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        x = params["embed_in"]["weight"][inputs]
        if scan:
            x, _ = jax.lax.scan(lambda x, p: (block(x, p, size.heads), None), x, params["layers"])
        for i in range(0 if scan else size.layers):
            x = block(x, params["layers"][str(i)], size.heads)
        x = _layer_norm(x, params["final_layer_norm"])
        logits = (x @ params["embed_out"]["weight"]).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    return loss_fn


# --- the memory model of docs/scale.md ------------------------------------------------------


def activation_bytes(size: Size, width: int = 4, remat_layers: bool = False) -> int:
    """Bytes stored for the backward pass, per sequence, activations ``width`` bytes each:
    per layer 16·T·d elements (two LayerNorm outputs, q k v, rotated q k, the attention
    output, the MLP's 4d before and after GELU) and a·T² (the attention probabilities of
    dense, non-flash attention); the logits and their log-softmax in float32, 8·T·V bytes.
    With per-layer remat only each layer's input (T·d) is kept, plus one layer's
    activations while its backward runs."""
    T, d, a, L, V = size.seq, size.d, size.heads, size.layers, size.vocab
    layer = 16 * T * d + a * T * T
    kept = L * T * d + layer if remat_layers else L * layer
    return width * kept + 8 * T * V


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    options: dict
    remat_layers: bool = False
    scan: bool = False
    checkpoint_dtype: str = "float32"


def predict(size: Size, v: Variant, chains: int, batch: int, n: int, steps: int, burnin: int):
    """Per-device bytes (arguments, outputs, temporaries) by the formulas of docs/scale.md."""
    P = size.num_params
    o = v.options
    centre = np.dtype(v.checkpoint_dtype).itemsize * P  # w*, one copy per chain (an argument)
    data = n * (size.seq + 1) * 4  # int32 tokens, replicated
    arguments = chains * (centre + 8 + 3 * 4) + data  # + key data, step size, γ, nβ
    draws = steps - burnin
    diagnostics = -(-draws // o.get("diagnostic_every", 10))
    outputs = chains * (4 * (2 * draws + burnin) + 4 * 4 * diagnostics + 1)
    # Parameter-sized temporaries per chain: position (the scan carry) and its update,
    # the gradient, the Gaussian noise; + the compute-dtype copy; + a sampler buffer
    # (SGHMC momentum, RMSProp's V); + the microbatch gradient accumulator.
    per_chain = (4 + 4 + 4) * P
    compute = o.get("compute_dtype")
    if compute:
        per_chain += np.dtype(compute).itemsize * P
    if o.get("sampler", "sgld") != "sgld":
        per_chain += 4 * P
    micro = o.get("microbatch_size")
    if micro:
        per_chain += 4 * P
    rows = micro or batch
    width = np.dtype(compute).itemsize if compute else 4
    act = rows * activation_bytes(size, width, v.remat_layers)
    live = o.get("chain_batch", 1) if o.get("chain_layout") == "map" else chains
    temps = chains * per_chain + live * act
    return arguments, outputs, temps, chains * per_chain, live * act


VARIANTS = [
    Variant("SGLD, vmap", dict(chain_layout="vmap")),
    Variant("SGLD, map (1 chain at a time)", dict(chain_layout="map")),
    Variant("remat=True (whole loss)", dict(chain_layout="vmap", remat=True)),
    Variant("per-layer remat, unrolled layers", dict(chain_layout="vmap"), remat_layers=True),
    Variant("scan over layers", dict(chain_layout="vmap"), scan=True),
    Variant("scan + per-layer remat", dict(chain_layout="vmap"), remat_layers=True, scan=True),
    Variant("microbatch_size = b/2", dict(chain_layout="vmap", microbatch_size="half")),
    Variant("compute_dtype=bfloat16", dict(chain_layout="vmap", compute_dtype="bfloat16")),
    Variant("SGHMC (momentum)", dict(chain_layout="vmap", sampler="sghmc")),
]


def measure(size: Size, v: Variant, chains: int, batch: int, n: int, steps: int, burnin: int):
    options = dict(v.options)
    if options.get("microbatch_size") == "half":
        options["microbatch_size"] = batch // 2
    params = init_params(size, dtype=np.dtype(v.checkpoint_dtype))
    params = stack_layers(params) if v.scan else params
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, size.vocab, (n, size.seq + 1)).astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        plan = sj.estimate_llc_checkpoints(
            make_loss(size, v.remat_layers, v.scan),
            [params],
            tokens,
            num_chains=chains,
            num_steps=steps,
            num_burnin=burnin,
            step_size=1e-6,
            localization=100.0,
            batch_size=batch,
            chunk_size=1,
            dry_run=True,
            progress=False,
            **options,
        )
        wall = time.perf_counter() - start
    return plan, wall, options


def mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


# --- on paper: Pythia on a TPU v5e-8 slice and on 8 x H100 ----------------------------------

#: Published configurations (GPT-NeoX; rotary on 25% of each head, 4x MLP, untied embed and
#: unembed); 6.9B's vocabulary is padded to 50432 in its released config.
PYTHIA = {
    "Pythia-160M": Size(d=768, layers=12, heads=12, vocab=50304, seq=2048),
    "Pythia-1.4B": Size(d=2048, layers=24, heads=16, vocab=50304, seq=2048),
    "Pythia-6.9B": Size(d=4096, layers=32, heads=32, vocab=50432, seq=2048),
}
#: Assumed peak figures per chip: HBM bytes, dense bf16 FLOP/s, HBM bytes/s, link bytes/s
#: (one direction; v5e ICI 1,600 Gbit/s, H100 NVLink 4 at 900 GB/s both ways).
HARDWARE = {
    "TPU v5e": (16 * 2**30, 197e12, 819e9, 200e9),
    "H100 SXM": (80 * 2**30, 989e12, 3.35e12, 450e9),
}


def chain_state_bytes(P: int, sampler_buffer: bool = False, microbatched: bool = False) -> int:
    """Per chain: centre (16-bit checkpoint) 2P, position 4P, gradient 4P, noise 4P, the
    bfloat16 copy the loss sees 2P; + 4P for a sampler buffer (SGHMC's momentum, RMSProp's
    V), + 4P for the microbatch gradient accumulator."""
    return (16 + 4 * sampler_buffer + 4 * microbatched) * P


def step_flops(size: Size, rows: int, remat: bool) -> float:
    """FLOPs of one chain-step (paired estimator): forward + backward 6·N_mm·tokens, the
    paired forward at w* 2·N_mm·tokens, + one more forward with per-layer remat; dense
    attention 4·L·T·d per token per forward (x3 with its backward). N_mm excludes the
    embedding lookup."""
    T, d, L = size.seq, size.d, size.layers
    n_mm = size.num_params - size.vocab * d
    forwards = 4 + remat  # backward = 2 forwards; + paired; + remat
    return rows * T * forwards * (2 * n_mm + 4 * L * T * d)


def update_bytes(P: int) -> int:
    """HBM traffic of one chain-step that does not shrink with the batch: read position,
    gradient (4P each) and centre (2P), write position (4P), the bf16 copy (2P) and the
    gradient (4P); read the bf16 weights in four passes (forward, backward, paired forward,
    remat forward: 8P). The noise is generated in the update's fusion (not stored)."""
    return 28 * P


def paper(batch: int = 8):
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    print(f"\n### Per chain ({batch} sequences of 2048 tokens per minibatch)\n")
    print(
        "| model | params P | N_mm | SGLD state 16P | + SGHMC/RMSProp buffer | activations per "
        "sequence, bf16: stored / per-layer remat | GB at b, no remat / remat + 1-seq "
        "microbatches |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, size in PYTHIA.items():
        P = size.num_params
        full, rem = activation_bytes(size, 2), activation_bytes(size, 2, True)
        print(
            f"| {name} | {P:,} | {P - size.vocab * size.d:,} | {gb(chain_state_bytes(P))} | "
            f"{gb(chain_state_bytes(P, True))} | {gb(full)} / {gb(rem)} | "
            f"{gb(chain_state_bytes(P) + batch * full)} / "
            f"{gb(chain_state_bytes(P, microbatched=True) + rem)} |"
        )
    print(
        f"\n### Layout and roofline, per device ({batch}-sequence minibatch, remat per "
        "layer, 1-sequence microbatches, bf16 compute, float32 chain state)\n"
    )
    print(
        "| hardware | model | model axis m | bytes per device per chain | chains per m chips | "
        "chains on 8 chips | compute ms per chain-step | update ms (HBM) | FSDP ms (links) | "
        "TP ms (links) | chain-steps/s on 8 chips |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for hw, (hbm, flops, bw, link) in HARDWARE.items():
        for name, size in PYTHIA.items():
            P = size.num_params
            state = chain_state_bytes(P, microbatched=True)
            act = activation_bytes(size, 2, True)
            m = 1
            while state / m + act > 0.9 * hbm and m < 8:
                m *= 2
            per_device = state / m + act
            fits = per_device <= 0.9 * hbm
            chains = int((0.9 * hbm - act) // (state / m)) if m == 1 else 1
            chains_8 = chains * 8 // m if fits else 0
            compute = step_flops(size, batch, True) / flops / m  # the batch split over m
            update = update_bytes(P) / bw / m
            frac = (m - 1) / m
            fsdp = 12 * P * frac / link
            tp = 32 * size.layers * batch * size.seq * size.d * frac / link
            comm = 0 if m == 1 else min(fsdp, tp)
            rate = chains_8 / max(compute * chains, update * chains, comm) if fits else 0
            print(
                f"| {hw} | {name} | {m} | {gb(per_device)} | {chains if fits else 0} | "
                f"{chains_8} | {1e3 * compute:.1f} | {1e3 * update:.2f} | "
                f"{1e3 * fsdp * (m > 1):.1f} | {1e3 * tp * (m > 1):.1f} | {rate:.1f} |"
            )


def table(path: str, args) -> None:
    """The comparison table of a ``--json`` file, predictions recomputed by :func:`predict`."""
    with open(path) as f:
        rows = json.load(f)
    variants = {v.name: v for v in VARIANTS}
    print(
        "| size | variant | args pred / XLA | temps pred (state + activations) / XLA | "
        "temps XLA/pred |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        size, v = SIZES[r["size"]], variants[r["variant"]]
        if v.options.get("microbatch_size") == "half":
            v = dataclasses.replace(v, options=dict(v.options, microbatch_size=args.batch // 2))
        a, _, t, state, act = predict(
            size, v, args.chains, args.batch, args.examples, args.steps, 2
        )
        print(
            f"| {r['size']} ({size.num_params:,}) | {v.name} | {mib(a)} / "
            f"{mib(r['xla_arguments'])} | {mib(t)} ({mib(state)} + {mib(act)}) / "
            f"{mib(r['xla_temps'])} | {r['xla_temps'] / t:.2f} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="s1,s2,s3")
    parser.add_argument(
        "--variants", default=None, help="indices into VARIANTS per size, e.g. 's2=0,1,5'"
    )
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences per minibatch")
    parser.add_argument("--examples", type=int, default=64, help="sequences in the data set")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", default=None)
    parser.add_argument("--paper", action="store_true", help="print the on-paper tables only")
    parser.add_argument("--table", default=None, help="print the table of a --json file again")
    args = parser.parse_args()
    if args.table:
        return table(args.table, args)
    if args.paper:
        return paper(args.batch if args.batch != 4 else 8)
    burnin, rows = 2, []
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.chains} chains, "
        f"batch {args.batch} sequences, {args.examples} sequences of data; MiB per device\n"
    )
    print(
        "| size | variant | args pred / XLA | outputs pred / XLA | temps pred / XLA "
        "(state + activations) | temps XLA/pred |"
    )
    print("|---|---|---|---|---|---|")
    chosen = dict(item.split("=") for item in (args.variants or "").split(";") if item)
    for name in args.sizes.split(","):
        size = SIZES[name]
        picks = [int(i) for i in chosen[name].split(",")] if name in chosen else None
        for v in [VARIANTS[i] for i in picks] if picks else VARIANTS:
            plan, wall, options = measure(
                size, v, args.chains, args.batch, args.examples, args.steps, burnin
            )
            opts = dict(v.options, **options)
            a, o, t, state, act = predict(
                size,
                dataclasses.replace(v, options=opts),
                args.chains,
                args.batch,
                args.examples,
                args.steps,
                burnin,
            )
            row = dict(
                size=name,
                d=size.d,
                layers=size.layers,
                heads=size.heads,
                vocab=size.vocab,
                seq=size.seq,
                params=size.num_params,
                variant=v.name,
                layout=plan.chain_layout,
                pred_arguments=int(a),
                pred_outputs=int(o),
                pred_temps=int(t),
                pred_state=int(state),
                pred_activations=int(act),
                xla_arguments=plan.argument_bytes,
                xla_outputs=plan.output_bytes,
                xla_temps=plan.temp_bytes,
                step_s=plan.step_s,
                wall_s=wall,
            )
            rows.append(row)
            print(
                f"| {name} ({size.num_params:,} params) | {v.name} | {mib(a)} / "
                f"{mib(plan.argument_bytes)} | {mib(o)} / {mib(plan.output_bytes)} | "
                f"{mib(t)} ({mib(state)} + {mib(act)}) / {mib(plan.temp_bytes)} | "
                f"{plan.temp_bytes / t:.2f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
