"""Figures of LLC results (matplotlib)."""

from __future__ import annotations

import os

import numpy as np

from slt_jax._src.results import LLCResult


def plot_llc(result: LLCResult, path: str | os.PathLike | None = None, *, ax=None):
    """The LLC against training step, with error bars, one point per checkpoint.

    Bars show ± the standard deviation across chains (thick) and ± 2 Monte-Carlo standard
    errors of the mean (thin). Steps spanning more than two decades use a log axis.
    Checkpoints whose chains all diverged are marked with an ``x`` on the axis.

    Args:
      result: a result over checkpoints (``result.steps`` is set).
      path: where to write a PNG (optional).
      ax: a matplotlib axes to draw into (default: a new figure).

    Returns:
      The matplotlib ``Figure``.
    """
    if result.steps is None:
        raise ValueError("plot_llc needs a result over checkpoints (result.steps is None).")
    import matplotlib

    if ax is None and path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    else:
        fig = ax.figure
    steps = np.asarray(result.steps, float)
    mean, std, se = (
        np.asarray(x, float) for x in (result.llc_mean, result.llc_std, result.llc_stderr)
    )
    ok = np.isfinite(mean)
    flagged = np.array([bool(result.checkpoint(k).health()) for k in range(len(steps))])
    (line,) = ax.plot(steps[ok], mean[ok], "-", lw=1.5, alpha=0.8)
    color = line.get_color()
    ax.errorbar(
        steps[ok],
        mean[ok],
        yerr=np.nan_to_num(std[ok]),
        fmt="none",
        ecolor=color,
        elinewidth=3,
        alpha=0.5,
        label="LLC ± sd across chains",
    )
    ax.errorbar(
        steps[ok],
        mean[ok],
        yerr=2 * np.nan_to_num(se[ok]),
        fmt="none",
        ecolor="k",
        elinewidth=0.8,
        capsize=2,
        label="± 2 MCSE",
    )
    good = ok & ~flagged
    ax.plot(steps[good], mean[good], "o", ms=5, color=color, label="healthy")
    if (ok & flagged).any():
        ax.plot(
            steps[ok & flagged],
            mean[ok & flagged],
            "o",
            ms=6,
            mfc="white",
            color=color,
            label="flagged (R-hat, ESS, sign or divergence; see summary)",
        )
    if (~ok).any():
        ax.plot(steps[~ok], np.zeros((~ok).sum()), "rx", label="all chains diverged")
    positive = steps[steps > 0]
    if positive.size > 1 and positive.max() / positive.min() > 30:
        ax.set_xscale("symlog", linthresh=max(1.0, positive.min()))
    c = result.config
    ax.set_xlabel("training step")
    ax.set_ylabel(r"$\hat\lambda$ (LLC)")
    ax.set_title(
        f"ε={c.step_size:g}, γ={c.localization:g}, nβ={c.nbeta:.4g}, {c.num_chains} chains × "
        f"{c.num_draws} draws",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_trace(result: LLCResult, path: str | os.PathLike | None = None, *, checkpoint=None):
    """Per-chain traces: the minibatch loss over all steps (burn-in shaded) and the per-draw
    LLC with each chain's running mean, diverged chains drawn dashed.

    Args:
      result: one estimate, or a result over checkpoints with ``checkpoint=k`` (an index).
      path: where to write a PNG (optional).

    Returns:
      The matplotlib ``Figure``.
    """
    if result.steps is not None:
        if checkpoint is None:
            raise ValueError("a result over checkpoints needs checkpoint=k (an index).")
        title = f"checkpoint at step {int(result.steps[checkpoint])}"
        result = result.checkpoint(checkpoint)
    else:
        title = "LLC estimate"
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    c = result.config
    fig, (ax_loss, ax_llc) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, layout="constrained")
    steps = np.arange(c.num_steps)
    draws = steps[c.num_burnin :]
    loss = np.concatenate([result.burnin_loss_trace, result.loss_trace], axis=1)
    for chain in range(c.num_chains):
        style = "--" if result.diverged[chain] else "-"
        (line,) = ax_loss.plot(steps, loss[chain], style, lw=0.6, alpha=0.8)
        trace = np.asarray(result.llc_trace[chain], float)
        ax_llc.plot(draws, trace, style, lw=0.3, alpha=0.35, color=line.get_color())
        running = np.cumsum(trace) / np.arange(1, trace.size + 1)
        ax_llc.plot(draws, running, style, lw=1.4, color=line.get_color())
    for ax in (ax_loss, ax_llc):
        ax.axvspan(0, c.num_burnin, color="0.85", label="burn-in")
        ax.grid(alpha=0.3)
    ax_loss.axhline(result.init_loss, color="k", lw=0.8, label=r"$L_n(w^*)$")
    ax_loss.set_ylabel("minibatch loss")
    ax_loss.legend(fontsize=8, loc="upper right")
    ax_llc.axhline(result.llc_mean, color="k", lw=0.8)
    ax_llc.set_ylabel(r"per-draw $\hat\lambda$ (thin), running mean (thick)")
    ax_llc.set_xlabel("SGLD step")
    fig.suptitle(
        f"{title}: λ̂ = {result.llc_mean:.3f} ± {result.llc_stderr:.3f}, R-hat {result.rhat:.3f},"
        f" ESS {result.ess:.0f}, {result.num_diverged} diverged",
        fontsize=10,
    )
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


