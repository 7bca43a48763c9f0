"""The bookkeeping of benchmarks/bench_cpu_ceiling.py and bench_lm_peers.py (no timing):
the FLOPs of a GPT-2-shape chain step against their closed form, the operand shapes of the
backward products, and ``--repeats``' medians."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_flops_are_the_closed_form():
    """Forward: 2·(B·T)·(12·d²·L + d·V) for the weights (qkv 3d², out d², MLP 8d², tied head)
    plus 4·B·T²·d·L for q kᵀ and softmax·v; a step is 3 × that (two backward products of the
    same size per forward one)."""
    c = _load("bench_cpu_ceiling")
    b, t, d, layers, vocab = c.B, c.T, c.D, c.LAYERS, c.VOCAB
    forward = 2 * b * t * (12 * d * d * layers + d * vocab) + 4 * b * t * t * d * layers
    assert c.step_flops() == 3 * forward == 38_277_218_304
    for name, (batch, m, k, n, _) in c.GEMMS.items():  # each pass contracts to its output
        (x, y) = c.operands(batch, m, k, n, "nt")  # dA = dC Bᵀ: (M, N)·(K, N)ᵀ → (M, K)
        assert x[-2:] == (m, n) and y[-2:] == (k, n), name
        (x, y) = c.operands(batch, m, k, n, "tn")  # dB = Aᵀ dC: (M, K)ᵀ·(M, N) → (K, N)
        assert x[-2:] == (m, k) and y[-2:] == (m, n), name
        assert len(x) == (3 if batch > 1 else 2)


def _entry(warm, cold, load, llc):
    def run(cs):
        out = dict(seconds=80 / cs, chain_steps_per_s=cs, tokens_per_s=2048 * cs, llc=llc)
        return out | dict(llc_se=0.1, peak_rss_mib=900.0, rss_growth_mib=300.0)

    out = {"status": "measured", "runs": {"warm": run(warm)}, "load": load}
    if cold is not None:
        out["runs"]["cold"] = run(cold)
        out["compile_s"] = 80 / cold - 80 / warm
    return out


def test_repeats_give_medians_and_keep_every_run():
    p = _load("bench_lm_peers")
    entries = [_entry(2.0, 1.0, [1.0, 1.2], 3.1), _entry(3.0, 1.5, [0.5, 0.7], 3.2)]
    entries.append(_entry(2.5, 2.0, [2.0, 2.1], 3.3))
    out = p.combine(entries)
    assert out["repeats"] == 3 and out["warm_runs_cs_per_s"] == [2.0, 3.0, 2.5]
    assert out["runs"]["warm"]["chain_steps_per_s"] == 2.5
    assert out["runs"]["cold"]["seconds"] == np.median([80.0, 80 / 1.5, 40.0])
    assert out["runs"]["warm"]["llc"] == 3.1  # the first run's: the same seeds every run
    assert out["compile_s"] == np.median([e["compile_s"] for e in entries])
    assert out["load"] == [[1.0, 1.2], [0.5, 0.7], [2.0, 2.1]]
    failed = p.combine(entries[:1] + [{"status": "failed (exit 1)", "load": [3.0, 3.0]}])
    assert failed["status"] == "failed (exit 1)"
    assert "z vs slt_jax" in p.markdown(
        {"date": "d", "command": "c", "environment": "e", "shapes": {"gpt2": {"slt_jax": out}}}
    )
