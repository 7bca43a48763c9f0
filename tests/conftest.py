import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj

# XLA's CPU compiler, chosen before JAX starts a backend (importing JAX and slt_jax does
# not). The suite is compile-bound: most of an in-process test's time is tracing and
# compiling small programs, most of a compile is LLVM's code generation, and most programs
# run for milliseconds. So every test, and every process a test starts (they inherit the
# environment), compiles with XLA's legacy CPU fusion emitters and LLVM at optimisation
# level 0 without its expensive passes: the same HLO programs (XLA's own passes, sharding
# and buffers unchanged), code generated about twice as fast and running slower (the suite:
# 507 s -> 376 s; the few tests that run long chains take up to 2.4x longer; benchmarks/
# README.md, "The test suite's compiler"). What the tests check, slt_jax's behaviour, is the
# same; SLT_JAX_TEST_XLA_DEFAULTS=1 runs the suite with XLA's defaults. A JAX whose XLA
# lacks a flag (XLA aborts on an unknown flag) is probed once and keeps its defaults.
LLVM_LEVEL_0 = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FAST_CPU_COMPILATION = f"--xla_cpu_use_fusion_emitters=false {LLVM_LEVEL_0}"


def optimized_code_env() -> dict:
    """This process's environment with LLVM's optimisation back at XLA's default level, for
    a test that starts a process whose chains run long enough to pay for it."""
    return {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(LLVM_LEVEL_0, "")}


# Runs Python sources given as (file name, source) pairs on its command line one after the
# other, each in a namespace of its own, and prints one line per source: its exit status,
# standard output and standard error, as a process of its own would give them.
_RUN_EACH = """
import contextlib, io, sys, traceback
args = sys.argv[1:]
for filename, source in zip(args[::2], args[1::2]):
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(source, filename, "exec"), {"__name__": "__main__", "__file__": filename})
        except BaseException:
            traceback.print_exc()
            status = 1
    print("@@result", repr((status, out.getvalue(), err.getvalue())), flush=True)
"""


def run_each(scripts: dict, *, env: dict, timeout: float) -> dict:
    """``scripts`` (name → a script's path, or its source) run in one new process, one after
    the other, each as ``python SCRIPT`` would run it but with one start of Python and JAX
    for all: name → its ``returncode``, ``stdout`` and ``stderr``."""
    import ast
    import pathlib
    import types

    args = []
    for name, script in scripts.items():
        if isinstance(script, pathlib.Path):
            args += [str(script), script.read_text()]
        else:
            args += [f"<{name}>", script]
    run = subprocess.run(
        [sys.executable, "-c", _RUN_EACH, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    results = [
        ast.literal_eval(line.removeprefix("@@result "))
        for line in run.stdout.splitlines()
        if line.startswith("@@result ")
    ]
    assert run.returncode == 0 and len(results) == len(scripts), run.stderr[-3000:]
    return {
        name: types.SimpleNamespace(returncode=status, stdout=stdout, stderr=stderr)
        for name, (status, stdout, stderr) in zip(scripts, results, strict=True)
    }


def _compile_fast_on_cpu() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("SLT_JAX_TEST_XLA_DEFAULTS") or "xla_cpu_use_fusion_emitters" in flags:
        return  # chosen already (pytest-xdist's workers inherit the controller's choice)
    flags = f"{flags} {FAST_CPU_COMPILATION}".strip()
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": flags},
        capture_output=True,
    )
    if probe.returncode == 0:
        os.environ["XLA_FLAGS"] = flags


_compile_fast_on_cpu()

# JAX's persistent compilation cache, on for the whole session (as the command line turns it
# on): tests that build the same program (the same model, shapes and options behind a fresh
# loss function) load it instead of compiling it again. It lives in a directory of this
# session, not in the user's ~/.cache, one per pytest-xdist worker (JAX writes its entries
# without a lock, so two processes must not share one).
os.environ.setdefault("SLT_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="slt_jax-test-cache-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["SLT_JAX_CACHE_DIR"] = os.path.join(
        os.environ["SLT_JAX_CACHE_DIR"], os.environ["PYTEST_XDIST_WORKER"]
    )
sj.enable_compilation_cache()


class CountingLoss:
    """A loss function that counts how often JAX traces it (to detect recompilation)."""

    def __init__(self, fn):
        self.fn = fn
        self.traces = 0

    def __call__(self, params, batch):
        self.traces += 1
        return self.fn(params, batch)


def quadratic_loss(curvatures):
    """L(w) = ½ Σ h_i w_i², independent of the batch (exact gradients)."""
    h = jnp.asarray(curvatures, jnp.float32)

    def loss_fn(w, batch):
        del batch
        return 0.5 * jnp.sum(h * w**2)

    return loss_fn


@pytest.fixture
def linear_regression():
    """A well-specified linear regression: y = x·w0 + N(0, 1); returns (loss_fn, w_ols, data)."""
    rng = np.random.default_rng(0)
    n, d = 2000, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    w0 = rng.normal(size=d).astype(np.float32)
    y = (x @ w0 + rng.normal(size=n)).astype(np.float32)
    w_ols = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)[0]

    def loss_fn(w, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((xb @ w - yb) ** 2)

    return loss_fn, jnp.asarray(w_ols, jnp.float32), (jnp.asarray(x), jnp.asarray(y))


@pytest.fixture(autouse=True)
def _no_x64():
    assert not jax.config.jax_enable_x64


def assert_mc_close(value, stderr, target, *, extra=0.0, max_rel_stderr=0.1):
    """``|value − target| < 4·stderr + extra``, with the Monte-Carlo error itself bounded:
    a run whose standard error is a large fraction of the target (a chain that never
    equilibrated) would otherwise pass any comparison."""
    assert np.isfinite(stderr) and stderr < max_rel_stderr * abs(target), (
        f"standard error {stderr} is not below {max_rel_stderr} × |{target}|: the test "
        "cannot tell a right value from a wrong one"
    )
    assert abs(value - target) < 4 * stderr + extra, (value, target, stderr, extra)


def chain_program(loss_fn, keys, center, data, *, arrays=None, **options):
    """Chains through the compiled program users run (``programs.run_items``, sharded over
    the devices), with options resolved as every entry point resolves them. ``arrays``
    overrides the array settings (e.g. a zero step size, which no entry point accepts).
    Returns ``(host traces, L_n(w*))``."""
    from slt_jax._src.data import num_examples
    from slt_jax._src.engine import programs

    options = {"diagnostic_every": 0, "num_chains": len(keys), **options}
    config, _ = sj.LLCConfig(**options).resolve(num_examples(data))
    arrays = config.arrays() if arrays is None else arrays
    shape = lambda x: (len(keys), *np.shape(x))  # noqa: E731
    centers = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), shape(x)), center)
    mesh = programs.resolve_mesh()
    items = programs.Items(keys, centers, arrays)
    trace = programs.run_items(loss_fn, config.static(), items, data, mesh)
    one = jax.tree.map(lambda x: jnp.asarray(x)[None], center)
    return trace, float(programs.center_losses(loss_fn, one, data, config.batch_size)[0])