#: Short labels for the health problems of a calibration cell.
_PROBLEM_LABELS = {
    "diverged": "div",
    "rhat": "Rhat",
    "ess": "ESS",
    "negative": "neg",
    "acceptance": "acc",
    "nonstationary": "drift",
    "below_init": "<L*",
    "step_bias": "bias",
    "wandering": "wander",
    "init_loss": "L*",
}


def plot_calibration(calibration, path: str | os.PathLike | None = None):
    """A heatmap of ``λ̂`` over step size × localization, one panel per ``nβ``.

    Healthy cells are coloured by ``λ̂`` (one colour scale for all panels); unhealthy cells
    are grey and hatched, labelled with their problems (div: diverged, Rhat: R-hat, ESS,
    neg: negative, acc: MALA acceptance, drift: non-stationary, <L*: below L_n(w*), bias:
    step-size bias, wander: still moving away from w*). Each cell shows ``λ̂ ± MCSE``; the
    recommended cell is outlined.

    Returns:
      The matplotlib ``Figure``; written as a PNG to ``path`` if given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cal = calibration
    num_eps, num_gamma, num_nbeta = cal.shape
    llc, se, healthy = cal.llc_mean, cal.llc_stderr, cal.healthy
    finite = llc[healthy & np.isfinite(llc)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    fig, axes = plt.subplots(
        1,
        num_nbeta,
        figsize=(1.6 + 1.5 * num_eps * num_nbeta, 1.2 + 0.9 * num_gamma),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis")
    best = None
    if cal.recommended is not None:
        best = np.unravel_index(cal.cell(**cal.recommended), cal.shape)
    image = None
    for k, ax in enumerate(axes[0]):
        shown = np.where(healthy[:, :, k], llc[:, :, k], np.nan).T  # rows: γ, columns: ε
        image = ax.imshow(shown, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(num_eps):
            for j in range(num_gamma):
                flat = int(np.ravel_multi_index((i, j, k), cal.shape))
                problems = cal.problems[flat]
                text = f"{llc[i, j, k]:.3g}\n±{se[i, j, k]:.2g}"
                if problems:
                    ax.add_patch(
                        Rectangle(
                            (i - 0.5, j - 0.5),
                            1,
                            1,
                            facecolor="0.85",
                            hatch="//",
                            edgecolor="0.6",
                            lw=0,
                        )
                    )
                    text += "\n" + " ".join(_PROBLEM_LABELS.get(p, p) for p in problems)
                    colour = "0.2"
                else:
                    level = (llc[i, j, k] - vmin) / (vmax - vmin)
                    colour = "k" if level > 0.6 else "w"
                ax.text(i, j, text, ha="center", va="center", fontsize=7, color=colour)
                if best is not None and (i, j, k) == tuple(best):
                    ax.add_patch(
                        Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5)
                    )
        ax.set_xticks(range(num_eps), [f"{e:.2g}" for e in cal.step_sizes])
        ax.set_yticks(range(num_gamma), [f"{g:.3g}" for g in cal.localizations])
        ax.set_xlabel("step size ε")
        ax.set_ylabel("localization γ")
        ax.set_title(f"nβ = {cal.nbetas[k]:.4g}", fontsize=10)
    fig.colorbar(image, ax=list(axes[0]), label=r"$\hat\lambda$ (healthy cells)")
    title = (
        "calibration: red outline = recommended"
        if best is not None
        else ("calibration: no setting passed every check")
    )
    fig.suptitle(title, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
