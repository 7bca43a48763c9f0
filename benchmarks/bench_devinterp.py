"""slt_jax against devinterp 1.3.2 (PyTorch), side by side, and against the hardware's limit.

Workloads (issue 8), each run by both libraries on the same function with the same initial
weights (the JAX weights are copied into an equivalent torch module; the two losses are
checked to agree at ``w*`` before anything is timed), the same data and the same SGLD
settings:

* W0: deep linear network 5-4-5 at ``w* = 0`` (40 parameters), rank-0 truth (``y`` is pure
  noise), n = 1000, batch 100, ε = 1e-3, γ = 1, 8 chains x 2000 steps. Known answer:
  Aoyagi's λ = 8.
* W1: ReLU MLP 64-128-128-10 (26,122 parameters) on the digits shipped with slt_jax,
  trained 500 Adam steps; batch 256, ε = 1e-4, γ = 100, nβ = n/log n, 8 chains x 500 steps.
* W2: W1 over 32 checkpoints of its training run: ``estimate_llc_checkpoints`` in one call
  against devinterp called once per checkpoint.
* W3: two-layer attention-only transformer (~3M parameters, context 256), many chains; only
  where ``jax.default_backend()`` is a GPU or TPU, otherwise reported as not measured.

Settings mapping (checked against devinterp 1.3.2's source, ``devinterp/optim/sgld.py``
and ``devinterp/slt/``): both libraries step ``w ← w − ε/2·(nβ·∇L_B(w) + γ·(w − w*)) +
N(0, ε)``, so ``step_size`` = devinterp's ``lr`` and ``localization`` = its
``localization``. devinterp's default nβ is ``batch_size / log(batch_size)``; we pass
``nbeta = n / log n`` (slt_jax's default). slt_jax's ``num_steps`` includes its
``num_burnin``; devinterp gets ``num_burnin_steps = num_burnin`` and ``num_draws =
num_steps − num_burnin``. devinterp's default ``init_loss`` is the mean loss of the first
``num_chains`` minibatches; we pass ``L_n(w*)`` over the whole data set, as slt_jax uses.
Both record ``L_B(w_t)`` at the point each step starts from, draw minibatches without
replacement within an epoch and drop the last ``n mod b`` examples (devinterp gets a
``DataLoader(shuffle=True, drop_last=True)``). devinterp's estimate is
``nβ·(mean_t L_B(w_t) − L_n(w*))`` (slt_jax's ``"plain"`` estimator); slt_jax runs with its
defaults (``"paired"``: ``nβ·mean_t(L_B(w_t) − L_B(w*))``, the same expectation with less
minibatch noise, for one extra forward pass per draw; diagnostics every 10 draws, one extra
gradient each). The error of both λ̂ is the same Monte-Carlo standard error
(``slt_jax._src.estimators.diagnostics.chain_diagnostics``: sd of the pooled per-draw LLC trace over
sqrt(ESS)), computed on each library's own trace.

Timing: slt_jax cold = ``jax.clear_caches()`` then one call (trace and compile included);
warm = the same call again (compiled program reused); compile = cold − warm. devinterp =
one call of ``estimate_learning_coeff_with_summary`` (plus the full-data ``L_n(w*)``).
Data are host arrays / torch tensors before the clock starts; devinterp gets one torch
thread (``--torch-threads``: on a loaded 2-core machine torch's default of 2 made it up to
20x slower). Ratios (devinterp time / slt_jax time, i.e. slt_jax's throughput over
devinterp's) are taken per repetition (``--repeats``, 3; W2 ``--w2-repeats``, 1) and the
median is reported. Peak memory: the peak resident set of this process during the call
(``VmHWM``, reset before each call through ``/proc/self/clear_refs``) and its growth over
the resident set before the call.

FLOPs: XLA's ``cost_analysis()`` counts a ``while`` loop's body once, so the whole sampling
program's analysis is not the work it does. We take XLA's ``cost_analysis()`` of the pieces
each chain runs (one SGLD step = ``value_and_grad`` of the loss on one minibatch plus the
update; one forward pass on a minibatch; the full-data loss at ``w*``, once per centre)
and multiply by how often slt_jax runs each. The CPU limit is a plain 2048² f32 matmul
measured in the same run on the same device; on a GPU, MFU is against the device's dense
TF32 peak.

Accuracy per second: on W0 and a regular model (linear regression 4 -> 4 at its
least-squares optimum, full batch, whose exact expected λ̂ is
``slt_jax.theory.quadratic_oracle_llc``), each library runs 8 chains with the number of
steps doubling until the standard error of λ̂ falls under 5% of λ; reported: the wall time
of the first run that got there (compile included for slt_jax).

    python benchmarks/bench_devinterp.py [--repeats 3] [--json results.json]
    python benchmarks/bench_devinterp.py --quick        # every workload, tiny sizes
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import slt_jax as sj
from slt_jax import refine, theory
from slt_jax._src.estimators import diagnostics
from slt_jax.models import dln

DEVINTERP_VERSION = "1.3.2"
TARGET_RELATIVE_SE = 0.05

# ----------------------------------------------------------------------------------------
# Workloads: one JAX loss and w*, host data, and the settings both libraries get.


@dataclasses.dataclass
class Problem:
    name: str
    label: str
    kind: str  # "dln" | "mlp" | "attention": which torch module mirrors the JAX model
    loss_fn: Callable
    params: Any  # w* (an nnx.State)
    data: tuple[np.ndarray, np.ndarray]
    sampler: dict  # num_chains, num_steps, num_burnin, step_size, localization, nbeta, batch_size
    known_llc: float | None = None
    known_llc_note: str = ""
    checkpoints: list | None = None  # W2: the snapshots (nnx.State each)
    checkpoint_steps: list | None = None

    @property
    def n(self) -> int:
        return len(self.data[0])

    @property
    def num_params(self) -> int:
        return int(sum(np.size(x) for x in jax.tree.leaves(self.params)))


def _settings(n, *, chains, steps, step_size, localization, batch_size, burnin=None):
    return dict(
        num_chains=chains,
        num_steps=steps,
        num_burnin=steps // 4 if burnin is None else burnin,
        step_size=step_size,
        localization=localization,
        nbeta=n / math.log(n),
        batch_size=batch_size,
    )


def problem_w0(quick: bool) -> Problem:
    """Deep linear network 5-4-5 at w* = 0 with a rank-0 truth: Aoyagi's λ = 8."""
    widths, n = (5, 4, 5), (200 if quick else 1000)
    x, y = dln.make_data(np.zeros((widths[-1], widths[0])), n, jax.random.key(0))
    kernels = [np.zeros((a, b), np.float32) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    loss_fn, params = sj.nnx_loss(dln.DeepLinearNetwork.from_kernels(kernels), dln.per_example_loss)
    steps, chains = (60, 2) if quick else (2000, 8)
    lam, _ = theory.dln_learning_coefficient(widths, 0)
    return Problem(
        "W0",
        f"deep linear 5-4-5 at w*=0, n={n}",
        "dln",
        loss_fn,
        params,
        (np.asarray(x), np.asarray(y)),
        _settings(
            n, chains=chains, steps=steps, step_size=1e-3, localization=1.0, batch_size=n // 10
        ),
        known_llc=lam,
        known_llc_note="Aoyagi's λ for widths (5, 4, 5), rank 0 (asymptotic in n)",
    )


def problem_regular(quick: bool) -> Problem:
    """Linear regression 4 -> 4 (16 parameters) at its least-squares optimum, full batch.

    The loss is exactly quadratic in the weights with Hessian ``I ⊗ XᵀX/n``, so the expected
    SGLD estimate at these settings is ``theory.quadratic_oracle_llc`` (regular value d/2 = 8
    shrunk by γ and raised by the finite step)."""
    d, n = 4, (200 if quick else 1000)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=(d, d)) + rng.normal(size=(n, d))).astype(np.float32)
    x64 = x.astype(np.float64)
    kernel = np.linalg.solve(x64.T @ x64, x64.T @ y.astype(np.float64)).astype(np.float32)
    loss_fn, params = sj.nnx_loss(
        dln.DeepLinearNetwork.from_kernels([kernel]), dln.per_example_loss
    )
    chains = 2 if quick else 8
    settings = _settings(
        n, chains=chains, steps=1000, step_size=1e-3, localization=1.0, batch_size=n
    )
    curvatures = np.repeat(np.linalg.eigvalsh(x64.T @ x64 / n), d)
    oracle = theory.quadratic_oracle_llc(
        curvatures,
        nbeta=settings["nbeta"],
        localization=settings["localization"],
        step_size=settings["step_size"],
    )
    return Problem(
        "regular",
        f"linear regression 4->4 at its optimum, n={n}, full batch",
        "dln",
        loss_fn,
        params,
        (x, y),
        settings,
        known_llc=oracle,
        known_llc_note="theory.quadratic_oracle_llc (d/2 = 8 before localization and step bias)",
    )


