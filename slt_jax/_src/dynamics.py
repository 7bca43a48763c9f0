r"""Essential dynamics: the development of a model read from its outputs over training.

Following Hoogland et al. 2024 ("The developmental landscape of in-context learning",
arXiv:2402.02364, §4) and Carroll et al. 2025 ("Dynamics of transient structure in
in-context linear regression transformers", arXiv:2501.17745): evaluate every checkpoint
on one fixed probe set, flatten the outputs into a row, and run PCA on the
``(checkpoints × features)`` matrix. The trajectory of the checkpoints in the leading
components shows the stages of development as turns and cusps. *Joint* trajectory PCA fits
one PCA on the stacked rows of several runs (e.g. several task diversities), so their
trajectories share axes and can be compared.

:func:`stage_boundaries` reads candidate stage boundaries off an LLC curve: the steps where
its slope in log-step changes sign or where it leaves or enters a plateau (Hoogland et al.
2024 place the boundaries at the LLC's critical points).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._src.io.checkpoints import as_checkpoint_set

PyTree = Any


def features(
    apply_fn: Callable[[PyTree, PyTree], Any], checkpoints, probe: PyTree, *, batch: int = 8
) -> np.ndarray:
    """``(K, F)``: row ``k`` is ``apply_fn(params_k, probe)`` flattened.

    Args:
      apply_fn: ``(params, probe_inputs) -> outputs`` (any pytree of arrays).
      checkpoints: a :class:`~slt_jax.CheckpointSet`, a stacked pytree or a sequence of
        pytrees (see :func:`slt_jax._src.io.checkpoints.as_checkpoint_set`).
      probe: the fixed inputs every checkpoint is evaluated on.
      batch: checkpoints evaluated together (vmapped) at a time; memory is that many
        copies of the outputs.
    """
    cs = as_checkpoint_set(checkpoints)

    def flat(params):
        leaves = jax.tree.leaves(apply_fn(params, probe))
        return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

    run = jax.jit(jax.vmap(flat))
    rows = []
    for start in range(0, len(cs), batch):
        chunk = cs.read(slice(start, start + batch))  # a lazy set reads these now
        rows.append(np.asarray(run(chunk), np.float64))
    return np.concatenate(rows)


@dataclasses.dataclass(frozen=True)
class EssentialDynamics:
    """A (joint) trajectory PCA.

    Attributes:
      runs: the run names, in order.
      steps: ``{run: (K,) training steps}``.
      trajectories: ``{run: (K, components)}`` coordinates of each checkpoint.
      components: ``(components, F)`` principal directions (unit rows).
      explained_variance_ratio: ``(components,)`` share of the total variance.
      mean: ``(F,)`` the mean row subtracted before the PCA (over all runs).
    """

    runs: tuple[str, ...]
    steps: dict[str, np.ndarray]
    trajectories: dict[str, np.ndarray]
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray

    def project(self, rows: np.ndarray) -> np.ndarray:
        """Coordinates of further rows (e.g. another run's features) on these axes."""
        return (np.asarray(rows, np.float64) - self.mean) @ self.components.T

    def plot(self, path: str | os.PathLike | None = None, **kwargs):
        """See :func:`plot_essential_dynamics`."""
        return plot_essential_dynamics(self, path, **kwargs)


def pca(
    rows: Mapping[str, np.ndarray],
    steps: Mapping[str, np.ndarray] | None = None,
    *,
    num_components: int = 3,
) -> EssentialDynamics:
    """Joint PCA of the feature rows of one or more runs (``{run: (K_run, F)}``)."""
    if not rows:
        raise ValueError("no runs given.")
    widths = {name: np.shape(r)[1] for name, r in rows.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"the runs' feature rows differ in length {widths}: evaluate every run on the "
            "same probe set with the same output shape."
        )
    stacked = np.concatenate([np.asarray(r, np.float64) for r in rows.values()])
    mean = stacked.mean(axis=0)
    centred = stacked - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(num_components, vt.shape[0])
    # Fix each component's sign (largest |loading| positive) so results are reproducible.
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    signs[signs == 0] = 1
    comps = vt[:k] * signs[:, None]
    total = np.sum(s**2)
    ratio = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    trajectories, offset = {}, 0
    for name, r in rows.items():
        n = np.shape(r)[0]
        trajectories[name] = centred[offset : offset + n] @ comps.T
        offset += n
    steps = {
        name: np.asarray(steps[name]) if steps else np.arange(len(rows[name])) for name in rows
    }
    return EssentialDynamics(tuple(rows), steps, trajectories, comps, ratio, mean)


def essential_dynamics(
    apply_fn: Callable[[PyTree, PyTree], Any],
    checkpoints,
    probe: PyTree,
    *,
    num_components: int = 3,
    like: PyTree = None,
    batch: int = 8,
) -> EssentialDynamics:
    """Trajectory PCA of the outputs on ``probe`` of one run's checkpoints.

    Args:
      apply_fn: ``(params, probe) -> outputs``.
      checkpoints: a :class:`~slt_jax.CheckpointSet`, a checkpoint directory, a stacked
        pytree or a sequence of snapshots (:func:`slt_jax._src.io.checkpoints.as_checkpoint_set`).
      probe: the fixed inputs.
      num_components: principal components kept.
      like: the parameter template for a checkpoint directory.

    Returns:
      :class:`EssentialDynamics` with one run, ``"run"``; ``.plot(path)`` draws it.
    """
    return joint_essential_dynamics(
        apply_fn,
        {"run": as_checkpoint_set(checkpoints, like=like)},
        probe,
        num_components=num_components,
        batch=batch,
    )


def joint_essential_dynamics(
    apply_fn: Callable[[PyTree, PyTree], Any],
    runs: Mapping[str, Any],
    probe: PyTree,
    *,
    num_components: int = 3,
    like: PyTree = None,
    batch: int = 8,
) -> EssentialDynamics:
    """Joint trajectory PCA: one PCA over the checkpoints of several runs
    (``{name: checkpoints}``, e.g. one per task diversity), so all share the same axes."""
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError("`runs` must be a non-empty mapping {name: checkpoints}.")
    sets = {str(name): as_checkpoint_set(cs, like=like) for name, cs in runs.items()}
    rows = {name: features(apply_fn, cs, probe, batch=batch) for name, cs in sets.items()}
    return pca(rows, {name: cs.steps for name, cs in sets.items()}, num_components=num_components)


def stage_boundaries(
    steps, llc, *, smoothing: float = 0.15, plateau: float = 0.1
) -> list[tuple[int, str]]:
    """Candidate stage boundaries of an LLC curve: ``[(step, kind), ...]``.

    The curve is smoothed with a Gaussian kernel of width ``smoothing`` (in decades of
    log-step) and differentiated in log-step. ``kind`` is ``"peak"`` / ``"trough"`` where the
    slope changes sign, ``"plateau start"`` / ``"plateau end"`` where its magnitude falls
    below / rises above ``plateau`` times its largest magnitude. Step 0 is dropped (no log).
    """
    steps = np.asarray(steps, np.float64)
    llc = np.asarray(llc, np.float64)
    keep = (steps > 0) & np.isfinite(llc)
    steps, llc = steps[keep], llc[keep]
    if steps.size < 4:
        return []
    x = np.log10(steps)
    weights = np.exp(-0.5 * ((x[:, None] - x[None, :]) / smoothing) ** 2)
    smooth = weights @ llc / weights.sum(axis=1)
    slope = np.gradient(smooth, x)
    out = []
    for i in range(1, len(slope)):
        if slope[i - 1] > 0 >= slope[i]:
            out.append((int(steps[i]), "peak"))
        elif slope[i - 1] < 0 <= slope[i]:
            out.append((int(steps[i]), "trough"))
    flat = np.abs(slope) < plateau * np.max(np.abs(slope))
    for i in range(1, len(flat)):
        if flat[i] and not flat[i - 1]:
            out.append((int(steps[i]), "plateau start"))
        elif flat[i - 1] and not flat[i]:
            out.append((int(steps[i]), "plateau end"))
    return sorted(out)


def plot_essential_dynamics(
    ed: EssentialDynamics,
    path: str | os.PathLike | None = None,
    *,
    pairs: tuple[tuple[int, int], ...] | None = None,
    annotate: int = 4,
    references: Mapping[str, Any] | None = None,
):
    """Trajectories in pairs of principal components, one colour per run, markers shaded by
    log step, a few steps annotated. ``references`` (``{name: outputs}``, each the outputs
    of a reference predictor on the same probe, shaped like one checkpoint's, e.g. a
    Bayes-optimal baseline) are projected with :meth:`EssentialDynamics.project` and drawn
    as labelled stars. Returns the figure; writes a PNG when ``path`` is set.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = ed.components.shape[0]
    if pairs is None:
        pairs = tuple((i, j) for i in range(min(k, 3)) for j in range(i + 1, min(k, 3))) or (
            (0, 0),
        )
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    marks = {}
    for name, outputs in (references or {}).items():
        leaves = jax.tree.leaves(outputs)
        row = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])
        if row.shape != ed.mean.shape:
            raise ValueError(
                f"reference {name!r} has {row.size} outputs, the trajectories {ed.mean.size}."
            )
        marks[name] = ed.project(row[None])[0]
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        for name, point in marks.items():
            ax.scatter(point[i], point[j], marker="*", s=140, color="black", zorder=4)
            ax.annotate(name, point[[i, j]], fontsize=8, xytext=(4, 4), textcoords="offset points")
        for r, name in enumerate(ed.runs):
            traj, steps = ed.trajectories[name], ed.steps[name]
            colour = colours[r % len(colours)]
            ax.plot(traj[:, i], traj[:, j], "-", color=colour, alpha=0.6, label=name)
            shade = np.log1p(steps) / max(np.log1p(steps).max(), 1e-12)
            ax.scatter(traj[:, i], traj[:, j], c=shade, cmap="viridis", s=14, zorder=3)
            for idx in np.unique(np.linspace(0, len(steps) - 1, annotate).astype(int)):
                ax.annotate(str(int(steps[idx])), traj[idx, [i, j]], fontsize=7, alpha=0.8)
        ax.set_xlabel(f"PC{i + 1} ({100 * ed.explained_variance_ratio[i]:.0f}%)")
        ax.set_ylabel(f"PC{j + 1} ({100 * ed.explained_variance_ratio[j]:.0f}%)")
    if len(ed.runs) > 1:
        axes[0][0].legend(fontsize=8)
    fig.suptitle("Essential dynamics (colour: log training step)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_development(
    steps,
    curves: Mapping[str, Any],
    path: str | os.PathLike | None = None,
    *,
    llc=None,
    boundaries: bool = True,
):
    """Curves over training in stacked panels sharing a log-step axis, the LLC on top.

    Args:
      steps: ``(K,)`` training steps.
      curves: ``{name: (K,) values}`` behavioural or structural measurements (test loss,
        an attention score, the ED coordinates...), or ``{name: (values, stderr)}``.
      llc: an :class:`~slt_jax.LLCResult` over the checkpoints (``estimate_llc_checkpoints``)
        or ``(llc_mean, llc_stderr)`` arrays; drawn with error bars.
      boundaries: mark :func:`stage_boundaries` of the LLC curve in every panel.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = np.asarray(steps)
    panels = ([("LLC", llc)] if llc is not None else []) + list(curves.items())
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(6.5, 1.9 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    marks = []
    for ax, (name, values) in zip(axes[:, 0], panels, strict=True):
        if name == "LLC" and llc is not None:
            mean, err = (llc.llc_mean, llc.llc_stderr) if hasattr(llc, "llc_mean") else llc
            mean, err = np.asarray(mean, np.float64), np.asarray(err, np.float64)
            ax.errorbar(np.maximum(steps, 1), mean, yerr=err, fmt="o-", ms=3, capsize=2)
            if boundaries:
                marks = stage_boundaries(steps, mean)
        else:
            if isinstance(values, tuple):
                v, e = (np.asarray(a, np.float64) for a in values)
                ax.errorbar(np.maximum(steps, 1), v, yerr=e, fmt=".-", capsize=2)
            else:
                ax.plot(np.maximum(steps, 1), np.asarray(values, np.float64), ".-")
        ax.set_ylabel(name, fontsize=9)
    for ax in axes[:, 0]:
        for step, kind in marks:
            ax.axvline(step, color="grey", ls=":" if "plateau" in kind else "--", lw=0.8)
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
