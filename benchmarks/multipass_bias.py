"""Which λ̂ is right when the chains pass over the data many times? (issue 27, item 6)

On 1024 token windows that the chains pass over ~16 times, slt_jax's λ̂ sat ~3 % below
devinterp 2.0.1's (same model, settings and ``L_n(w*)``); on windows seen once they agree.
The two libraries differ in one thing there: the order of the minibatches. slt_jax draws a
fresh permutation every epoch ("reshuffle"); devinterp 2.0.1 reads its ``DataLoader``
through ``itertools.cycle``, which replays the first epoch's order ("replay": the same
minibatches in the same order every epoch).

Both estimators read ``L_B(w_t)``, the loss of the minibatch the step draws, at the point
the step starts from. That is an unbiased estimate of ``L_n(w_t)`` only when the choice of
``B`` does not depend on the chain's past. In a second and later epoch it does: without
replacement, the examples of ``B_t`` are those the chain has not stepped on for longest in
this epoch, so their loss sits above the data set's mean, and by more when an example was
last used a fixed epoch ago (replay). The reference that has no such bias is ``L_n(w_t)``
itself (the whole data set's loss at the draw), or the loss on a minibatch drawn
independently of the chain.

Two parts, each reporting λ̂ from the step's minibatch loss, from ``L_n(w_t)`` at the draws,
and (regression only) from an independent minibatch:

* ``--part regression``: a self-contained float64 JAX SGLD on linear regression (d
  parameters, n examples, batch b), where the posterior's answer is exact:
  ``λ = ½ tr(nβH (nβH + γI)⁻¹)``, ``H`` the empirical second moment of the inputs.
  Schemes: full batch, independent minibatches every step ("iid"), reshuffle, replay.
* ``--part lm``: slt_jax on the tiny GPT-NeoX of ``bench_devinterp_lm.py`` (trained briefly,
  random init, no hub), its own order (reshuffle) against devinterp's order (replay,
  emulated by replacing the minibatch index function before tracing), with the whole data
  set observed every ``--observe-every`` draws (``estimate_refined_llc(observables=...)``).

Run: ``python benchmarks/multipass_bias.py --part regression`` (about 4 minutes on 2 cores),
``python benchmarks/multipass_bias.py --part lm`` (about 10), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import tempfile
import time

import numpy as np


def regression(
    d: int, n: int, b: int, eps: float, steps: int, chains: int, seed: int, schemes
) -> dict:
    """Float64 SGLD on linear regression under each batch scheme; λ̂ three ways."""
    import jax
    import jax.numpy as jnp

    from slt_jax.theory import quadratic_selection_bias

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + rng.normal(size=n)
    x, y = jnp.asarray(x), jnp.asarray(y)
    w_star = jnp.linalg.lstsq(x, y)[0]
    nbeta, gamma = n / math.log(n), 1.0
    hessian = nbeta * (x.T @ x) / n
    exact = float(0.5 * jnp.trace(hessian @ jnp.linalg.inv(hessian + gamma * jnp.eye(d))))
    per_epoch = n // b
    grads = -np.asarray(y - x @ w_star)[:, None] * np.asarray(x)
    known = dict(nbeta=nbeta, localization=gamma, step_size=eps, num_examples=n, batch_size=b)
    bias = {"full": 0.0, "iid": 0.0}
    for order in ("reshuffle", "replay"):
        bias[order] = quadratic_selection_bias(
            np.asarray(x.T @ x / n), grads.T @ grads / n, order=order, **known
        )

    def loss(w, idx):
        r = y[idx] - x[idx] @ w
        return 0.5 * jnp.mean(r**2)

    def full_loss(w):
        return 0.5 * jnp.mean((y - x @ w) ** 2)

    def chain(key, scheme):
        k_order, k_noise, k_indep = jax.random.split(key, 3)

        def step(w, t):
            epoch, slot = jnp.divmod(t, per_epoch)
            if scheme == "full":
                idx = jnp.arange(n)
            elif scheme == "iid":
                idx = jax.random.choice(jax.random.fold_in(k_order, t), n, (b,), replace=False)
            else:
                order_key = jax.random.fold_in(k_order, epoch if scheme == "reshuffle" else 0)
                perm = jax.random.permutation(order_key, n)
                idx = jax.lax.dynamic_slice(perm, (slot * b,), (b,))
            value, grad = jax.value_and_grad(loss)(w, idx)
            other = jax.random.choice(jax.random.fold_in(k_indep, t), n, (b,), replace=False)
            noise = jax.random.normal(jax.random.fold_in(k_noise, t), (d,))
            w_next = w - eps / 2 * (nbeta * grad + gamma * (w - w_star)) + math.sqrt(eps) * noise
            return w_next, (value, full_loss(w), loss(w, other))

        return jax.lax.scan(step, w_star, jnp.arange(steps))[1]

    init = float(full_loss(w_star))
    burn = steps // 5
    rows = []
    for scheme in schemes:
        start = time.perf_counter()
        traces = jax.jit(jax.vmap(lambda k, s=scheme: chain(k, s)))(
            jax.random.split(jax.random.key(seed + 1), chains)
        )
        row = {"scheme": scheme, "seconds": time.perf_counter() - start}
        row["predicted_selection_bias"] = float(bias[scheme])
        for name, trace in zip(
            ("step_batch", "full_loss", "independent_batch"), traces, strict=True
        ):
            per_chain = nbeta * (np.asarray(trace)[:, burn:].mean(axis=1) - init)
            row[name] = float(per_chain.mean())
            row[name + "_se"] = float(per_chain.std(ddof=1) / math.sqrt(chains))
        rows.append(row)
        print(
            f"  {scheme:9s} step batch {row['step_batch']:.3f} ± {row['step_batch_se']:.3f}"
            f" | L_n at draws {row['full_loss']:.3f} ± {row['full_loss_se']:.3f}"
            f" | independent batch {row['independent_batch']:.3f}"
            f" ± {row['independent_batch_se']:.3f}"
            f" | step − L_n {row['step_batch'] - row['full_loss']:+.3f}"
            f" (first-order theory {row['predicted_selection_bias']:+.3f})",
            flush=True,
        )
    return {
        "d": d, "n": n, "batch_size": b, "step_size": eps, "num_steps": steps,
        "epochs": steps * b / n, "chains": chains, "nbeta": nbeta, "localization": gamma,
        "exact": exact, "rows": rows,
    }  # fmt: skip


def _replay_indices(data_module):
    """devinterp 2.0.1's order: epoch e reads the permutation of epoch 0 again."""
    import jax
    import jax.numpy as jnp

    def indices(key, step, n, batch_size):
        if batch_size == n:
            return jnp.arange(n, dtype=jnp.int32)
        slot = step % (n // batch_size)
        positions = slot * batch_size + jnp.arange(batch_size)
        return data_module.permuted_indices(jax.random.fold_in(key, 0), positions, n)

    return indices


def lm(quick: bool, observe_every: int, seeds) -> dict:
    """slt_jax's order and devinterp's on the tiny GPT-NeoX, with L_n(w_t) observed."""
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import bench_devinterp_lm as base
    import jax

    import slt_jax as sj
    from slt_jax._src import data as data_module

    s = base.QUICK if quick else base.FULL
    chain, windows, _ = base.make_corpus(s)
    out: dict = {"settings": dict(vars(s)), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        trained = base.train_and_save(s, chain, windows, tmp, threads=2)
        loss_fn, params, *_ = base._load_for_jax(tmp, "auto")
        out["num_params"] = trained["num_params"]
        config = sj.LLCConfig(
            num_chains=s.num_chains, num_steps=s.num_steps, num_burnin=s.num_burnin,
            step_size=s.step_size, localization=s.localization, nbeta=s.resolved_nbeta(),
            batch_size=s.batch_size, estimator="plain", diagnostic_every=0,
        )  # fmt: skip
        original = data_module.minibatch_indices
        for order in ("reshuffle", "replay"):
            data_module.minibatch_indices = (
                original if order == "reshuffle" else _replay_indices(data_module)
            )
            jax.clear_caches()  # the order is read at trace time
            try:
                for seed in seeds:
                    start = time.perf_counter()
                    res = sj.estimate_refined_llc(
                        loss_fn, params, windows, config=dataclasses.replace(config, seed=seed),
                        observables={"all windows": windows}, observe_every=observe_every,
                    )  # fmt: skip
                    plain = res.results["all"]
                    observed = res.observables["all"]
                    row = {
                        "order": order,
                        "seed": seed,
                        "seconds": time.perf_counter() - start,
                        "step_batch": float(plain.llc_mean),
                        "step_batch_se": float(plain.llc_stderr),
                        "full_loss": float(observed.llc_mean[0]),
                        "full_loss_se": float(observed.llc_stderr[0]),
                    }
                    out["rows"].append(row)
                    print(
                        f"  {order:9s} seed {seed}: step batch {row['step_batch']:.2f} ± "
                        f"{row['step_batch_se']:.2f} | L_n at draws {row['full_loss']:.2f} ± "
                        f"{row['full_loss_se']:.2f}  ({row['seconds']:.0f} s)",
                        flush=True,
                    )
            finally:
                data_module.minibatch_indices = original
        jax.clear_caches()
    out["epochs"] = s.num_steps * s.batch_size / s.num_windows
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("regression", "lm"), default="regression")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--step-size", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--schemes", default="full,iid,reshuffle,replay")
    p.add_argument("--observe-every", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=pathlib.Path, help="write the report here")
    args = p.parse_args(argv)
    if args.part == "regression":
        steps, chains = (400, 4) if args.quick else (args.steps, args.chains)
        report = regression(
            args.d, args.n, args.batch_size, args.step_size, steps, chains, args.seed,
            args.schemes.split(","),
        )  # fmt: skip
        print(f"exact posterior λ = {report['exact']:.3f}, {report['epochs']:.0f} epochs")
    else:
        report = lm(args.quick, args.observe_every, [int(s) for s in args.seeds.split(",")])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
