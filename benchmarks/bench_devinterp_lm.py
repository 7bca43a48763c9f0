"""slt_jax beside devinterp 2.x on a tiny Hugging Face GPT-NeoX (issue 20, item 8).

One run builds a tiny ``GPTNeoXForCausalLM`` from a config (random weights, no hub), trains
it briefly with Adam on fresh walks of a sparse Markov chain made here (every token has a
few successors, so a model near its minimum is reachable in seconds), saves it with
``save_pretrained`` into a temporary directory, and then estimates its LLC on the same
``n`` token windows (other walks of the chain) with both libraries, each in its own process
(so that each one's peak resident set is its own). Full mode: vocab 512, hidden 64, 2
layers, 4 heads, ``rotary_pct`` 0.25 (165,632 parameters), n = 1024 windows of 33 tokens,
4 chains × 2000 steps (500 burn-in), ε = 3e-5, γ = 1e4, nβ = N/log N, batch 8 (see
``FULL``; ``QUICK`` is a 1-layer model at tiny sizes):

* devinterp 2.x: ``devinterp.slt.llc.llc(model, dataset, {}, lr=..., n_beta=..., ...)`` on
  the model ``from_pretrained`` from that directory, with a ``datasets.Dataset`` of
  ``input_ids`` windows of length ``T + 1`` (torch format);
* slt_jax: ``sj.estimate_llc(loss_fn, params, windows, ...)`` on the same directory: the
  native Flax port (``slt_jax.models.gpt_neox``, read by ``slt_jax.models.hf_lm.load_model``)
  where it exists, else the torch bridge
  (``slt_jax._src.io.torch_bridge.torch_forward``), else a pure-JAX GPT-NeoX forward written
  here from ``config.json`` and ``model.safetensors``; the loss is the library's
  ``next_token_loss`` (``slt_jax._src.lm``) where it exists, else a local one. Which was
  used is in the report (``slt_jax.model_source``, ``slt_jax.loss_source``); before
  anything is timed the JAX loss at ``w*`` is checked against transformers' own loss on the
  same windows (relative difference < 1e-4).

Settings mapping (devinterp 2.0.1's source read line by line; ``slt/sampling.py`` S,
``slt/sampler.py`` R, ``slt/llc.py`` L, ``slt/lm_loss.py`` M, ``optim/sgmcmc.py`` G,
``optim/prior.py`` P, ``slt/config.py`` C; ``X a-b`` = lines a to b of file X):

* Update. ``sample`` builds ``SGMCMC.sgld`` (C 25-28: the default ``sampling_method
  ="sgmcmc_sgld"``; S 266-280 passes ``nbeta=n_beta, lr, localization, noise_level=1``;
  G 579-666, the prior G 645-651). ``SGMCMC.step`` (G 430-559, the update G 478-530):
  ``d = nβ·∇L_B(w) + γ·(w − w₀)`` (identity preconditioner; ``GaussianPrior(localization,
  center="initial")``, P 119-140: ``γ·(w − w₀)``), then ``w ← w − ½·lr·d`` (G 514) and
  ``w ← w + √lr · N(0, 1)`` (G 517-530). That is slt_jax's SGLD ``w ← w − ε/2·(nβ·∇L_B +
  γ(w − w*)) + N(0, ε)``: ``step_size = lr``, ``localization = γ``, ``nbeta = n_beta``, all
  passed as the same numbers. devinterp has no default ``n_beta`` (a required argument,
  L 23-33); slt_jax's default is n/log n over its n examples (windows). We pass both
  ``N / log N`` with ``N = n·T`` the number of predicted tokens (the per-token mean loss
  times N is the data set's log-likelihood); with n/log n of windows (148) and γ = 100 the
  chains only sampled the localizing prior (benchmarks/README.md). (The deprecated
  ``optim/sgld.py`` ``SGLD`` class, lines 196-239, is the same update; ``sample`` does not
  use it.)
* Loss. ``compute_per_token_loss`` (M 41-48) is the ``(batch, T)`` next-token cross
  entropy of ``model(input_ids, return_dict=False, use_cache=False)[0]`` (M 22-23); the
  gradient is of its ``.mean()`` (R 213-214), the mean over batch and token positions.
  slt_jax's ``next_token_loss`` is the mean over windows of each window's mean over its
  ``T`` targets: the same number for unpadded windows.
* Steps. ``num_draws`` + ``num_burnin_steps`` steps (C 67-69, ``num_steps_bw_draws = 1``);
  slt_jax's ``num_steps`` includes its ``num_burnin``. devinterp records the loss of every
  step (burn-in included) at the point the step starts from, before ``optimizer.step()``
  (R 202-220, S 297-319), as slt_jax does.
* Data. Each chain has its own ``DataLoader(shuffle=True, drop_last=True)`` (R 140-146)
  read with ``itertools.cycle`` (R 92-96: the first epoch's order replayed); we pass
  ``match_sampling_input_ids_across_chains=False`` (S 130-133, 331-362) so that each chain
  gets its own order, as slt_jax's independent chains do (with the default ``True`` every
  chain sees the same minibatches and the chains are not independent, which the standard
  error below assumes). slt_jax draws minibatches without replacement per epoch, the last
  ``n mod b`` dropped. n is a multiple of the batch size here.
* ``L_n(w*)``. devinterp's ``init_loss`` is the mean loss over the first
  ``num_init_loss_batches`` minibatches of each chain's loader (S 547-621; default 32, C 48) and
  the mean over chains and positions (L 86). We pass ``num_init_loss_batches = n / b``: one
  epoch, i.e. every window once, which is slt_jax's ``L_n(w*)`` over the whole data.
* Estimate. ``compute_llc`` (L 84-96): ``llc_per_chain = nβ·(mean over every step, burn-in
  included, of the per-step loss − init_loss)`` and ``llc_mean`` their mean. slt_jax's
  ``"plain"`` estimator is ``nβ·(mean over the draws after burn-in of L_B(w_t) −
  L_n(w*))``. Compared here: devinterp's estimate recomputed after burn-in from its own
  ``loss_trace`` (the steps ≥ ``num_burnin_steps``) against slt_jax's ``llc_mean``; and,
  as a second check, devinterp's ``llc_mean`` as returned against slt_jax's estimate over
  every step (its ``burnin_loss_trace`` and ``loss_trace``). slt_jax runs with
  ``estimator="plain"`` and ``diagnostic_every=0``, so that both do one ``value_and_grad``
  per step and the same estimate (slt_jax's default ``"paired"`` estimator has the same
  expectation and less minibatch noise, for one more forward pass per draw).
* Standard error. One formula for both, on each library's own per-draw LLC trace
  ``nβ·(L_B(w_t) − L_n(w*))`` (chains × draws): its sd over sqrt(ESS)
  (``slt_jax._src.estimators.diagnostics.chain_diagnostics``); also reported, the
  between-chain ``sd(llc_per_chain)/sqrt(C)``. slt_jax's two runs (cold, warm; different
  seeds) are pooled. Agreement: ``|Δ| / sqrt(se₁² + se₂²) ≤ 2``.

Timing. slt_jax: in a fresh process, cold = the first ``estimate_llc`` call (trace, compile,
``L_n(w*)``, sampling, summary), warm = the same call again with another seed (compiled
program reused); compile = cold − warm. Then, outside the clock, XLA's memory analysis of
the compiled sampling program (``memory_analysis()``: arguments, outputs, temporaries).
devinterp: one tiny ``llc`` call first (torch's one-time start-up, outside the clock), then
the timed ``llc`` call (init loss, the chains one after another, its Zarr writes and
``compute_llc``), with ``--torch-threads`` torch threads (default 1). chain-steps/s = chains ×
steps / run seconds. Peak memory: the process's peak resident set during the call
(``VmHWM``, reset through ``/proc/self/clear_refs`` before it), its growth over the resident
set before the call, and the process's ``ru_maxrss`` at the end (imports, model and data
included).

    python benchmarks/bench_devinterp_lm.py [--json out.json] [--markdown out.md]
    python benchmarks/bench_devinterp_lm.py --quick      # tiny sizes, under a minute

Without devinterp (or torch, datasets) in the running Python, the devinterp side is
reported as absent and slt_jax runs alone; building the model needs torch and transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

DEVINTERP_VERSION = "2.0.1"


@dataclasses.dataclass(frozen=True)
class Settings:
    # the model (GPTNeoXConfig)
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    rotary_pct: float = 0.25
    seq_len: int = 32  # T: windows hold T + 1 tokens, T targets
    # the corpus and the training
    num_windows: int = 1024  # n
    successors: int = 4  # each token's successors in the Markov chain
    train_steps: int = 600
    train_batch: int = 32
    train_lr: float = 3e-3
    # SGLD, the same for both libraries
    num_chains: int = 4
    num_steps: int = 2000  # burn-in included
    num_burnin: int = 500
    step_size: float = 3e-5  # ε = devinterp's lr
    localization: float = 1e4  # γ
    nbeta: float | None = None  # None: N / log N, N = n·T tokens
    batch_size: int = 8
    seed: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_windows * self.seq_len

    def resolved_nbeta(self) -> float:
        n = self.num_tokens
        return n / math.log(n) if self.nbeta is None else self.nbeta


FULL = Settings()
QUICK = Settings(
    vocab_size=128,
    hidden_size=32,
    num_layers=1,
    intermediate_size=128,
    seq_len=16,
    num_windows=128,
    train_steps=40,
    num_chains=2,
    num_steps=40,
    num_burnin=10,
)


# ----------------------------------------------------------------------------------------
# The corpus and the model (parent process).


@dataclasses.dataclass(frozen=True)
class MarkovChain:
    """A sparse Markov chain over the vocabulary: every token has ``successors`` successors
    with Dirichlet(1) probabilities; walks start uniformly."""

    successors: np.ndarray  # (V, k) token ids
    probs: np.ndarray  # (V, k)

    @classmethod
    def make(cls, s: Settings) -> MarkovChain:
        rng = np.random.default_rng(1234 + s.seed)
        v, k = s.vocab_size, s.successors
        succ = np.stack([rng.choice(v, size=k, replace=False) for _ in range(v)])
        return cls(succ, rng.dirichlet(np.ones(k), size=v))

    def sample(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        v, k = self.successors.shape
        cum = np.cumsum(self.probs, axis=1)
        windows = np.empty((n, length), np.int64)
        windows[:, 0] = rng.integers(0, v, n)
        for t in range(1, length):
            prev = windows[:, t - 1]
            choice = np.minimum((rng.random(n)[:, None] > cum[prev]).sum(axis=1), k - 1)
            windows[:, t] = self.successors[prev, choice]
        return windows

    def floor(self, windows: np.ndarray) -> float:
        """The mean next-token entropy over ``windows``: the loss of the true chain."""
        entropy = -(self.probs * np.log(self.probs)).sum(axis=1)
        return float(entropy[windows[:, :-1]].mean())


def make_corpus(s: Settings) -> tuple[MarkovChain, np.ndarray, float]:
    """``(chain, windows (n, T+1) int32, entropy floor)``: the LLC's n windows, walks of the
    chain. The model is trained on fresh walks of the same chain (not on these windows), so
    it approaches the population minimum without memorising the n windows."""
    chain = MarkovChain.make(s)
    windows = chain.sample(np.random.default_rng(s.seed), s.num_windows, s.seq_len + 1)
    return chain, windows.astype(np.int32), chain.floor(windows)


def hf_config(s: Settings):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        intermediate_size=s.intermediate_size,
        max_position_embeddings=max(64, s.seq_len + 1),
        rotary_pct=s.rotary_pct,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )


def torch_mean_loss(model, ids) -> float:
    """transformers' own next-token loss (mean over windows and positions), no grad."""
    import torch

    with torch.no_grad():
        total = 0.0
        for chunk in torch.as_tensor(ids, dtype=torch.long).split(256):
            logits = model(chunk, return_dict=False, use_cache=False)[0]
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            nll = -logp.gather(-1, chunk[:, 1:, None])[..., 0]
            total += float(nll.mean()) * len(chunk)
    return total / len(ids)


