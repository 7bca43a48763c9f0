"""Run with 8 forced host devices (see test_multidevice.py): a 2 × 4 (items × model) mesh
gives the chains of one device, and splits each chain's parameters over the model axis."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import slt_jax as sj
from slt_jax._src.engine import programs, sharding
from slt_jax._src.jobs import orchestrate

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
n, d_in, d_hidden, d_out = 512, 16, 64, 8
x = rng.normal(size=(n, d_in)).astype(np.float32)
teacher = rng.normal(size=(d_in, d_out)).astype(np.float32) / 4
y = (x @ teacher + 0.1 * rng.normal(size=(n, d_out))).astype(np.float32)
params = {
    "layer0": {
        "kernel": jnp.asarray(rng.normal(size=(d_in, d_hidden)) / 4, jnp.float32),
        "bias": jnp.zeros(d_hidden + 1)[:d_hidden],
    },
    "layer1": {
        "kernel": jnp.asarray(rng.normal(size=(d_hidden, d_out)) / 8, jnp.float32),
        "bias": jnp.zeros(3),
    },  # 3: not divisible by 4, replicated
}


def loss_fn(p, batch):
    xb, yb = batch
    h = jnp.tanh(xb @ p["layer0"]["kernel"] + p["layer0"]["bias"])
    out = h @ p["layer1"]["kernel"] + jnp.sum(p["layer1"]["bias"])
    return 0.5 * jnp.mean((out - yb) ** 2)


kw = dict(
    num_chains=6, num_steps=120, step_size=1e-4, localization=50.0, batch_size=64, nbeta=100.0
)
single = sj.estimate_llc(loss_fn, params, (x, y), devices=[jax.devices()[0]], **kw)
mesh = jax.make_mesh((2, 4), ("items", "model"))
split = sj.estimate_llc(loss_fn, params, (x, y), mesh=mesh, **kw)
rules = [("layer0/kernel", (None, "model")), ("layer1/kernel", ("model", None))]
tensor = sj.estimate_llc(loss_fn, params, (x, y), mesh=mesh, partition_rules=rules, **kw)
only_model = sj.estimate_llc(loss_fn, params, (x, y), mesh=jax.make_mesh((8,), ("model",)), **kw)
for other in (split, tensor, only_model):
    for name in ("llc_trace", "loss_trace", "init_loss"):
        np.testing.assert_allclose(
            np.asarray(getattr(other, name)),
            np.asarray(getattr(single, name)),
            rtol=2e-4,
            atol=2e-5,
            err_msg=name,
        )
# A checkpoint sweep (3 checkpoints, chunks of 2) and refined LLCs on the 2 × 4 mesh.
snapshots = [jax.tree.map(lambda a, s=s: a * (1 + 0.1 * s), params) for s in range(3)]
sweep_kw = dict(kw, num_chains=3, chunk_size=2, progress=False, steps=[10, 20, 30])
swept = sj.estimate_llc_checkpoints(loss_fn, snapshots, (x, y), mesh=mesh, **sweep_kw)
alone = sj.estimate_llc_checkpoints(
    loss_fn, snapshots, (x, y), devices=[jax.devices()[0]], **sweep_kw
)
np.testing.assert_allclose(swept.llc_trace, alone.llc_trace, rtol=2e-4, atol=2e-5)
refinements = {"first": "layer0/*", "second": "layer1/*"}
refined = sj.estimate_refined_llc(loss_fn, params, (x, y), refinements, mesh=mesh, **kw)
plain = sj.estimate_refined_llc(
    loss_fn, params, (x, y), refinements, devices=[jax.devices()[0]], **kw
)
for name in refinements:
    np.testing.assert_allclose(
        refined[name].llc_trace, plain[name].llc_trace, rtol=2e-4, atol=2e-5, err_msg=name
    )
# A data set streamed from the host, over the 2 × 4 mesh, in blocks of a few steps.
source = sj.HostDataset([(x[i], y[i]) for i in range(n)], device_bytes=40_000)
streamed = sj.estimate_llc(loss_fn, params, source, mesh=mesh, **kw)
for name in ("llc_trace", "loss_trace", "init_loss"):
    np.testing.assert_allclose(
        np.asarray(getattr(streamed, name)),
        np.asarray(getattr(single, name)),
        rtol=2e-4,
        atol=2e-5,
        err_msg=name,
    )
print("same chains", float(split.llc_mean), float(single.llc_mean))

# The default split: FSDP along each leaf's largest divisible dimension.
specs = sharding.parameter_specs(params, programs.resolve_mesh(mesh))
assert specs["layer0"]["kernel"] == P(None, "model"), specs
assert specs["layer1"]["kernel"] == P("model"), specs
assert specs["layer1"]["bias"] == P(), specs

# Per-device parameter bytes by XLA's memory analysis: a bigger model, so that the
# parameters dominate the arguments; a 2 × 1 mesh against 2 × 4 with the same items.
big = {"w": jnp.zeros((256, 1024), jnp.float32), "v": jnp.zeros((1024, 8), jnp.float32)}
big_loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"]) @ p["v"] - b[1]) ** 2)  # noqa: E731
data = (np.zeros((64, 256), np.float32), np.zeros((64, 8), np.float32))
config, key = orchestrate.prepare(
    big_loss, big, data, sj.LLCConfig(num_chains=4, num_steps=4, batch_size=16)
)
one = jax.tree.map(lambda a: jnp.asarray(a)[None], big)
group = orchestrate.Group(config, 0, jax.random.split(key, 4))
bytes_of = {}
for shape in ((2, 1), (2, 4)):
    m = programs.resolve_mesh(
        jax.sharding.Mesh(
            np.array(jax.devices()[: shape[0] * shape[1]]).reshape(shape), ("items", "model")
        )
    )
    stats = orchestrate.lower(big_loss, one, data, [group], mesh=m).compile().memory_analysis()
    bytes_of[shape] = (stats.argument_size_in_bytes, stats.temp_size_in_bytes)
# The one centre is an argument held once per device (split over the model axis); the data
# set is replicated, not split: compare the arguments less the data's bytes.
data_bytes = sum(a.nbytes for a in data)
ratio = (bytes_of[(2, 1)][0] - data_bytes) / (bytes_of[(2, 4)][0] - data_bytes)
print("argument bytes per device", bytes_of, "ratio", ratio)
assert 3.5 < ratio <= 4.0, bytes_of
assert bytes_of[(2, 4)][1] < bytes_of[(2, 1)][1], bytes_of

# Activations split too: a wide layer whose activations dwarf its parameters, one chain.
wide = {"w": jnp.zeros((64, 2048), jnp.float32), "v": jnp.zeros((2048, 4), jnp.float32)}
wide_loss = lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"]) @ p["v"] - b[1]) ** 2)  # noqa: E731
wide_data = (np.zeros((2048, 64), np.float32), np.zeros((2048, 4), np.float32))
config, key = orchestrate.prepare(
    wide_loss,
    wide,
    wide_data,
    sj.LLCConfig(num_chains=1, num_steps=4, batch_size=1024, diagnostic_every=0),
)
one = jax.tree.map(lambda a: jnp.asarray(a)[None], wide)
group = orchestrate.Group(config, 0, jax.random.split(key, 1))
temps = {}
for size in (1, 4):
    m = programs.resolve_mesh(
        jax.sharding.Mesh(np.array(jax.devices()[:size]).reshape(1, size), ("items", "model"))
    )
    lowered = orchestrate.lower(wide_loss, one, wide_data, [group], mesh=m)
    temps[size] = lowered.compile().memory_analysis().temp_size_in_bytes
print("temporaries per device, model axis 1 vs 4:", temps)
assert temps[1] / temps[4] > 3.0, temps  # 8 MiB of activations per forward: split, not copied

# Bad rules: clear errors before anything is compiled.
compiled = programs.num_compiled()
for bad, words in (
    ([("decoder/kernel", (None, "model"))], "matches no parameter"),
    ([("layer1/bias", ("model",))], "does not divide"),
    ([("layer0/kernel", (None, None, "model"))], "rank 2"),
    ([("layer0/kernel", ("items", None))], "'items'"),
):
    try:
        sj.estimate_llc(loss_fn, params, (x, y), mesh=mesh, partition_rules=bad, **kw)
    except ValueError as error:
        assert words in str(error), (words, str(error))
    else:
        raise AssertionError(f"no error for {bad}")
assert programs.num_compiled() == compiled
print("OK")
