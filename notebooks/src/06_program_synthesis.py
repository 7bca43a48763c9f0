# %% [markdown]
# # 6. Program synthesis as singularities: the learning coefficient of Turing machines
#
# **What the paper found.** Clift, Murfet & Wallbridge ("Geometry of program synthesis",
# arXiv:2103.16080) make the space of programs continuous. A code for a Turing machine
# (for each state and symbol read: the symbol to write, the move, the next state) becomes a
# point of a product of probability simplices; a smooth relaxation of a universal Turing
# machine runs it, propagating the uncertainty; a synthesis problem (input tapes and the
# outputs wanted) defines a loss `K` whose zeros are the codes that solve it. Those zeros are
# singular points of `K`, and the programs of a problem are the phases of its Bayesian
# posterior. They sampled that posterior with MCMC on small synthesis problems (detecting
# an `A` in a string, a parity check) and estimated its real log canonical threshold,
# proposing it as a geometric measure of a program's complexity: among codes that solve
# the problem equally well, the posterior prefers the most degenerate ones.
#
# **What this notebook shows** (`slt_jax.models.turing`, our own relaxation in JAX, not the
# paper's code). On the problem "answer A if the word contains an A, else B" (all 16 words
# of length 4, two states, five steps): (1) the smooth simulator, a multilinear update of
# cell distributions and a (head, state) distribution, equals a discrete interpreter on
# one-hot codes; (2) a random search finds hundreds of distinct solution codes, all at the
# minimal loss 0; (3) at a solution where `K` is Morse–Bott, λ is half the number of
# *relevant* directions, alternatives that change some answer at first order; the unused
# rest of the table contributes nothing; across such solutions λ ranges from 6 to 15 = d/2;
# (4) `sj.estimate_llc` with MALA (exact gradients) and with minibatch SGLD recovers λ at
# three solutions (λ = 6, 9, 15) within its Monte-Carlo error of the finite-nβ theory.

# %%
import collections
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

import slt_jax as sj
from slt_jax import theory
from slt_jax.models import turing

SMOKE = os.environ.get("SLT_JAX_SMOKE") == "1"
warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
problem = turing.make_problem("detect_a", length=4)  # 16 words, 5 steps, 11 tape cells
print("words and answers:")
for tape, label in list(zip(problem.tapes, problem.labels, strict=True))[::5]:
    word = "".join(turing.SYMBOLS[s] for s in tape)
    print(f"  {word}  ->  {turing.SYMBOLS[label]}")

# %% [markdown]
# ## The machines and the smooth simulator
#
# A table is written one group per state, each entry for reading `_`, `A`, `B` as (write,
# move, next state): the *scanner* `_L0 AS0 BR0` moves right over `B`s, stops on the first
# `A` and stays there; on the blank after `BBBB` it steps back onto the last `B`. Its state 1
# (`_R1 _R1 _R1`, writing blanks and running right) is never entered. On a one-hot code the
# smooth simulator is the discrete machine; on a blurred code the answer is a distribution.

# %%
scanner = turing.parse_table("_L0 AS0 BR0 / _R1 _R1 _R1")
code = turing.one_hot_code(scanner)
probs = turing.code_probabilities(code)
cells = np.eye(3, dtype=np.float32)[problem.tapes]
for index in (0, 15):
    tape, head, _ = turing.run(scanner, problem.tapes[index], problem.steps, head=problem.head)
    smooth = turing.output_distribution(
        *turing.simulate(probs, cells[index], problem.steps, head=problem.head)
    )
    print(f"discrete answer {turing.SYMBOLS[tape[head]]}, smooth p(_, A, B) = {np.asarray(smooth)}")
# Blur the move on B (stay with probability 0.01 / 1.01): BBBB now ends off its last B sometimes.
blurred = {**code, "move": code["move"].at[0, turing.B, turing.STAY].set(0.1)}
smooth = turing.output_distribution(
    *turing.simulate(
        turing.code_probabilities(blurred), cells[15], problem.steps, head=problem.head
    )
)
print(f"blurred code on BBBB: p(_, A, B) = {np.round(np.asarray(smooth), 4)}")
print(
    f"loss at the scanner: {float(problem.loss(code)) + 0.0}, "
    f"blurred: {float(problem.loss(blurred)):.5f}"
)

# %% [markdown]
# ## Many programs, one loss: the solution codes and their learning coefficients
#
# Search uniformly random two-state tables (18⁶ ≈ 3.4·10⁷ in all) with the vectorised
# interpreter. For each solution, `turing.learning_coefficient` takes the first-order cost
# `a` of every alternative (the derivative of `K` along the simplex edge; in the
# parametrisation `w = u²/‖u‖²` the Hessian is diagonal, `2a`) and checks that `K` vanishes
# on the whole subspace where the relevant coordinates are zero. Then `K` is Morse–Bott and
# λ = ½·#relevant exactly. Otherwise some free directions interact (two alternatives each
# harmless alone, harmful together): λ = ½·#relevant + λ_F with λ_F > 0 the learning
# coefficient of `K` on that subspace, so the count is a strict lower bound.

