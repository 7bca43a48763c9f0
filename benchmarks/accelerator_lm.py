"""The language-model rows of ``benchmarks/accelerator.py`` (issue 26, item 4).

* ``pythia160m``, ``pythia410m``: GPT-NeoX of Pythia-160M's and Pythia-410M's shapes
  (random weights; vocab 50304, seq 512, batch 8), ``estimate_llc`` with as many chains as
  fit (the chain count from the device's memory, halved on an out-of-memory error);
* ``heads``: a per-head refined sweep (``estimate_refined_llc`` over every head of the 160M
  shape, one compiled program per shape group);
* the same LLC rows for devinterp 2.x and canonical-interp where they import (their chains
  on the same device, at most ``PEER_MAX_CHAINS``; else "skipped" and why).

Per row: chain-steps/s and tokens/s of the warm call, compile apart, MFU (analytic FLOPs
per chain-step, :func:`step_flops`, over the device's dense peak), peak device memory
(``memory_stats()['peak_bytes_in_use']`` where the backend reports it, else the process's
peak resident set). ``--smoke`` runs tiny shapes on CPU in seconds.
"""

from __future__ import annotations

import importlib.util
import warnings

import jax
import numpy as np

import slt_jax as sj

SHAPES = {
    "pythia160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "pythia410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}
SMOKE_SHAPE = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
VOCAB, SEQ, BATCH = 50304, 512, 8
SMOKE = dict(vocab=256, seq=16, batch=4, chains=2, steps=4)
SGLD = dict(step_size=1e-5, localization=300.0, nbeta=30.0)
STEPS = 40
PEER_MAX_CHAINS = 8


def neox_config(shape: dict, vocab: int, seq: int) -> sj.lm.GPTNeoXConfig:
    d = shape["hidden_size"]
    return sj.lm.GPTNeoXConfig(
        vocab_size=vocab, intermediate_size=4 * d, max_position_embeddings=max(seq, 64), **shape
    )


def step_flops(config: sj.lm.GPTNeoXConfig, batch: int, seq: int) -> float:
    r"""FLOPs of one chain-step (forward and backward, one minibatch): ``6·N·B·T`` for the
    ``N`` matmul parameters (layers and output head; the input embedding is a lookup) plus
    causal attention's ``6·L·B·T²·d`` (the ``QKᵀ`` and ``AV`` products, half masked,
    forward and backward)."""
    d, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    n = layers * (4 * d * d + 2 * d * config.intermediate_size) + v * d
    return 6.0 * n * batch * seq + 6.0 * layers * batch * seq * seq * d


def _memory_peak() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _memory_limit() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return None if limit is None else float(limit)


def chains_that_fit(config, batch: int, seq: int, smoke: bool) -> int:
    """Chains for the device: its memory over a chain's (params, gradient, noise, centre
    and the step's update in float32: ~6 copies, plus activations ~ 40·L·B·T·d floats)."""
    if smoke:
        return SMOKE["chains"]
    limit = _memory_limit()
    if limit is None:
        return 4
    p = config.num_hidden_layers * 12 * config.hidden_size**2 + 2 * config.vocab_size * (
        config.hidden_size
    )
    per_chain = 4 * (6 * p + 40 * config.num_hidden_layers * batch * seq * config.hidden_size)
    return int(max(1, min(64, 2 ** int(np.log2(0.7 * limit / per_chain)))))


def _is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _rates(timing: dict, chain_steps: int, tokens: int, flops: float, peak) -> dict:
    out = dict(timing, chain_steps=chain_steps)
    out["chain_steps_per_s"] = chain_steps / timing["warm_s"]
    out["tokens_per_s"] = chain_steps * tokens / timing["warm_s"]
    out["flops_per_s"] = chain_steps * flops / timing["warm_s"]
    out["mfu"] = out["flops_per_s"] / peak if peak else None
    return out


