r"""What a rank-0 deep linear network's localized posterior gives, sampled exactly.

The league's ``dln`` cases (:mod:`calibration_league`) sit at ``w* = 0`` with a rank-0
truth, so ``L_n(w) − L_n(0) = K_n(w) = ½ tr(Pᵀ S P)`` with ``P = K_1 ⋯ K_L`` the product of
the layers and ``S = XᵀX/n ≈ I``. ``K`` is homogeneous of degree ``2L``: ``K(s·w) =
s^{2L} K(w)``. Substituting ``w = u/√γ`` in the localized tempered posterior
``exp(−nβ K(w) − γ/2 ‖w‖²)`` gives ``exp(−N K(u) − ½‖u‖²)`` with

.. math:: N = n\beta\,\gamma^{-L},

so the exact (ε → 0, full-batch, equilibrated) estimate ``nβ·E[K]`` is a function of ``N``
alone: ``λ̂(nβ, γ) = f(N)`` with ``f(N) = E[N K(u)]``, and ``f(N) → λ`` (Aoyagi's value,
the origin's) as ``N → ∞``. This script samples ``f(N)`` with BlackJAX's NUTS (window
adaptation, float64, ``S = I``), independent of SGLD and of the calibration, so that a
league miss can be put down to the target (``f`` far from ``λ`` at the ``N`` used) or to
the sampler (SGLD's step and minibatch bias, or its equilibration).

With ``--case SEED/dln/I`` it also runs SGLD as the league would (the case's data, ``n``,
batch size and ``nβ``) at the localization ``γ = (nβ/N)^{1/L}`` of each ``N`` and each
step size of ``--sgld``, for ``--steps`` steps × 4 chains (half burn-in), beside ``f(N)``.

    python benchmarks/dln_localized_posterior.py --widths 9-4-7-8-2 --log-n -1,0,1,3,6
    python benchmarks/dln_localized_posterior.py --case 0/dln/6 --log-n 1,2.5 \
        --sgld 1e-6,3e-6,1e-5 --steps 200000

With ``--league RESULTS.json`` (a :mod:`calibration_league` ``--json`` file) it takes
every ``dln`` row with an estimate and samples ``f`` at the ``N = nβ γ^{-L}`` of the
localization the calibration chose, and at ``N = 10``: whether the target the chains were
set was near λ (a miss is then the sampler's), and what a stronger localization would give.

    python benchmarks/dln_localized_posterior.py \
        --league benchmarks/results/calibration_league_escalate42_seed0.json

With ``--mala EPS`` it also samples the same ``exp(−N·K(u) − ½‖u‖²)`` with slt_jax's own
Metropolis-adjusted Langevin sampler (``sampler="mala"``, exact gradients of ``K`` with
``S = I``, ``nβ = 1000`` and ``γ = (nβ/N)^{1/L}``, 4 chains × ``--mala-steps``): a check of
the NUTS figures by another exact sampler.

Prints one row per ``N`` (per case); ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slt_jax._src.config import default_nbeta  # noqa: E402  (nβ = n/log n, the league's)


def half_product_norm(kernels) -> jax.Array:
    """``K = ½‖K_1 ⋯ K_L‖²_F``: a rank-0 DLN's ``L_n(w) − L_n(0)`` with ``S = I``."""
    product = kernels[0]
    for kernel in kernels[1:]:
        product = product @ kernel
    return 0.5 * jnp.sum(product**2)


def localization_for(nbeta: float, log_n: float, layers: int) -> float:
    """The ``γ`` whose ``N = nβ·γ^{-L}`` is ``10**log_n``."""
    return (nbeta / 10.0**log_n) ** (1.0 / layers)


def log_n_of(nbeta: float, localization: float, layers: int) -> float:
    """``log10 N`` of ``(nβ, γ)``: the inverse of :func:`localization_for`."""
    return math.log10(nbeta) - layers * math.log10(localization)