# %%
start = time.perf_counter()
solutions = problem.find_solutions(2, num_samples=10_000 if SMOKE else 200_000, seed=0)
exact, lower = collections.Counter(), collections.Counter()
for table in solutions:
    try:
        exact[turing.learning_coefficient(problem, table)] += 1
    except ValueError:  # free directions interact: λ > ½·#relevant
        count = sum(int(m.sum()) for m in turing.relevant_directions(problem, table).values())
        lower[count / 2] += 1
print(f"{len(solutions)} distinct solution codes ({time.perf_counter() - start:.0f} s)")
print(f"Morse-Bott (λ exact): {sum(exact.values())}, λ:count {dict(sorted(exact.items()))}")
print(f"interacting free directions (λ > bound): {sum(lower.values())}")
print(f"  bound:count {dict(sorted(lower.items()))}")

# %% [markdown]
# ## Three solutions, the same loss, different λ
#
# *Scanner* (λ = 6): one state; state 1 unreachable. *Alternator* `_L0 AS1 _R1 / _L1 AS0 BR0`
# (λ = 9): it switches state on every letter, so its state is the parity of the position;
# in state 0 it blanks a `B`, in state 1 it keeps it, and on the blank after `BBBB` (reached
# in state 0 because 4 is even) it steps back onto the last letter, which it kept. *Regular*
# `BR1 AS1 BL0 / AL1 _L0 AR1` (λ = 15): a tangle that happens to answer every word, in which
# every alternative of every entry changes some answer; with all 30 directions relevant it
# is a regular point, λ = d/2 (the BIC penalty). Below, per entry: how many alternatives of
# the write (2), move (2) and next state (1) are relevant.

# %%
featured = {
    "scanner": scanner,
    "alternator": turing.parse_table("_L0 AS1 _R1 / _L1 AS0 BR0"),
    "regular": turing.parse_table("BR1 AS1 BL0 / AL1 _L0 AR1"),
}
lams, curvatures = {}, {}
for name, table in featured.items():
    relevant = turing.relevant_directions(problem, table)
    costs = turing.first_order_costs(problem, table)
    curvatures[name] = 2 * np.concatenate([v.ravel() for v in costs.values()])
    lams[name] = turing.learning_coefficient(problem, table)
    loss = float(problem.loss(turing.one_hot_code(table)))
    print(f"{name}: {table}   loss {loss + 0.0}   λ = {lams[name]}")
    print("          reading _   reading A   reading B   (relevant write/move/next)")
    for q in range(2):
        row = [
            "/".join(str(int(relevant[k][q, s].sum())) for k in ("write", "move", "next"))
            for s in range(3)
        ]
        print(f"  state {q}  " + "".join(f"{r:<12}" for r in row))

# %% [markdown]
# ## λ̂ at each solution with the engine: MALA and SGLD
#
# `K` here is the exact loss over the whole truth table, so nβ is a free inverse
# temperature: nβ = 10⁴ puts the weakest relevant direction (curvature 0.125) at
# nβh = 1250 ≫ γ = 100, and the free directions stay within 1/√γ = 0.1 of the code. The
# finite-nβ target is the quadratic oracle on the Hessian's eigenvalues
# (`theory.quadratic_oracle_llc`: λ less the localization's shrinkage γ/(nβh + γ) per
# direction). MALA uses exact gradients (no step-size bias). SGLD draws minibatches of 8 of
# the 16 words, with the paired estimator; its oracle adds the Euler step's O(ε) term.

# %%
nbeta, gamma = 1e4, 100.0
runs = {
    "MALA": dict(sampler="mala", step_size=8e-6, batch_size=16),
    "SGLD": dict(sampler="sgld", step_size=2e-6, batch_size=8),
}
results = {}
start = time.perf_counter()
for method, options in runs.items():
    for name, table in featured.items():
        results[method, name] = sj.estimate_llc(
            problem.loss_fn,
            turing.one_hot_code(table),
            problem.data,
            num_chains=2 if SMOKE else 8,
            num_steps=200 if SMOKE else 20_000,
            localization=gamma,
            nbeta=nbeta,
            seed=1,
            **options,
        )
