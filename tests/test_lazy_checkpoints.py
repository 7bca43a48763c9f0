"""Lazy checkpoint sets: listed from headers, read a chunk at a time (one chunk ahead on a
thread), each file once; equal to the set in memory; a file gone, cut short or still being
written is named, and a results directory keeps its finished chunks and resumes."""

import os
import pathlib
import re
import warnings

import jax
import numpy as np
import pytest
import sweep_factory
from flax import nnx

import slt_jax as sj
import slt_jax._src.engine.programs
import slt_jax._src.io.lazy
import slt_jax._src.jobs.memory as memory
from slt_jax._src.io.checkpoints import load_checkpoint_set, save_checkpoint
from slt_jax._src.io.fingerprint import checkpoint_hashes, loss_fingerprint
from slt_jax._src.io.lazy import CheckpointReadError

KW = dict(
    num_chains=2, num_steps=40, step_size=1e-3, localization=10.0, batch_size=64, progress=False
)
NEOX = sj.lm.GPTNeoXConfig(
    vocab_size=32,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        yield


def _run(tmp_path, num=5, fmt="safetensors"):
    """`num` snapshots of the sweep factory's model written to `tmp_path/ckpts`."""
    snapshots, steps = sweep_factory.checkpoints(num)
    root = tmp_path / "ckpts"
    paths = [save_checkpoint(root, s, p, format=fmt) for s, p in zip(steps, snapshots, strict=True)]
    return root, snapshots, steps, paths


def _counting_reads(monkeypatch) -> list:
    """Every checkpoint read (its path), through the one reader lazy sets use."""
    reads, read = [], slt_jax._src.io.lazy._read

    def counted(path, *args, **kwargs):
        reads.append(pathlib.Path(path).name)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(slt_jax._src.io.lazy, "_read", counted)
    return reads


def _assert_same(a, b):
    for name in ("llc_trace", "loss_trace", "llc_per_chain", "init_loss", "steps"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --- the set -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack", "orbax"])
def test_lazy_set_equals_the_set_in_memory(tmp_path, fmt, monkeypatch):
    root, snapshots, steps, _ = _run(tmp_path, 4, fmt)
    reads = _counting_reads(monkeypatch)
    cs = load_checkpoint_set(root)
    # msgpack has no header: its first file gives the structure; the others are not read.
    assert reads == ([] if fmt != "msgpack" else [reads[0]]) and cs.lazy
    eager = load_checkpoint_set(root, lazy=False)
    assert not eager.lazy and cs.steps.tolist() == eager.steps.tolist() == steps
    assert cs.sources == eager.sources
    assert jax.tree.map(lambda s: (s.shape, s.dtype), cs.template) == jax.tree.map(
        lambda s: (s.shape, s.dtype), eager.template
    )
    del reads[:]
    part = cs.read([1, 3, 3])  # a repeat is read once
    assert sorted(set(reads)) == sorted(reads) and len(reads) == 2
    for a, b in zip(jax.tree.leaves(part), jax.tree.leaves(eager.read([1, 3, 3])), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cs.read(2)["w"], snapshots[2]["w"])
    assert checkpoint_hashes(cs) == checkpoint_hashes(eager)  # the hashes of one content
    assert cs.select([0, 2]).lazy and cs.select([0, 2]).steps.tolist() == [steps[0], steps[2]]
    for a, b in zip(jax.tree.leaves(cs.params), jax.tree.leaves(eager.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_lazy_hf_checkpoints_equal_their_models(tmp_path, monkeypatch):
    for step in (0, 10, 20):
        sj.lm.save_model(sj.lm.GPTNeoX(NEOX, rngs=nnx.Rngs(step)), tmp_path / f"step{step}")
    reads = _counting_reads(monkeypatch)
    model, cs = sj.lm.load_checkpoints(tmp_path)
    assert cs.lazy and len(reads) == 1  # the first, for `model`
    for k, step in enumerate((0, 10, 20)):
        want = nnx.state(sj.lm.load_model(tmp_path / f"step{step}"), nnx.Param)
        for a, b in zip(jax.tree.leaves(cs.read(k)), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))
    assert len(reads) == 4


def test_the_template_traces_the_loss_as_the_arrays_do():
    snapshots, _ = sweep_factory.checkpoints(1)
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), snapshots[0])
    data = sweep_factory.data()
    assert loss_fingerprint(sweep_factory.loss_fn, template, data, 64) == loss_fingerprint(
        sweep_factory.loss_fn, snapshots[0], data, 64
    )


# --- the sweep -------------------------------------------------------------------------------


def test_a_lazy_sweep_equals_the_sweep_in_memory_and_reads_each_file_once(tmp_path, monkeypatch):
    root, snapshots, steps, paths = _run(tmp_path, 5)
    kw = {**KW, "chunk_size": 2}
    eager = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, sweep_factory.data(),
                                        steps=steps, **kw)  # fmt: skip
    reads = _counting_reads(monkeypatch)
    out = tmp_path / "out"
    lazy = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, sweep_factory.data(), out=out,
                                       **kw)  # fmt: skip
    _assert_same(lazy, eager)
    assert sorted(reads) == sorted(p.name for p in paths)  # each once: values and hash
    assert "checkpoint_stamps" in (out / "manifest.json").read_text()

    # Resume after losing chunk 1: only its two files are read; the finished ones are not.
    (out / "chunk-00001.nc").unlink()
    del reads[:]
    resumed = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, sweep_factory.data(),
                                          out=out, **kw)  # fmt: skip
    _assert_same(resumed, eager)
    assert sorted(reads) == sorted(p.name for p in paths[2:4])