def llc_row(name, shape, smoke, peak, cold_warm, timed_memory) -> dict:
    from flax import nnx

    vocab, seq, batch = (
        (SMOKE["vocab"], SMOKE["seq"], SMOKE["batch"])
        if smoke
        else (
            VOCAB,
            SEQ,
            BATCH,
        )
    )
    steps = SMOKE["steps"] if smoke else STEPS
    config = neox_config(shape, vocab, seq)
    model = sj.lm.GPTNeoX(config, rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    data = np.random.default_rng(0).integers(0, vocab, (4 * batch, seq + 1)).astype(np.int32)
    chains = chains_that_fit(config, batch, seq, smoke)
    while True:
        kw = dict(SGLD, num_chains=chains, num_steps=steps, num_burnin=0, batch_size=batch)
        kw |= dict(estimator="plain", diagnostic_every=0)

        def call(kw=kw):
            return sj.estimate_llc(loss_fn, params, data, seed=0, **kw)

        try:
            (timing, _, res), memory = timed_memory(lambda call=call: cold_warm(call))
            break
        except Exception as error:  # noqa: BLE001 - halve the chains on OOM only
            if not _is_oom(error) or chains == 1:
                raise
            chains //= 2
    out = _rates(timing, chains * steps, batch * seq, step_flops(config, batch, seq), peak)
    num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    out.update(label=f"GPT-NeoX {name} shape, {num_params / 1e6:.1f}M params, seq {seq}")
    out.update(chains=chains, batch=batch, seq=seq, llc=float(res.llc_mean), **memory)
    return out


def heads_row(shape, smoke, peak, cold_warm, timed_memory) -> dict:
    from flax import nnx

    vocab, seq, batch = (
        (SMOKE["vocab"], SMOKE["seq"], SMOKE["batch"])
        if smoke
        else (
            VOCAB,
            SEQ,
            BATCH,
        )
    )
    steps = SMOKE["steps"] if smoke else STEPS
    config = neox_config(shape, vocab, seq)
    model = sj.lm.GPTNeoX(config, rngs=nnx.Rngs(0))
    loss_fn, params = sj.lm.next_token_loss(model)
    layout = sj.lm.layout(model)
    refinements = sj.refine.heads(params, layout)
    data = np.random.default_rng(0).integers(0, vocab, (4 * batch, seq + 1)).astype(np.int32)
    chains = SMOKE["chains"] if smoke else 4
    cfg = sj.LLCConfig(
        **SGLD, num_chains=chains, num_steps=steps, num_burnin=0, batch_size=batch, seed=0
    )

    def call():
        return sj.estimate_refined_llc(loss_fn, params, data, refinements, config=cfg)

    (timing, _, res), memory = timed_memory(lambda: cold_warm(call))
    chain_steps = len(refinements) * chains * steps
    out = _rates(timing, chain_steps, batch * seq, step_flops(config, batch, seq), peak)
    out.update(label=f"{len(refinements)} heads x {chains} chains, seq {seq}", **memory)
    out["llc"] = float(np.nanmean([float(v) for v in res.llc_mean.values()]))
    return out


def peer_status(module: str) -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "not installed (torch)"
    if importlib.util.find_spec(module) is None:
        return False, f"not installed ({module})"
    return True, "installed"


def peer_row(peer: str, shape, smoke) -> dict:
    """devinterp 2.x or canonical-interp on the same shape (a transformers model with the
    same random-init config), chains at most ``PEER_MAX_CHAINS``; warm run timed."""
    available, why = peer_status("devinterp" if peer == "devinterp" else "canonical_interp")
    if not available:
        return dict(status=f"skipped: {peer} {why}")
    import tempfile

    import bench_lm_peers as blp
    from flax import nnx

    vocab, seq, batch = (
        (SMOKE["vocab"], SMOKE["seq"], SMOKE["batch"])
        if smoke
        else (
            VOCAB,
            SEQ,
            BATCH,
        )
    )
    steps = SMOKE["steps"] if smoke else STEPS
    config = neox_config(shape, vocab, seq)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    chains = SMOKE["chains"] if smoke else PEER_MAX_CHAINS
    with tempfile.TemporaryDirectory() as tmp:
        import pathlib

        work = pathlib.Path(tmp)
        sj.lm.save_model(sj.lm.GPTNeoX(config, rngs=nnx.Rngs(0)), work / "model")
        rng = np.random.default_rng(0)
        np.save(work / "windows.npy", rng.integers(0, vocab, (4 * batch, seq + 1)).astype(np.int32))
        opts = dict(
            sgld=dict(SGLD, batch_size=batch, num_chains=chains),
            steps=steps,
            seq_len=seq,
            torch_threads=torch.get_num_threads(),
            device=device,
        )
        worker = blp.worker_devinterp if peer == "devinterp" else blp.worker_canonical
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = worker(work, opts)
    run = raw["runs"][-1]
    flops = step_flops(config, batch, seq)
    out = dict(status=f"measured on {device}", chains=chains, warm_s=run["seconds"])
    out.update(chain_steps_per_s=chains * steps / run["seconds"])
    out.update(tokens_per_s=out["chain_steps_per_s"] * batch * seq)
    out.update(flops_per_s=out["chain_steps_per_s"] * flops, peak_rss_mib=run["peak_rss_mib"])
    if device == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def lm_rows(smoke: bool, peak, guarded, budget, need, cold_warm) -> dict:
    """Every LM row (see the module docstring), each under the time budget."""
    from bench_devinterp_lm import _timed

    def timed_memory(fn):
        _, out, memory = _timed(fn)
        device_peak = _memory_peak()
        if device_peak is not None:
            memory["peak_device_mib"] = device_peak
        return out, memory

    shapes = {"pythia160m_smoke": SMOKE_SHAPE} if smoke else SHAPES
    rows = {}
    for name, shape in shapes.items():
        rows[name] = dict(
            slt_jax=guarded(
                f"{name} slt_jax",
                budget,
                need,
                lambda n=name, s=shape: llc_row(n, s, smoke, peak, cold_warm, timed_memory),
            )
        )
        for peer in ("devinterp", "canonical"):
            rows[name][peer] = guarded(
                f"{name} {peer}", budget, need, lambda p=peer, s=shape: peer_row(p, s, smoke)
            )
    first = next(iter(shapes.values()))
    rows["heads"] = dict(
        slt_jax=guarded(
            "heads", budget, need, lambda: heads_row(first, smoke, peak, cold_warm, timed_memory)
        )
    )
    return rows


def markdown_rows(rows: dict, fmt) -> list[str]:
    lines = [
        "",
        "| LM row | library | chains | compile s | chain-steps/s | tokens/s | MFU | peak MiB |"
        " λ̂ | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, libs in rows.items():
        for lib, r in libs.items():
            if "chain_steps_per_s" not in r:
                lines.append(f"| {name} | {lib} | | | | | | | | {r.get('status', '')} |")
                continue
            mem = r.get("peak_device_mib", r.get("peak_rss_mib"))
            lines.append(
                f"| {name} | {lib} | {r.get('chains', '')} | {fmt(r.get('compile_s'))} | "
                f"{fmt(r['chain_steps_per_s'])} | {fmt(r['tokens_per_s'])} | "
                f"{fmt(r.get('mfu'), '{:.1%}')} | {fmt(mem, '{:.0f}')} | {fmt(r.get('llc'))} | "
                f"{r.get('label', r.get('status', ''))} |"
            )
    return lines