def exact_f(widths, log_n, *, chains=4, warmup=1500, draws=1500, seed=0) -> dict:
    """``f(N)`` for ``N = 10**log_n`` by NUTS: the mean over ``chains`` chains of ``N·K(u)``
    after ``warmup`` adaptation steps, its standard error across chains, divergences."""
    import blackjax

    shapes = list(zip(widths[:-1], widths[1:], strict=True))
    sizes = [a * b for a, b in shapes]
    dim = sum(sizes)
    big_n = 10.0**log_n

    offsets = np.concatenate([[0], np.cumsum(sizes)])

    def kl(u):
        return half_product_norm(
            [
                u[start:stop].reshape(a, b)
                for (a, b), start, stop in zip(shapes, offsets[:-1], offsets[1:], strict=True)
            ]
        )

    def logdensity(u):
        return -big_n * kl(u) - 0.5 * jnp.sum(u**2)

    def one_chain(key):
        k_init, k_warm, k_draw = jax.random.split(key, 3)
        start = 0.1 * jax.random.normal(k_init, (dim,), jnp.float64)
        adapt = blackjax.window_adaptation(blackjax.nuts, logdensity, target_acceptance_rate=0.9)
        (state, parameters), _ = adapt.run(k_warm, start, num_steps=warmup)
        step = blackjax.nuts(logdensity, **parameters).step

        def body(state, key):
            state, info = step(key, state)
            return state, (big_n * kl(state.position), info.is_divergent)

        _, (trace, divergent) = jax.lax.scan(body, state, jax.random.split(k_draw, draws))
        return trace, divergent

    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(seed), chains)
    traces, divergent = jax.jit(jax.vmap(one_chain))(keys)
    means = np.asarray(traces).mean(axis=1)
    return {
        "log10_N": log_n,
        "f": float(means.mean()),
        "f_stderr": float(means.std(ddof=1) / math.sqrt(chains)),
        "chain_means": [float(m) for m in means],
        "divergences": int(np.asarray(divergent).sum()),
        "wall_s": time.perf_counter() - start,
    }