def train_and_save(
    s: Settings, chain: MarkovChain, windows: np.ndarray, out_dir: str, threads: int = 1
) -> dict:
    """Train the tiny GPT-NeoX with Adam on fresh walks of ``chain`` (a new batch every
    step); ``save_pretrained`` to ``out_dir``. Losses are reported on ``windows``."""
    import torch
    from transformers import GPTNeoXForCausalLM

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(s.seed)
    model = GPTNeoXForCausalLM(hf_config(s))
    opt = torch.optim.Adam(model.parameters(), lr=s.train_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 50) * max(0.1, 1 - i / max(1, s.train_steps))
    )
    rng = np.random.default_rng(10_000 + s.seed)
    start = time.perf_counter()
    initial = torch_mean_loss(model, windows)
    curve = []
    model.train()
    for i in range(s.train_steps):
        batch = torch.as_tensor(chain.sample(rng, s.train_batch, s.seq_len + 1))
        logits = model(batch, return_dict=False, use_cache=False)[0]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, s.vocab_size), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i % 100 == 0 or i == s.train_steps - 1:
            curve.append([i, float(loss.detach())])
    model.eval()
    final = torch_mean_loss(model, windows)
    train_s = time.perf_counter() - start
    model.save_pretrained(out_dir)
    probe = windows[:64]
    return {
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "initial_loss": initial,
        "final_loss": final,
        "train_s": train_s,
        "curve": curve,
        "torch_loss_probe": torch_mean_loss(model, probe),
        "torch_loss_full": final,
    }


