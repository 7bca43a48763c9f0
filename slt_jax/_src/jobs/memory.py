"""How many checkpoints a compiled sweep call can take: XLA's memory analysis against a
budget of device (or host) memory."""

from __future__ import annotations

import functools

import jax
import numpy as np


def available_host_memory() -> int | None:
    """The host's available memory in bytes (``MemAvailable`` of ``/proc/meminfo``), or
    ``None`` where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def default_memory_budget(device: jax.Device | None = None) -> int:
    """Bytes a sweep may use: 90% of the accelerator's free memory, or on CPU half of the
    host's available memory (``/proc/meminfo``), or 4 GiB when neither is known."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    available = available_host_memory()
    return 4 * 2**30 if available is None else available // 2


def host_chunk_limit(host_bytes: int, available: int | None = None) -> int | None:
    """The most checkpoints per chunk whose host copies, ``host_bytes`` each, fit in half
    of the host's available memory (``None``: no limit known)."""
    available = available_host_memory() if available is None else available
    if available is None or host_bytes <= 0:
        return None
    return max(1, (available // 2) // host_bytes)


def program_bytes(compiled) -> int | None:
    """Device memory of a compiled program (arguments, outputs, temporaries) per XLA."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def auto_chunk_size(measure, num_checkpoints: int, budget: int) -> int:
    """The largest chunk whose compiled program fits in ``budget`` bytes.

    ``measure(chunk)`` returns the program's bytes for a chunk of that many checkpoints.
    Memory grows about linearly with the chunk: measure all checkpoints at once, scale
    down, and halve until the estimate fits (one chunk at least).
    """
    chunk = num_checkpoints
    size = measure(chunk)
    if size is None:
        return chunk
    if size > budget:
        fixed = measure(1)
        per_checkpoint = max(1, (size - fixed) / max(1, chunk - 1))
        chunk = int(max(1, min(chunk - 1, 1 + (budget - fixed) // per_checkpoint)))
        while chunk > 1 and measure(chunk) > budget:
            chunk //= 2
    return chunk


def chunk_size_within(
    measure, num_checkpoints: int, memory_budget: int | None, *, host_bytes: int = 0
) -> int:
    r""":func:`auto_chunk_size` in the budget, host memory included; with several processes,
    the smallest.

    A chunk of :math:`c` checkpoints holds :math:`c \cdot` ``host_bytes`` of host memory
    besides its program (a lazy sweep: the parameters of the chunk sampling and of the next
    one being read, so twice a checkpoint's bytes). On a CPU, whose device memory is the
    host's, the two share ``memory_budget``: the chunk is the largest with
    ``measure(c) + c * host_bytes <= budget``. On an accelerator the program must fit the
    device budget and the host copies half of the host's available memory
    (:func:`host_chunk_limit`).
    """
    budget = memory_budget or default_memory_budget()
    if host_bytes and _host_is_device():
        device_measure = measure

        def measure(chunk):  # the program and the host copies in one memory
            size = device_measure(chunk)
            return None if size is None else size + chunk * host_bytes

        chunk_size = auto_chunk_size(measure, num_checkpoints, budget)
    else:
        chunk_size = auto_chunk_size(measure, num_checkpoints, budget)
        limit = host_chunk_limit(host_bytes)
        if limit is not None:
            chunk_size = min(chunk_size, limit)
    if jax.process_count() > 1:  # every process must run the same programs
        from jax.experimental import multihost_utils

        chunk_size = int(np.min(multihost_utils.process_allgather(np.int32(chunk_size))))
    return chunk_size


def _host_is_device() -> bool:
    """Whether the sweep's devices use the host's memory (the CPU backend)."""
    return jax.local_devices()[0].platform == "cpu"


def release_host_memory() -> None:
    """Give the host memory that the C allocator keeps after a chunk back to the system.

    glibc keeps freed memory in per-thread arenas and below a threshold that grows with
    the largest block freed, so a sweep that allocates and frees a chunk's host arrays
    (on the read-ahead thread, in the engine's streams) would see its resident memory creep
    up chunk after chunk, as if it held more checkpoints. ``malloc_trim(0)`` after each chunk
    returns those pages: measured on a GPT-NeoX of 4.4M parameters, chunk 2, the peak
    anonymous memory stays that of the compilation however many checkpoints follow
    (benchmarks/README.md). Elsewhere than glibc, nothing to do.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