def mala_row(widths, log_n: float, step_size: float, steps: int) -> dict:
    """``f(N)`` by slt_jax's MALA on ``K`` with ``S = I`` (see the module docstring)."""
    import slt_jax as sj

    nbeta = 1000.0
    gamma = localization_for(nbeta, log_n, len(widths) - 1)

    def loss_fn(kernels, batch):
        return half_product_norm(kernels) + 0.0 * jnp.sum(batch)  # the data are a placeholder

    kernels = [jnp.zeros((a, b), jnp.float32) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    result = sj.estimate_llc(
        loss_fn,
        kernels,
        jnp.zeros((1, 1), jnp.float32),
        sampler="mala",
        step_size=step_size,
        localization=gamma,
        nbeta=nbeta,
        batch_size=1,
        num_chains=4,
        num_steps=steps,
        seed=0,
        diagnostic_every=10,
    )
    return {
        "step_size": step_size,
        "localization": gamma,
        "f": float(result.llc_mean),
        "f_stderr": float(result.llc_stderr),
        "health": result.health(),
    }


def sgld_rows(case, log_n: float, step_sizes, steps: int) -> list[dict]:
    """SGLD on the league ``case`` at the localization of ``N = 10**log_n``, one row per
    step size (4 chains, half burn-in, the case's batch size and ``nβ = n/log n``)."""
    import calibration_league as league

    import slt_jax as sj

    loss_fn, w_star, data = league.build(case)
    gamma = localization_for(default_nbeta(case.n), log_n, len(case.spec["widths"]) - 1)
    rows = []
    for eps in step_sizes:
        start = time.perf_counter()
        result = sj.estimate_llc(
            loss_fn,
            w_star,
            data,
            step_size=eps,
            localization=gamma,
            batch_size=case.batch_size,
            num_chains=4,
            num_steps=steps,
            seed=1,
            diagnostic_every=0,
        )
        rows.append(
            {
                "step_size": eps,
                "localization": gamma,
                "llc": float(result.llc_mean),
                "stderr": float(result.llc_stderr),
                "rel_error": (float(result.llc_mean) - case.llc) / case.llc,
                "wall_s": time.perf_counter() - start,
            }
        )
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", help="e.g. 9-4-7-8-2 (or give --case)")
    parser.add_argument("--case", help="a league case, SEED/dln/INDEX (e.g. 0/dln/6)")
    parser.add_argument("--log-n", default="0,1,3", help="comma-separated log10 N")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1500)
    parser.add_argument("--draws", type=int, default=1500)
    parser.add_argument("--sgld", default="", help="step sizes for SGLD (needs --case)")
    parser.add_argument("--steps", type=int, default=200_000, help="SGLD steps per chain")
    parser.add_argument("--mala", type=float, help="also sample f(N) with MALA at this ε")
    parser.add_argument("--mala-steps", type=int, default=100_000)
    parser.add_argument("--league", help="a calibration_league --json file (its dln rows)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    from slt_jax import theory

    if args.league is not None:
        return league_rows(args)
    if (args.widths is None) == (args.case is None):
        parser.error("give one of --widths and --case")
    if args.sgld and args.case is None:
        parser.error("--sgld needs --case")
    case = None
    if args.case is not None:
        import calibration_league as league

        seed, family, index = args.case.split("/")
        if family != "dln":
            parser.error(f"--case must be a dln case, got {args.case!r}")
        case = league.draw_case(int(seed), family, int(index))
        widths = case.spec["widths"]
        print(f"case {args.case}: widths {widths}, n = {case.n}, batch {case.batch_size}")
    else:
        widths = [int(w) for w in args.widths.split("-")]
    lam, multiplicity = theory.dln_learning_coefficient(widths, 0)
    print(f"widths {'-'.join(map(str, widths))}: λ = {lam:g} (m = {multiplicity})")
    rows = []
    for log_n in (float(x) for x in args.log_n.split(",")):
        row = exact_f(widths, log_n, chains=args.chains, warmup=args.warmup, draws=args.draws)
        row["rel_error"] = (row["f"] - lam) / lam
        print(
            f"N = 1e{log_n:g}: f(N) = {row['f']:.3f} ± {row['f_stderr']:.3f} "
            f"({100 * row['rel_error']:+.1f} % of λ), {row['divergences']} divergences, "
            f"{row['wall_s']:.0f} s",
            flush=True,
        )
        if args.mala:
            row["mala"] = m = mala_row(widths, log_n, args.mala, args.mala_steps)
            print(
                f"    MALA γ = {m['localization']:.3g}, ε = {m['step_size']:g}: "
                f"{m['f']:.3f} ± {m['f_stderr']:.3f} "
                f"({100 * (m['f'] - lam) / lam:+.1f} % of λ); health: {m['health'] or 'ok'}",
                flush=True,
            )
        if args.sgld:
            row["sgld"] = sgld_rows(
                case, log_n, [float(e) for e in args.sgld.split(",")], args.steps
            )
            for s in row["sgld"]:
                print(
                    f"    SGLD γ = {s['localization']:.3g}, ε = {s['step_size']:g}: "
                    f"{s['llc']:.3f} ± {s['stderr']:.3f} ({100 * s['rel_error']:+.0f} % of λ)",
                    flush=True,
                )
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"widths": widths, "llc": lam, "rows": rows}))
    return rows


def league_rows(args) -> list[dict]:
    """``f`` at the chosen localization's ``N`` and at ``N = 10`` for each dln row."""
    rows = []
    for row in json.loads(Path(args.league).read_text())["cases"]:
        if row["family"] != "dln" or row["estimate"] is None:
            continue
        layers = len(row["spec"]["widths"]) - 1
        used = log_n_of(default_nbeta(row["n"]), row["localization"], layers)
        out = {"case": row["case"], "widths": row["spec"]["widths"], "llc": row["llc"]}
        out["estimate"], out["log10_N_used"] = row["estimate"], used
        for name, log_n in (("at_used", used), ("at_10", 1.0)):
            exact = exact_f(
                row["spec"]["widths"],
                log_n,
                chains=args.chains,
                warmup=args.warmup,
                draws=args.draws,
            )
            out[name] = exact
        rows.append(out)
        print(
            f"{row['case']} {'-'.join(map(str, row['spec']['widths']))} λ = {row['llc']:g}: "
            f"league {100 * (row['estimate'] - row['llc']) / row['llc']:+.0f} % at "
            f"γ = {row['localization']:.3g} (N = 1e{used:.1f}); exact f there "
            f"{100 * (out['at_used']['f'] - row['llc']) / row['llc']:+.1f} %, at N = 10 "
            f"{100 * (out['at_10']['f'] - row['llc']) / row['llc']:+.1f} %",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"league": args.league, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
