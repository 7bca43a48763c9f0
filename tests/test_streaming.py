"""Data sets that stay on the host (sj.TokenWindows, sj.HostDataset): streamed = in memory,
through every entry point; a sweep over a source 4x its device budget, interrupted and
resumed; bad sources are errors before anything is compiled."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax._src.engine import programs, stream

warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
pytestmark = pytest.mark.filterwarnings("ignore::slt_jax.LLCDiagnosticWarning")

N = 400
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 4)).astype(np.float32)
Y = (X @ np.ones((4, 2)) + 0.1 * RNG.normal(size=(N, 2))).astype(np.float32)
PARAMS = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
KW = dict(
    num_chains=3,
    num_steps=120,
    step_size=1e-3,
    batch_size=32,
    nbeta=100.0,
    localization=10.0,
    diagnostic_every=7,
)


def regression_loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def examples(device_bytes):
    return sj.HostDataset([(X[i], Y[i]) for i in range(N)], device_bytes=device_bytes)


def assert_same(a, b):
    for name in (
        "loss_trace",
        "llc_trace",
        "init_loss",
        "diverged",
        "grad_norm",
        "weight_distance",
    ):
        np.testing.assert_allclose(
            np.asarray(getattr(a, name), float),
            np.asarray(getattr(b, name), float),
            rtol=1e-5,
            atol=1e-6,
            err_msg=name,
        )


@pytest.mark.parametrize("estimator", ["paired", "plain"])
def test_streamed_equals_in_memory_whatever_the_block_size(estimator):
    memory = sj.estimate_llc(regression_loss, PARAMS, (X, Y), estimator=estimator, **KW)
    # 2 KiB: 2-step blocks (the burn-in of 30 and the 90 draws in many blocks); 64 MiB: one.
    for device_bytes in (2 * 3 * 32 * 24 * 2, 2**26):
        source = examples(device_bytes)
        static = memory.config.static()
        k = stream.block_steps(source, static, 3, programs.resolve_mesh())
        assert k == (2 if device_bytes < 2**20 else 120)
        streamed = sj.estimate_llc(regression_loss, PARAMS, source, estimator=estimator, **KW)
        assert_same(streamed, memory)


def test_blocks_that_do_not_divide_the_run_share_one_program():
    """120 steps in blocks of at most 7: 18 blocks of 7 (the last runs 6 steps past the end,
    which change nothing), burn-in and draws alike, one block program."""
    loss = lambda p, b: regression_loss(p, b)  # noqa: E731  (a fresh loss: fresh programs)
    memory = sj.estimate_llc(loss, PARAMS, (X, Y), **KW)
    source = examples(2 * 3 * 32 * 24 * 7)
    assert stream.block_steps(source, memory.config.static(), 3, programs.resolve_mesh()) == 7
    assert stream._schedule(memory.config.static(), 7) == [(t, 7) for t in range(0, 120, 7)]
    before = programs.num_compiled()
    streamed = sj.estimate_llc(loss, PARAMS, source, **KW)
    assert programs.num_compiled() - before == 3  # init, the block, finish
    assert_same(streamed, memory)


def test_host_arrays_and_memmaps_stream(tmp_path):
    memory = sj.estimate_llc(regression_loss, PARAMS, (X, Y), **KW)
    path = tmp_path / "x.npy"
    np.save(path, X)
    memmapped = (np.load(path, mmap_mode="r"), Y)
    assert_same(sj.estimate_llc(regression_loss, PARAMS, sj.HostArrays(memmapped), **KW), memory)
    with pytest.raises(ValueError, match="different lengths"):
        sj.HostArrays((X, Y[:10]))


def test_whole_data_batches_and_a_schedule_stream_too():
    kw = dict(KW, batch_size=N, step_size=lambda t: 1e-3 / (1 + t / 100))
    memory = sj.estimate_llc(regression_loss, PARAMS, (X, Y), **kw)
    assert_same(sj.estimate_llc(regression_loss, PARAMS, examples(20_000), **kw), memory)


def bigram_loss(p, tokens):
    logits = p["table"][tokens[:, :-1]]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


bigram_loss.vocab_size = 16


def token_stream(n_tokens=4096, vocab=16, seed=1):
    rng = np.random.default_rng(seed)
    # A noisy cycle: token t+1 is t+1 mod vocab most of the time.
    tokens = np.cumsum(rng.choice([1, 1, 1, 2], size=n_tokens)) % vocab
    return tokens.astype(np.uint16)


def test_token_files_raw_and_npy_equal_the_windows_in_memory(tmp_path):
    tokens = token_stream()
    raw, npy = tmp_path / "tokens.bin", tmp_path / "tokens.npy"
    tokens.tofile(raw)
    np.save(npy, tokens)
    seq_len = 17
    windows = tokens[: len(tokens) // seq_len * seq_len].reshape(-1, seq_len)
    params = {"table": jnp.zeros((16, 16))}
    kw = dict(KW, batch_size=16)
    memory = sj.estimate_llc(bigram_loss, params, windows, **kw)
    for source in (
        sj.TokenWindows(raw, seq_len, dtype="uint16", device_bytes=4096),
        sj.TokenWindows(npy, seq_len),
        sj.TokenWindows(tokens, seq_len),
    ):
        assert len(source) == len(windows)
        np.testing.assert_array_equal(source.gather(np.array([0, 5])), windows[[0, 5]])
        assert_same(sj.estimate_llc(bigram_loss, params, source, **kw), memory)
    overlapping = sj.TokenWindows(tokens, 8, stride=4)
    assert len(overlapping) == (len(tokens) - 8) // 4 + 1
    np.testing.assert_array_equal(overlapping.gather(np.array([2]))[0], tokens[8:16])


def test_a_hugging_face_dataset_on_disk_streams(tmp_path):
    datasets = pytest.importorskip("datasets")
    tokens = token_stream().astype(np.int32)
    windows = tokens[: len(tokens) // 16 * 16].reshape(-1, 16)
    table = datasets.Dataset.from_dict({"input_ids": windows, "index": np.arange(len(windows))})
    table.save_to_disk(str(tmp_path / "ds"))
    table = datasets.load_from_disk(str(tmp_path / "ds"))
    source = sj.HostDataset(table, columns=["input_ids"], device_bytes=8192)
    assert len(source) == len(windows)
    params = {"table": jnp.zeros((16, 16))}
    loss = lambda p, batch: bigram_loss(p, batch["input_ids"])  # noqa: E731
    kw = dict(KW, batch_size=8)
    memory = sj.estimate_llc(
        loss, params, {"input_ids": windows.astype(source.spec["input_ids"].dtype)}, **kw
    )
    assert_same(sj.estimate_llc(loss, params, source, **kw), memory)
    ragged = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4 + [[1, 2]] + [[1, 2, 3]]})
    with pytest.raises(ValueError, match=r"example 4 .*shape \(2,\)"):
        sj.estimate_llc(loss, params, sj.HostDataset(ragged), **dict(KW, batch_size=2))


def test_refined_llcs_with_observables_stream():
    refinements = {"w": "w", "b": "b"}
    observables = {"probe": (X[:20], Y[:20])}
    kw = dict(KW, observables=observables, observe_every=5)
    memory = sj.estimate_refined_llc(regression_loss, PARAMS, (X, Y), refinements, **kw)
    streamed = sj.estimate_refined_llc(regression_loss, PARAMS, examples(4000), refinements, **kw)
    for name in refinements:
        assert_same(streamed[name], memory[name])
    assert set(streamed.observables) == set(memory.observables) == set(refinements)
    for name in refinements:
        got, want = streamed.observables[name], memory.observables[name]
        assert want.loss_trace.size > 0, "no observations recorded"
        for field in ("loss_trace", "llc_mean", "init_loss"):
            np.testing.assert_allclose(
                getattr(got, field), getattr(want, field), rtol=1e-5, atol=1e-6, err_msg=field
            )


def test_a_sweep_over_a_source_four_times_its_budget_is_interrupted_and_resumes(
    tmp_path, monkeypatch
):
    tokens = token_stream(n_tokens=8192)
    source = sj.TokenWindows(tokens, 32, device_bytes=4096)
    assert len(tokens) * tokens.itemsize >= 4 * source.device_bytes
    rng = np.random.default_rng(3)
    snapshots = [
        {"table": jnp.asarray(rng.normal(size=(16, 16)) * s, jnp.float32)}
        for s in (0.0, 0.5, 1.0, 1.5, 2.0)
    ]
    steps = [0, 10, 100, 300, 1000]
    kw = dict(KW, batch_size=8, chunk_size=1, progress=False, steps=steps)
    whole = sj.estimate_llc_checkpoints(bigram_loss, snapshots, source, **kw)

    out = tmp_path / "results"
    calls, real = [0], stream.run_items

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # the third chunk never finishes
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "run_items", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sj.estimate_llc_checkpoints(bigram_loss, snapshots, source, out=out, **kw)
    assert len(list(out.glob("chunk-*.nc"))) == 2
    monkeypatch.undo()
    ran = [0]

    def counted(*args, **kwargs):
        ran[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "run_items", counted)
    resumed = sj.estimate_llc_checkpoints(bigram_loss, snapshots, source, out=out, **kw)
    assert ran[0] == 3  # only the chunks not on disk
    np.testing.assert_allclose(resumed.llc_trace, whole.llc_trace, rtol=1e-6)
    np.testing.assert_allclose(sj.load_results(out).llc_mean, whole.llc_mean, rtol=1e-6)


def test_dry_run_plans_a_streamed_sweep():
    source = sj.TokenWindows(token_stream(), 32, device_bytes=8192)
    snapshots = [{"table": jnp.zeros((16, 16))}] * 2
    plan = sj.estimate_llc_checkpoints(
        bigram_loss, snapshots, source, dry_run=True, steps=[1, 2], **dict(KW, batch_size=8)
    )
    assert plan.argument_bytes > 0 and plan.step_s > 0


def _no_compilation(fn):
    before = programs.num_compiled()
    fn()
    assert programs.num_compiled() == before


def test_bad_sources_are_errors_before_compiling(tmp_path):
    params = {"table": jnp.zeros((16, 16))}
    ragged = [np.zeros(8, np.int32)] * 5 + [np.zeros(9, np.int32)] + [np.zeros(8, np.int32)] * 4
    with pytest.raises(ValueError, match=r"example 5 .*shape \(9,\)"):
        _no_compilation(
            lambda: sj.estimate_llc(
                bigram_loss, params, sj.HostDataset(ragged), **dict(KW, batch_size=4)
            )
        )
    mixed = [np.zeros(8, np.int32)] * 7 + [np.zeros(8, np.int64)] + [np.zeros(8, np.int32)] * 2
    with pytest.raises(ValueError, match=r"example 7 .*dtype int64"):
        sj.estimate_llc(bigram_loss, params, sj.HostDataset(mixed), **dict(KW, batch_size=4))
    nan = [(X[i].copy(), Y[i]) for i in range(50)]
    nan[12][0][1] = np.nan
    with pytest.raises(ValueError, match="example 12 .*non-finite"):
        sj.estimate_llc(regression_loss, PARAMS, sj.HostDataset(nan), **dict(KW, batch_size=8))

    short = tmp_path / "short.bin"
    np.arange(10, dtype=np.uint16).tofile(short)
    with pytest.raises(ValueError, match=r"short.bin has 10 tokens, fewer than one window"):
        sj.TokenWindows(short, 32, dtype="uint16")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="not a whole number of uint16"):
        sj.TokenWindows(odd, 2, dtype="uint16")
    with pytest.raises(TypeError, match="pass dtype="):
        sj.TokenWindows(short, 4)

    tokens = token_stream()
    tokens[1000] = 16  # the loss declares vocab_size = 16
    with pytest.raises(ValueError, match=r"token 1000 \(id 16, in example 31\) is outside the "):
        _no_compilation(
            lambda: sj.estimate_llc(
                bigram_loss, params, sj.TokenWindows(tokens, 32), **dict(KW, batch_size=8)
            )
        )
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 8\)"):
        sj.estimate_llc(
            lambda p, b: bigram_loss(p, b % 16),
            params,
            sj.TokenWindows(token_stream(), 32, vocab_size=8),
            **dict(KW, batch_size=8),
        )
    with pytest.raises(ValueError, match="larger than the data set"):
        sj.estimate_llc(
            bigram_loss, params, sj.TokenWindows(token_stream(256), 32), **dict(KW, batch_size=16)
        )
    with pytest.raises(ValueError, match="needs a minibatch sampler"):
        _no_compilation(
            lambda: sj.estimate_llc(
                regression_loss, PARAMS, examples(2**20), **dict(KW, sampler="mala")
            )
        )


def test_a_calibration_grid_and_the_automatic_grid_read_a_source():
    grid = dict(
        step_sizes=[1e-4, 1e-3],
        localizations=[10.0],
        num_steps=120,
        batch_size=32,
        num_chains=2,
        nbetas=[100.0],
    )
    memory = sj.calibrate(regression_loss, PARAMS, (X, Y), **grid)
    streamed = sj.calibrate(regression_loss, PARAMS, sj.HostArrays((X, Y)), **grid)
    for a, b in zip(streamed.results, memory.results, strict=True):
        assert_same(a, b)
    # The automatic grid probes gradient scales on rows of the data: a source gives them.
    auto = sj.calibrate(
        regression_loss, PARAMS, sj.HostArrays((X, Y)), num_steps=200, batch_size=32
    )
    assert len(auto.results) > 0
