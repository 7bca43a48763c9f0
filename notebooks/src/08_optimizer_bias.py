# %% [markdown]
# # 8. Optimizer inductive bias: the LLC of the minima different optimizers find
#
# **What the paper found.** Lau, Furman, Wang, Murfet & Wei (2023, "Quantifying degeneracy
# in singular models via the learning coefficient", arXiv:2308.12108) trained the same MNIST
# network with different stochastic optimizers and estimated the local learning coefficient
# at the end of training: the optimizers land on minima of different degeneracy (different
# λ̂) although their losses and accuracies are close, so the LLC reveals an inductive bias
# of the optimizer that the usual metrics do not. Entropy-SGD (Chaudhari et al. 2017),
# designed to seek wide valleys, is the natural candidate for lower λ̂.
#
# **What this notebook shows.** The same 64-32-10 ReLU MLP on scikit-learn's digits
# (shipped; pass MNIST through `slt_jax.examples.load_mnist_idx` for the paper's data),
# trained from four seeds with each of SGD, SGD with momentum, Adam and Entropy-SGD on the
# same budget of minibatch gradients; the step size of the LLC estimate checked with
# `sj.calibrate`; λ̂ of all sixteen trained networks in one call, beside their training
# loss and test accuracy.

# %%
import os
import warnings

import numpy as np

import slt_jax as sj
from slt_jax.models import optimizer_bias as ob

SMOKE = os.environ.get("SLT_JAX_SMOKE") == "1"
warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
seeds = [0, 1, 2, 3] if not SMOKE else [0]
num_gradients = 4000 if not SMOKE else 40
train_data, test_data = ob.split()
n = len(train_data[0])
print(f"{n} training and {len(test_data[0])} test examples")

# %% [markdown]
# ## Training: four optimizers × four seeds, 4,000 minibatch gradients each
#
# Entropy-SGD spends 5 gradients per outer step on its inner Langevin loop (so it takes 800
# outer steps). Learning rates: SGD 0.1, momentum 0.01 (×0.9 momentum), Adam 3e-3,
# Entropy-SGD inner rate 0.1 with coupling γ = 1 and temperature 1e-4.

# %%
runs = []
for optimizer in ob.OPTIMIZERS:
    for seed in seeds:
        model, history = ob.train(
            optimizer, data=train_data, test=test_data, num_gradients=num_gradients, seed=seed
        )
        runs.append(
            {
                "optimizer": optimizer,
                "seed": seed,
                "params": sj.nnx_loss(model, ob.per_example_loss)[1],
                "loss": history["loss"][-1],
                "test_accuracy": history["test_accuracy"][-1],
            }
        )
        print(
            f"{optimizer:>12} seed {seed}: training loss {runs[-1]['loss']:.4f}, "
            f"test accuracy {runs[-1]['test_accuracy']:.3f}"
        )

# %% [markdown]
# ## Choosing the SGLD step size
#
# The paper's setting, nβ = n / log n and localization γ = 100, with the step size checked on
# the network with the lowest loss (the sharpest place to sample) by `sj.calibrate`.

# %%
loss_fn, _, _ = ob.factory(train_data)
nbeta = n / np.log(n)
sharpest = min(runs, key=lambda r: r["loss"])
cal = sj.calibrate(
    loss_fn,
    sharpest["params"],
    train_data,
    step_sizes=[1e-5, 3e-5, 1e-4, 3e-4] if not SMOKE else [1e-4],
    localizations=[100.0],
    nbetas=[nbeta],
    num_chains=4 if not SMOKE else 2,
    num_steps=1000 if not SMOKE else 20,
    batch_size=128,
)
print(cal.summary())
step_size = cal.recommended["step_size"] if cal.recommended else 1e-5
print(f"step size used for every network: {step_size:g}")

# %% [markdown]
# ## λ̂ of all sixteen networks in one call
#
# The trained networks are a checkpoint set like any other (their "steps" are run indices):
# one compiled program estimates them all, 8 chains each.

