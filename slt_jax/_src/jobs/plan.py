"""A plan before a run: compile a checkpoint sweep's program and report what it will take,
without sampling (``estimate_llc_checkpoints(..., dry_run=True)``, ``slt-jax llc --dry-run``).

Reported: the mesh (its axes and devices), the chains' layout on a device, the chunking,
XLA's memory analysis of the compiled program per device (arguments, outputs, temporaries),
the compile time, and the time per step from a short timed run of the same program at
``timing_steps`` steps (compiled and run twice: the second run is timed, the first minus
the second is the compile time), from which the whole sweep's run time is extrapolated.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from slt_jax._src.engine import programs
from slt_jax._src.jobs import orchestrate


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a sweep will take (see the module docstring). Byte counts are per device."""

    mesh: dict
    devices: tuple[str, ...]
    chain_layout: str
    num_checkpoints: int
    chunk_size: int
    num_chunks: int
    chains_per_chunk: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    compile_s: float
    step_s: float
    estimated_s: float
    calibration_chain_steps: int | None = None

    @property
    def device_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes

    def summary(self) -> str:
        mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
        lines = [
            f"mesh {self.mesh} over {len(self.devices)} device(s) ({self.devices[0]}), "
            f"chains laid out as a {self.chain_layout}",
            f"{self.num_checkpoints} checkpoints in {self.num_chunks} chunk(s) of "
            f"{self.chunk_size} ({self.chains_per_chunk} chains per chunk)",
            f"per device: {mib(self.device_bytes)} (arguments {mib(self.argument_bytes)}, "
            f"outputs {mib(self.output_bytes)}, temporaries {mib(self.temp_bytes)})",
            f"compile {self.compile_s:.1f} s; {1e3 * self.step_s:.2f} ms per step of a chunk; "
            f"about {self.estimated_s:.0f} s of sampling in all",
        ]
        if self.calibration_chain_steps is not None:
            lines.append(
                f"step_size='auto' will first calibrate: up to {self.calibration_chain_steps:,} "
                "chain-steps (not run here)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def dry_run(sweep, chunk_size, memory_budget, *, timing_steps: int = 20, calibration=None):
    """The :class:`RunPlan` of ``sweep`` (a :class:`~slt_jax._src.jobs.checkpoints.Sweep`)."""
    chunk = sweep.chunk_size(chunk_size, memory_budget)
    stats = sweep.lower(chunk).compile().memory_analysis()
    nbytes = lambda name: int(getattr(stats, name, 0) or 0) if stats is not None else 0  # noqa: E731
    config = sweep.config
    steps = max(1, min(timing_steps, config.num_steps))
    short = dataclasses.replace(config, num_steps=steps, num_burnin=0)
    indices = np.zeros(chunk, int)
    centers = sweep.centers(indices)
    losses = orchestrate.CenterLosses(np.zeros(chunk), np.zeros(chunk))
    run = lambda: orchestrate.run(  # noqa: E731
        sweep.loss_fn,
        centers,
        sweep.data,
        sweep.groups(indices, short),
        mesh=sweep.mesh,
        losses=losses,
    )
    start = time.perf_counter()
    run()  # compiles the short program, then runs it
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    timed = time.perf_counter() - start
    step_s, compile_s = timed / steps, max(0.0, first - timed)
    num_checkpoints = len(sweep.checkpoint_set)
    num_chunks = -(-num_checkpoints // chunk)
    static = config.static()
    layout = programs.default_layout(static, centers, chunk * config.num_chains)
    return RunPlan(
        mesh=dict(zip(sweep.mesh.axis_names, sweep.mesh.devices.shape, strict=True)),
        devices=tuple(str(d.device_kind) for d in np.ravel(sweep.mesh.devices)),
        chain_layout=layout,
        num_checkpoints=num_checkpoints,
        chunk_size=chunk,
        num_chunks=num_chunks,
        chains_per_chunk=chunk * config.num_chains,
        argument_bytes=nbytes("argument_size_in_bytes"),
        output_bytes=nbytes("output_size_in_bytes"),
        temp_bytes=nbytes("temp_size_in_bytes"),
        compile_s=compile_s,
        step_s=step_s,
        estimated_s=step_s * config.num_steps * num_chunks,
        calibration_chain_steps=calibration,
    )