# The test files that take longest (SLT_JAX_TEST_CPU_LOG, 7 Dec 2026; the order only needs to be
# roughly right), run first: with the files shared out to pytest-xdist workers
# (scripts/dev.sh test), a long file started last would leave the other worker idle at the
# end. The order of the tests within a file, and of the other files, is unchanged.
LONGEST_FIRST = (
    "test_multidevice.py",
    "test_notebooks.py",
    "test_restricted.py",
    "test_sweep.py",
    "test_models_attention.py",
    "test_streaming.py",
    "test_lm_loss.py",
    "test_calibration_league.py",
    "test_accelerator_bench.py",
    "test_scale.py",
    "test_docs.py",
    "test_refined.py",
    "test_refined_sweep.py",
    "test_models_icl.py",
    "test_lm_cli.py",
    "test_calibrate.py",
    "test_samplers.py",
    "test_models_turing.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# SLT_JAX_TEST_CPU_LOG=dir: each worker appends one line per test to dir/<worker>.tsv: the
# test's id, its wall seconds, the CPU seconds of this process (all threads) and of the
# subprocesses it waited for, set-up and tear-down included, and the seconds this process
# spent tracing, lowering and compiling with XLA (how the suite's cost is measured: on CI's
# 2 busy cores its wall time is about the total CPU over 2).
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]
if os.environ.get("SLT_JAX_TEST_CPU_LOG"):

    def _count_compile(event, duration, **_):
        if event in _COMPILE_EVENTS:
            _compile_seconds[0] += duration

    jax.monitoring.register_event_duration_secs_listener(_count_compile)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    log = os.environ.get("SLT_JAX_TEST_CPU_LOG")
    if not log:
        yield
        return
    import resource
    import time

    def cpu():
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    t0, (c0, k0), x0 = time.perf_counter(), cpu(), _compile_seconds[0]
    yield
    t1, (c1, k1), x1 = time.perf_counter(), cpu(), _compile_seconds[0]
    os.makedirs(log, exist_ok=True)
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(log, f"{name}.tsv"), "a") as f:
        f.write(f"{item.nodeid}\t{t1 - t0:.2f}\t{c1 - c0:.2f}\t{k1 - k0:.2f}\t{x1 - x0:.2f}\n")
