# %% [markdown]
# # 7. The 2-simplicial Transformer: a 3-way relation, learnt faster, and its LLC
#
# **What the paper found.** Clift, Doryn, Murfet & Wallbridge (2020, "Logic and the
# 2-simplicial Transformer", ICLR, arXiv:1909.00668) add *2-simplicial attention* to the
# Transformer block: each entity `i` attends to pairs `(j, k)` with weights from a scalar
# triple product `⟨p_i, l¹_j, l²_k⟩`, softmax-normalised over the pairs, and is updated by
# `B(u_j ⊗ u_k)`, a learned linear map of the tensor product of two value vectors. In
# *bridge BoxWorld*, a reinforcement-learning puzzle in which two keys must be used together
# and a "bridge" box (found from pairs of boxes sharing a lock or a key, i.e. from 3-way
# relations) must be avoided, their simplicial agent (two blocks, each with two ordinary
# heads and one 2-simplicial head) learnt faster and to a higher solve rate than the
# relational agent with ordinary heads only (four runs each); relational agents with four
# blocks stayed at a plateau of 0.85. The 2-simplicial attention of trained agents picked
# out the locks on the Gem and their keys.
#
# **What this notebook shows.** An RL environment is out of scope here, so a supervised
# task stands in for it, with a 3-way relation at its core: given a target `t` and a set of
# five distinct residues mod 19, *is there a pair with x_j − x_k ≡ t (mod 19)?* (half the
# examples are positive). Set models without positional encodings
# (`slt_jax.models.simplicial.SetTransformer`: two blocks as in the paper's pseudo-code,
# max-pooling, a linear classifier) are trained with Adam on fresh examples: the
# *relational* model (2 ordinary heads per block), the *simplicial* model (the same plus one
# 2-simplicial head per block, trilinear logits) and, because the 2-simplicial head adds
# parameters, a *wide relational* control (4 heads and a twice wider MLP: 35k parameters
# against the simplicial model's 43k and the relational one's 18k). We compare their
# held-out accuracy, the attention the
# 2-simplicial heads put on the triangles `{target, j, k}` that decide the label, and the
# LLC of the relational and simplicial models over training (`sj.estimate_llc_checkpoints`
# on their checkpoint sets).

# %%
import os
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np

import slt_jax as sj
from slt_jax.models import simplicial

SMOKE = os.environ.get("SLT_JAX_SMOKE") == "1"
warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
if not SMOKE:
    task = simplicial.PairDifferenceTask(modulus=19, set_size=5)
    base = dict(d_model=32, d_head=16, d_mlp=64, num_blocks=2)
    training = dict(num_steps=3000, batch_size=128, learning_rate=3e-3, num_checkpoints=12)
    sampler = dict(num_chains=4, num_steps=300, batch_size=64, step_size=3e-5)
else:
    task = simplicial.PairDifferenceTask(modulus=7, set_size=3)
    base = dict(d_model=16, d_head=8, d_mlp=16, num_blocks=1)
    training = dict(num_steps=20, batch_size=32, learning_rate=3e-3, num_checkpoints=3)
    sampler = dict(num_chains=2, num_steps=20, batch_size=32, step_size=3e-5, diagnostic_every=0)
models = {
    "relational": ("relational", base),
    "relational (wide)": ("relational", base | dict(num_heads=4, d_mlp=2 * base["d_mlp"])),
    "simplicial": ("simplicial", base),
}
if SMOKE:  # the smoke test checks that the code runs: the control adds nothing there
    del models["relational (wide)"]
held_out = task.sample(1024, seed=1_000_003)  # the examples train() evaluates on
w = task.witnesses(held_out.tokens).sum((1, 2))[held_out.labels == 1]
chance_witness = float(np.mean(2 * w / (task.set_size + 1) ** 2))
print(f"{task}; witness pairs per positive example: {w.mean():.2f}")

# %% [markdown]
# ## Training, with checkpoints at log-spaced steps

# %%
workdir = tempfile.mkdtemp()
histories = {}
for name, (architecture, config) in models.items():
    _, histories[name] = simplicial.train(
        architecture,
        seed=0,
        task=task,
        checkpoint_dir=os.path.join(workdir, name),
        **training,
        **config,
    )
steps = histories["simplicial"]["step"]
print(f"{'step':>5} " + " ".join(f"{name + ' acc':>22}" for name in models))
for i, step in enumerate(steps):
    print(f"{step:>5d} " + " ".join(f"{histories[n]['accuracy'][i]:>22.3f}" for n in models))
print("parameters: " + ", ".join(f"{n} {h['num_params']}" for n, h in histories.items()))

# %% [markdown]
# ## The LLC of the relational and simplicial models at every checkpoint
#
# Before about step 25 the models sit at initialisation (loss ≈ log 2 or above, falling
# fast), where `w*` is no local minimum and the LLC is not defined, so the sweep starts
# there. Both models get the same sampler settings (SGLD, ε = 3·10⁻⁵, γ = 300,
# nβ = n/log n on n = 2048 examples, 4 chains × 300 steps), chosen with `sj.calibrate` on
# the final simplicial checkpoint from ε ∈ {3·10⁻⁵, 10⁻⁴} × γ ∈ {100, 300, 1000}: no cell
# passed every check (the MALA acceptance was below 0.9 in all of them), the estimate
# shrinks as γ grows, and this cell balanced acceptance (≈ 0.8) against shrinkage. The
# tables flag what remains (low acceptance at later checkpoints; chains still drifting
# away from `w*` along flat directions), so read the curves as a comparison of the two
# models under equal settings rather than as converged values. The wide control's LLC is
# not estimated, to keep the notebook near ten minutes on a laptop CPU.

