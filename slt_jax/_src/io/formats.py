"""Checkpoint files: the formats Flax training code writes (safetensors with ``.``-joined
keys, Flax msgpack, Orbax step directories) and Hugging Face model directories (``hf``, read
by :mod:`slt_jax._src.io.hf`), read into nested dicts of host numpy arrays, written
atomically, and the training step read from each file's name."""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from flax import serialization

from slt_jax._src.io import hf
from slt_jax._src.io.atomic import write_atomic
from slt_jax._src.validation import leaf_name

PyTree = Any
Parts = tuple[str, ...]
FORMATS = ("safetensors", "msgpack", "orbax", "hf")
_SUFFIXES = {".safetensors": "safetensors", ".msgpack": "msgpack"}


def save_checkpoint(
    directory: str | os.PathLike, step: int, params: PyTree, *, format: str = "safetensors"
) -> pathlib.Path:
    """Write one snapshot of ``params`` so that :func:`load_checkpoint_set` reads it back.

    ``params`` (any pytree, ``nnx.State`` included) is flattened by key path to ``.``-joined
    string keys, Variable wrappers dropped, and written to
    ``{directory}/step_{step:08d}.safetensors`` (the default) or ``.msgpack`` atomically (a
    temporary file in the same directory, then ``os.replace``), or with Orbax's
    ``StandardCheckpointer`` to ``{directory}/{step}``. An existing snapshot is replaced.
    Returns the path written.

    Example:
      >>> import tempfile, numpy as np
      >>> with tempfile.TemporaryDirectory() as d:
      ...     print(save_checkpoint(d, 7, {"w": np.ones(3)}).name)
      step_00000007.safetensors
    """
    if format == "hf":
        raise ValueError(
            "format='hf' needs a model's config.json: write Hugging Face model directories "
            "with slt_jax.lm.save_model (or transformers' save_pretrained)."
        )
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS[:3]}.")
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"`step` must be a non-negative integer, got {step!r}.")
    flat: dict[Parts, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = leaf_name(path)
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]  # the array inside an nnx.Variable (or a Linen box)
        parts = tuple(_key_part(key) for key in path)
        if not parts or parts in flat:
            raise ValueError(f"params leaf {name} has no key path of its own to save it under.")
        if format == "safetensors" and any("." in part or "/" in part for part in parts):
            raise ValueError(
                f"params leaf {name}: a key holds '.' or '/', ambiguous in safetensors."
            )
        flat[parts] = np.asarray(leaf, order="C")
    if not flat:
        raise ValueError("`params` has no array leaves.")
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if format == "orbax":
        import orbax.checkpoint as ocp

        target = (root / str(int(step))).absolute()
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(target, _nest(flat, "params"), force=True)
        return target
    if format == "safetensors":
        data = safetensors.numpy.save({".".join(parts): x for parts, x in flat.items()})
    else:
        data = serialization.msgpack_serialize(_nest(flat, "params"))
    target = root / f"step_{int(step):08d}.{format}"
    return write_atomic(target, data)


def _key_part(key) -> str:
    for attr in ("key", "idx", "name"):  # DictKey and FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _preview(names: Sequence[str], limit: int = 6) -> str:
    more = f", … ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def _flat(tree: PyTree, *, canonical: bool = False) -> dict[Parts, Any]:
    """``{key parts: leaf}``; ``canonical`` drops a trailing ``value`` (nnx Variables)."""
    out: dict[Parts, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = tuple(_key_part(key) for key in path)
        parts = parts[:-1] if canonical and len(parts) > 1 and parts[-1] == "value" else parts
        if parts in out:
            raise ValueError(f"two leaves share the key path {'.'.join(parts)!r}.")
        out[parts] = leaf
    return out


def _nest(flat: Mapping[Parts, Any], label: str) -> PyTree:
    """Nested dicts from ``{key parts: leaf}``."""
    if () in flat:
        if len(flat) > 1:
            raise ValueError(f"{label}: an unnamed root leaf next to named ones.")
        return flat[()]
    root: dict = {}
    for parts, leaf in flat.items():
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{label}: key {'.'.join(parts)!r} nests under a leaf.")
        if parts[-1] in node:
            raise ValueError(f"{label}: key {'.'.join(parts)!r} appears twice.")
        node[parts[-1]] = leaf
    return root


_STEP_WORD = re.compile(r"(?<![a-z])(?:step|checkpoint|ckpt)[_-]?(\d+)", re.IGNORECASE)
# ... or else its one integer, apart from those of dtype tokens (``bf16``, ``float32``).
_DTYPE = re.compile(
    r"(?<![a-z0-9])(?:b?float|bf|fp|f|u?int)(?:4|8|16|32|64)(?![a-z0-9])", re.IGNORECASE
)
# Suffixes dropped before looking: extensions and dtype tags (``.safetensors``, ``.fp16``).
_SUFFIX = re.compile(rf"(\.(?:[a-z]+|{_DTYPE.pattern}))+$", re.IGNORECASE)


def _step_from_name(path: pathlib.Path) -> int:
    """The training step in a checkpoint's name (see :func:`load_checkpoint_set`)."""
    name = _SUFFIX.sub("", path.name) or path.name
    if name.isdigit():
        return int(name)
    found = {int(n) for n in _STEP_WORD.findall(name)}
    if not found:
        found = {int(n) for n in re.findall(r"\d+", _DTYPE.sub(" ", name))}
    if len(found) == 1:
        return found.pop()
    what = f"candidates {', '.join(map(str, sorted(found)))}" if found else "no integer in it"
    raise ValueError(
        f"cannot tell the training step from the name {str(path)!r} ({what}); name each "
        "checkpoint by its step: step_100.safetensors, ckpt-100.fp16.safetensors, 100.msgpack, "
        "checkpoint_100/."
    )


def _is_flax_msgpack(path: pathlib.Path) -> bool:
    """A file that starts as flax msgpack does (a map) and whose name gives a step, or an
    empty one named as ``flax.training.checkpoints`` names them (``checkpoint_100``), which
    reading then reports as empty."""
    try:
        _step_from_name(path)
        with open(path, "rb") as f:
            head = f.read(1)
    except (ValueError, OSError):
        return False
    if not head:
        return re.fullmatch(r"checkpoint_\d+", path.name) is not None
    return 0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)