print(f"sampling: {time.perf_counter() - start:.0f} s")
print(
    f"{'':<8}{'solution':<12}{'λ':>5}{'oracle':>8}{'λ̂ ± MCSE':>16}{'R-hat':>7}{'ESS':>6}{'acc':>6}"
)
for (method, name), r in results.items():
    eps = runs[method]["step_size"] if method == "SGLD" else 0.0
    oracle = theory.quadratic_oracle_llc(
        curvatures[name], nbeta=nbeta, localization=gamma, step_size=eps
    )
    print(
        f"{method:<8}{name:<12}{lams[name]:>5.1f}{oracle:>8.3f}"
        f"{r.llc_mean:>9.3f} ± {r.llc_stderr:<5.3f}{r.rhat:>7.3f}{r.ess:>6.0f}"
        f"{np.nanmean(r.mala_acceptance):>6.2f}"
    )

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
values = sorted(set(exact) | set(lower))
heights = [exact[v] + lower[v] for v in values]
left.bar(values, [exact[v] for v in values], width=0.4, label="Morse–Bott: λ = ½·#relevant")
left.bar(
    values,
    [lower[v] for v in values],
    width=0.4,
    bottom=[exact[v] for v in values],
    label="free directions interact: λ > ½·#relevant",
    color="C7",
)
for name, lam in lams.items():
    top = exact[lam] + lower[lam]
    left.annotate(name, (lam, top), xytext=(0, 3), textcoords="offset points", ha="center")
left.set_ylim(0, 1.12 * max(heights))
left.set_xlim(3.4, 15.9)
left.set_xlabel("½ · number of relevant directions")
left.set_ylabel("solution codes found")
left.set_title(f"{len(solutions)} solution codes of detect_a, all with loss 0", fontsize=9)
left.legend(fontsize=7, loc="upper right")
for i, method in enumerate(runs):
    for j, name in enumerate(featured):
        r, lam = results[method, name], lams[name]
        right.errorbar(
            j + 0.15 * (2 * i - 1),
            r.llc_mean / lam,
            yerr=2 * r.llc_stderr / lam,
            fmt="os"[i],
            color=f"C{i}",
            capsize=3,
            label=f"{method}: λ̂ ± 2 MCSE" if j == 0 else None,
        )
        eps = runs[method]["step_size"] if method == "SGLD" else 0.0
        oracle = theory.quadratic_oracle_llc(
            curvatures[name], nbeta=nbeta, localization=gamma, step_size=eps
        )
        right.plot(
            j + 0.15 * (2 * i - 1),
            oracle / lam,
            "x",
            color="k",
            label="finite-nβ oracle" if i == j == 0 else None,
        )
right.axhline(1.0, color="grey", lw=0.8, ls="--")
right.set_xticks(range(len(featured)), [f"{n}\nλ = {lams[n]:g}" for n in featured])
right.set_ylabel("relative to λ")
right.set_title("λ̂ at three solutions (nβ = 10⁴, γ = 100)", fontsize=9)
right.legend(fontsize=7)
fig.tight_layout()
fig.savefig("program_synthesis.png", dpi=120)

# %% [markdown]
# ![solution codes by learning coefficient; λ̂ at three solutions](program_synthesis.png)
#
# **Reading the results.** All the solution codes have the same loss, 0, yet the learning
# coefficients of those where `K` is Morse–Bott range from 6 to 15. The count explains it.
# The scanner pins down 12 of the 30 directions of its code: the writes and moves on `A`
# and `B`, and not entering state 1 before the end. Its 18 free directions are the whole
# of state 1 (15: never entered) and the write and next state on the blank (3: used only at
# the last step, where only the move matters). Along a free direction the loss stays 0, so
# the posterior spreads there at no cost and the direction contributes nothing to λ; a
# relevant one costs `a·u²` and contributes ½. The alternator uses both states and more of
# its table (18 relevant, λ = 9), the regular tangle all of it (λ = 15 = d/2). With both
# samplers the estimates lie within one MCSE of the finite-nβ oracle (for MALA a few
# tenths below λ, the localization's shrinkage of the weak directions; for SGLD the
# Euler step's bias about cancels it) and separate the three programs by many standard
# errors.
#
# About half of the solutions found are not Morse–Bott: some free directions interact.
# For example `BS0 AS0 BR0 / _R1 _R1 _R1` halts on the blank by writing `B` and staying;
# there, moving left instead is harmless (the last letter is a `B`) and so is writing
# something else over a `B` (never read again), but not both: `K` on the free subspace
# is ≈ w_left·(w_write_ + w_writeA)/16, a normal crossing y²(x₁² + x₂²) in `u` whose
# learning coefficient is ½, so λ = 11/2 + 1/2 = 6. These quartic valleys have width
# (nβ)^(-1/4), and the estimator resolves them only when that is well inside the
# localization's 1/√γ (nβ ≫ γ²); at the settings above it sees little more than the count.
#
# Among the Morse–Bott solutions the most common value is the smallest, λ = 6: most of
# them are scanners in state 0, with variants of the blank entry and of the unused state
# 1 (any state 1 that would spoil the answer if entered). That is the paper's point about
# phases. The posterior mass near a solution scales as n^(-λ) (the local free energy is
# nβ·K + λ·log n + …), so at equal loss the programs that leave the most of their code
# unconstrained dominate the posterior as n grows: λ plays the part of a program's
# description length.
