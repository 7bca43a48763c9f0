"""Low-precision parameters and 64-bit mode run end to end (chains held in ≥ float32)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_each
from test_known_answers import minibatch_band

import slt_jax as sj


def _regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4)).astype(np.float32)
    y = (x @ np.ones(4) + rng.normal(size=2000)).astype(np.float32)
    return np.linalg.lstsq(x, y, rcond=None)[0], (x, y)


def _loss(w, batch):
    return 0.5 * jnp.mean((batch[0] @ w.astype(batch[0].dtype) - batch[1]) ** 2)


KW = dict(num_steps=2000, step_size=5e-4, localization=1.0, batch_size=500)


@pytest.fixture(scope="module")
def float32_reference():
    """The float32 run both low-precision cases compare with (the same for each: computed
    once)."""
    w, data = _regression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return sj.estimate_llc(_loss, jnp.asarray(w, jnp.float32), data, **KW)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_match_float32(dtype, float32_reference):
    w, data = _regression()
    reference = float32_reference
    seen = []

    def loss(w, batch):
        seen.append(w.dtype)
        return _loss(w, batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        low = sj.estimate_llc(loss, jnp.asarray(w, dtype), data, **KW)
    assert set(seen) == {jnp.dtype(dtype)}  # the model always sees its own dtype
    assert not low.diverged.any()
    # Same keys (common random numbers): the chains differ only by rounding the positions
    # to the parameter dtype for each loss evaluation, far inside the Monte-Carlo error.
    assert abs(low.llc_mean - reference.llc_mean) < 2 * reference.llc_stderr


# The two 64-bit scripts below run in one subprocess (JAX_ENABLE_X64 must be set before JAX
# starts, hence a process of its own): one interpreter and one JAX start-up for both. Each
# runs in a namespace of its own; its output, exit status and traceback are its own.
X64_PARAMS = """
import warnings; warnings.simplefilter("ignore")
import jax, jax.numpy as jnp, numpy as np, slt_jax as sj
assert jax.config.jax_enable_x64
rng = np.random.default_rng(0)
x = rng.normal(size=(2000, 4)); y = x @ np.ones(4) + rng.normal(size=2000)
w = np.linalg.lstsq(x, y, rcond=None)[0]
loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
kw = dict(num_steps=2000, step_size=5e-4, localization=1.0, batch_size=500)
for dt in (jnp.float32, jnp.float64):
    r = sj.estimate_llc(loss, jnp.asarray(w, dt), (x.astype(dt), y.astype(dt)), **kw)
    print(r.llc_mean, r.llc_stderr)
"""

X64_OBSERVABLES = """
import warnings; warnings.simplefilter("ignore")
import jax, jax.numpy as jnp, numpy as np, slt_jax as sj
rng = np.random.default_rng(0)
x = rng.standard_normal((4096, 2)); y = x @ np.array([1., -2.]) + 0.3 * rng.standard_normal(4096)
w = jnp.asarray(np.linalg.lstsq(x, y, rcond=None)[0])
loss = lambda w, b: 3e4 + 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
res = sj.estimate_refined_llc(loss, w, (x, y), None, observables={"all": (x, y)},
    probe=(x[:3], y[:3]), observe_every=1, num_chains=2, num_steps=500, step_size=1e-4,
    localization=1.0, batch_size=4096)
obs = res.observables["all"]
print(res["all"].llc_mean, obs.llc_mean[0], obs.loss_trace.dtype)
"""


X64_EXACT = """
import warnings; warnings.simplefilter("ignore")
import jax, jax.numpy as jnp, numpy as np, slt_jax as sj
rng = np.random.default_rng(0)
x = rng.normal(size=(500, 3)); y = x @ np.ones(3) + rng.normal(size=500)
w = np.linalg.lstsq(x, y, rcond=None)[0]
loss = lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)
kw = dict(num_chains=2, localization=1.0, batch_size=500)
runs = (("mala", jnp.float64, 2e-3, 1500), ("mala", jnp.float32, 2e-3, 1500),
        ("hmc", jnp.float32, 2e-2, 100), ("nuts", jnp.float32, 5e-2, 100))
for sampler, dt, eps, steps in runs:
    r = sj.estimate_llc(loss, jnp.asarray(w, dt), (x.astype(dt), y.astype(dt)),
                        sampler=sampler, step_size=eps, num_steps=steps, **kw)
    print(sampler, np.dtype(dt).name, r.llc_mean, r.llc_stderr)
