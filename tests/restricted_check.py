"""Run with 8 forced host devices (see test_restricted.py): compact restricted chains on an
8-device items mesh and a 2 × 4 (items × model) mesh equal one device, and equal the mask
path there."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax._src import restricted

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
n, d_in, d_hidden, d_out = 256, 8, 32, 4
x = rng.normal(size=(n, d_in)).astype(np.float32)
y = (x @ rng.normal(size=(d_in, d_out)) / 4 + 0.1 * rng.normal(size=(n, d_out))).astype(np.float32)
params = {
    "layer0": {
        "kernel": jnp.asarray(rng.normal(size=(d_in, d_hidden)) / 4, jnp.float32),
        "bias": jnp.zeros(d_hidden),
    },
    "layer1": {"kernel": jnp.asarray(rng.normal(size=(d_hidden, d_out)) / 8, jnp.float32)},
}


def loss_fn(p, batch):
    xb, yb = batch
    h = jnp.tanh(xb @ p["layer0"]["kernel"] + p["layer0"]["bias"])
    return 0.5 * jnp.mean((h @ p["layer1"]["kernel"] - yb) ** 2)


def unit(u):  # "head" u: 8 hidden units (columns of layer0, its biases, rows of layer1)
    def select(path, leaf):
        units = (np.arange(d_hidden) // 8) == u
        if path == "layer0/kernel":
            return np.broadcast_to(units, leaf.shape)
        if path == "layer0/bias":
            return units
        return np.broadcast_to(units[:, None], leaf.shape)

    return select


refinements = {f"unit{u}": unit(u) for u in range(4)}
refinements["scattered"] = lambda path, leaf: np.arange(leaf.size).reshape(leaf.shape) % 5 == 1
refinements["layer1"] = "layer1/*"
kw = dict(num_chains=3, num_steps=20, step_size=1e-4, localization=50.0, batch_size=32)
kw |= dict(nbeta=100.0, diagnostic_every=5)
single = sj.estimate_refined_llc(
    loss_fn, params, (x, y), refinements, devices=jax.devices()[:1], **kw
)
meshes = {
    "8 items": dict(devices=jax.devices()),
    "2 x 4": dict(mesh=jax.make_mesh((2, 4), ("items", "model"))),
}
runs = {
    k: sj.estimate_refined_llc(loss_fn, params, (x, y), refinements, **m, **kw)
    for k, m in meshes.items()
}
restricted.compactable = lambda *args: False
runs["mask, 2 x 4"] = sj.estimate_refined_llc(
    loss_fn, params, (x, y), refinements, **meshes["2 x 4"], **kw
)
for what, res in runs.items():
    for name in refinements:
        for field in ("loss_trace", "llc_trace", "weight_distance", "grad_norm", "noise_norm"):
            np.testing.assert_allclose(
                np.asarray(getattr(res[name], field)),
                np.asarray(getattr(single[name], field)),
                rtol=2e-4,
                atol=2e-5,
                err_msg=f"{what} {name} {field}",
            )
print("compact chains on", list(runs), "equal one device: OK")