# %%
sweep = sj.estimate_llc_checkpoints(
    loss_fn,
    [r["params"] for r in runs],
    train_data,
    steps=np.arange(len(runs)),
    num_chains=8 if not SMOKE else 2,
    num_steps=2000 if not SMOKE else 20,
    step_size=step_size,
    localization=100.0,
    nbeta=nbeta,
    batch_size=128,
    progress=False,
)
print(f"{'optimizer':>12} {'seed':>4} {'loss':>8} {'test acc':>8} {'λ̂ ± se':>16}  health")
for k, r in enumerate(runs):
    r["llc"], r["se"] = float(sweep.llc_mean[k]), float(sweep.llc_stderr[k])
    health = ",".join(sweep.checkpoint(k).health()) or "ok"
    print(
        f"{r['optimizer']:>12} {r['seed']:>4d} {r['loss']:>8.4f} {r['test_accuracy']:>8.3f} "
        f"{r['llc']:>8.2f} ± {r['se']:<5.2f}  {health}"
    )

# %%
print(f"{'optimizer':>12} {'λ̂ mean ± sd (seeds)':>22} {'loss':>8} {'test acc':>9}")
summary = {}
for optimizer in ob.OPTIMIZERS:
    rows = [r for r in runs if r["optimizer"] == optimizer]
    llc = np.array([r["llc"] for r in rows])
    spread = llc.std(ddof=1) if len(llc) > 1 else 0.0
    summary[optimizer] = (llc.mean(), spread)
    print(
        f"{optimizer:>12} {llc.mean():>12.2f} ± {spread:<7.2f} "
        f"{np.mean([r['loss'] for r in rows]):>8.4f} "
        f"{np.mean([r['test_accuracy'] for r in rows]):>9.3f}"
    )

# %%
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (ax_llc, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
for i, optimizer in enumerate(ob.OPTIMIZERS):
    rows = [r for r in runs if r["optimizer"] == optimizer]
    offsets = np.linspace(-0.15, 0.15, len(rows))
    ax_llc.errorbar(
        i + offsets, [r["llc"] for r in rows], yerr=[2 * r["se"] for r in rows], fmt="o", ms=4
    )
    ax_acc.plot(i + offsets, [r["test_accuracy"] for r in rows], "o", ms=4)
for ax, label in ((ax_llc, "λ̂ at the end of training (± 2 se)"), (ax_acc, "test accuracy")):
    ax.set_xticks(range(len(ob.OPTIMIZERS)), ob.OPTIMIZERS)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("optimizer_bias.png", dpi=120)

# %% [markdown]
# ![λ̂ and test accuracy per optimizer](optimizer_bias.png)
#
# **Reading the results.** All sixteen networks classify the held-out digits about equally
# well (test accuracy 0.973–0.991), yet λ̂ separates the optimizers far beyond the
# seed-to-seed spread: Adam's minima have λ̂ = 1.98 ± 0.24 (mean ± sd over seeds), SGD's
# 4.89 ± 0.04, momentum's 4.87 ± 0.05 and Entropy-SGD's 5.46 ± 0.17, each estimate with a
# standard error of 0.04–0.08 and every one passing the health checks. As Lau et al. found
# on MNIST, the LLC reveals a difference between the optimizers' solutions that the loss
# and the accuracy do not; SGD with and without momentum are indistinguishable here. Two
# differences from the hypothesis that motivates Entropy-SGD: at this budget (800 outer
# steps of 5 inner gradients) it ends with the *highest* λ̂, not the lowest, and with a
# higher training loss (0.044 against SGD's 0.028), so it has not settled as deep into its
# basin; and Adam, which reaches a loss more than ten times lower (0.002), sits at by far
# the most degenerate points. Training loss and λ̂ move together across optimizers here,
# so this notebook does not separate "the optimizer prefers degenerate minima" from "the
# optimizer got further along the same valley"; equalizing the final loss (or comparing
# along each run's checkpoints) would. The ranking, from the numbers of this run:

# %%
ranked = sorted(summary, key=lambda o: summary[o][0])
print("optimizers from lowest to highest mean λ̂:", ", ".join(ranked))
lo, hi = ranked[0], ranked[-1]
gap = summary[hi][0] - summary[lo][0]
noise = np.hypot(summary[hi][1], summary[lo][1])
print(f"{hi} − {lo}: {gap:.2f}, against a seed-to-seed spread of {noise:.2f}")
