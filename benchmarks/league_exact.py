r"""What a league case's localized posterior gives, sampled exactly: a miss put down to the
sampler, the localization or the target.

For a :mod:`calibration_league` case (``SEED/FAMILY/I``) and a localization ``γ``, the
estimate every sampler aims at is

.. math:: f(\gamma) = n\beta\,\bigl(E_\gamma[L_n(w)] - L_n(w^*)\bigr), \qquad
          p_\gamma(w) \propto \exp\bigl(-n\beta\,L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*
          \rVert^2\bigr),

on the case's own loss, data, ``w*`` and ``nβ = n/log n`` (the league's). This script samples
``p_γ`` with BlackJAX's NUTS (window adaptation, float64, the full data set at every
gradient, chains started at ``w*``), independent of SGLD and of the calibration. Beside the
league's estimate ``λ̂`` at the ``γ`` the calibration chose:

* ``λ̂ − f(γ)`` is the **sampler's** error (step size, minibatch noise, equilibration);
* ``f(γ) − λ`` is the **localization's and the target's**: ``f`` at ``γ/10`` and ``γ/100``
  tells them apart (``f`` rising toward λ as ``γ`` weakens: the localization shrank the
  estimate; ``f`` away from λ at every ``γ``: the finite-``nβ`` value itself is not λ).

The chains start at ``w*`` (as the league's do), so where ``p_γ`` has other basins a chain
stays in the one of ``w*`` as long as NUTS does not cross: ``f`` is then the local value; a
large split R-hat across chains says that they did not agree.

For the ``dln`` family the same question is answered in closed scaling form by
:mod:`dln_localized_posterior` (``f`` depends on ``nβ γ^{-L}`` alone); this script serves
every family, DLNs included, at the cost of one full-data gradient per leapfrog step.

    python benchmarks/league_exact.py --case 1/tms/2 --gammas 60.5,6.05,0.605
    python benchmarks/league_exact.py --families tms --misses --gammas league,/10,/100 \
        --league benchmarks/results/calibration_league_escalate42_seed1.json --json out.json

``--gammas``: a comma-separated list of numbers, ``league`` (the localization the league's
calibration chose, from ``--league``) and ``/K`` or ``*K`` (the league's divided or
multiplied by ``K``). Prints one row per case and ``γ``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from numpyro.diagnostics import split_gelman_rubin  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration_league as league  # noqa: E402

from slt_jax._src.config import default_nbeta  # noqa: E402

#: Rows of the full data set per block of the loss (bounds the memory of one gradient).
BLOCK_ROWS = 65536


def parse_case(text: str) -> league.Case:
    """``SEED/FAMILY/I`` -> the league's case."""
    seed, family, index = text.split("/")
    league.check_families([family])
    return league.draw_case(int(seed), family, int(index))


def full_loss(case: league.Case):
    """``(L_n on the flat float64 parameters, flat w*, nβ)``: the league's loss over the whole
    data set, in float64 (the data rebuilt from the case's seed, as the league builds them)."""
    loss_fn, w_star, data = league.build(case)
    w_star = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), w_star)
    data = jax.tree.map(lambda a: np.asarray(a, np.float64), data)
    flat_star, unravel = ravel_pytree(w_star)
    n = jax.tree.leaves(data)[0].shape[0]
    whole_blocks = n // BLOCK_ROWS
    if case.family in _FEATURES:
        return _by_moments(case, loss_fn, unravel, flat_star, data), flat_star, default_nbeta(n)
    if case.family == "tms" or whole_blocks < 2:
        everything = jax.tree.map(jnp.asarray, data)

        def loss(flat):
            return loss_fn(unravel(flat), everything)

    else:  # L_n is a mean over rows: equal blocks by lax.map, then the remainder's rows
        cut = whole_blocks * BLOCK_ROWS
        blocks = jax.tree.map(
            lambda a: jnp.asarray(a[:cut]).reshape(whole_blocks, BLOCK_ROWS, *a.shape[1:]), data
        )
        rest = jax.tree.map(lambda a: jnp.asarray(a[cut:]), data)

        def loss(flat):
            params = unravel(flat)
            total = jnp.sum(jax.lax.map(lambda b: loss_fn(params, b), blocks)) * BLOCK_ROWS
            if n > cut:
                total = total + loss_fn(params, rest) * (n - cut)
            return total / n

    return jax.jit(loss), flat_star, default_nbeta(n)