# ----------------------------------------------------------------------------------------
# Memory helpers (in the worker processes).


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


def _timed(fn) -> tuple[float, object, dict]:
    reset_ok = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if reset_ok else None
    memory = {
        "rss_before_mib": None if before is None else before / 1024,
        "peak_rss_mib": None if peak is None else peak / 1024,
        "rss_growth_mib": None if peak is None or before is None else (peak - before) / 1024,
    }
    return seconds, out, memory


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------------------
# slt_jax worker.


def _local_gpt_neox(config: dict):
    """A pure-JAX ``forward(params, input_ids) -> logits`` of transformers' GPT-NeoX (eval
    mode, no padding): the fallback when slt_jax has no GPT-NeoX of its own."""
    import jax
    import jax.numpy as jnp

    heads, width = config["num_attention_heads"], config["hidden_size"]
    head = width // heads
    rope = config.get("rope_parameters") or {}
    pct = rope.get("partial_rotary_factor", config.get("rotary_pct", 1.0))
    base = rope.get("rope_theta", config.get("rotary_emb_base", 10000.0))
    rot = int(head * pct)
    eps = config.get("layer_norm_eps", 1e-5)
    parallel = config.get("use_parallel_residual", True)
    layers = config["num_hidden_layers"]
    tied = config.get("tie_word_embeddings", False)
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"local GPT-NeoX: hidden_act {config['hidden_act']!r} not supported")
    inv_freq = 1.0 / base ** (np.arange(0, rot, 2, dtype=np.float32) / rot)

    def norm(x, p, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]

    def linear(x, p, name):
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    def rotate(x, cos, sin):
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], -1)
        return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], -1)

    def forward(params, input_ids, attention_mask=None):
        if attention_mask is not None:
            raise ValueError("local GPT-NeoX: no attention mask")
        b, t = input_ids.shape
        x = params["gpt_neox.embed_in.weight"][input_ids]
        freqs = np.arange(t, dtype=np.float32)[:, None] * inv_freq[None]
        emb = np.concatenate([freqs, freqs], -1)
        cos, sin = jnp.asarray(np.cos(emb))[:, None], jnp.asarray(np.sin(emb))[:, None]
        causal = jnp.tril(jnp.ones((t, t), bool))
        for i in range(layers):
            p = {
                k[len(f"gpt_neox.layers.{i}.") :]: v
                for k, v in params.items()
                if k.startswith(f"gpt_neox.layers.{i}.")
            }
            h = norm(x, p, "input_layernorm")
            qkv = linear(h, p, "attention.query_key_value").reshape(b, t, heads, 3 * head)
            q, k, v = jnp.split(qkv, 3, axis=-1)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            scores = jnp.einsum("bthd,bshd->bhts", q, k) * head**-0.5
            scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
            z = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1), v)
            attn = linear(z.reshape(b, t, width), p, "attention.dense")

            def mlp(y, p=p):
                y = jax.nn.gelu(linear(y, p, "mlp.dense_h_to_4h"), approximate=False)
                return linear(y, p, "mlp.dense_4h_to_h")

            if parallel:
                x = x + attn + mlp(norm(x, p, "post_attention_layernorm"))
            else:
                a = x + attn
                x = a + mlp(norm(a, p, "post_attention_layernorm"))
        x = norm(x, params, "gpt_neox.final_layer_norm")
        if tied:
            head_w = params["gpt_neox.embed_in.weight"]
        else:  # transformers 5 writes the output embedding as embed_out, names it lm_head
            head_w = params.get("embed_out.weight", params.get("lm_head.weight"))
        return x @ head_w.T

    return forward