def test_a_touched_checkpoint_is_verified_and_a_changed_one_refused(tmp_path, monkeypatch):
    root, snapshots, steps, paths = _run(tmp_path, 4)
    kw, out, data = {**KW, "chunk_size": 2}, tmp_path / "out", sweep_factory.data()
    first = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, data, out=out, **kw)
    os.utime(paths[1], ns=(1, 1))  # a new stamp, the same content: read and accepted
    reads = _counting_reads(monkeypatch)
    again = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, data, out=out, **kw)
    _assert_same(again, first)
    assert reads == [paths[1].name]
    save_checkpoint(root, steps[1], dict(snapshots[1], w=snapshots[1]["w"] + 1e-3))
    changed = rf"(?s)different checkpoints.*step {steps[1]} \({re.escape(str(paths[1]))}"
    with pytest.raises(ValueError, match=changed):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, data, out=out, **kw)
    # A set in memory resumes a lazy run's results, checked against the chunks' hashes.
    again = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, steps=steps,
                                        out=out, **kw)  # fmt: skip
    _assert_same(again, first)


@pytest.mark.parametrize("damage", ["vanished", "truncated"])
def test_a_checkpoint_lost_mid_sweep_is_named_and_the_sweep_resumes(tmp_path, damage):
    root, snapshots, steps, paths = _run(tmp_path, 5)
    kw, out, data = {**KW, "chunk_size": 2}, tmp_path / "out", sweep_factory.data()
    whole = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, snapshots, data, steps=steps, **kw)
    cs = load_checkpoint_set(root)  # listed while the files are all there
    victim = paths[3]  # in chunk 1: read ahead on the thread while chunk 0 samples
    saved = victim.read_bytes()
    if damage == "vanished":
        victim.unlink()
    else:
        victim.write_bytes(saved[: len(saved) // 2])
    with pytest.raises(CheckpointReadError, match=re.escape(str(victim))) as info:
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, cs, data, out=out, **kw)
    message = str(info.value)
    assert f"step {steps[3]}" in message and "1 finished chunk(s) stay" in message
    assert sorted(p.name for p in out.glob("chunk-*.nc")) == ["chunk-00000.nc"]
    # While it is broken, listing names it before anything is compiled.
    if damage == "truncated":
        with pytest.raises(ValueError, match=re.escape(str(victim)) + ".*incomplete"):
            sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, data, out=out, **kw)
    victim.write_bytes(saved)
    resumed = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, data, out=out, **kw)
    _assert_same(resumed, whole)


def test_an_error_on_the_read_ahead_thread_propagates(tmp_path, monkeypatch):
    root, _, _, paths = _run(tmp_path, 4)

    def broken(path, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(slt_jax._src.io.lazy, "_read", broken)
    with pytest.raises(CheckpointReadError, match=re.escape(str(paths[0])) + ".*Input/output"):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, sweep_factory.data(),
                                    chunk_size=2, **KW)  # fmt: skip