def _digits_model(hidden: int):
    return sj.examples.MLP((64, hidden, hidden, 10), rngs=nnx.Rngs(0))


def _checkpoint_steps(num_steps: int, count: int) -> list[int]:
    """Exactly ``count`` distinct, roughly log-spaced training steps in [0, num_steps]."""
    for asked in range(count, 4 * count):
        steps = sj.examples.log_spaced_steps(num_steps, asked)
        if len(steps) >= count:
            break
    picks = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
    return [steps[i] for i in picks]


def problem_w1_w2(quick: bool, num_checkpoints: int) -> tuple[Problem, Problem]:
    """The digits MLP trained with Adam; W1 at the end of training, W2 along it."""
    hidden, train_steps = (16, 30) if quick else (128, 500)
    data = sj.examples.load_digits()
    model = _digits_model(hidden)
    steps = _checkpoint_steps(train_steps, num_checkpoints)
    loss_fn, template = sj.nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    with tempfile.TemporaryDirectory() as tmp:
        sj.examples.train_classifier(
            model, data, num_steps=train_steps, checkpoint_dir=tmp, checkpoint_steps=steps
        )
        checkpoint_set = sj.load_checkpoint_set(tmp, like=template, lazy=False)  # tmp goes
    snapshots = [
        jax.tree.map(lambda leaf, k=k: np.asarray(leaf[k]), checkpoint_set.params)
        for k in range(len(checkpoint_set))
    ]
    _, params = sj.nnx_loss(model, optax.softmax_cross_entropy_with_integer_labels)
    n = len(data[0])
    chains, sampling_steps, batch = (2, 40, 64) if quick else (8, 500, 256)
    settings = _settings(
        n, chains=chains, steps=sampling_steps, step_size=1e-4, localization=100.0, batch_size=batch
    )
    arch = f"64-{hidden}-{hidden}-10"
    w1 = Problem("W1", f"MLP {arch} on digits, n={n}", "mlp", loss_fn, params, data, settings)
    w2 = Problem(
        "W2",
        f"MLP {arch} on digits, {len(snapshots)} checkpoints",
        "mlp",
        loss_fn,
        snapshots[-1],
        data,
        settings,
        checkpoints=snapshots,
        checkpoint_steps=[int(s) for s in checkpoint_set.steps],
    )
    return w1, w2


