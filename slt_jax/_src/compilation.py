"""JAX's persistent compilation cache: compile a program once per machine, not per process.

With the cache on, a compiled XLA executable is written to a directory keyed by the
program, its shapes, the JAX version and the backend; a later process (a re-run, a resumed
sweep, the next checkpoint directory) loads it instead of compiling again. The command line
turns it on by default (``--no-compilation-cache`` to opt out); from Python, call
:func:`enable_compilation_cache` once before the first estimate.

The directory: ``directory`` if given, else ``$SLT_JAX_CACHE_DIR``, else
``$XDG_CACHE_HOME/slt_jax/jax`` (``~/.cache/slt_jax/jax``). Its entries are JAX's own
(``jax_compilation_cache_dir``); delete the directory to clear it.
"""

from __future__ import annotations

import os
import pathlib

import jax


def default_cache_dir() -> pathlib.Path:
    """Where the cache lives when no directory is given (see the module docstring)."""
    if os.environ.get("SLT_JAX_CACHE_DIR"):
        return pathlib.Path(os.environ["SLT_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "slt_jax" / "jax"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache for this process; returns its directory.

    Every program is cached, however fast it compiled (JAX's default skips programs that
    compile in under a second, which are most of a small model's). Calling it again with
    another directory moves the cache there (for programs not yet compiled in this
    process). Example: ``sj.enable_compilation_cache()`` at the top of a script.
    """
    path = pathlib.Path(directory) if directory is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if "jax_enable_compilation_cache" in jax.config.values:
        jax.config.update("jax_enable_compilation_cache", True)
    return path
