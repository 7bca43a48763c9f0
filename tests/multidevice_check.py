"""Run with 8 forced host devices (see test_multidevice.py): sharded equals single-device."""

import dataclasses
import warnings

import jax
import numpy as np
import sweep_factory

import slt_jax as sj
from slt_jax._src.engine import programs as sharding

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
assert jax.device_count() == 8, jax.devices()
one = [jax.devices()[0]]
data = sweep_factory.data()
snapshots, steps = sweep_factory.checkpoints(3)
kw = dict(num_steps=150, step_size=1e-3, localization=10.0, batch_size=64)


def same(a, b):
    for name in ("llc_trace", "loss_trace", "llc_per_chain", "init_loss", "diverged"):
        np.testing.assert_allclose(
            np.asarray(getattr(a, name), float),
            np.asarray(getattr(b, name), float),
            rtol=2e-5,
            atol=1e-5,
            err_msg=name,
        )


# estimate_llc: 5 and 11 chains over 8 devices (padded), default = every device.
for chains in (5, 11):
    sharded = sj.estimate_llc(sweep_factory.loss_fn, snapshots[1], data, num_chains=chains, **kw)
    single = sj.estimate_llc(
        sweep_factory.loss_fn, snapshots[1], data, num_chains=chains, devices=one, **kw
    )
    same(sharded, single)
    assert sharded.llc_trace.shape[0] == chains

# estimate_llc_checkpoints: 3 checkpoints × 3 chains = 9 items, chunks of 2 (padded).
sweep_kw = dict(kw, num_chains=3, chunk_size=2, progress=False, steps=steps)
sharded = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, **sweep_kw)
single = sj.estimate_llc_checkpoints(
    sweep_factory.loss_fn, snapshots, data, devices=one, **sweep_kw
)
same(sharded, single)

# A 2 × 4 mesh (axes flattened) gives the same, and new seeds do not recompile.
mesh = jax.make_mesh((2, 4), ("a", "b"))
same(
    sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, mesh=mesh, **sweep_kw),
    single,
)
compiled = sharding.num_compiled()
sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, seed=9, mesh=mesh, **sweep_kw)
assert sharding.num_compiled() == compiled, (sharding.num_compiled(), compiled)

# Chains of a runtime length (engine/blocks.py, the calibration's stages): 2 settings × 5
# chains over 8 devices (padded), in blocks of 64, give the single-device scan's chains.
from slt_jax._src.jobs import grid, orchestrate  # noqa: E402

config = sj.LLCConfig(num_chains=5, num_burnin=50, **kw)
cells = [
    dict(step_size=1e-3, localization=10.0, nbeta=None),
    dict(step_size=5e-4, localization=1.0, nbeta=None),
]
blocked = grid.run_grid(
    dataclasses.replace(
        orchestrate.prepare_run(sweep_factory.loss_fn, snapshots[1], data, config),
        block_steps=64,
    ),
    cells,
    config=config,
    common_keys=True,
)
scan = grid.run_grid(
    orchestrate.prepare_run(sweep_factory.loss_fn, snapshots[1], data, config, devices=one),
    cells,
    config=config,
    common_keys=True,
)
for a, b in zip(blocked, scan, strict=True):
    same(a, b)
print("OK")