W3_CONFIG = dict(
    vocab_size=768, d_model=512, num_heads=8, d_head=64, context_length=256, num_layers=2
)
W3_QUICK_CONFIG = dict(
    vocab_size=32, d_model=32, num_heads=2, d_head=16, context_length=16, num_layers=2
)


def problem_w3(quick: bool) -> Problem:
    """Attention-only transformer at its initialisation (a throughput workload)."""
    from slt_jax.models import attention

    config = W3_QUICK_CONFIG if quick else W3_CONFIG
    n = 64 if quick else 1024
    model = attention.AttentionOnlyTransformer(**config, rngs=nnx.Rngs(0))
    language = attention.SyntheticLanguage(vocab_size=config["vocab_size"])
    data = language.sample(n, config["context_length"] + 1, seed=0).data()
    loss_fn, params = sj.nnx_loss(model, attention.sequence_loss)
    chains, steps, batch = (2, 20, 8) if quick else (64, 200, 8)
    settings = _settings(
        n, chains=chains, steps=steps, step_size=1e-5, localization=100.0, batch_size=batch
    )
    num = sum(np.size(x) for x in jax.tree.leaves(params))
    label = (
        f"attention-only transformer, {num / 1e6:.2f}M params, context {config['context_length']}"
    )
    return Problem("W3", label, "attention", loss_fn, params, data, settings)


