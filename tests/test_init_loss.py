"""``init_loss_batches``: L_n(w*) exact or from a bounded keyed sample of minibatches.

The sample's mean and finite-population standard error against the exact pass on a data
set whose per-example losses are known; the automatic choice; the standard error in
``llc_stderr`` (plain) and not (paired); no full-data pass where it is not asked for; bad
values before anything is compiled; the same sample streamed and in memory; the result
through its round trips."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax._src import data as _data
from slt_jax._src.engine import programs
from slt_jax._src.estimators.diagnostics import chain_diagnostics
from slt_jax._src.estimators.llc import init_loss_estimate
from slt_jax._src.jobs import orchestrate

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
pytestmark = pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")

N, B = 4000, 10
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 3)).astype(np.float32)
Y = (X @ np.ones(3) + RNG.standard_exponential(N)).astype(np.float32)  # skewed losses
W = jnp.asarray([1.0, 0.9, 1.1], jnp.float32)
RUN = dict(num_chains=2, num_steps=12, batch_size=B, step_size=1e-4, localization=10.0)


def loss_fn(w, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def per_example() -> np.ndarray:
    """The per-example losses at W, in float64."""
    return 0.5 * (X.astype(np.float64) @ np.asarray(W, np.float64) - Y) ** 2


class CountingArrays(sj.HostArrays):
    """A host source that counts the examples read (every gather)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = 0

    def gather(self, indices):
        self.read += np.size(indices)
        return super().gather(indices)