def _items(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The Orbax pytree items of a step directory (itself, for a plain Checkpointer save)."""
    if (step_dir / "_METADATA").is_file():
        return [step_dir]
    return sorted(p for p in step_dir.iterdir() if p.is_dir() and (p / "_METADATA").is_file())


def orbax_item(path: pathlib.Path) -> pathlib.Path:
    """The one Orbax pytree item of a step directory that holds the parameters."""
    named = {p.name: p for p in _items(path)}
    item = next(iter(named.values())) if len(named) == 1 else None
    item = item or named.get("default") or named.get("params")
    if item is None:
        raise ValueError(
            f"orbax checkpoint {path} holds {len(named)} pytree items "
            f"({_preview(list(named))}); expected one, or one named 'default' or 'params'."
        )
    return item


def _corrupt(path: pathlib.Path, format: str, error: BaseException | str) -> ValueError:
    """The error for a checkpoint that its format's reader refuses (garbage, cut short)."""
    why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    why = why if len(why) <= 400 else why[:400] + " …"  # tensorstore's errors hold its spec
    other = "written by an incompatible orbax" if format == "orbax" else f"not {format} at all"
    return ValueError(
        f"{format} checkpoint {str(path)!r} is corrupt or truncated (or {other}): "
        f"{why.rstrip('. ')}. Re-save it, or move it out of the checkpoint directory."
    )


def _read(path: pathlib.Path, format: str, like: PyTree = None) -> PyTree:
    """One snapshot as nested dicts (string keys) of host numpy arrays.

    A file its format's reader refuses (garbage, cut short, empty) is a ``ValueError`` that
    names it; an ``OSError`` (no permission, say) is left as it is. For ``hf``, ``like``
    (the template of :func:`load_checkpoint_set`) gives the tensors expected, and errors name
    each tensor that is missing, extra, mis-shaped or not finite, with its file.
    """
    if format == "hf":  # parameter names as the native language models have them
        shapes = None
        if like is not None:
            shapes = {
                "/".join(p): tuple(np.shape(x)) for p, x in _flat(like, canonical=True).items()
            }
        _, params = hf.read_params(path, shapes)
        return _nest({tuple(name.split("/")): x for name, x in params.items()}, str(path))
    if format == "safetensors":
        data = path.read_bytes()
        if not data:
            raise _corrupt(path, format, "the file is empty")
        try:
            flat = safetensors.numpy.load(data)
        except KeyError:  # a dtype safetensors.numpy lacks (BF16): through jax, on the CPU
            from safetensors.flax import load_file

            try:
                with jax.default_device(jax.devices("cpu")[0]):
                    flat = {k: np.asarray(x) for k, x in load_file(path).items()}
            except Exception as error:
                raise _corrupt(path, format, error) from error
        except Exception as error:  # safetensors.SafetensorError is no ValueError
            raise _corrupt(path, format, error) from error
        return _nest({tuple(re.split(r"[./]", k)): x for k, x in flat.items()}, str(path))
    if format == "msgpack":
        data = path.read_bytes()
        if not data:
            raise _corrupt(path, format, "the file is empty")
        try:
            tree = serialization.msgpack_restore(data)
        except Exception as error:  # msgpack's own errors, or whatever garbage decodes to
            raise _corrupt(path, format, error) from error
        if not isinstance(tree, dict | np.ndarray):  # flax writes a state dict (or an array)
            raise _corrupt(path, format, f"it decodes to type {type(tree).__name__}, not a dict")
    else:
        import orbax.checkpoint as ocp
        from etils import epath

        item = orbax_item(path)
        # The handler, not a Checkpointer: no step metadata is looked for inside the item (a
        # warning per snapshot), and every leaf is restored as numpy, whatever its sharding.
        handler = ocp.PyTreeCheckpointHandler()
        try:
            meta = handler.metadata(epath.Path(item))  # TreeMetadata; older orbax: the tree
            meta = getattr(meta, "tree", meta)
            restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
            tree = handler.restore(
                epath.Path(item), args=ocp.args.PyTreeRestore(restore_args=restore)
            )
        except Exception as error:
            raise _corrupt(item, format, error) from error
        finally:
            handler.close()
    return _nest({k: np.asarray(x) for k, x in _flat(tree).items()}, str(path))