# ----------------------------------------------------------------------------------------
# Measurement helpers.


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the peak resident set (VmHWM) to the current one (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclasses.dataclass
class Run:
    seconds: float
    llc: float
    stderr: float
    peak_rss_mib: float | None = None
    rss_growth_mib: float | None = None
    llc_per_checkpoint: list | None = None
    stderr_per_checkpoint: list | None = None


def _timed(fn):
    reset_ok = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if reset_ok else None
    growth = None if peak is None or before is None else (peak - before) / 1024
    return seconds, out, (None if peak is None else peak / 1024), growth


def _median(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(statistics.median(values)) if values else None


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _pooled(runs: list[Run]) -> tuple[float, float]:
    """Mean of independent estimates and its standard error."""
    llcs = np.array([r.llc for r in runs])
    ses = np.array([r.stderr for r in runs])
    return float(llcs.mean()), float(np.sqrt(np.sum(ses**2)) / len(runs))


def _cost(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def flop_counts(problem: Problem) -> dict:
    """XLA's FLOP counts of the pieces one chain runs (see the module docstring)."""
    s = problem.sampler
    batch = jax.tree.map(lambda a: jnp.asarray(a[: s["batch_size"]]), problem.data)
    data = jax.tree.map(jnp.asarray, problem.data)
    params = jax.tree.map(jnp.asarray, problem.params)

    def sgld_step(w, batch, noise):
        loss, grad = jax.value_and_grad(problem.loss_fn)(w, batch)
        new = jax.tree.map(
            lambda w, g, c, z: (
                w
                - s["step_size"] / 2 * (s["nbeta"] * g + s["localization"] * (w - c))
                + math.sqrt(s["step_size"]) * z
            ),
            w,
            grad,
            params,
            noise,
        )
        return loss, new

    step = _cost(jax.jit(sgld_step).lower(params, batch, params).compile())
    forward = _cost(jax.jit(problem.loss_fn).lower(params, batch).compile())
    full = _cost(jax.jit(problem.loss_fn).lower(params, data).compile())
    draws = s["num_steps"] - s["num_burnin"]
    every = 10  # slt_jax's default diagnostic_every
    # Per chain; the full-data loss at w* is counted once per centre (checkpoint) apart.
    per_chain_sj = s["num_steps"] * step + draws * forward + math.ceil(draws / every) * step
    per_chain_di = s["num_steps"] * step
    return dict(
        sgld_step=step,
        forward=forward,
        full_data_loss=full,
        slt_jax_per_chain=per_chain_sj,
        devinterp_per_chain=per_chain_di,
    )


def matmul_rate(size: int, repeats: int = 5) -> dict:
    """FLOP/s of a plain ``size``² f32 matmul, in JAX and (when present) in torch."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    out = {"size": size, "jax_flops_per_s": 2 * size**3 / statistics.median(times)}
    try:
        import torch
    except ImportError:
        return out
    t = torch.randn(size, size)
    t @ t
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        t @ t
        times.append(time.perf_counter() - start)
    out["torch_flops_per_s"] = 2 * size**3 / statistics.median(times)
    return out


# Dense TF32 tensor-core peaks (FLOP/s), from the vendors' data sheets.
GPU_PEAKS = {"H100": 494.7e12, "H200": 494.7e12, "A100": 156e12, "L4": 60e12, "A10": 62.5e12}


def device_peak() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peak in GPU_PEAKS.items():
        if name in kind:
            return peak * (0.76 if name == "H100" and "PCIe" in kind else 1.0)
    return None


# ----------------------------------------------------------------------------------------
# slt_jax side.


def run_slt_jax(problem: Problem, seed: int, *, cold: bool) -> Run:
    if cold:
        jax.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if problem.checkpoints is None:
            seconds, res, peak, growth = _timed(
                lambda: sj.estimate_llc(
                    problem.loss_fn, problem.params, problem.data, seed=seed, **problem.sampler
                )
            )
            return Run(seconds, res.llc_mean, res.llc_stderr, peak, growth)
        seconds, res, peak, growth = _timed(
            lambda: sj.estimate_llc_checkpoints(
                problem.loss_fn,
                problem.checkpoints,
                problem.data,
                steps=problem.checkpoint_steps,
                seed=seed,
                progress=False,
                **problem.sampler,
            )
        )
    llcs, ses = np.asarray(res.llc_mean), np.asarray(res.llc_stderr)
    return Run(
        seconds,
        float(np.nanmean(llcs)),
        float(np.sqrt(np.nansum(ses**2)) / len(ses)),
        peak,
        growth,
        llcs.tolist(),
        ses.tolist(),
    )


# ----------------------------------------------------------------------------------------
# devinterp side (optional: torch and devinterp are the `compare` extra).


def devinterp_status() -> tuple[bool, str]:
    try:
        import devinterp  # noqa: F401
        import torch  # noqa: F401
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        return False, f"absent ({type(error).__name__}: {error})"
    from importlib.metadata import version

    found = version("devinterp")
    if found != DEVINTERP_VERSION:
        return True, f"devinterp {found} (benchmark written for {DEVINTERP_VERSION})"
    return True, f"devinterp {found}, torch {version('torch')}"


def _flat(params) -> dict[str, np.ndarray]:
    return {
        refine.path_string(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def torch_module(kind: str, params):
    """A torch module computing the same function as the JAX model with weights ``params``."""
    import torch
    from torch import nn

    flat = _flat(params)

    def tensor(name):
        return torch.tensor(np.array(flat[name], np.float32))

    if kind in ("dln", "mlp"):
        num = len({k.split("/")[1] for k in flat})
        layers = []
        for i in range(num):
            kernel = tensor(f"layers/{i}/kernel")
            bias = f"layers/{i}/bias" in flat
            layer = nn.Linear(*kernel.shape, bias=bias)
            with torch.no_grad():
                layer.weight.copy_(kernel.T)
                if bias:
                    layer.bias.copy_(tensor(f"layers/{i}/bias"))
            layers.append(layer)
            if kind == "mlp" and i < num - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)
    if kind == "attention":
        return _TorchAttention(flat)
    raise ValueError(kind)


def _torch_attention_class():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class TorchAttention(nn.Module):
        """Mirror of ``slt_jax.models.attention.AttentionOnlyTransformer`` (layer norms on)."""

        def __init__(self, flat):
            super().__init__()
            p = {k: nn.Parameter(torch.tensor(np.array(v, np.float32))) for k, v in flat.items()}
            self.names = sorted(p)
            self.weights = nn.ParameterDict({k.replace("/", "__"): v for k, v in p.items()})
            self.num_layers = len({k.split("/")[1] for k in flat if k.startswith("layers/")})

        def w(self, name):
            return self.weights[name.replace("/", "__")]

        def norm(self, x, prefix):
            shape = x.shape[-1:]
            return F.layer_norm(x, shape, self.w(f"{prefix}/scale"), self.w(f"{prefix}/bias"), 1e-6)

        def forward(self, tokens):
            length = tokens.shape[-1]
            x = self.w("embed")[tokens] + self.w("pos_embed")[:length]
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            for layer in range(self.num_layers):
                h = self.norm(x, f"layers/{layer}/norm")
                q, k, v = torch.einsum("btm,mchd->cbthd", h, self.w(f"layers/{layer}/qkv"))
                scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
                scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
                z = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)
                x = x + torch.einsum("bthd,hdm->btm", z, self.w(f"layers/{layer}/out"))
            return self.norm(x, "final_norm") @ self.w("unembed")

    return TorchAttention


def _TorchAttention(flat):
    return _torch_attention_class()(flat)


def torch_loss(kind: str):
    """The per-batch mean loss matching the JAX problem's, as devinterp's ``evaluate``."""
    from torch.nn import functional as F

    if kind == "dln":
        return lambda model, batch: 0.5 * ((model(batch[0]) - batch[1]) ** 2).sum(-1).mean()
    if kind == "mlp":
        return lambda model, batch: F.cross_entropy(model(batch[0]), batch[1])
    if kind == "attention":

        def sequence(model, batch):
            logits = model(batch[0])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))

        return sequence
    raise ValueError(kind)


def torch_data(problem: Problem, device):
    import torch

    x, y = problem.data
    as_long = problem.kind in ("mlp", "attention")
    tx = torch.tensor(np.asarray(x), dtype=torch.long if problem.kind == "attention" else None)
    ty = torch.tensor(np.asarray(y), dtype=torch.long if as_long else None)
    return tx.to(device), ty.to(device)


def check_same_function(problem: Problem, device) -> float:
    """Relative difference of the two libraries' losses at w* on the first 64 examples."""
    import torch

    model = torch_module(problem.kind, problem.params).to(device)
    x, y = torch_data(problem, device)
    with torch.no_grad():
        theirs = float(torch_loss(problem.kind)(model, (x[:64], y[:64])))
    batch = jax.tree.map(lambda a: jnp.asarray(a[:64]), problem.data)
    ours = float(problem.loss_fn(problem.params, batch))
    diff = abs(ours - theirs) / max(abs(ours), 1e-6)
    if diff > 1e-4:
        raise AssertionError(f"{problem.name}: torch loss {theirs} != JAX loss {ours}")
    return diff


def run_devinterp(problem: Problem, seed: int, tensors, device, params=None) -> Run:
    import torch
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    s = problem.sampler
    evaluate = torch_loss(problem.kind)
    model = torch_module(problem.kind, problem.params if params is None else params).to(device)
    full_batch = s["batch_size"] == problem.n
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=s["batch_size"],
        shuffle=not full_batch,
        drop_last=True,
    )

    def call():
        with torch.no_grad():
            init = sum(
                float(evaluate(model, (x, y))) * len(x)
                for x, y in zip(tensors[0].split(1024), tensors[1].split(1024), strict=True)
            ) / len(tensors[0])
        out = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            optimizer_kwargs=dict(
                lr=s["step_size"], localization=s["localization"], nbeta=s["nbeta"]
            ),
            num_draws=s["num_steps"] - s["num_burnin"],
            num_chains=s["num_chains"],
            num_burnin_steps=s["num_burnin"],
            init_loss=init,
            seed=seed,
            device=device,
            verbose=False,
        )
        return init, out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, (init, out), peak, growth = _timed(call)
    llc_trace = s["nbeta"] * (np.asarray(out["loss/trace"], np.float64) - init)
    stats = diagnostics.chain_diagnostics(llc_trace)
    return Run(seconds, float(out["llc/mean"]), stats.stderr, peak, growth)


def run_devinterp_checkpoints(problem: Problem, seed: int, tensors, device) -> Run:
    runs = []

    def loop():
        for k, snapshot in enumerate(problem.checkpoints):
            runs.append(run_devinterp(problem, seed * 1000 + k, tensors, device, params=snapshot))

    start = time.perf_counter()
    loop()
    seconds = time.perf_counter() - start
    llcs = np.array([r.llc for r in runs])
    ses = np.array([r.stderr for r in runs])
    return Run(
        seconds,
        float(llcs.mean()),
        float(np.sqrt(np.sum(ses**2)) / len(ses)),
        _max([r.peak_rss_mib for r in runs]),  # each call resets the peak: the largest
        _max([r.rss_growth_mib for r in runs]),
        llcs.tolist(),
        ses.tolist(),
    )


def loader_seconds_per_batch(problem: Problem, tensors, num_batches: int = 100) -> float:
    """Time devinterp's DataLoader alone takes per minibatch (collating examples one by one):
    the fastest of three passes of ``num_batches``, so a lower bound on a loaded machine."""
    from torch.utils.data import DataLoader, TensorDataset

    b = problem.sampler["batch_size"]
    loader = DataLoader(
        TensorDataset(*tensors), batch_size=b, shuffle=b < problem.n, drop_last=True
    )
    best = float("inf")
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while count < num_batches:
            for _ in loader:
                count += 1
                if count == num_batches:
                    break
        best = min(best, (time.perf_counter() - start) / num_batches)
    return best


# ----------------------------------------------------------------------------------------
# One workload, both libraries, several repetitions.


def _chain_steps(problem: Problem) -> int:
    s = problem.sampler
    return s["num_chains"] * s["num_steps"] * (len(problem.checkpoints or [None]))


def bench_workload(problem: Problem, repeats: int, devinterp: str | None, matmul: dict) -> dict:
    """Both libraries on ``problem``; ``devinterp`` is None when it runs, else why not."""
    s = problem.sampler
    entry = {
        "label": problem.label,
        "num_params": problem.num_params,
        "n": problem.n,
        "settings": dict(s),
        "chain_steps": _chain_steps(problem),
    }
    if problem.checkpoints is not None:
        entry["num_checkpoints"] = len(problem.checkpoints)
        entry["checkpoint_steps"] = problem.checkpoint_steps
    if problem.known_llc is not None:
        entry["known_llc"] = problem.known_llc
        entry["known_llc_note"] = problem.known_llc_note
    device = None
    if devinterp is None:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        entry["same_function_relative_difference"] = check_same_function(problem, device)
        tensors = torch_data(problem, device)
        if device.type == "cpu" and jax.default_backend() != "cpu":
            devinterp = "not measured (JAX has an accelerator, torch has no CUDA device)"

    if devinterp is None:  # torch's one-time start-up costs, outside the clock
        tiny = {**problem.sampler, "num_chains": 1, "num_steps": 4, "num_burnin": 2}
        run_devinterp(dataclasses.replace(problem, sampler=tiny), 0, tensors, device)
    cold, warm, theirs = [], [], []
    run = run_devinterp_checkpoints if problem.checkpoints else run_devinterp
    for rep in range(repeats):
        jobs = [
            lambda rep=rep: cold.append(run_slt_jax(problem, rep, cold=True)),
            lambda rep=rep: warm.append(run_slt_jax(problem, 1000 + rep, cold=False)),
        ]
        if devinterp is None:
            job = [lambda rep=rep: theirs.append(run(problem, rep, tensors, device))]
            jobs = jobs + job if rep % 2 == 0 else job + jobs  # alternate who goes first
        for job in jobs:
            job()
        print(
            f"  {problem.name} rep {rep + 1}/{repeats}: slt_jax cold {cold[-1].seconds:.2f} s, "
            f"warm {warm[-1].seconds:.3f} s"
            + (f", devinterp {theirs[-1].seconds:.2f} s" if theirs else ""),
            flush=True,
        )

    flops = flop_counts(problem)
    centres = len(problem.checkpoints or [None])
    items = s["num_chains"] * centres
    warm_s, cold_s = _median([r.seconds for r in warm]), _median([r.seconds for r in cold])
    ours = [*cold, *warm]
    llc, se = _pooled(ours)
    program_flops = items * flops["slt_jax_per_chain"] + centres * flops["full_data_loss"]
    achieved = program_flops / warm_s
    entry["slt_jax"] = {
        "cold_s": cold_s,
        "run_s": warm_s,
        "compile_s": cold_s - warm_s,
        "chain_steps_per_s": entry["chain_steps"] / warm_s,
        "chain_steps_per_s_cold": entry["chain_steps"] / cold_s,
        "peak_rss_mib_cold": _median([r.peak_rss_mib for r in cold]),
        "rss_growth_mib_cold": _median([r.rss_growth_mib for r in cold]),
        "peak_rss_mib": _median([r.peak_rss_mib for r in warm]),
        "rss_growth_mib": _median([r.rss_growth_mib for r in warm]),
        "llc": llc,
        "llc_stderr": se,
        "runs": [dataclasses.asdict(r) for r in ours],
        "flops": program_flops,
        "flops_per_s": achieved,
        "fraction_of_matmul": achieved / matmul["jax_flops_per_s"],
    }
    peak = device_peak() if jax.default_backend() == "gpu" else None
    entry["slt_jax"]["mfu"] = achieved / peak if peak else None
    entry["flop_counts"] = flops
    if devinterp is not None:
        entry["devinterp"] = {"status": devinterp}
        return entry
    di_s = _median([r.seconds for r in theirs])
    di_llc, di_se = _pooled(theirs)
    di_work = items * flops["devinterp_per_chain"] + centres * flops["full_data_loss"]
    di_flops = di_work / di_s
    entry["devinterp"] = {
        "status": "measured",
        "run_s": di_s,
        "chain_steps_per_s": entry["chain_steps"] / di_s,
        "peak_rss_mib": _median([r.peak_rss_mib for r in theirs]),
        "rss_growth_mib": _median([r.rss_growth_mib for r in theirs]),
        "llc": di_llc,
        "llc_stderr": di_se,
        "runs": [dataclasses.asdict(r) for r in theirs],
        "flops_per_s": di_flops,
        "fraction_of_matmul": di_flops / matmul.get("torch_flops_per_s", float("nan")),
        "dataloader_s_per_batch": loader_seconds_per_batch(problem, tensors),
    }
    steps_done = s["num_chains"] * s["num_steps"] * len(problem.checkpoints or [None])
    entry["devinterp"]["dataloader_share"] = (
        entry["devinterp"]["dataloader_s_per_batch"] * steps_done / di_s
    )
    entry["ratio"] = {
        "cold": _median([t.seconds / c.seconds for t, c in zip(theirs, cold, strict=True)]),
        "warm": _median([t.seconds / w.seconds for t, w in zip(theirs, warm, strict=True)]),
        "meaning": "devinterp seconds / slt_jax seconds (slt_jax throughput over "
        "devinterp's), median over repetitions; cold = slt_jax compile included",
    }
    entry["agreement"] = agreement(ours, theirs, llc, se, di_llc, di_se)
    return entry


def agreement(ours, theirs, llc, se, di_llc, di_se) -> dict:
    """|Δλ̂| against 2 combined standard errors (per checkpoint for a checkpoint set)."""
    out = {"difference": llc - di_llc, "combined_stderr": math.hypot(se, di_se)}
    out["z"] = out["difference"] / out["combined_stderr"] if out["combined_stderr"] else 0.0
    out["agree"] = bool(abs(out["z"]) <= 2)
    if ours[0].llc_per_checkpoint is not None:
        a = np.mean([r.llc_per_checkpoint for r in ours], axis=0)
        sa = np.sqrt(np.sum(np.square([r.stderr_per_checkpoint for r in ours]), 0)) / len(ours)
        b = np.mean([r.llc_per_checkpoint for r in theirs], axis=0)
        sb = np.sqrt(np.sum(np.square([r.stderr_per_checkpoint for r in theirs]), 0)) / len(theirs)
        z = (a - b) / np.hypot(sa, sb)
        out["per_checkpoint_z"] = z.tolist()
        out["checkpoints_beyond_2se"] = int(np.sum(np.abs(z) > 2))
        out["max_abs_z"] = float(np.max(np.abs(z)))
        # About 5% of checkpoints fall beyond 2 SE by chance alone.
        expected = 0.0455 * len(z)
        out["agree"] = bool(out["checkpoints_beyond_2se"] <= expected + 2 * math.sqrt(expected))
    return out


# ----------------------------------------------------------------------------------------
# Accuracy per second: the time to a standard error under 5% of the known λ.


def time_to_precision(
    problem: Problem, schedule, devinterp: str | None, estimators=("paired", "plain")
):
    target = TARGET_RELATIVE_SE * problem.known_llc
    out = {"known_llc": problem.known_llc, "target_stderr": target, "schedule": list(schedule)}

    def climb(run_at):
        tries = []
        for steps in schedule:
            run = run_at(steps)
            tries.append(
                {"num_steps": steps, "seconds": run.seconds, "llc": run.llc, "stderr": run.stderr}
            )
            if run.stderr < target:
                return {
                    "reached": True,
                    "seconds": run.seconds,
                    "num_steps": steps,
                    "llc": run.llc,
                    "stderr": run.stderr,
                    "tries": tries,
                }
        return {"reached": False, "tries": tries}

    def variant(steps, **changes):
        sampler = {**problem.sampler, "num_steps": steps, "num_burnin": steps // 4, **changes}
        return dataclasses.replace(problem, sampler=sampler)

    for estimator in estimators:

        def ours(steps, estimator=estimator):
            jax.clear_caches()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = variant(steps)
                seconds, res, _, _ = _timed(
                    lambda: sj.estimate_llc(
                        p.loss_fn, p.params, p.data, seed=7, estimator=estimator, **p.sampler
                    )
                )
            return Run(seconds, res.llc_mean, res.llc_stderr)

        out[f"slt_jax_{estimator}"] = climb(ours)
    if devinterp is None:
        import torch

        device = torch.device("cpu")
        tensors = torch_data(problem, device)
        out["devinterp"] = climb(lambda steps: run_devinterp(variant(steps), 7, tensors, device))
    else:
        out["devinterp"] = {"status": devinterp}
    return out


# ----------------------------------------------------------------------------------------
# Report.


def _fmt(value, spec):
    return (
        "–"
        if value is None or (isinstance(value, float) and not np.isfinite(value))
        else format(value, spec)
    )


def print_table(report: dict) -> None:
    m = report["matmul"]
    print(
        f"\nplain {m['size']}² f32 matmul: JAX {m['jax_flops_per_s'] / 1e9:.1f} GFLOP/s"
        + (
            f", torch {m['torch_flops_per_s'] / 1e9:.1f} GFLOP/s"
            if "torch_flops_per_s" in m
            else ""
        )
    )
    head = (
        f"{'workload':<9}{'library':<11}{'compile s':>10}{'run s':>9}{'cold s':>9}"
        f"{'chain-steps/s':>15}{'peak MiB':>10}{'growth':>8}{'λ̂ ± se':>18}{'GFLOP/s':>9}"
        f"{'% matmul':>9}"
    )
    print(head)
    for name, w in report["workloads"].items():
        if "slt_jax" not in w:
            print(f"{name:<9}{w.get('status', '')}")
            continue
        for lib in ("slt_jax", "devinterp"):
            r = w[lib]
            if lib == "devinterp" and r.get("status") != "measured":
                print(f"{'':<9}{lib:<11}{r.get('status')}")
                continue
            llc = f"{r['llc']:.3f} ± {r['llc_stderr']:.3f}"
            print(
                f"{name if lib == 'slt_jax' else '':<9}{lib:<11}"
                f"{_fmt(r.get('compile_s'), '.2f'):>10}{_fmt(r['run_s'], '.3f'):>9}"
                f"{_fmt(r.get('cold_s'), '.2f'):>9}{_fmt(r['chain_steps_per_s'], ',.0f'):>15}"
                f"{_fmt(r['peak_rss_mib'], '.0f'):>10}{_fmt(r['rss_growth_mib'], '.0f'):>8}"
                f"{llc:>18}{_fmt(r['flops_per_s'] / 1e9, '.2f'):>9}"
                f"{_fmt(100 * r['fraction_of_matmul'], '.1f'):>9}"
            )
        if "ratio" in w:
            a = w["agreement"]
            print(
                f"{'':<9}ratio slt_jax/devinterp throughput: {w['ratio']['cold']:.1f}x compile "
                f"included, {w['ratio']['warm']:.1f}x warm; λ̂ "
                + ("agree" if a["agree"] else "DO NOT AGREE")
                + f" (z = {a['z']:.2f}"
                + (
                    f"; {a['checkpoints_beyond_2se']} of {len(a['per_checkpoint_z'])} "
                    f"checkpoints beyond 2 se, max |z| {a['max_abs_z']:.2f}"
                    if "per_checkpoint_z" in a
                    else ""
                )
                + f"); devinterp's DataLoader: {100 * w['devinterp']['dataloader_share']:.0f}% "
                "of its time"
            )
    if report.get("accuracy_per_second"):
        print("\ntime to a standard error under 5% of λ (steps doubling until reached):")
        for name, acc in report["accuracy_per_second"].items():
            for lib in ("slt_jax_paired", "slt_jax_plain", "devinterp"):
                if lib not in acc:
                    continue
                r = acc[lib]
                if "reached" not in r:
                    text = r.get("status", "")
                elif r["reached"]:
                    text = (
                        f"{r['seconds']:.2f} s at {r['num_steps']} steps "
                        f"(λ̂ = {r['llc']:.3f} ± {r['stderr']:.3f}; λ = {acc['known_llc']:.3f})"
                    )
                else:
                    text = f"not reached by {acc['schedule'][-1]} steps"
                print(f"  {name:<9}{lib:<16}{text}")
    print("\ntargets:")
    for t in report["targets"]:
        print(f"  {t['name']:<48}{t['measured']:<12}{t['status']}")


def targets(report: dict) -> list[dict]:
    w = report["workloads"]
    rows = []

    def ratio_row(name, workload, key, goal):
        entry = w.get(workload, {})
        if "ratio" not in entry:
            rows.append({"name": name, "measured": "–", "status": "not measured"})
            return
        value = entry["ratio"][key]
        rows.append(
            {
                "name": name,
                "measured": f"{value:.1f}x",
                "value": value,
                "status": "met" if value >= goal else "NOT met",
            }
        )

    ratio_row("W0: >= 100x devinterp, compile included", "W0", "cold", 100)
    ratio_row("W1: >= 3x devinterp, compile included", "W1", "cold", 3)
    if "slt_jax" in w.get("W1", {}):
        fraction = w["W1"]["slt_jax"]["fraction_of_matmul"]
        rows.append(
            {
                "name": "W1: >= 50% of the CPU matmul rate",
                "measured": f"{100 * fraction:.1f}%",
                "value": fraction,
                "status": "met" if fraction >= 0.5 else "NOT met",
            }
        )
    ratio_row("W2: >= 3x devinterp's loop, compile included", "W2", "cold", 3)
    mfu = w.get("W3", {}).get("slt_jax", {}).get("mfu")
    rows.append(
        {
            "name": "W3: >= 40% MFU on a GPU",
            "measured": "–" if mfu is None else f"{100 * mfu:.1f}%",
            "status": "not measured" if mfu is None else ("met" if mfu >= 0.4 else "NOT met"),
        }
    )
    return rows


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "blackjax", "numpy", "slt-jax", "torch", "devinterp"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict:
    """The commit measured, and which files of the package differ from it."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        except OSError:
            return ""
        return out.stdout.rstrip("\n")

    changed = git("status", "--short", "--", "slt_jax")
    return {"commit": git("rev-parse", "HEAD").strip(), "slt_jax_changes": changed.splitlines()}


def machine() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every workload at tiny sizes")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--w2-repeats", type=int, default=1, help="W2's repetitions")
    parser.add_argument("--workloads", default="W0,W1,W2,W3")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy runs")
    parser.add_argument("--no-devinterp", action="store_true", help="run slt_jax alone")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for devinterp (default 1, its fastest here; 0: torch's "
        "default)",
    )
    parser.add_argument("--checkpoints", type=int, default=None, help="W2 (default 32)")
    parser.add_argument("--force-w3", action="store_true", help="run W3 on a CPU too")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    w2_repeats = args.w2_repeats
    num_checkpoints = args.checkpoints or (3 if quick else 32)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]

    ok, status = (False, "disabled (--no-devinterp)") if args.no_devinterp else devinterp_status()
    skip = None if ok else status  # why devinterp does not run (None: it runs)
    if ok:
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
    start = time.time()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]),
        "quick": quick,
        "machine": machine(),
        "load_average_start": list(os.getloadavg()),
        "versions": versions(),
        "git": git_state(),
        "devinterp": status,
        "torch_threads": None,
        "repeats": repeats,
        "w2_repeats": w2_repeats,
        "workloads": {},
    }
    if ok:
        import torch

        report["torch_threads"] = torch.get_num_threads()
    print(
        f"slt_jax vs devinterp: {status}; JAX backend {jax.default_backend()}; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    size = 512 if quick else (2048 if jax.default_backend() == "cpu" else 8192)
    report["matmul"] = matmul_rate(size)

    problems = {}
    if "W0" in chosen:
        problems["W0"] = problem_w0(quick)
    if "W1" in chosen or "W2" in chosen:
        w1, w2 = problem_w1_w2(quick, num_checkpoints)
        problems.update({k: v for k, v in (("W1", w1), ("W2", w2)) if k in chosen})
    for name in ("W0", "W1", "W2"):
        if name in problems:
            print(f"{name}: {problems[name].label}", flush=True)
            reps = w2_repeats if name == "W2" else repeats
            report["workloads"][name] = bench_workload(problems[name], reps, skip, report["matmul"])
    if "W3" in chosen:
        if jax.default_backend() in ("gpu", "tpu") or args.force_w3:
            problem = problem_w3(quick)
            print(f"W3: {problem.label}", flush=True)
            report["workloads"]["W3"] = bench_workload(problem, repeats, skip, report["matmul"])
        else:
            report["workloads"]["W3"] = {
                "status": f"not measured (JAX backend is {jax.default_backend()}, W3 needs a "
                "GPU or TPU)"
            }
    if not args.no_accuracy:
        print("accuracy per second", flush=True)
        schedule = (200,) if quick else (250, 500, 1000, 2000, 4000, 8000)
        estimators = ("paired",) if quick else ("paired", "plain")
        report["accuracy_per_second"] = {
            name: time_to_precision(problem, schedule, skip, estimators)
            for name, problem in (
                ("W0", problems.get("W0") or problem_w0(quick)),
                ("regular", problem_regular(quick)),
            )
        }
    report["targets"] = targets(report)
    report["load_average_end"] = list(os.getloadavg())
    report["total_s"] = time.time() - start
    print_table(report)
    print(
        f"\nload average start {report['load_average_start'][0]:.2f}, end "
        f"{report['load_average_end'][0]:.2f}; total {report['total_s']:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    return report


if __name__ == "__main__":
    main()
