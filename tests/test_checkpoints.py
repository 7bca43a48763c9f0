"""Checkpoint sets: stacking, every on-disk format, matching a template, and errors that name
the offending file and leaf."""

import dataclasses
import doctest
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx, serialization
from safetensors.numpy import save_file

import slt_jax._src.io.checkpoints
import slt_jax._src.io.formats
from slt_jax._src.io.checkpoints import (
    CheckpointSet,
    as_checkpoint_set,
    load_checkpoint_set,
    save_checkpoint,
    stack_checkpoints,
)

FORMATS = ("safetensors", "msgpack", "orbax")
STEPS = (30, 10, 20)  # saved out of order on purpose


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])


def _dict_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    layer = lambda a, b: {  # noqa: E731
        "kernel": rng.normal(size=(a, b)).astype(np.float32),
        "bias": rng.normal(size=b).astype(np.float32),
    }
    return {"layers": [layer(3, 4), layer(4, 2)], "scale": np.float32(seed + 0.5)}


def _nnx_params(seed: int) -> nnx.State:
    return nnx.split(_Net(nnx.Rngs(seed)), nnx.Param, ...)[1]


SNAPSHOTS = {"dict": _dict_params, "nnx": _nnx_params}


def _named(tree) -> dict[str, np.ndarray]:
    """Leaves by dotted key path, Variable wrappers dropped: `layers.0.kernel`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if parts[-1] == "value":
            parts = parts[:-1]
        out[".".join(parts)] = np.asarray(leaf)
    return out


def _assert_holds(cs: CheckpointSet, snapshots: dict[int, object]) -> None:
    """`cs` holds `snapshots` ({step: params}) in ascending step order."""
    assert cs.steps.dtype == np.int64 and cs.steps.tolist() == sorted(snapshots)
    assert len(cs) == len(snapshots)
    got = _named(cs.params)
    for i, step in enumerate(sorted(snapshots)):
        want = _named(snapshots[step])
        assert sorted(got) == sorted(want)
        for name, value in want.items():
            assert isinstance(got[name], np.ndarray) and got[name].shape[0] == len(snapshots)
            np.testing.assert_array_equal(got[name][i], value, err_msg=f"{name} at step {step}")


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SNAPSHOTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt, kind):
    snapshots = {step: SNAPSHOTS[kind](step) for step in STEPS}
    for step in STEPS:
        assert save_checkpoint(tmp_path, step, snapshots[step], format=fmt).exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    if fmt == "orbax":
        assert names == ["10", "20", "30"]
    else:
        assert names == [f"step_{s:08d}.{fmt}" for s in (10, 20, 30)]  # no temporary files left

    plain = load_checkpoint_set(tmp_path)
    _assert_holds(plain, snapshots)
    assert plain.sources == tuple(str(tmp_path / n) for n in names)
    # Without a template: nested dicts with string keys (list / nnx.List indices as "0", "1").
    assert type(plain.params) is dict and plain.params["layers"]["1"]["kernel"].shape == (3, 4, 2)
    assert load_checkpoint_set(tmp_path, format=fmt).steps.tolist() == [10, 20, 30]

    template = SNAPSHOTS[kind](0)
    shaped = load_checkpoint_set(tmp_path, like=template)
    _assert_holds(shaped, snapshots)
    assert jax.tree.structure(shaped.params) == jax.tree.structure(template)
    if kind == "nnx":
        assert isinstance(shaped.params, nnx.State)
        assert shaped.params["layers"][0]["kernel"][...].shape == (3, 3, 4)
    else:
        assert isinstance(shaped.params["layers"], list)


@pytest.mark.parametrize("prefix, item", [(None, None), ("checkpoint", "params")])
def test_orbax_checkpoint_manager(tmp_path, prefix, item):
    """Steps saved by a real CheckpointManager, nnx.State as is (leaves under 'value')."""
    snapshots = {step: _nnx_params(step) for step in (10, 20, 30)}
    options = ocp.CheckpointManagerOptions(step_prefix=prefix)
    names = None if item is None else (item, "meta")
    with ocp.CheckpointManager(tmp_path / "run", options=options, item_names=names) as manager:
        for step, state in snapshots.items():
            if item is None:
                manager.save(step, args=ocp.args.StandardSave(state))
            else:
                save = {item: ocp.args.StandardSave(state), "meta": ocp.args.JsonSave({"a": 1})}
                manager.save(step, args=ocp.args.Composite(**save))
        manager.wait_until_finished()
    # A temporary (incomplete) step directory is ignored.
    (tmp_path / "run" / "40.orbax-checkpoint-tmp-123" / "default").mkdir(parents=True)
    (tmp_path / "run" / "40.orbax-checkpoint-tmp-123" / "default" / "_METADATA").touch()

    plain = load_checkpoint_set(tmp_path / "run")
    assert plain.steps.tolist() == [10, 20, 30]
    assert plain.params["layers"]["0"]["kernel"]["value"].shape == (3, 3, 4)
    if prefix:
        assert plain.sources[0].endswith("checkpoint_10")
    template = _nnx_params(0)
    shaped = load_checkpoint_set(tmp_path / "run", like=template, format="orbax")
    assert isinstance(shaped.params, nnx.State)
    assert jax.tree.structure(shaped.params) == jax.tree.structure(template)
    _assert_holds(shaped, snapshots)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_round_trip(tmp_path, fmt):
    snapshots = {s: {"w": jnp.full((2, 3), s / 3, jnp.bfloat16)} for s in (1, 2)}
    for step, params in snapshots.items():
        save_checkpoint(tmp_path, step, params, format=fmt)
    cs = load_checkpoint_set(tmp_path)
    assert cs.params["w"].dtype == jnp.bfloat16
    _assert_holds(cs, snapshots)


def test_orbax_picks_the_params_item(tmp_path):
    with ocp.CheckpointManager(tmp_path, item_names=("params", "opt_state")) as manager:
        for step in (1, 2):
            params = ocp.args.StandardSave({"w": np.full(2, step, np.float32)})
            opt_state = ocp.args.StandardSave({"mu": np.zeros(3, np.float32)})
            manager.save(step, args=ocp.args.Composite(params=params, opt_state=opt_state))
        manager.wait_until_finished()
    cs = load_checkpoint_set(tmp_path)
    assert list(cs.params) == ["w"] and cs.params["w"][:, 0].tolist() == [1.0, 2.0]
    (tmp_path / "1" / "params").rename(tmp_path / "1" / "weights")
    with pytest.raises(ValueError, match=r"1 holds 2 pytree items \(opt_state, weights\)"):
        load_checkpoint_set(tmp_path)


def test_names_carry_the_step_and_slash_keys(tmp_path):
    a, b, c = (_dict_params(s) for s in (1, 2, 3))
    save_file({k.replace(".", "/"): v for k, v in _named(a).items()}, tmp_path / "x")
    (tmp_path / "x").rename(tmp_path / "ckpt-000100.safetensors")  # "/"-joined keys
    save_file(_named(b), tmp_path / "7.safetensors")
    save_file(_named(c), tmp_path / "run2_step_50.safetensors")
    cs = load_checkpoint_set(tmp_path)
    assert cs.steps.tolist() == [7, 50, 100]
    np.testing.assert_array_equal(cs.params["layers"]["1"]["bias"][2], a["layers"][1]["bias"])

    (tmp_path / "msgpack").mkdir()
    for step, params in ((5, a), (1, b)):
        (tmp_path / "msgpack" / f"epoch{step}.msgpack").write_bytes(serialization.to_bytes(params))
    _assert_holds(load_checkpoint_set(tmp_path / "msgpack", like=a), {5: a, 1: b})


def test_save_overwrites_and_checks_arguments(tmp_path):
    save_checkpoint(tmp_path, 3, {"w": np.zeros(2)})
    save_checkpoint(tmp_path, 3, {"w": np.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003.safetensors"]
    (tmp_path / "._step_00000004.safetensors").write_bytes(b"junk")  # hidden files: skipped
    np.testing.assert_array_equal(load_checkpoint_set(tmp_path).params["w"], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="`step`"):
        save_checkpoint(tmp_path, -1, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="unknown format 'npz'"):
        save_checkpoint(tmp_path, 1, {"w": np.ones(2)}, format="npz")
    with pytest.raises(ValueError, match=re.escape("['a.b']")):
        save_checkpoint(tmp_path, 1, {"a.b": np.ones(2)})


@pytest.mark.parametrize(
    "name, step",
    [
        ("step0_bf16.safetensors", 0),
        ("step10_bf16.safetensors", 10),
        ("ckpt-10.fp16.safetensors", 10),
        ("10.fp16.safetensors", 10),
        ("Step_7.bf16.msgpack", 7),
        ("lr0.01_step100.safetensors", 100),
        ("run2_step_50.safetensors", 50),
        ("model_float32_3.msgpack", 3),
        ("epoch5.msgpack", 5),
        ("ckpt-000100.safetensors", 100),
        ("000042.safetensors", 42),
        ("checkpoint_100", 100),
    ],
)
def test_step_from_the_name(name, step):
    assert slt_jax._src.io.formats._step_from_name(pathlib.Path(name)) == step


@pytest.mark.parametrize(
    "name, what",
    [("run2_50.safetensors", "candidates 2, 50"), ("final.safetensors", "no integer in it")],
)
def test_a_name_without_one_step_is_an_error(tmp_path, name, what):
    save_file(_named(_dict_params(0)), tmp_path / name)
    message = f"cannot tell the training step from the name '{tmp_path / name}' ({what})"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_checkpoint_set(tmp_path)


def test_dtype_tags_in_names_are_not_steps(tmp_path):
    a, b = _dict_params(1), _dict_params(2)
    save_file(_named(a), tmp_path / "step0_bf16.safetensors")
    save_file(_named(b), tmp_path / "step10_bf16.safetensors")
    _assert_holds(load_checkpoint_set(tmp_path), {0: a, 10: b})
    save_file(_named(a), tmp_path / "ckpt-20.fp16.safetensors")
    assert load_checkpoint_set(tmp_path).steps.tolist() == [0, 10, 20]


def test_flax_training_checkpoints_without_a_suffix(tmp_path):
    """``flax.training.checkpoints.save_checkpoint`` writes msgpack to ``checkpoint_<step>``."""
    snapshots = {10: _dict_params(10), 0: _dict_params(0)}
    for step, params in snapshots.items():
        (tmp_path / f"checkpoint_{step}").write_bytes(serialization.to_bytes(params))
    (tmp_path / "checkpoint").write_text("model_checkpoint_path: 'x'\n")  # no step: skipped
    (tmp_path / "notes_3").write_text("not msgpack")  # not msgpack: skipped
    _assert_holds(load_checkpoint_set(tmp_path), snapshots)
    _assert_holds(load_checkpoint_set(tmp_path, format="msgpack"), snapshots)
    _assert_holds(load_checkpoint_set(tmp_path, like=_dict_params(0)), snapshots)
    save_checkpoint(tmp_path, 5, _dict_params(5), format="msgpack")  # step_00000005.msgpack
    assert load_checkpoint_set(tmp_path).steps.tolist() == [0, 5, 10]
    save_checkpoint(tmp_path, 7, _dict_params(7))
    with pytest.raises(ValueError, match="mixes.*msgpack: checkpoint_0, checkpoint_10"):
        load_checkpoint_set(tmp_path)


# --- mismatches --------------------------------------------------------------------------------

BAD = {  # what breaks snapshot 2: (edit, the leaf named, what the message says)
    "shape": (
        lambda p: p["layers"][1].update(kernel=np.ones((2, 4), np.float32)),
        "kernel",
        "shape",
    ),
    "dtype": (lambda p: p["layers"][1].update(kernel=np.ones((4, 2))), "kernel", "dtype"),
    "extra": (lambda p: p["layers"][1].update(gamma=np.ones(2, np.float32)), "gamma", "extra"),
    "missing": (lambda p: p["layers"][1].pop("bias"), "bias", "missing"),
    "nan": (lambda p: p["layers"][1]["bias"].__setitem__(0, np.nan), "bias", "non-finite"),
}


def _snapshots_with_bad(kind: str) -> list[dict]:
    snapshots = [_dict_params(s) for s in range(4)]
    BAD[kind][0](snapshots[2])
    return snapshots


@pytest.mark.parametrize("kind", BAD)
def test_stack_names_snapshot_and_leaf(kind):
    _, leaf, what = BAD[kind]
    with pytest.raises(ValueError, match=re.escape("snapshot 2 (checkpoint 2)")) as info:
        stack_checkpoints(_snapshots_with_bad(kind), steps=[5, 6, 7, 8])
    assert f"['layers'][1]['{leaf}']" in str(info.value) and what in str(info.value)


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("fmt", FORMATS)
def test_load_names_file_and_leaf(tmp_path, fmt, kind):
    _, leaf, what = BAD[kind]
    paths = [
        save_checkpoint(tmp_path, s, p, format=fmt) for s, p in enumerate(_snapshots_with_bad(kind))
    ]
    with pytest.raises(ValueError, match=re.escape(str(paths[2]))) as info:
        load_checkpoint_set(tmp_path, lazy=False)
    assert f"['layers']['1']['{leaf}']" in str(info.value) and what in str(info.value)
    # Lazily: what the headers show (all but values; msgpack has no header) at listing, the
    # rest when that checkpoint is read, never before.
    at_listing = kind != "nan" and fmt != "msgpack"
    with pytest.raises(ValueError, match=re.escape(str(paths[2]))) as info:
        cs = load_checkpoint_set(tmp_path)
        assert not at_listing
        cs.read([0, 1])
        cs.read(3)
        cs.read(2)
    assert f"['layers']['1']['{leaf}']" in str(info.value) and what in str(info.value)
    if kind in ("shape", "extra", "missing"):  # against a template: the dotted path
        with pytest.raises(ValueError, match=re.escape(str(paths[2]))) as info:
            load_checkpoint_set(tmp_path, like=_dict_params(0)).read(2)
        assert f"layers.1.{leaf}" in str(info.value) and "`like`" in str(info.value)


def test_stack_checks_steps_sources_and_dtypes():
    snaps = [_dict_params(s) for s in range(3)]
    with pytest.raises(ValueError, match="empty"):
        stack_checkpoints([])
    with pytest.raises(TypeError, match="list or tuple"):
        stack_checkpoints(snaps[0])
    with pytest.raises(
        ValueError, match=r"step 4 appears twice \(snapshot 0 \(checkpoint 0\) and snapshot 2"
    ):
        stack_checkpoints(snaps, steps=[4, 5, 4])
    with pytest.raises(ValueError, match="`steps` has shape"):
        stack_checkpoints(snaps, steps=[1, 2])
    with pytest.raises(ValueError, match="`steps` must be integers"):
        stack_checkpoints(snaps, steps=[1.0, 2.0, 3.0])
    # a step seeds its chains' keys with 32 bits: 5 and 2**32 + 5 would share them
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\); snapshot 1 .* has step 4294967301"):
        stack_checkpoints(snaps, steps=[5, 2**32 + 5, 6])
    with pytest.raises(ValueError, match="has step -1"):
        stack_checkpoints(snaps, steps=[0, -1, 6])
    with pytest.raises(ValueError, match="`sources` has 1 labels"):
        stack_checkpoints(snaps, sources=["a"])
    ints = [{"w": np.ones(2, np.float32), "count": np.int32(s)} for s in range(2)]
    with pytest.raises(TypeError, match=re.escape("snapshot 0 (checkpoint 0): leaf ['count']")):
        stack_checkpoints(ints)


def test_stack_sorts_by_step_and_keeps_nnx_state():
    states = [_nnx_params(s) for s in range(3)]
    cs = stack_checkpoints(states, steps=[30, 10, 20], sources=["a", "b", "c"])
    assert cs.steps.tolist() == [10, 20, 30] and cs.sources == ("b", "c", "a")
    assert isinstance(cs.params, nnx.State)
    assert jax.tree.structure(cs.params) == jax.tree.structure(states[0])
    _assert_holds(cs, {30: states[0], 10: states[1], 20: states[2]})
    # jax arrays become host numpy arrays.
    cs = stack_checkpoints([{"w": jnp.ones(3)}, {"w": jnp.zeros(3)}])
    assert isinstance(cs.params["w"], np.ndarray) and cs.params["w"].shape == (2, 3)


# --- directories ------------------------------------------------------------------------------


def test_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        load_checkpoint_set(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no safetensors, msgpack or orbax checkpoints.*notes.txt"):
        load_checkpoint_set(tmp_path)
    with pytest.raises(ValueError, match="unknown format"):
        load_checkpoint_set(tmp_path, format="pt")

    save_checkpoint(tmp_path, 1, {"w": np.ones(2)})
    save_checkpoint(tmp_path, 2, {"w": np.ones(2)}, format="msgpack")
    with pytest.raises(ValueError, match="mixes.*safetensors: step_00000001.*msgpack: step_0000"):
        load_checkpoint_set(tmp_path)
    assert load_checkpoint_set(tmp_path, format="msgpack").steps.tolist() == [2]
    with pytest.raises(ValueError, match="no orbax checkpoints"):
        load_checkpoint_set(tmp_path, format="orbax")

    save_checkpoint(tmp_path / "named", 1, {"w": np.ones(2)})
    (tmp_path / "named" / "final.safetensors").write_bytes(
        (tmp_path / "named" / "step_00000001.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'named' / 'final.safetensors'}")):
        load_checkpoint_set(tmp_path / "named")
    (tmp_path / "named" / "final.safetensors").rename(tmp_path / "named" / "1.safetensors")
    with pytest.raises(ValueError, match="step 1 appears twice"):
        load_checkpoint_set(tmp_path / "named")


def test_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="no safetensors, msgpack or orbax checkpoints.*nothing"):
        load_checkpoint_set(tmp_path)


# --- CheckpointSet, as_checkpoint_set ----------------------------------------------------------


def _stacked(k: int = 4) -> dict:
    return {"a": np.arange(k * 3, dtype=np.float32).reshape(k, 3), "b": {"c": np.ones((k, 2, 2))}}


def test_from_stacked_and_select():
    cs = CheckpointSet.from_stacked(_stacked(), steps=[40, 10, 30, 20])
    assert cs.steps.tolist() == [10, 20, 30, 40] and len(cs) == 4
    assert cs.params["a"][:, 0].tolist() == [3.0, 9.0, 6.0, 0.0]
    assert cs.sources == ("checkpoint 1", "checkpoint 3", "checkpoint 2", "checkpoint 0")
    assert CheckpointSet.from_stacked(_stacked(2)).steps.tolist() == [0, 1]
    assert dataclasses.replace(cs, sources=("w",) * 4).sources == ("w",) * 4

    for indices, steps in [([0, 2], [10, 30]), (slice(1, None), [20, 30, 40]), (1, [20])]:
        part = cs.select(indices)
        assert part.steps.tolist() == steps and part.params["b"]["c"].shape == (len(steps), 2, 2)
        assert part.sources == tuple(cs.sources[cs.steps.tolist().index(s)] for s in steps)
    assert cs.select(np.array([True, False, False, True])).steps.tolist() == [10, 40]
    with pytest.raises(ValueError, match="increasing"):
        cs.select([2, 0])
    with pytest.raises(ValueError, match="selects none"):
        cs.select([])

    bad = {"a": np.ones((4, 3)), "b": np.ones((3, 3))}
    with pytest.raises(
        ValueError, match=re.escape("leaf ['b'] has leading length 3 but leaf ['a'] has 4")
    ):
        CheckpointSet.from_stacked(bad)
    with pytest.raises(ValueError, match="scalar"):
        CheckpointSet.from_stacked({"a": np.float32(1.0)})
    with pytest.raises(ValueError, match="K must be >= 1"):
        CheckpointSet.from_stacked({"a": np.ones((0, 3))})
    nan = _stacked()
    nan["b"]["c"][2, 1, 0] = np.inf
    with pytest.raises(
        ValueError, match=re.escape("checkpoint 2: leaf ['b']['c'] contains non-finite")
    ):
        CheckpointSet.from_stacked(nan)
    with pytest.raises(ValueError, match="`steps` has shape"):
        CheckpointSet.from_stacked(_stacked(), steps=[1, 2])


def test_as_checkpoint_set_dispatch(tmp_path):
    cs = CheckpointSet.from_stacked(_stacked(2), steps=[1, 2])
    assert as_checkpoint_set(cs) is cs
    assert as_checkpoint_set(cs, steps=[1, 2]) is cs
    with pytest.raises(ValueError, match="differ"):
        as_checkpoint_set(cs, steps=[1, 3])

    snapshots = {s: _dict_params(s) for s in (3, 1)}
    for s, p in snapshots.items():
        save_checkpoint(tmp_path, s, p)
    for where in (tmp_path, str(tmp_path)):
        _assert_holds(as_checkpoint_set(where), snapshots)
    template = _dict_params(0)
    assert jax.tree.structure(as_checkpoint_set(tmp_path, like=template).params) == (
        jax.tree.structure(template)
    )

    as_list = as_checkpoint_set([snapshots[3], snapshots[1]], steps=[3, 1])
    _assert_holds(as_list, snapshots)
    _assert_holds(as_checkpoint_set((snapshots[1],)), {0: snapshots[1]})
    # Iterables JAX would take as one leaf hold snapshots too: a generator, a dict view.
    _assert_holds(as_checkpoint_set((p for p in snapshots.values()), steps=[3, 1]), snapshots)
    _assert_holds(as_checkpoint_set(snapshots.values(), steps=list(snapshots)), snapshots)
    with pytest.raises(ValueError, match="empty"):
        as_checkpoint_set(iter([]))
    assert as_checkpoint_set(tmp_path, format="safetensors").steps.tolist() == [1, 3]
    with pytest.raises(ValueError, match="no msgpack checkpoints"):
        as_checkpoint_set(tmp_path, format="msgpack")
    with pytest.raises(ValueError, match="format='msgpack' applies to a checkpoint directory"):
        as_checkpoint_set([snapshots[1]], format="msgpack")
    stacked = as_checkpoint_set(_stacked(3), steps=[7, 8, 9])
    assert stacked.steps.tolist() == [7, 8, 9] and stacked.params["a"].shape == (3, 3)

    # like= puts loaded (string-keyed) snapshots into an nnx.State, stacked or not.
    state = _nnx_params(0)
    pure = _named(state)  # flat dotted keys -> the same leaves as a nested dict
    nested = {"layers": {i: {k: pure[f"layers.{i}.{k}"] for k in ("bias", "kernel")} for i in "01"}}
    shaped = as_checkpoint_set([nested, nested], steps=[1, 2], like=state)
    assert jax.tree.structure(shaped.params) == jax.tree.structure(state)
    restacked = as_checkpoint_set(stack_checkpoints([nested]), like=state)
    assert isinstance(restacked.params, nnx.State)
    with pytest.raises(ValueError, match="has shape"):
        as_checkpoint_set(jax.tree.map(lambda x: x[None, :1], nested), like=state)


def test_docstring_examples():
    result = doctest.testmod(slt_jax._src.io.checkpoints, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_module_exports():
    assert set(slt_jax._src.io.checkpoints.__all__) == {
        "CheckpointSet",
        "as_checkpoint_set",
        "load_checkpoint_set",
        "save_checkpoint",
        "stack_checkpoints",
    }
