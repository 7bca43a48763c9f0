"""One of two processes joined by jax.distributed on localhost (see test_multidevice.py).

Usage: multiprocess_check.py PROCESS_ID PORT OUT_DIR
"""

import sys
import warnings

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=120,
)

import numpy as np  # noqa: E402
import sweep_factory  # noqa: E402

import slt_jax as sj  # noqa: E402

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
# a cache per process (JAX writes entries without a lock): the second run (the resume) loads
# the programs the first compiled, as the command line's runs do
sj.enable_compilation_cache(f"{out}/jax-cache-{process_id}")
assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
snapshots, steps = sweep_factory.checkpoints(3)
kw = dict(num_chains=3, num_steps=150, step_size=1e-3, localization=10.0, batch_size=64)
single = sj.estimate_llc(sweep_factory.loss_fn, snapshots[1], sweep_factory.data(), **kw)
sweep = sj.estimate_llc_checkpoints(
    sweep_factory.loss_fn,
    snapshots,
    sweep_factory.data(),
    steps=steps,
    chunk_size=2,
    progress=False,
    out=f"{out}/results",
    **kw,
)
np.savez(
    f"{out}/process{process_id}.npz",
    single=single.llc_trace,
    sweep=sweep.llc_trace,
    sweep_init=sweep.init_loss,
)
print("OK", process_id)