# %%
llc = {}
for name in ("relational", "simplicial"):
    architecture, config = models[name]
    loss_fn, data, like = simplicial.factory(architecture, n=2048, task=task, **config)
    checkpoints = sj.load_checkpoint_set(os.path.join(workdir, name), like=like)
    checkpoints = checkpoints.select(checkpoints.steps >= min(25, training["num_steps"]))
    llc[name] = sj.estimate_llc_checkpoints(
        loss_fn,
        checkpoints,
        data,
        localization=300.0,
        progress=False,
        seed=0,
        **sampler,
    )
    print(name)
    print(llc[name].summary())

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
colors = {"relational": "C0", "relational (wide)": "C2", "simplicial": "C3"}
x = np.maximum(steps, 1)
for name, h in histories.items():
    label = f"{name} ({h['num_params'] / 1000:.0f}k params)"
    axes[0, 0].plot(x, h["accuracy"], ".-", color=colors[name], label=label)
    axes[0, 1].plot(x, h["loss"], ".-", color=colors[name], label=name)
axes[0, 0].axhline(0.5, color="grey", lw=0.8, ls=":")
axes[0, 0].set_ylabel("held-out accuracy")
axes[0, 0].legend(fontsize=8)
axes[0, 1].axhline(np.log(2), color="grey", lw=0.8, ls=":")
axes[0, 1].set_ylabel("held-out loss (nats)")
axes[0, 1].set_yscale("log")
for name, res in llc.items():
    axes[1, 0].errorbar(
        np.maximum(res.steps, 1), res.llc_mean, yerr=res.llc_std, fmt="o-", ms=3, capsize=2,
        color=colors[name], label=name,
    )  # fmt: skip
axes[1, 0].set_ylabel("LLC (± sd over chains)")
axes[1, 0].legend(fontsize=8)
witness = histories["simplicial"]["witness"]  # (checkpoints, blocks, heads)
for block in range(witness.shape[1]):
    axes[1, 1].plot(x, witness[:, block].max(-1), ".-", label=f"block {block}")
axes[1, 1].axhline(chance_witness, color="grey", lw=0.8, ls=":", label="uniform attention")
axes[1, 1].set_ylabel("2-simplicial attention\non witness triangles")
axes[1, 1].legend(fontsize=8)
for ax in axes[1]:
    ax.set_xscale("log")
    ax.set_xlabel("training step")
fig.tight_layout()
fig.savefig("simplicial_llc.png", dpi=120)
plt.close(fig)

# %% [markdown]
# ![accuracy, loss, LLC and witness attention over training](simplicial_llc.png)
#
# ## Summary


# %%
def first_step(history, level):
    """The first recorded step with held-out accuracy ≥ level (None if never)."""
    hit = np.nonzero(history["accuracy"] >= level)[0]
    return int(history["step"][hit[0]]) if len(hit) else None


for name, h in histories.items():
    print(
        f"{name:<18} final accuracy {h['accuracy'][-1]:.3f}, loss {h['loss'][-1]:.3f}; "
        f"first ≥ 0.75 at step {first_step(h, 0.75)}"
    )
for name, res in llc.items():
    cells = ", ".join(f"{s}: {m:.1f}" for s, m in zip(res.steps, res.llc_mean, strict=True))
    print(f"LLC {name:<11} {cells}")
print(
    f"witness attention at the end: {witness[-1].max(-1).round(2)} (uniform {chance_witness:.3f})"
)

# %% [markdown]
# **Reading the results.** (The numbers are those of the run above, one seed.) The
# 2-simplicial head gives the model a head start on the 3-way relation: after the log 2
# plateau the simplicial model is ahead of both relational models at every checkpoint
# (held-out accuracy 0.61, 0.71, 0.90 at steps 272, 605, 1347, against 0.54, 0.60, 0.72
# for the relational model and 0.58, 0.61, 0.79 for the wide control). Capacity explains
# part of the gap: the wide control learns faster than the plain relational model and
# ends level with the simplicial one (0.970 and 0.969 at step 3000, the relational model
# 0.906), so in this task the inductive bias shows as speed rather than as a higher
# ceiling (in bridge BoxWorld the paper found both). The first block's 2-simplicial head
# moves its attention onto the witness triangles `{target, j, k}` (0.12 at
# initialisation, 0.66 at the end, against 0.08 for uniform attention), much as the
# paper's agents attended to 2-simplices on the locks of the Gem; the second block's head
# stays near uniform.
#
# The LLC follows the learning. On the plateau both models have small LLCs (below 3); the
# simplicial model's grows earlier, with its falling loss (7.2 against 2.5 at step 272,
# 15.4 against 5.6 at 605, 31.9 against 14.3 at 1347). At step 3000 the two are close
# (36.7 ± 1.2 for the simplicial model, 40.2 ± 1.1 for the relational one, whose LLC is
# still climbing as its loss, 0.235 against 0.089, is still falling): with 2.4 times the
# parameters and a lower loss, the simplicial model has not acquired more complexity. The
# estimates use short chains with MALA acceptance below 0.9 at the later checkpoints, so
# take them as a comparison under equal sampler settings, with the caveats the tables
# flag.