def _never_compile(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("compiled before the checkpoints were checked")

    monkeypatch.setattr(slt_jax._src.engine.programs, "program", fail)


def test_an_incomplete_newest_safetensors_is_an_error_before_compiling(tmp_path, monkeypatch):
    root, _, _, paths = _run(tmp_path, 3)
    paths[-1].write_bytes(paths[-1].read_bytes()[:-7])  # still being written
    _never_compile(monkeypatch)
    with pytest.raises(ValueError, match="newest checkpoint.*still writing") as info:
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, sweep_factory.data(), **KW)
    assert str(paths[-1]) in str(info.value) and "incomplete" in str(info.value)
    # The same of a Hugging Face run directory.
    for step in (0, 10):
        sj.lm.save_model(sj.lm.GPTNeoX(NEOX, rngs=nnx.Rngs(step)), tmp_path / "hf" / f"step{step}")
    weights = tmp_path / "hf" / "step10" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=re.escape(str(weights)) + ".*incomplete.*newest"):
        sj.lm.load_checkpoints(tmp_path / "hf")


def test_mismatched_headers_are_an_error_before_compiling(tmp_path, monkeypatch):
    root, snapshots, steps, paths = _run(tmp_path, 3)
    save_checkpoint(root, steps[1], dict(snapshots[1], w=np.ones(4, np.float32)))
    _never_compile(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"{paths[1]} does not match {paths[0]}")):
        sj.estimate_llc_checkpoints(sweep_factory.loss_fn, root, sweep_factory.data(), **KW)
    sj.lm.save_model(sj.lm.GPTNeoX(NEOX, rngs=nnx.Rngs(0)), tmp_path / "hf" / "step0")
    other = sj.lm.GPTNeoX(NEOX, rngs=nnx.Rngs(1))
    config = other.config.to_dict()
    tensors = sj.lm.save_model(other, tmp_path / "hf" / "step5")  # then one tensor reshaped
    from slt_jax._src.io import hf

    state = hf.read_tensors(tensors)
    key = next(k for k in state if k.endswith("dense_h_to_4h.weight"))
    state[key] = state[key][:, :-1]
    hf.write(tensors, config, state)
    with pytest.raises(ValueError, match=re.escape(f"{tensors}") + f".*{re.escape(key)}.*shape"):
        sj.lm.load_checkpoints(tmp_path / "hf")


# --- the chunk size -----------------------------------------------------------------------------


def test_the_automatic_chunk_size_counts_host_memory(monkeypatch):
    mib = 2**20
    program = lambda chunk: 10 * mib + chunk * mib  # noqa: E731
    # On a CPU the program and the host copies share the budget: 10 + c + 4c <= 60 → c = 10.
    monkeypatch.setattr(memory, "_host_is_device", lambda: True)
    assert memory.chunk_size_within(program, 64, 60 * mib) == 50
    assert memory.chunk_size_within(program, 64, 60 * mib, host_bytes=4 * mib) == 10
    # On an accelerator the host copies must fit in half of MemAvailable: 200 MiB / 8 MiB.
    monkeypatch.setattr(memory, "_host_is_device", lambda: False)
    monkeypatch.setattr(memory, "available_host_memory", lambda: 400 * mib)
    assert memory.chunk_size_within(program, 64, 10**12, host_bytes=8 * mib) == 25
    assert memory.chunk_size_within(program, 64, 10**12) == 64
    assert memory.host_chunk_limit(10**12, available=400 * mib) == 1  # at least one


def test_a_lazy_sweep_chunks_by_host_memory(tmp_path, monkeypatch):
    root, *_ = _run(tmp_path, 4)
    cs = load_checkpoint_set(root)
    per_checkpoint = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(cs.template))
    monkeypatch.setattr(memory, "_host_is_device", lambda: False)
    monkeypatch.setattr(memory, "available_host_memory", lambda: 2 * 2 * 2 * per_checkpoint)
    plan = sj.estimate_llc_checkpoints(sweep_factory.loss_fn, cs, sweep_factory.data(),
                                       dry_run=True, memory_budget=10**12, **KW)  # fmt: skip
    assert plan.chunk_size == 2  # two chunks of two (sampling, read ahead) in half the host
