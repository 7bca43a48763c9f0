"""Essential dynamics: features, (joint) trajectory PCA, stage boundaries, plots."""

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import dynamics


def _linear_run(ws):
    """Checkpoints of a linear model y = x·w (outputs linear in w)."""
    return sj.CheckpointSet.from_stacked(
        {"w": np.asarray(ws, np.float32)}, steps=np.arange(len(ws)) * 10
    )


def _apply(params, x):
    return x @ params["w"]


def test_features_are_the_flattened_outputs():
    rng = np.random.default_rng(0)
    ws = rng.normal(size=(11, 3, 2))
    x = rng.normal(size=(5, 3)).astype(np.float32)
    rows = dynamics.features(_apply, _linear_run(ws), jnp.asarray(x), batch=4)
    expected = np.einsum("pi,kij->kpj", x, ws).reshape(11, -1)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-5)


def test_pca_recovers_a_planar_trajectory():
    """Rows on a curve in a known plane of R^40: two components carry all the variance and
    the trajectory is the curve up to a rotation (distances between checkpoints kept)."""
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(40, 2)))[0].T  # (2, 40) orthonormal rows
    t = np.linspace(0, 3, 30)
    curve = np.stack([np.cos(t) * (1 + t), np.sin(2 * t)], 1)
    rows = curve @ basis + 5.0
    ed = dynamics.pca({"run": rows}, num_components=3)
    assert ed.explained_variance_ratio[:2].sum() == pytest.approx(1.0, abs=1e-10)
    traj = ed.trajectories["run"][:, :2]
    d_true = np.linalg.norm(curve[:, None] - curve[None], axis=-1)
    d_est = np.linalg.norm(traj[:, None] - traj[None], axis=-1)
    np.testing.assert_allclose(d_est, d_true, atol=1e-8)
    np.testing.assert_allclose(ed.project(rows), ed.trajectories["run"], atol=1e-10)
    np.testing.assert_allclose(ed.components @ ed.components.T, np.eye(3), atol=1e-8)


def test_joint_pca_shares_axes_across_runs(tmp_path):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    runs = {
        "low": _linear_run(np.linspace(0, 1, 8)[:, None, None] * np.ones((1, 3, 2))),
        "high": _linear_run(np.linspace(0, 1, 8)[:, None, None] * rng.normal(size=(1, 3, 2))),
    }
    ed = dynamics.joint_essential_dynamics(_apply, runs, x, num_components=2)
    assert ed.runs == ("low", "high")
    rows = np.concatenate([dynamics.features(_apply, r, x) for r in runs.values()])
    joint = dynamics.pca({"all": rows}, num_components=2)
    np.testing.assert_allclose(
        np.concatenate([ed.trajectories["low"], ed.trajectories["high"]]),
        joint.trajectories["all"],
        atol=1e-6,
    )
    assert ed.steps["high"].tolist() == list(range(0, 80, 10))
    fig = ed.plot(tmp_path / "ed.png")
    assert (tmp_path / "ed.png").read_bytes()[:4] == b"\x89PNG"
    # One line per run through its trajectory's leading two components, axes labelled.
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    for run in ("low", "high"):
        np.testing.assert_allclose(lines[run].get_xydata(), ed.trajectories[run][:, :2], atol=1e-6)
    assert fig.axes[0].get_xlabel().startswith("PC1")
    # A reference predictor whose outputs equal a checkpoint's is drawn at its coordinates.
    w3 = jnp.asarray(runs["high"].params["w"][3])
    fig = ed.plot(references={"ref": x @ w3})
    (star,) = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] == 1]
    np.testing.assert_allclose(star.get_offsets()[0], ed.trajectories["high"][3], atol=1e-5)
    with pytest.raises(ValueError, match="reference 'bad' has 5 outputs"):
        ed.plot(references={"bad": np.zeros(5)})
    single = dynamics.essential_dynamics(_apply, runs["low"], x)
    assert single.runs == ("run",) and single.trajectories["run"].shape[0] == 8
    with pytest.raises(ValueError, match="differ in length"):
        dynamics.pca({"a": np.zeros((3, 4)), "b": np.zeros((3, 5))})


def test_stage_boundaries_of_a_rise_and_fall(tmp_path):
    steps = np.unique(np.geomspace(1, 1e5, 60).astype(int))
    x = np.log10(steps)
    llc = 10 / (1 + np.exp(-4 * (x - 2))) - 6 / (1 + np.exp(-4 * (x - 4)))  # up at 1e2, down at 1e4
    marks = dynamics.stage_boundaries(steps, llc)
    peaks = [s for s, kind in marks if kind == "peak"]
    assert len(peaks) == 1 and 10**2.7 < peaks[0] < 10**3.3  # between the two transitions
    assert any(kind == "plateau start" for _, kind in marks)
    assert dynamics.stage_boundaries(steps[:3], llc[:3]) == []
    fig = dynamics.plot_development(
        steps,
        {"test loss": np.exp(-x), "score": (x, 0.1 * np.ones_like(x))},
        tmp_path / "dev.png",
        llc=(llc, 0.2 * np.ones_like(llc)),
    )
    assert (tmp_path / "dev.png").read_bytes()[:4] == b"\x89PNG"
    # One panel per quantity (the LLC first), the stage boundaries marked on each.
    assert [ax.get_ylabel() for ax in fig.axes][:3] == ["LLC", "test loss", "score"]
    lines = fig.axes[1].lines
    marked = [line.get_xdata()[0] for line in lines if line.get_linestyle() in ("--", ":")]
    assert sorted(marked) == sorted(s for s, _ in marks)