"""


@pytest.fixture(scope="module")
def x64_runs():
    """``{"params": ..., "observables": ..., "exact": ...}``: each script's ``returncode``,
    ``stdout`` and ``stderr``, from one process in 64-bit mode."""
    scripts = {"params": X64_PARAMS, "observables": X64_OBSERVABLES, "exact": X64_EXACT}
    env = {**__import__("os").environ, "JAX_ENABLE_X64": "1"}
    return run_each(scripts, env=env, timeout=300)


def test_64_bit_mode_with_float32_and_float64_params(x64_runs):
    out = x64_runs["params"]
    assert out.returncode == 0, out.stderr[-2000:]
    (m32, s32), (m64, s64) = [map(float, line.split()) for line in out.stdout.split("\n")[:2]]
    # Different noise streams (float32 vs float64 normals): independent estimates of the same
    # λ, so their difference is within 4 combined standard errors.
    assert abs(m32 - m64) < 4 * np.hypot(s32, s64)
    x = np.random.default_rng(0).normal(size=(2000, 4))
    _, _, (low, high) = minibatch_band(
        x, nbeta=2000 / np.log(2000), gamma=1.0, eps=5e-4, b=500, stderr=s64
    )
    assert low < m64 < high  # d/2 = 2 up to localization, step and minibatch bias


def test_dataset_mean_accumulates_low_precision_losses_in_float32():
    """Chunk means that bf16 represents exactly (0.5 and 0.5 + 2⁻⁸) whose mean it cannot
    (spacing 2⁻⁸ near 0.5): the mean must come out exact, not rounded to bf16; and an f16
    loss of 2 over 40,000 examples must not overflow (2 × 40,000 > 65504) on the way."""
    import jax

    from slt_jax._src import data as _data

    values = jnp.tile(jnp.array([0.5, 0.5 + 2**-8]), 20)  # 40 chunks of 10
    data = jnp.repeat(values, 10)[:, None]
    mean = _data.dataset_mean(lambda b: jnp.mean(b).astype(jnp.bfloat16), data, 10)
    assert mean.dtype == jnp.float32
    assert float(mean) == 0.5 + 2**-9

    ones = jnp.ones((40_000, 1), jnp.float16)
    with jax.disable_jit():  # op by op, as an accelerator without f32 fusion would
        total = _data.dataset_mean(lambda b: 2 * jnp.mean(b), ones, 40_000 // 8)
    assert float(total) == 2.0


def test_bf16_init_loss_is_not_rounded_to_bf16():
    """A bf16 model and data: L_n(w*) is the mean of per-chunk bf16 losses taken in float32
    (each chunk rounded to 3 digits, the mean of 20 chunks closer), not one bf16 number."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    y = x @ np.ones(4) + rng.normal(size=2000)
    data = (jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
    w = jnp.ones(4, jnp.bfloat16)

    def loss(p, b):
        return 0.5 * jnp.mean((b[0] @ p - b[1]) ** 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        res = sj.estimate_llc(loss, w, data, num_chains=2, num_steps=50, batch_size=100)
    xq, yq = (np.asarray(a, np.float64) for a in data)
    exact = 0.5 * np.mean((xq @ np.ones(4) - yq) ** 2)
    # Each chunk's bf16 loss is within 2⁻⁹ relative; their mean errs by less than that.
    assert abs(res.init_loss - exact) < 2**-9 * exact
    assert res.loss_trace.dtype in (np.float32, np.float64)


def test_64_bit_mode_keeps_observables_in_float64(x64_runs):
    """An observable equal to the training data, full batch: its data-refined LLC is the LLC
    itself, draw by draw. A loss offset of 3e4 leaves float32 ~2e-3 of resolution, which
    had made the observable's LLC 0.66 against 0.98."""
    out = x64_runs["observables"]
    assert out.returncode == 0, out.stderr[-2000:]
    llc, observed, dtype = out.stdout.split()
    assert dtype == "float64"
    assert abs(float(llc) - float(observed)) < 1e-6 * abs(float(llc))


def test_64_bit_mode_runs_the_exact_samplers_on_float32_params(x64_runs):
    """With x64 on, BlackJAX draws MALA's noise and HMC's momenta in float64 whatever the
    position's type; a float32 chain had failed to trace (cond/scan types differ). Each
    exact sampler now runs on float32 parameters, and its estimate agrees with MALA's on
    float64 parameters: all are Metropolis-corrected samplers of the same posterior, with
    different noise streams (within 4 combined standard errors)."""
    out = x64_runs["exact"]
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.strip().split("\n")]
    names = [(r[0], r[1]) for r in rows]
    assert names == [
        ("mala", "float64"),
        ("mala", "float32"),
        ("hmc", "float32"),
        ("nuts", "float32"),
    ]
    (m64, s64), *others = [(float(r[2]), float(r[3])) for r in rows]
    for (sampler, _), (m, se) in zip(names[1:], others, strict=True):
        assert np.isfinite([m, se]).all(), sampler
        assert abs(m - m64) < 4 * np.hypot(se, s64), (sampler, m, m64)
