"""The engine at scale: microbatches, rematerialization, a compute dtype, the chains' layout
on a device, a plan before a run, and the persistent compilation cache."""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sweep_factory

import slt_jax as sj
from slt_jax._src.engine import programs

KW = dict(num_chains=4, num_steps=300, step_size=1e-3, localization=1.0, batch_size=64)


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype(np.float32)
    y = (x @ np.ones(4) + rng.normal(size=512)).astype(np.float32)
    w = jnp.asarray(np.linalg.lstsq(x, y, rcond=None)[0], jnp.float32)
    return (lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)), w, (x, y)


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return sj.estimate_llc(*args, **kwargs)


@pytest.mark.parametrize(
    "options",
    [
        dict(microbatch_size=16),
        dict(remat=True),
        dict(chain_layout="map"),
        dict(chain_layout="map", chain_batch=2),
        dict(chain_layout="map", chain_batch=2, num_burnin=0, diagnostic_every=0),
        dict(chain_layout="map", chain_batch=3),  # 4 chains: two batches, one padded
        dict(chain_layout="vmap"),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_memory_and_layout_options_give_the_same_chains(regression, options):
    """A microbatched gradient is the whole minibatch's (the mean of equal-sized microbatch
    means), to float rounding; remat and the layouts change how, not what, is computed."""
    loss, w, data = regression
    run = {k: v for k, v in options.items() if k in ("num_burnin", "diagnostic_every")}
    base = _quiet(loss, w, data, **{**KW, **run})
    other = _quiet(loss, w, data, **{**KW, **options})
    np.testing.assert_allclose(other.llc_trace, base.llc_trace, rtol=2e-5, atol=2e-5)
    for name, value in options.items():
        assert getattr(other.config, name) == value


def test_bf16_compute_dtype_keeps_the_chain_in_float32(regression):
    """The loss sees bfloat16 parameters (8 bits of mantissa: λ̂ moves by about 2⁻⁸ of its
    terms), the chain and the recorded losses stay float32."""
    loss, w, data = regression
    seen = []

    def spy(p, b):
        seen.append(p.dtype)
        return loss(p, b)

    base = _quiet(loss, w, data, **KW)
    half = _quiet(spy, w, data, **KW, compute_dtype="bfloat16")
    assert jnp.dtype("bfloat16") in seen and half.loss_trace.dtype.itemsize >= 4
    assert abs(half.llc_mean - base.llc_mean) < 0.05 * base.llc_mean
    assert half.config.compute_dtype == "bfloat16"


def test_microbatched_gradient_equals_the_whole_batch_exactly_in_float64():
    from slt_jax._src.engine.transforms import microbatched

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        batch = (rng.normal(size=(12, 3)), rng.integers(0, 3, size=12))
        loss = lambda p, b: jnp.mean(jnp.take_along_axis(b[0] @ p, b[1][:, None], axis=1) ** 2)  # noqa: E731,E501
        p = jnp.asarray(rng.normal(size=(3, 3)))
        whole = jax.value_and_grad(loss)(p, batch)
        parts = jax.value_and_grad(microbatched(loss, 4))(p, batch)
        np.testing.assert_allclose(parts[0], whole[0], rtol=1e-12)
        np.testing.assert_allclose(parts[1], whole[1], rtol=1e-12)


def test_memory_options_are_checked_before_compiling(regression, monkeypatch):
    loss, w, data = regression

    def fail(*args, **kwargs):
        raise AssertionError("the chain program must not run")

    monkeypatch.setattr(programs, "run_items", fail)
    with pytest.raises(ValueError, match=r"`microbatch_size` \(24\) does not divide the batch"):
        sj.estimate_llc(loss, w, data, **{**KW, "microbatch_size": 24})
    with pytest.raises(TypeError, match="`compute_dtype` must be a float dtype"):
        sj.estimate_llc(loss, w, data, **KW, compute_dtype="int32")
    with pytest.raises(ValueError, match="`chain_layout` must be one of"):
        sj.estimate_llc(loss, w, data, **KW, chain_layout="scan")
    with pytest.raises(TypeError, match="`remat` must be True or False"):
        sj.estimate_llc(loss, w, data, **KW, remat="yes")


def test_default_layout_rule():
    """vmap on accelerators and for small chain-steps; a map over the chains on CPU once a
    chain-step (parameters × batch rows) reaches MAP_THRESHOLD."""
    config, _ = sj.LLCConfig(batch_size=64).resolve(1000)
    static = config.static()
    small = {"w": np.zeros((8, 100))}  # 100 parameters per chain × 64 rows
    big = {"w": np.zeros((8, programs.MAP_THRESHOLD // 64))}
    assert programs.default_layout(static, small, 8) == "vmap"
    expected = "map" if jax.default_backend() == "cpu" else "vmap"
    assert programs.default_layout(static, big, 8) == expected
    fixed = static._replace(chain_layout="vmap")
    assert programs.default_layout(fixed, big, 8) == "vmap"


def test_results_written_before_the_memory_options_resume():
    """Unset, the new options are not recorded: an older manifest's config still matches."""
    config, _ = sj.LLCConfig(step_size=1e-3, batch_size=10).resolve(100)
    saved = config.to_dict()
    for name in ("microbatch_size", "remat", "compute_dtype", "chain_layout", "chain_batch"):
        assert name not in saved
    assert sj.LLCConfig(**saved) == config
    assert config.resolve(100)[0] == config  # resolving a resolved configuration: the same
    assert sj.LLCConfig(**config.__class__(microbatch_size=4).to_dict()).microbatch_size == 4


def test_dry_run_plans_without_sampling_or_writing(tmp_path):
    snapshots, steps = sweep_factory.checkpoints(4)
    plan = sj.estimate_llc_checkpoints(
        sweep_factory.loss_fn,
        snapshots,
        sweep_factory.data(),
        steps=steps,
        num_chains=3,
        num_steps=400,
        batch_size=64,
        chunk_size=3,
        dry_run=True,
        out=tmp_path / "res",
    )
    assert isinstance(plan, sj.RunPlan)
    assert (plan.num_checkpoints, plan.chunk_size, plan.num_chunks) == (4, 3, 2)
    assert plan.chains_per_chunk == 9 and plan.mesh == {"items": jax.device_count()}
    assert plan.device_bytes > 0 and plan.step_s > 0
    assert plan.estimated_s == pytest.approx(plan.step_s * 400 * 2)
    assert not (tmp_path / "res").exists()
    assert "per device" in plan.summary() and "chunk" in plan.summary()
    # step_size="auto": the plan names the escalation's budget (what it spends at most)
    kw = dict(steps=steps, num_chains=3, num_steps=400, batch_size=64, chunk_size=3)
    kw |= dict(dry_run=True, step_size="auto")
    args = (sweep_factory.loss_fn, snapshots, sweep_factory.data())
    auto = sj.estimate_llc_checkpoints(*args, calibration_budget=100_000, **kw)
    assert auto.calibration_chain_steps == 100_000 and "100,000 chain-steps" in auto.summary()
    assert sj.estimate_llc_checkpoints(*args, **kw).calibration_chain_steps == 2_000_000
    with pytest.raises(ValueError, match="below the minimum of 3200"):  # 2 settings × 4 × 400
        sj.estimate_llc_checkpoints(*args, calibration_budget=1000, **kw)


def test_cli_dry_run_and_compilation_cache(tmp_path):
    """The CLI plans with --dry-run; its compilation cache fills on the first run and a
    second process with the same programs adds nothing to it (every program a hit)."""
    snapshots, steps = sweep_factory.checkpoints(2)
    for snapshot, step in zip(snapshots, steps, strict=True):
        sj.save_checkpoint(tmp_path / "ckpts", step, snapshot)
    cache = tmp_path / "cache"
    env = {**os.environ, "SLT_JAX_CACHE_DIR": str(cache), "PYTHONPATH": os.path.dirname(__file__)}
    args = [
        sys.executable,
        "-m",
        "slt_jax",
        "llc",
        str(tmp_path / "ckpts"),
        "--model",
        "sweep_factory:factory",
        "--steps",
        "100",
        "--chains",
        "2",
        "--batch-size",
        "64",
        "--step-size",
        "1e-3",
        "--localization",
        "10",
        "--no-progress",
    ]
    plan = subprocess.run(
        [*args, "--out", str(tmp_path / "p"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "per device" in plan.stdout and not (tmp_path / "p").exists()
    for name in ("one", "two"):
        run = subprocess.run(
            [*args, "--out", str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        files = sorted(p.name for p in cache.rglob("*") if p.is_file())
        if name == "one":
            first = files
    assert first and files == first
    off = subprocess.run(
        [*args, "--out", str(tmp_path / "three"), "--no-compilation-cache"],
        env={**env, "SLT_JAX_CACHE_DIR": str(tmp_path / "unused")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert off.returncode == 0 and not (tmp_path / "unused").exists()
    result = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert result["config"]["num_chains"] == 2