def _local_next_token_loss(forward, params):
    """Mean over windows and positions of the next-token cross entropy (the fallback when
    ``slt_jax._src.lm.next_token_loss`` does not exist)."""
    import jax
    import jax.numpy as jnp

    def loss_fn(params, batch):
        ids = jnp.asarray(batch)
        logits = forward(params, ids[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None].astype(jnp.int32), -1)[..., 0]
        return nll.mean()

    return loss_fn, params


def _native_model(model_dir: str):
    """``(model or forward, params or None, source)`` from slt_jax's own GPT-NeoX port, or
    None where it does not exist (or cannot read this directory)."""
    import importlib

    try:
        importlib.import_module("slt_jax.models.gpt_neox")
    except ImportError:
        return None
    for module_name in ("slt_jax.models.hf_lm", "slt_jax.lm", "slt_jax.models.gpt_neox"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        load = getattr(module, "load_model", None)
        if callable(load):
            out = load(model_dir)
            if isinstance(out, tuple) and len(out) == 2:
                return out[0], out[1], f"{module_name}.load_model"
            return out, None, f"{module_name}.load_model"
    return None


def _bridge_model(model_dir: str):
    """``(forward, params, source)`` through the torch bridge, or None."""
    try:
        from slt_jax._src.io.torch_bridge import torch_forward
    except ImportError:
        return None
    from transformers import GPTNeoXForCausalLM

    module = GPTNeoXForCausalLM.from_pretrained(model_dir)
    out = torch_forward(module, output="logits")
    forward, params = out if isinstance(out, tuple) else (out, None)
    return forward, params, "slt_jax._src.io.torch_bridge.torch_forward"


def _load_for_jax(model_dir: str, choice: str):
    """``(loss_fn, params, model_source, loss_source)``."""
    import jax.numpy as jnp

    try:
        from slt_jax._src.lm import next_token_loss
    except ImportError:
        next_token_loss = None
    loaded = None
    errors = []
    for kind, loader in (("native", _native_model), ("bridge", _bridge_model)):
        if choice not in ("auto", kind):
            continue
        try:
            loaded = loader(model_dir)
        except Exception as error:  # a port still being written, an unreadable directory
            errors.append(f"{kind}: {type(error).__name__}: {error}")
            loaded = None
        if loaded is not None:
            break
    if loaded is None:
        if choice not in ("auto", "local"):
            raise RuntimeError(f"--jax-model {choice}: not available ({'; '.join(errors)})")
        from safetensors.numpy import load_file

        config = json.loads(pathlib.Path(model_dir, "config.json").read_text())
        tensors = load_file(str(pathlib.Path(model_dir, "model.safetensors")))
        params = {
            k: jnp.asarray(v, jnp.float32)
            for k, v in tensors.items()
            if "rotary_emb" not in k and not k.endswith(("attention.bias", "masked_bias"))
        }
        source = "local pure-JAX GPT-NeoX (this script)" + (
            f"; library ports not usable: {'; '.join(errors)}" if errors else ""
        )
        loaded = (_local_gpt_neox(config), params, source)
    model, params, model_source = loaded
    if next_token_loss is not None:
        vocab = json.loads(pathlib.Path(model_dir, "config.json").read_text())["vocab_size"]
        if params is None:
            loss_fn, params = next_token_loss(model, vocab_size=vocab)
        else:
            loss_fn, params = next_token_loss(model, params, vocab_size=vocab)
        loss_source = "slt_jax._src.lm.next_token_loss"
    else:
        if params is None:
            from flax import nnx

            graphdef, params, rest = nnx.split(model, nnx.Param, ...)

            def model(p, ids, graphdef=graphdef, rest=rest):
                return nnx.merge(graphdef, p, rest)(ids)

        loss_fn, params = _local_next_token_loss(model, params)
        loss_source = "local next-token loss (this script; slt_jax._src.lm absent)"
    return loss_fn, params, model_source, loss_source


def worker_slt_jax(work: pathlib.Path, opts: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import slt_jax as sj

    s = Settings(**opts["settings"])
    windows = np.load(work / "windows.npy")
    loss_fn, params, model_source, loss_source = _load_for_jax(
        str(work / "model"), opts["jax_model"]
    )
    # One compiled program (run op by op, the loss compiled each of its ~80 operations apart;
    # the cold call below starts from jax.clear_caches() either way).
    probe = float(jax.jit(loss_fn)(params, jnp.asarray(windows[:64])))
    expected = opts["torch_loss_probe"]
    same = abs(probe - expected) / max(abs(expected), 1e-6)
    if same > 1e-4:
        raise AssertionError(f"JAX loss {probe} != transformers' loss {expected} at w*")
    sampler = dict(
        num_chains=s.num_chains,
        num_steps=s.num_steps,
        num_burnin=s.num_burnin,
        step_size=s.step_size,
        localization=s.localization,
        nbeta=s.resolved_nbeta(),
        batch_size=s.batch_size,
        estimator="plain",
        diagnostic_every=0,
    )
    data = windows  # host array; slt_jax moves it to the device once
    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, seed in (("cold", s.seed), ("warm", s.seed + 1)):
            if label == "cold":
                jax.clear_caches()
            seconds, res, memory = _timed(
                lambda seed=seed: sj.estimate_llc(loss_fn, params, data, seed=seed, **sampler)
            )
            runs.append(
                {
                    "label": label,
                    "seed": seed,
                    "seconds": seconds,
                    **memory,
                    "llc_mean": float(res.llc_mean),
                    "llc_stderr_library": float(res.llc_stderr),
                    "llc_per_chain": np.asarray(res.llc_per_chain).tolist(),
                    "init_loss": float(res.init_loss),
                    "loss_trace": np.asarray(res.loss_trace).tolist(),
                    "burnin_loss_trace": np.asarray(res.burnin_loss_trace).tolist(),
                    "diverged": np.asarray(res.diverged).tolist(),
                    "rhat": float(res.rhat),
                }
            )
            print(f"  slt_jax {label}: {seconds:.2f} s, λ̂ {res.llc_mean:.3f}", flush=True)
    out = {
        "status": "measured",
        "model_source": model_source,
        "loss_source": loss_source,
        "loss_at_w_star_probe": probe,
        "same_function_relative_difference": same,
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "runs": runs,
        "ru_maxrss_mib_after_runs": _maxrss_mib(),
        "xla_memory": (
            xla_memory(loss_fn, params, data, sampler)
            if opts["xla_memory"]
            else {"status": "not measured (--no-xla-memory; off in --quick: one more compile)"}
        ),
        "jax_backend": jax.default_backend(),
    }
    out["ru_maxrss_mib"] = _maxrss_mib()
    return out


def xla_memory(loss_fn, params, data, sampler) -> dict:
    """XLA's memory analysis of the sampling program ``estimate_llc`` compiles (the same
    steps as ``slt_jax._src.jobs.llc.estimate_llc``; private API, so best effort)."""
    try:
        import jax
        import jax.numpy as jnp

        import slt_jax as sj
        from slt_jax._src.engine import programs
        from slt_jax._src.jobs import orchestrate

        config = sj.LLCConfig(seed=0, **sampler)
        config, key = orchestrate.prepare(loss_fn, params, data, config)
        one = jax.tree.map(lambda x: jnp.asarray(x)[None], params)
        group = orchestrate.Group(config, 0, jax.random.split(key, config.num_chains))
        mesh = programs.resolve_mesh(None, None)
        stats = orchestrate.lower(loss_fn, one, data, [group], mesh=mesh).compile()
        stats = stats.memory_analysis()
        if stats is None:
            return {"status": "not available (memory_analysis() returned None)"}
        fields = ("argument", "output", "temp", "alias", "generated_code")
        out = {f"{f}_mib": getattr(stats, f"{f}_size_in_bytes", 0) / 2**20 for f in fields}
        out["total_mib"] = (
            out["argument_mib"] + out["output_mib"] + out["temp_mib"] - out["alias_mib"]
        )
        out["status"] = "measured"
        return out
    except Exception as error:
        return {"status": f"not available ({type(error).__name__}: {error})"}


# ----------------------------------------------------------------------------------------
# devinterp worker.


def devinterp_status() -> tuple[bool, str]:
    missing = [m for m in ("torch", "datasets", "devinterp") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"absent (not installed: {', '.join(missing)})"
    from importlib.metadata import version

    found = version("devinterp")
    if not found.startswith("2."):
        return False, f"absent (devinterp {found} installed; this benchmark needs 2.x)"
    note = "" if found == DEVINTERP_VERSION else f" (written for {DEVINTERP_VERSION})"
    return True, f"devinterp {found}{note}, torch {version('torch')}"


def worker_devinterp(work: pathlib.Path, opts: dict) -> dict:
    import torch
    from datasets import Dataset
    from devinterp.slt.llc import llc
    from transformers import GPTNeoXForCausalLM

    if opts["torch_threads"]:
        torch.set_num_threads(opts["torch_threads"])
    s = Settings(**opts["settings"])
    windows = np.load(work / "windows.npy").astype(np.int64)
    model = GPTNeoXForCausalLM.from_pretrained(str(work / "model"))
    dataset = Dataset.from_dict({"input_ids": windows}).with_format("torch")
    nbeta = s.resolved_nbeta()
    common = dict(
        lr=s.step_size,
        n_beta=nbeta,
        localization=s.localization,
        batch_size=s.batch_size,
        num_init_loss_batches=s.num_windows // s.batch_size,
        match_sampling_input_ids_across_chains=False,
        device="cpu",
    )

    def call(path, chains, draws, burnin, seed, init_batches=None):
        kwargs = dict(common)
        if init_batches is not None:
            kwargs["num_init_loss_batches"] = init_batches
        out = llc(
            model,
            dataset,
            {},
            num_chains=chains,
            num_draws=draws,
            num_burnin_steps=burnin,
            init_seed=seed,
            output_path=str(path),
            **kwargs,
        )
        return out.load()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call(work / "devinterp_warmup.zarr", 1, 2, 1, 999, init_batches=1)
        seconds, ds, memory = _timed(
            lambda: call(
                work / "devinterp_run.zarr",
                s.num_chains,
                s.num_steps - s.num_burnin,
                s.num_burnin,
                100 + s.seed,
            )
        )
    trace = np.asarray(ds["loss_trace"].values, np.float64)  # (chain, step), burn-in included
    print(f"  devinterp: {seconds:.2f} s, llc_mean {float(ds['llc_mean']):.3f}", flush=True)
    return {
        "status": "measured",
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        **memory,
        "llc_mean_reported": float(ds["llc_mean"]),
        "llc_std_reported": float(ds["llc_std"]),
        "llc_per_chain_reported": np.asarray(ds["llc_per_chain"].values).tolist(),
        "init_loss": float(ds["init_loss"]),
        "loss_trace": trace.tolist(),
        "ru_maxrss_mib": _maxrss_mib(),
    }


# ----------------------------------------------------------------------------------------
# Parent: run the workers, compare.


def run_worker(kind: str, work: pathlib.Path, opts: dict, timeout: float) -> dict:
    (work / f"{kind}_opts.json").write_text(json.dumps(opts))
    out_json = work / f"{kind}_out.json"
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    wall = time.perf_counter() - start
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0 or not out_json.exists():
        tail = (proc.stdout[-2000:] + proc.stderr[-4000:]).strip()
        return {"status": f"failed (exit {proc.returncode})", "error": tail, "process_s": wall}
    out = json.loads(out_json.read_text())
    out["process_s"] = wall
    return out


def _diag(trace: np.ndarray) -> dict:
    from slt_jax._src.estimators import diagnostics

    d = diagnostics.chain_diagnostics(trace)
    per_chain = trace.mean(axis=1)
    c = len(per_chain)
    return {
        "llc": float(trace.mean()),
        "stderr": float(d.stderr),
        "ess": float(d.ess),
        "rhat": float(d.rhat),
        "llc_per_chain": per_chain.tolist(),
        "between_chain_stderr": float(per_chain.std(ddof=1) / math.sqrt(c)) if c > 1 else None,
    }


def _pool(parts: list[dict]) -> dict:
    """Mean of independent estimates and its standard error."""
    llcs = np.array([p["llc"] for p in parts])
    ses = np.array([p["stderr"] for p in parts])
    return {"llc": float(llcs.mean()), "stderr": float(np.sqrt(np.sum(ses**2)) / len(parts))}


def _pooled_se(ses: list) -> float | None:
    if any(se is None for se in ses):
        return None
    return float(np.sqrt(np.sum(np.square(ses))) / len(ses))


def _stationarity(trace: np.ndarray) -> float:
    from slt_jax._src.estimators import diagnostics

    return float(diagnostics.stationarity(trace).z)


def health(trace: np.ndarray, losses: np.ndarray, init_loss: float) -> dict:
    """Chains are healthy when every loss is finite, the LLC trace is positive on average,
    its halves agree (stationarity |z| < 3) and R-hat is under 1.1."""
    finite = bool(np.all(np.isfinite(losses)))
    d = _diag(trace) if finite else {"llc": float("nan"), "rhat": float("nan")}
    z = _stationarity(trace) if finite else float("nan")
    out = {
        "finite": finite,
        "max_loss_over_init": float(np.nanmax(losses) - init_loss) if losses.size else None,
        "stationarity_z": z,
        "rhat": d["rhat"],
    }
    out["healthy"] = bool(
        finite and d["llc"] > 0 and np.isfinite(z) and abs(z) < 3 and d["rhat"] < 1.1
    )
    return out


def summarize_slt_jax(raw: dict, nbeta: float, burnin: int) -> dict:
    parts, parts_all = [], []
    losses = []
    for run in raw["runs"]:
        loss = np.asarray(run["loss_trace"], np.float64)
        burn = np.asarray(run["burnin_loss_trace"], np.float64).reshape(len(loss), -1)
        losses.append(np.concatenate([burn, loss], axis=1))
        parts.append(_diag(nbeta * (loss - run["init_loss"])))
        parts_all.append(_diag(nbeta * (losses[-1] - run["init_loss"])))
    cold, warm = raw["runs"]
    trace_all = nbeta * (np.concatenate([lo[:, burnin:] for lo in losses]) - cold["init_loss"])
    out = {
        "status": "measured",
        "model_source": raw["model_source"],
        "loss_source": raw["loss_source"],
        "same_function_relative_difference": raw["same_function_relative_difference"],
        "init_loss": cold["init_loss"],
        **_pool(parts),
        "llc_all_steps": _pool(parts_all),
        "runs": [
            {**p, "llc_library": r["llc_mean"], "llc_stderr_library": r["llc_stderr_library"]}
            for p, r in zip(parts, raw["runs"], strict=True)
        ],
        "between_chain_stderr_per_run": [p["between_chain_stderr"] for p in parts],
        "between_chain_stderr": _pooled_se([p["between_chain_stderr"] for p in parts]),
        "health": health(trace_all, np.concatenate(losses), cold["init_loss"]),
        "cold_s": cold["seconds"],
        "run_s": warm["seconds"],
        "compile_s": cold["seconds"] - warm["seconds"],
        "peak_rss_mib_cold": cold["peak_rss_mib"],
        "rss_growth_mib_cold": cold["rss_growth_mib"],
        "peak_rss_mib": warm["peak_rss_mib"],
        "rss_growth_mib": warm["rss_growth_mib"],
        "rss_before_mib": cold["rss_before_mib"],
        "ru_maxrss_mib": raw["ru_maxrss_mib_after_runs"],
        "xla_memory": raw["xla_memory"],
        "process_s": raw["process_s"],
    }
    return out


def summarize_devinterp(raw: dict, nbeta: float, burnin: int) -> dict:
    losses = np.asarray(raw["loss_trace"], np.float64)
    trace = nbeta * (losses[:, burnin:] - raw["init_loss"])
    d = _diag(trace)
    return {
        "status": "measured",
        "torch_threads": raw["torch_threads"],
        "init_loss": raw["init_loss"],
        "llc": d["llc"],
        "stderr": d["stderr"],
        "ess": d["ess"],
        "rhat": d["rhat"],
        "llc_per_chain": d["llc_per_chain"],
        "between_chain_stderr": d["between_chain_stderr"],
        "llc_reported": raw["llc_mean_reported"],
        "llc_reported_stderr": _diag(nbeta * (losses - raw["init_loss"]))["stderr"],
        "llc_std_reported": raw["llc_std_reported"],
        "health": health(trace, losses, raw["init_loss"]),
        "run_s": raw["seconds"],
        "peak_rss_mib": raw["peak_rss_mib"],
        "rss_growth_mib": raw["rss_growth_mib"],
        "rss_before_mib": raw["rss_before_mib"],
        "ru_maxrss_mib": raw["ru_maxrss_mib"],
        "process_s": raw["process_s"],
    }


def agreement(a: float, sa: float, b: float, sb: float) -> dict:
    combined = math.hypot(sa, sb)
    z = (a - b) / combined if combined > 0 else float("nan")
    return {
        "difference": a - b,
        "combined_stderr": combined,
        "ratio": abs(z),
        "agree": bool(abs(z) <= 2),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "numpy",
        "slt-jax",
        "torch",
        "transformers",
        "datasets",
        "devinterp",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return ""


def _fmt(value, spec="") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return format(value, spec)


def markdown(report: dict) -> str:
    s = report["settings"]
    ours, theirs = report["slt_jax"], report["devinterp"]
    lines = [
        f"tiny GPT-NeoX: {report['model']['num_params']:,} parameters, n = {s['num_windows']} "
        f"windows of T + 1 = {s['seq_len'] + 1} tokens; {s['num_chains']} chains × "
        f"{s['num_steps']} steps ({s['num_burnin']} burn-in), ε = {s['step_size']:g}, "
        f"γ = {s['localization']:g}, nβ = {report['nbeta']:.2f}, batch {s['batch_size']}",
        "",
        "| library | compile s | run s (cold s) | chain-steps/s | peak RSS MiB (growth) | "
        "process max RSS MiB | λ̂ ± se (after burn-in) | λ̂ ± se (every step) | healthy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if ours.get("status") == "measured":
        xm = ours["xla_memory"]
        xla = f"; XLA program {xm['total_mib']:.1f} MiB" if xm.get("status") == "measured" else ""
        lines.append(
            f"| slt_jax | {_fmt(ours['compile_s'], '.2f')} | {ours['run_s']:.2f} "
            f"({ours['cold_s']:.2f}) | {ours['chain_steps_per_s']:,.0f} "
            f"({ours['chain_steps_per_s_cold']:,.0f} cold) | "
            f"{_fmt(ours['peak_rss_mib'], '.0f')} ({_fmt(ours['rss_growth_mib'], '.0f')} warm, "
            f"{_fmt(ours['rss_growth_mib_cold'], '.0f')} cold{xla}) | "
            f"{_fmt(ours['ru_maxrss_mib'], '.0f')} | "
            f"{ours['llc']:.3f} ± {ours['stderr']:.3f} | "
            f"{ours['llc_all_steps']['llc']:.3f} ± {ours['llc_all_steps']['stderr']:.3f} | "
            f"{'yes' if ours['health']['healthy'] else 'NO'} |"
        )
    else:
        lines.append(f"| slt_jax | {ours.get('status')} | | | | | | | |")
    if theirs.get("status") == "measured":
        lines.append(
            f"| devinterp | – | {theirs['run_s']:.2f} | {theirs['chain_steps_per_s']:,.0f} | "
            f"{_fmt(theirs['peak_rss_mib'], '.0f')} ({_fmt(theirs['rss_growth_mib'], '.0f')}) | "
            f"{_fmt(theirs['ru_maxrss_mib'], '.0f')} | "
            f"{theirs['llc']:.3f} ± {theirs['stderr']:.3f} | "
            f"{theirs['llc_reported']:.3f} ± {theirs['llc_reported_stderr']:.3f} (its llc_mean) | "
            f"{'yes' if theirs['health']['healthy'] else 'NO'} |"
        )
    else:
        lines.append(f"| devinterp | {theirs.get('status')} | | | | | | | |")
    if "agreement" in report:
        a, b = report["agreement"], report["agreement_all_steps"]
        c = report.get("agreement_between_chains")
        verdict = lambda x: "agree" if x["agree"] else "DO NOT AGREE"  # noqa: E731
        lines += [
            "",
            f"|Δλ̂| / sqrt(se₁² + se₂²): {a['ratio']:.2f} after burn-in ({verdict(a)}), "
            f"{b['ratio']:.2f} over every step ({verdict(b)})"
            + (f", {c['ratio']:.2f} with between-chain se ({verdict(c)})" if c else "")
            + "; slt_jax / devinterp "
            f"chain-steps/s: {report['speedup']['warm']:.1f}× warm, "
            f"{report['speedup']['cold']:.1f}× compile included.",
        ]
    return "\n".join(lines)


def bench(args) -> dict:
    s = QUICK if args.quick else FULL
    overrides = {
        k: getattr(args, k)
        for k in (
            "num_chains",
            "num_steps",
            "num_burnin",
            "step_size",
            "localization",
            "nbeta",
            "batch_size",
            "train_steps",
            "num_windows",
            "seed",
        )
        if getattr(args, k) is not None
    }
    s = dataclasses.replace(s, **overrides)
    if s.num_windows % s.batch_size:
        raise SystemExit("num_windows must be a multiple of batch_size (one epoch = L_n(w*))")
    ok, status = (False, "disabled (--no-devinterp)") if args.no_devinterp else devinterp_status()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "quick": bool(args.quick),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "load_average_start": list(os.getloadavg()),
        "versions": versions(),
        "commit": git_commit(),
        "settings": dataclasses.asdict(s),
        "nbeta": s.resolved_nbeta(),
        "devinterp_status": status,
    }
    print(f"bench_devinterp_lm: devinterp {status}; load {os.getloadavg()[0]:.2f}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_devinterp_lm_") as tmp:
        work = pathlib.Path(tmp)
        chain, windows, floor = make_corpus(s)
        np.save(work / "windows.npy", windows)
        trained = train_and_save(s, chain, windows, str(work / "model"), args.torch_threads)
        report["model"] = {**trained, "entropy_floor": floor}
        print(
            f"model: {trained['num_params']:,} params, loss {trained['initial_loss']:.3f} -> "
            f"{trained['final_loss']:.3f} (floor {floor:.3f}) in {trained['train_s']:.1f} s",
            flush=True,
        )
        opts = {
            "settings": dataclasses.asdict(s),
            "torch_loss_probe": trained["torch_loss_probe"],
            "jax_model": args.jax_model,
            "torch_threads": args.torch_threads,
            "xla_memory": not (args.no_xla_memory or (args.quick and not args.xla_memory)),
        }
        nbeta = s.resolved_nbeta()
        chain_steps = s.num_chains * s.num_steps
        order = ["slt_jax", "devinterp"] if not args.devinterp_first else ["devinterp", "slt_jax"]
        raw = {}
        for kind in order:
            if kind == "devinterp" and not ok:
                continue
            print(f"{kind} worker", flush=True)
            raw[kind] = run_worker(kind, work, opts, args.timeout)
    ours_raw = raw["slt_jax"]
    if ours_raw.get("status") != "measured":
        report["slt_jax"] = ours_raw
    else:
        ours = summarize_slt_jax(ours_raw, nbeta, s.num_burnin)
        ours["chain_steps_per_s"] = chain_steps / ours["run_s"]
        ours["chain_steps_per_s_cold"] = chain_steps / ours["cold_s"]
        report["slt_jax"] = ours
    if not ok:
        report["devinterp"] = {"status": status}
    elif raw["devinterp"].get("status") != "measured":
        report["devinterp"] = raw["devinterp"]
    else:
        theirs = summarize_devinterp(raw["devinterp"], nbeta, s.num_burnin)
        theirs["chain_steps_per_s"] = chain_steps / theirs["run_s"]
        report["devinterp"] = theirs
        if report["slt_jax"].get("status") == "measured":
            ours = report["slt_jax"]
            report["agreement"] = agreement(
                ours["llc"], ours["stderr"], theirs["llc"], theirs["stderr"]
            )
            report["agreement_all_steps"] = agreement(
                ours["llc_all_steps"]["llc"],
                ours["llc_all_steps"]["stderr"],
                theirs["llc_reported"],
                theirs["llc_reported_stderr"],
            )
            if ours["between_chain_stderr"] and theirs["between_chain_stderr"]:
                report["agreement_between_chains"] = agreement(
                    ours["llc"],
                    ours["between_chain_stderr"],
                    theirs["llc"],
                    theirs["between_chain_stderr"],
                )
            report["init_loss_difference"] = ours["init_loss"] - theirs["init_loss"]
            report["speedup"] = {
                "warm": theirs["run_s"] / ours["run_s"],
                "cold": theirs["run_s"] / ours["cold_s"],
                "meaning": "devinterp seconds / slt_jax seconds (slt_jax's chain-steps/s over "
                "devinterp's); cold = slt_jax compile included",
            }
    report["load_average_end"] = list(os.getloadavg())
    report["total_s"] = time.perf_counter() - start
    report["markdown"] = markdown(report)
    print()
    print(report["markdown"])
    print(
        f"\nload {report['load_average_start'][0]:.2f} -> {report['load_average_end'][0]:.2f}; "
        f"total {report['total_s']:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report["markdown"] + "\n")
    return report


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (about a minute)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", default=None, help="write the Markdown table here")
    parser.add_argument("--no-devinterp", action="store_true", help="run slt_jax alone")
    parser.add_argument("--devinterp-first", action="store_true", help="run devinterp first")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads for devinterp (default 1; 0: torch's default)",
    )
    parser.add_argument(
        "--jax-model",
        default="auto",
        choices=("auto", "native", "bridge", "local"),
        help="slt_jax's model: its native port, the torch bridge, or the "
        "local JAX forward (auto: the first that works)",
    )
    parser.add_argument(
        "--xla-memory",
        action="store_true",
        help="XLA's memory analysis of the program (default on; off in --quick)",
    )
    parser.add_argument("--no-xla-memory", action="store_true", help="skip it")
    parser.add_argument("--timeout", type=float, default=1800, help="per worker, seconds")
    for name, kind in (
        ("num-chains", int),
        ("num-steps", int),
        ("num-burnin", int),
        ("step-size", float),
        ("localization", float),
        ("nbeta", float),
        ("batch-size", int),
        ("train-steps", int),
        ("num-windows", int),
        ("seed", int),
    ):
        parser.add_argument(f"--{name}", type=kind, default=None)
    parser.add_argument("--worker", choices=("slt_jax", "devinterp"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work = pathlib.Path(args.workdir)
        opts = json.loads((work / f"{args.worker}_opts.json").read_text())
        fn = worker_slt_jax if args.worker == "slt_jax" else worker_devinterp
        out = fn(work, opts)
        (work / f"{args.worker}_out.json").write_text(json.dumps(out, default=float))
        return out
    return bench(args)


if __name__ == "__main__":
    main()