#: The families whose loss is ``½·mean((y − x·g(w))²)``, with ``g`` the features' weights.
_FEATURES = {
    "normal_crossing": lambda w, s: jnp.prod(w ** jnp.asarray(s["exponents"]))[None],
    "monomial": lambda w, s: w ** jnp.asarray([p // 2 for p in s["powers"]]),
    "linear_regression": lambda w, s: w,
}


def _by_moments(case, loss_fn, unravel, flat_star, data):
    """The loss of a :data:`_FEATURES` family from the data's moments, ``½(ȳ² − 2g·m_xy +
    gᵀM_xx g)``: the same function as the league's ``loss_fn`` on the whole data set (checked
    here at ``w*`` and at two nearby points), at a cost that does not grow with ``n``."""
    x, y = (np.asarray(a, np.float64) for a in data)
    x = x.reshape(len(x), -1)
    yy, xy, xx = float(np.mean(y * y)), jnp.asarray(x.T @ y / len(y)), jnp.asarray(x.T @ x / len(y))
    weights = _FEATURES[case.family]

    def loss(flat):
        g = weights(flat, case.spec)
        return 0.5 * (yy - 2 * g @ xy + g @ xx @ g)

    whole = jax.tree.map(jnp.asarray, data)
    rng = np.random.default_rng(0)
    for scale in (0.0, 0.1, 0.5):
        w = flat_star + scale * jnp.asarray(rng.normal(size=flat_star.shape))
        full, by_moments = float(loss_fn(unravel(w), whole)), float(loss(w))
        if not np.isclose(by_moments, full, rtol=1e-9, atol=1e-12):
            raise AssertionError(f"{case.name}: moments {by_moments!r} against {full!r}")
    return jax.jit(loss)


def exact_f(case, gamma: float, *, chains=4, warmup=1000, draws=1000, seed=0) -> dict:
    """``f(γ)`` by NUTS: the mean over ``chains`` chains of ``nβ(L_n(w) − L_n(w*))`` after
    ``warmup`` adaptation steps, its standard error across chains, R-hat and divergences."""
    import blackjax

    loss, w_star, nbeta = full_loss(case)
    base = loss(w_star)

    def logdensity(w):
        return -nbeta * (loss(w) - base) - 0.5 * gamma * jnp.sum((w - w_star) ** 2)

    def one_chain(key):
        k_init, k_warm, k_draw = jax.random.split(key, 3)
        scale = 0.01 / math.sqrt(max(gamma, 1e-12))
        start = w_star + scale * jax.random.normal(k_init, w_star.shape, jnp.float64)
        adapt = blackjax.window_adaptation(blackjax.nuts, logdensity, target_acceptance_rate=0.9)
        (state, parameters), _ = adapt.run(k_warm, start, num_steps=warmup)
        step = blackjax.nuts(logdensity, **parameters).step

        def body(state, key):
            state, info = step(key, state)
            return state, (nbeta * (loss(state.position) - base), info.is_divergent)

        _, (trace, divergent) = jax.lax.scan(body, state, jax.random.split(k_draw, draws))
        return trace, divergent

    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(seed), chains)
    traces, divergent = jax.jit(jax.vmap(one_chain))(keys)
    traces = np.asarray(traces)
    means = traces.mean(axis=1)
    return {
        "gamma": gamma,
        "nbeta": nbeta,
        "f": float(means.mean()),
        "f_stderr": float(means.std(ddof=1) / math.sqrt(chains)),
        "rhat": float(split_gelman_rubin(traces)),
        "chain_means": [float(m) for m in means],
        "divergences": int(np.asarray(divergent).sum()),
        "wall_s": time.perf_counter() - start,
    }


def gammas_for(spec: str, chosen: float | None) -> list[float]:
    """The ``--gammas`` list, ``league``, ``/K`` and ``*K`` taken from ``chosen``."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "league" or item[0] in "/*":
            if chosen is None:
                raise ValueError(f"--gammas {item!r} needs the league's γ (--league).")
            if item == "league":
                out.append(chosen)
            else:
                k = float(item[1:])
                out.append(chosen / k if item[0] == "/" else chosen * k)
        else:
            out.append(float(item))
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", default=[], help="SEED/FAMILY/I")
    parser.add_argument("--league", help="a calibration_league --json file")
    parser.add_argument("--families", help="with --league: only these families")
    parser.add_argument("--misses", action="store_true", help="with --league: outside ±15 %%")
    parser.add_argument("--gammas", default="league,/10,/100")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    rows_in = {}
    if args.league:
        doc = json.loads(Path(args.league).read_text())
        families = league.check_families(args.families) if args.families else league.FAMILIES
        for row in doc["cases"]:
            if row["family"] not in families or row["estimate"] is None:
                continue
            if args.misses and abs(row["rel_error"]) <= league.WITHIN:
                continue
            rows_in[f"{doc['seed']}/{row['case']}"] = row
    for text in args.case:
        rows_in.setdefault(text, None)
    if not rows_in:
        parser.error("no case: give --case or --league")

    out = []
    print(
        f"{'case':24} {'λ':>6} {'n':>7} {'γ':>9} {'f(γ)':>14} {'f/λ−1':>7} {'R-hat':>6} "
        f"{'div':>4} {'league λ̂':>9} {'λ̂/f−1':>7} {'s':>5}",
        flush=True,
    )
    for label, row in rows_in.items():
        case = parse_case(label)
        chosen = None if row is None else row["localization"]
        for gamma in gammas_for(args.gammas, chosen):
            r = exact_f(case, gamma, chains=args.chains, warmup=args.warmup, draws=args.draws)
            r.update(case=label, llc=case.llc, n=case.n, rel_f=r["f"] / case.llc - 1)
            est = None if row is None or gamma != chosen else row["estimate"]
            r["league_estimate"] = est
            r["sampler_error"] = None if est is None else est / r["f"] - 1
            out.append(r)
            print(
                f"{label:24} {case.llc:6.3g} {case.n:7d} {gamma:9.3g} "
                f"{r['f']:7.4g} ± {r['f_stderr']:<5.2g} {r['rel_f']:+7.1%} {r['rhat']:6.3f} "
                f"{r['divergences']:4d} "
                f"{'' if est is None else f'{est:9.4g}':>9} "
                f"{'' if est is None else format(r['sampler_error'], '+7.1%'):>7} "
                f"{r['wall_s']:5.0f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": out, "argv": sys.argv[1:]}, indent=1))
    return out


if __name__ == "__main__":
    main()