class Recording(sj.HostArrays):
    """A host source that records the indices of every gather."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gathers = []

    def gather(self, indices):
        self.gathers.append(np.asarray(indices).ravel())
        return super().gather(indices)


def _center(data, resolved, seed=0):
    key = jax.random.key(seed)
    one = jax.tree.map(lambda x: jnp.asarray(x)[None], W)
    mesh = programs.resolve_mesh()
    losses = orchestrate.center_losses(loss_fn, one, data, resolved, [""], key=key, mesh=mesh)
    return float(losses.mean[0]), float(losses.stderr[0])


def test_sample_mean_and_stderr_match_the_finite_population_theory():
    """Over R keys, L̂'s mean is L_n(w*) and its variance (1 − kb/n) S²/(kb), S² the known
    per-example variance; the mean of se² is that variance (se² is unbiased). Tolerances:
    4 Monte-Carlo standard errors of each average over R = 300 draws."""
    losses = per_example()
    exact, s2 = losses.mean(), losses.var(ddof=1)
    k, reps = 32, 300
    var = (1 - k * B / N) * s2 / (k * B)
    config, _ = sj.LLCConfig(**RUN, init_loss_batches=k).resolve(N)
    assert config.init_loss_batches == k
    draws = np.array([_center((X, Y), config, seed) for seed in range(reps)])
    means, ses = draws[:, 0], draws[:, 1]
    assert abs(means.mean() - exact) < 4 * np.sqrt(var / reps)
    # the sample variance of R normal draws: relative sd sqrt(2 / (R - 1))
    assert abs(means.var(ddof=1) / var - 1) < 4 * np.sqrt(2 / (reps - 1))
    # se²'s own relative sd is about sqrt(2 / (k - 1)) (batch means nearly normal)
    assert abs(np.mean(ses**2) / var - 1) < 4 * np.sqrt(2 / (k - 1) / reps)
    # and each se is that of its own sample, computed as documented
    indices = _data.sample_batches(jax.random.key(0), N, B, k)
    batch_means = losses[indices].mean(axis=1)
    mean, se = init_loss_estimate(batch_means, N, B)
    np.testing.assert_allclose(draws[0], [mean, se], rtol=1e-5)


def test_a_sample_that_covers_the_data_is_the_exact_pass():
    exact = per_example().mean()
    config, _ = sj.LLCConfig(**RUN, init_loss_batches=N // B).resolve(N)
    assert config.init_loss_batches == "exact"
    mean, se = _center((X, Y), config)
    assert se == 0.0
    np.testing.assert_allclose(mean, exact, rtol=1e-6)
    # the same numbers from every batch of one permutation: se = 0, mean = L_n to rounding
    indices = _data.sample_batches(jax.random.key(3), N, B, N // B)
    assert sorted(indices.ravel().tolist()) == list(range(N))
    one = jax.tree.map(lambda x: jnp.asarray(x)[None], W)
    batches = programs.center_losses(loss_fn, one, (X, Y), B, indices=indices)
    mean, se = init_loss_estimate(batches[0], N, B)
    assert se == 0.0
    np.testing.assert_allclose(mean, exact, rtol=1e-6)


@pytest.mark.parametrize(
    ("n", "estimator", "expected"),
    [
        (2 * 12 * B, "paired", "exact"),  # no more examples than the chains see
        (2 * 12 * B + 1, "paired", "exact"),  # 32 batches would cover it: exact costs no more
        (10**6, "paired", 32),
        (10**6, "plain", 32),  # max(32, chains x draws = 2 x 9)
        (10**7, "plain", 2 * 900),  # 2 chains x 900 draws
    ],
)
def test_the_automatic_rule(n, estimator, expected):
    steps = 1200 if expected == 1800 else 12
    config = sj.LLCConfig(**{**RUN, "num_steps": steps}, estimator=estimator)
    assert config.resolve(n)[0].init_loss_batches == expected
    assert sj.LLCConfig(**RUN, init_loss_batches="exact").resolve(n)[0].init_loss_batches == (
        "exact"
    )


def test_automatic_choice_on_small_data_and_on_a_big_host_source():
    small = sj.estimate_llc(loss_fn, W, (X[:200], Y[:200]), **RUN)
    assert small.init_loss_batches == "exact" and small.init_loss_stderr == 0.0
    np.testing.assert_allclose(small.init_loss, per_example()[:200].mean(), rtol=1e-6)
    source = CountingArrays((X, Y))
    big = sj.estimate_llc(loss_fn, W, source, **RUN)
    assert big.init_loss_batches == 32 and big.init_loss_stderr > 0
    # one streaming read for the checks, 32 batches for L_n(w*), the chains' minibatches
    assert source.read == N + 32 * B + 2 * 12 * B
    source.read = 0
    again = sj.estimate_llc(loss_fn, W, source, **RUN, init_loss_batches="exact")
    assert again.init_loss_batches == "exact"
    assert source.read == N + 2 * 12 * B  # checked once per source; the exact pass reads N


def test_paired_does_no_full_pass_and_its_estimate_ignores_the_sample():
    source = CountingArrays((X, Y))
    source.check_once()  # the checks' one read, remembered
    sampled = sj.estimate_llc(loss_fn, W, source, **RUN, seed=4)
    assert source.read == N + 32 * B + 2 * 12 * B  # no full pass for L_n(w*)
    exact = sj.estimate_llc(loss_fn, W, source, **RUN, seed=4, init_loss_batches="exact")
    np.testing.assert_array_equal(sampled.llc_trace, exact.llc_trace)
    assert sampled.llc_stderr == exact.llc_stderr
    assert sampled.llc_stderr == chain_diagnostics(sampled.llc_trace).stderr
    # WBIC (paired) needs L_n(w*): the sample's error is in its standard error
    n, nb = N, sampled.config.nbeta
    expected = np.hypot(sampled.llc_stderr * n / nb, n * sampled.init_loss_stderr)
    np.testing.assert_allclose(sampled.wbic_stderr, expected, rtol=1e-12)


def test_plain_stderr_adds_the_sample_in_quadrature_and_wbic_cancels_it():
    run = dict(RUN, estimator="plain", seed=5)
    sampled = sj.estimate_llc(loss_fn, W, (X, Y), **run, init_loss_batches=16)
    exact = sj.estimate_llc(loss_fn, W, (X, Y), **run, init_loss_batches="exact")
    nb = sampled.config.nbeta
    mcse = chain_diagnostics(sampled.llc_trace).stderr
    np.testing.assert_allclose(
        sampled.llc_stderr, np.hypot(mcse, nb * sampled.init_loss_stderr), rtol=1e-12
    )
    assert sampled.llc_stderr > mcse and exact.llc_stderr == exact.llc_mcse
    np.testing.assert_allclose(sampled.llc_mcse, exact.llc_mcse, rtol=1e-5)
    # the same chains: λ̂ differs by nβ (L_n − L̂) only; WBIC = n · mean L_B, no L_n(w*)
    shift = nb * (exact.init_loss - sampled.init_loss)
    np.testing.assert_allclose(sampled.llc_mean - exact.llc_mean, shift, rtol=1e-4)
    np.testing.assert_allclose(sampled.wbic, exact.wbic, rtol=1e-6)
    np.testing.assert_allclose(sampled.wbic_stderr, exact.wbic_stderr, rtol=1e-5)
    # one batch: no standard error
    one = sj.estimate_llc(loss_fn, W, (X, Y), **run, init_loss_batches=1)
    assert one.init_loss_batches == 1 and np.isnan(one.init_loss_stderr)


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError), ("auto", TypeError),
     ("Exact", TypeError), (np.float32(4), TypeError)],
)  # fmt: skip
def test_bad_values_error_before_compiling(value, error):
    before = programs.num_compiled()
    with pytest.raises(error, match="init_loss_batches"):
        sj.estimate_llc(loss_fn, W, (X, Y), **RUN, init_loss_batches=value)
    with pytest.raises(error, match="init_loss_batches"):
        sj.llc_function(loss_fn, init_loss_batches=value)
    assert programs.num_compiled() == before


def test_streamed_and_in_memory_draw_the_same_sample():
    config = dict(RUN, estimator="plain", init_loss_batches=24, seed=7)
    memory = sj.estimate_llc(loss_fn, W, (X, Y), **config)
    streamed = sj.estimate_llc(loss_fn, W, sj.HostArrays((X, Y), device_bytes=4096), **config)
    np.testing.assert_allclose(streamed.init_loss, memory.init_loss, rtol=1e-6)
    np.testing.assert_allclose(streamed.init_loss_stderr, memory.init_loss_stderr, rtol=1e-5)
    # the very same examples: those the source reads for L_n(w*) are the keyed sample
    source = Recording((X, Y), device_bytes=4096)
    source.check_once()
    sj.estimate_llc(loss_fn, W, source, **config)
    want = _data.sample_batches(jax.random.key(7), N, B, 24).ravel()
    np.testing.assert_array_equal(np.concatenate(source.gathers[1:3]), want)
    np.testing.assert_allclose(streamed.llc_mean, memory.llc_mean, rtol=1e-5)


def test_llc_function_uses_the_same_sample():
    run = dict(RUN, estimator="plain", init_loss_batches=20, seed=0)
    result = sj.estimate_llc(loss_fn, W, (X, Y), **run)
    llc = jax.jit(sj.llc_function(loss_fn, **{k: v for k, v in run.items() if k != "seed"}))
    inline = llc(jax.random.key(0), W, (jnp.asarray(X), jnp.asarray(Y)))
    np.testing.assert_allclose(float(inline.init_loss), result.init_loss, rtol=1e-6)
    np.testing.assert_allclose(inline.llc_per_chain, result.llc_per_chain, rtol=1e-4)


def test_checkpoints_share_the_sample_and_it_survives_the_store(tmp_path):
    run = dict(RUN, estimator="plain", init_loss_batches=8, seed=2)
    ckpts = [W, W + 0.05]
    res = sj.estimate_llc_checkpoints(
        loss_fn, ckpts, (X, Y), steps=[0, 10], out=tmp_path / "out", progress=False, **run
    )
    alone = sj.estimate_llc(loss_fn, ckpts[1], (X, Y), **run)
    np.testing.assert_allclose(res.init_loss[1], alone.init_loss, rtol=1e-6)
    np.testing.assert_allclose(res.init_loss_stderr[1], alone.init_loss_stderr, rtol=1e-5)
    assert res.init_loss_batches == 8 and res.checkpoint(1).init_loss_batches == 8
    loaded = sj.load_results(tmp_path / "out")
    np.testing.assert_array_equal(loaded.init_loss_stderr, res.init_loss_stderr)
    assert loaded.config == res.config
    back = sj.LLCResult.from_xarray(alone.to_xarray())
    assert back.config == alone.config and back.init_loss_stderr == alone.init_loss_stderr
    assert "8 batches of 10" in alone.summary()
    assert alone.config.to_dict()["init_loss_batches"] == 8
    # an exact result records nothing new (results written before the option resume)
    exact = sj.estimate_llc(loss_fn, W, (X[:200], Y[:200]), **RUN)
    assert "init_loss_batches" not in exact.config.to_dict()
    assert sj.LLCConfig(**exact.config.to_dict()) == exact.config
    assert "exact, all 200 examples" in exact.summary()


def test_grid_and_two_temperatures_share_one_sample():
    run = dict(RUN, estimator="plain", init_loss_batches=8, num_steps=40)
    tt = sj.estimate_llc_two_temperature(loss_fn, W, (X, Y), nbetas=(50.0, 100.0), **run)
    first, second = tt.results
    assert first.init_loss == second.init_loss and first.init_loss_stderr > 0
    # L_n(w*) cancels: the standard error is the chains' only
    expected = np.hypot(first.llc_mcse / 50, second.llc_mcse / 100) / abs(1 / 50 - 1 / 100)
    np.testing.assert_allclose(tt.llc_stderr, expected, rtol=1e-12)


def test_a_sweep_into_a_results_directory_reads_a_big_source_once(tmp_path):
    """The checks and the results directory's fingerprint share one streaming read; the
    rest is the L_n(w*) sample (once per chunk of checkpoints) and the chains' minibatches."""
    source = CountingArrays((X, Y))
    sj.estimate_llc_checkpoints(
        loss_fn, [W, W + 0.05], source, steps=[0, 10], out=tmp_path / "o", progress=False,
        chunk_size=1, **RUN,
    )  # fmt: skip
    assert source.read == N + 2 * (32 * B + 2 * 12 * B)  # two chunks of one checkpoint
    assert source.fingerprint() == CountingArrays((X, Y)).fingerprint()  # as read apart
    tokens = RNG.integers(0, 50, 10_000).astype(np.uint16)
    windows = sj.TokenWindows(tokens, seq_len=7, stride=3)
    windows.check_once(50, fingerprint=True)
    assert windows.fingerprint() == sj.TokenWindows(tokens, seq_len=7, stride=3).fingerprint()
    bad = sj.TokenWindows(np.append(tokens, 60).astype(np.uint16), seq_len=7)
    with pytest.raises(ValueError, match="id 60"):
        bad.check_once(50, fingerprint=True)


def test_the_command_line_option():
    import argparse

    from slt_jax._src import cli

    parser = argparse.ArgumentParser()
    cli._add_sampler_options(parser)
    assert parser.parse_args([]).init_loss_batches is None
    assert parser.parse_args(["--init-loss-batches", "16"]).init_loss_batches == 16
    assert parser.parse_args(["--init-loss-batches", "exact"]).init_loss_batches == "exact"
    for bad in ("0", "2.5", "auto"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--init-loss-batches", bad])
    assert (
        cli._sampler_kwargs(parser.parse_args(["--init-loss-batches", "4"]))["init_loss_batches"]
        == 4
    )
