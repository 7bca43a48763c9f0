# %% [markdown]
# # 4. Attention-only transformer: the refined LLC of every head over training
#
# **What the paper found.** Wang, Hoogland, van Wingerden & Murfet (2024, "Differentiation
# and specialization of attention heads via the refined local learning coefficient",
# arXiv:2410.02984) trained a two-layer attention-only transformer on language and
# estimated, at every checkpoint, the LLC *refined* to each attention head (only that head's
# weights move). The per-head curves separate heads by function: heads that become
# previous-token and induction heads follow different rLLC trajectories, and the changes
# line up with the formation of the bigram and induction circuits.
#
# **What this notebook shows.** A small attention-only transformer (2 layers × 2 heads) on a
# synthetic language (a sparse Markov chain, plus one randomly copied segment per sequence
# that only an induction circuit can predict) learns bigram statistics first and then forms
# an induction circuit. At every checkpoint, `sj.estimate_refined_llc` estimates the
# refined LLC of all four heads in one compiled call; the curves are drawn next to the
# behavioural (induction score) and structural (previous-token and induction attention
# scores per head) measurements the training recorded.

# %%
import os
import tempfile
import warnings

import jax
import numpy as np

import slt_jax as sj
from slt_jax import dynamics
from slt_jax.models import attention

SMOKE = os.environ.get("SLT_JAX_SMOKE") == "1"
warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
config = dict(vocab_size=64, d_model=32, num_heads=2, d_head=16, context_length=32)
language = attention.SyntheticLanguage(vocab_size=64, branching=4, min_copy=10, max_copy=16, seed=0)

# %% [markdown]
# ## Training, with checkpoints dense around the induction transition
#
# A first run with metrics every 50 steps showed the induction score rising between steps
# 450 and 750 for this seed, so the checkpoints are log-spaced early and every 50 steps
# across that window.

# %%
workdir = tempfile.mkdtemp()
num_train = 1500 if not SMOKE else 20
schedule = [0, 10, 30, 100, 200, 300, *range(400, 801, 50), 1000, 1250, 1500]
model, history = attention.train(
    num_steps=num_train,
    batch_size=32,
    seed=0,
    checkpoint_dir=workdir,
    checkpoint_steps=schedule if not SMOKE else [0, 10],
    language=language,
    **config,
)
print(f"{'step':>5} {'loss':>6} {'induction score':>16} {'bigram recall':>14}")
for i, step in enumerate(history["step"]):
    print(
        f"{step:>5d} {history['loss'][i]:>6.3f} {history['induction_score'][i]:>16.3f}"
        f" {history['bigram_recall'][i]:>14.3f}"
    )

# %% [markdown]
# ## The refined LLC of each head at each checkpoint
#
# Every head is its own refinement (its slices of the fused QKV and output weights); the
# four refinements × chains run as one program per checkpoint, and, since the centre and the
# masks are array arguments, one compilation serves every checkpoint.

# %%
loss_fn, data, like = attention.factory(n=1024, seed=1, language=language, **config)
checkpoints = sj.load_checkpoint_set(workdir, like=like)
heads = list(attention.head_refinements(like))
rllc = {h: [] for h in heads}
rllc_se = {h: [] for h in heads}
for k in range(len(checkpoints)):
    params = jax.tree.map(lambda x, k=k: x[k], checkpoints.params)
    res = sj.estimate_refined_llc(
        loss_fn,
        params,
        data,
        attention.head_refinements(params),
        num_chains=4 if not SMOKE else 2,
        num_steps=500 if not SMOKE else 20,
        step_size=1e-4,
        localization=100.0,
        batch_size=64,
        diagnostic_every=0,
    )
    for h in heads:
        rllc[h].append(res[h].llc_mean)
        rllc_se[h].append(res[h].llc_stderr)
    print(
        f"step {checkpoints.steps[k]:>5d}: "
        + "  ".join(f"{h} {res[h].llc_mean:7.2f}" for h in heads)
    )

# %%
steps = checkpoints.steps
previous = np.asarray(history["previous_token"])  # (checkpoints, layers, heads)
induction = np.asarray(history["induction"])
curves = {f"rLLC {h}": (np.asarray(rllc[h]), np.asarray(rllc_se[h])) for h in heads}
curves["induction score"] = history["induction_score"]
for layer in range(previous.shape[1]):
    for head in range(previous.shape[2]):
        curves[f"prev-token L{layer}H{head}"] = previous[:, layer, head]
        curves[f"induction L{layer}H{head}"] = induction[:, layer, head]
dynamics.plot_development(steps, curves, "attention_heads.png", boundaries=False)

# %% [markdown]
# ![per-head refined LLCs and attention scores](attention_heads.png)
#
# ## What each head became, and its refined LLC

# %%
print(f"{'head':<6} {'rLLC start':>11} {'rLLC end':>9} {'prev-token':>11} {'induction':>10}")
for h in heads:
    layer, head = int(h[1]), int(h[3])
    print(
        f"{h:<6} {rllc[h][0]:>11.2f} {rllc[h][-1]:>9.2f} "
        f"{previous[-1, layer, head]:>11.2f} {induction[-1, layer, head]:>10.2f}"
    )
prev_head = f"L0H{int(np.argmax(previous[-1, 0]))}"
ind_head = f"L1H{int(np.argmax(induction[-1, 1]))}"
others = [h for h in heads if h not in (prev_head, ind_head)]
ratio = min(rllc[prev_head][-1], rllc[ind_head][-1]) / max(rllc[h][-1] for h in others)
print(
    f"previous-token head {prev_head}, induction head {ind_head}: their final refined LLCs "
    f"are at least {ratio:.1f} times those of the other heads {others}."
)

# %% [markdown]
# **Reading the results.** In the bigram stage (steps 0–400: bigram recall rises to 0.70,
# the induction score stays below 0.15) the four heads' refined LLCs are small and alike
# (0.6–1.4). As the induction circuit forms (the induction score jumps from 0.4 at step 500
# to 3.3 at step 700) all four rise together, and then they differentiate: the
# previous-token head L0H1 peaks at about 12 and the induction head L1H0 at about 10 at
# steps 650–700, exactly where the circuit snaps into place, while L0H0 and L1H1 peak at
# about 5. After the transition every refined LLC falls back (the loss keeps falling
# slowly) but the order stays: at step 1500 the previous-token and induction heads sit
# at 5.0 and 6.8, the other two at 2.3 and 2.8, at least 1.8 times lower. This is the
# differentiation Wang et al. report: the heads that carry the circuit are the ones whose
# weights the loss becomes most sensitive to, and the refined LLC peaks as the circuit
# forms. The second layer-1 head (L1H1) ends with a high induction score (0.75) but a low
# refined LLC: it copies the work of L1H0 rather than carrying it, which the attention
# scores alone do not tell. The estimates use short chains (4 chains × 500 steps, error
# bars drawn; the run took 59 minutes on a shared 2-core CPU under heavy load); take them
# as a picture of the differentiation rather than as precise values.
