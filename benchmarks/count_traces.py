"""How many times each public entry point traces the user's loss function.

A loss that counts its own traces: a Python counter incremented in the loss function's
body, which runs only when JAX traces it (``eval_shape`` for the checks, each ``jit`` of a
centre-loss or chain program). Every trace of a billion-parameter loss costs seconds, so
the count is what a large model pays before sampling begins.

Each case builds a fresh loss (so no compiled program is reused from an earlier case) on
a tiny regression problem and prints ``case  traces  checks``, where ``checks`` counts the
runs of the checks (``orchestrate.prepare``: the data, the options, the loss). Run:

    python benchmarks/count_traces.py            # the table
    python benchmarks/count_traces.py --json     # the counts as JSON
"""

from __future__ import annotations

import json
import sys
import warnings

import jax.numpy as jnp
import numpy as np

import slt_jax as sj


class CountingLoss:
    """``0.5·mean((x·w − y)²)``, counting the Python executions of its body (traces)."""

    def __init__(self):
        self.traces = 0

    def __call__(self, w, batch):
        self.traces += 1
        x, y = batch
        return 0.5 * jnp.mean((x @ w - y) ** 2)


def problem(n: int = 200):
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)[:, None]
    y = 2.0 * x[:, 0]
    return jnp.array([2.0]), (x, y)


# n = 200, batch 64: an exact L_n(w*) has a final short chunk of 8 rows (its own trace).
# The calibration of so short a run finds no usable setting (a CalibrationError): the
# "auto" cases count the checks and the calibration (the estimate that would follow adds
# one chain program, traced as in the plain cases).
RUN = dict(num_chains=2, num_steps=40, batch_size=64, seed=0)
AUTO = dict(step_size="auto", calibration_budget=8 * 40 * 30)


def cases():
    """``{name: callable(loss) -> None}``: the public calls measured."""
    w, data = problem()
    ckpts = [w, w + 1e-3]
    fixed = dict(step_size=1e-3, localization=1.0)
    return {
        "estimate_llc": lambda loss: sj.estimate_llc(loss, w, data, **RUN, **fixed),
        "estimate_llc(step_size='auto')": lambda loss: sj.estimate_llc(
            loss, w, data, **RUN, **AUTO
        ),
        "estimate_llc_checkpoints (2)": lambda loss: sj.estimate_llc_checkpoints(
            loss, ckpts, data, **RUN, **fixed, chunk_size=2, progress=False
        ),
        "estimate_llc_checkpoints (2, 'auto')": lambda loss: sj.estimate_llc_checkpoints(
            loss, ckpts, data, **RUN, **AUTO, chunk_size=2, progress=False
        ),
        "calibrate (automatic grid)": lambda loss: sj.calibrate(
            loss, w, data, num_chains=2, num_steps=40, batch_size=64, budget=8 * 40 * 30
        ),
        "calibrate (given grid)": lambda loss: sj.calibrate(
            loss,
            w,
            data,
            step_sizes=[1e-4, 1e-3],
            localizations=[1.0],
            num_chains=2,
            num_steps=40,
            batch_size=64,
        ),
        "estimate_refined_llc": lambda loss: sj.estimate_refined_llc(
            loss, w, data, {"all": "*"}, **RUN, **fixed
        ),
    }


def count(run) -> tuple[int, int]:
    """``(traces of a fresh loss, runs of the checks)`` during ``run(loss)``."""
    from slt_jax._src.jobs import orchestrate

    loss, checks, prepare = CountingLoss(), [0], orchestrate.prepare

    def counted(*args, **kwargs):
        checks[0] += 1
        return prepare(*args, **kwargs)

    orchestrate.prepare = counted
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(loss)
    except sj.CalibrationError:  # a tiny budget may verify nothing: traces still count
        pass
    finally:
        orchestrate.prepare = prepare
    return loss.traces, checks[0]


def main() -> None:
    counts = {name: count(run) for name, run in cases().items()}
    if "--json" in sys.argv:
        print(json.dumps(counts))
        return
    width = max(map(len, counts))
    print(f"{'public call':<{width}}  traces  checks")
    for name, (traces, checks) in counts.items():
        print(f"{name:<{width}}  {traces:>6}  {checks:>6}")


if __name__ == "__main__":
    main()
