"""Hugging Face model directories: ``config.json`` and safetensors weights, as
``transformers``' ``save_pretrained`` writes them, read into host numpy arrays and written
back; and the mapping between a state dict's keys and the parameter names of the native
Flax NNX language models, as each family's record (``_src/families.py``) says.

A directory holds ``config.json`` and either ``model.safetensors`` or the sharded form,
``model.safetensors.index.json`` whose ``weight_map`` sends each tensor to one of
``model-00001-of-0000N.safetensors``. Tensors stored in 16-bit floats (``F16``, ``BF16``, as
Pythia's and most hub checkpoints are) are read as float32, which holds them exactly; others
keep their dtype. PyTorch pickles (``pytorch_model.bin``) are not read: re-save them with
``model.save_pretrained(path, safe_serialization=True)``.

Parameter names are the state dict's keys with the base model's prefix (``transformer.``,
``gpt_neox.``, ``model.``: the family record's ``prefix``) dropped and ``.`` replaced by
``/``; buffers (causal masks, rotary frequencies) are dropped, and so is an output embedding
tied to the input one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from slt_jax._src import families
from slt_jax._src.io.atomic import sync_directory, write_temp

__all__ = [
    "architecture",
    "is_hf_directory",
    "has_weights",
    "is_weight_file",
    "model_params",
    "neox_rotary",
    "param_specs",
    "read_config",
    "read_params",
    "read_tensors",
    "safetensors_header",
    "state_dict",
    "weight_paths",
    "write",
]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# Config fields that leave the function a model computes unchanged (compared across the
# snapshots of a checkpoint set).
_NOT_ARCHITECTURE = re.compile(
    r"^(?:_.*|transformers_version|architectures|torch_dtype|dtype|use_cache|initializer_range"
    r"|.*_token_id|.*pdrop|.*dropout.*|summary_.*|task_specific_params|is_decoder"
    r"|reorder_and_upcast_attn|output_.*|return_dict|id2label|label2id)$"
)
_ALL_BUFFERS = tuple(sorted({b for f in families.FAMILIES.values() for b in f.buffers}))
neox_rotary = families.neox_rotary
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def is_hf_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with ``config.json`` and safetensors weights
    (``model.safetensors`` or ``model.safetensors.index.json``)."""
    root = pathlib.Path(path)
    return (root / CONFIG).is_file() and ((root / WEIGHTS).is_file() or (root / INDEX).is_file())


def is_weight_file(name: str) -> bool:
    """Whether ``name`` is one of the weight files of a model directory."""
    return name in (WEIGHTS, INDEX) or _SHARD.fullmatch(name) is not None


def has_weights(path: pathlib.Path) -> bool:
    """``config.json`` and weights of any kind (PyTorch pickles too, to report them)."""
    return is_hf_directory(path) or (
        (path / CONFIG).is_file() and any((path / name).is_file() for name in _PICKLES)
    )


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of the model directory ``path``, as a dict.

    A directory without one, or one that is not a JSON object, is a ``ValueError``.
    """
    root = pathlib.Path(path)
    file = root / CONFIG
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a directory (a Hugging Face model directory).")
    if not file.is_file():
        raise ValueError(
            f"{str(root)!r} has no config.json, so it is no Hugging Face model directory "
            "(transformers' save_pretrained writes config.json next to the weights)."
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON: {error}.") from error
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds a JSON {type(config).__name__}, not an object.")
    return config


def _weight_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{tensor key: file}`` from the index, or every key of ``model.safetensors``."""
    if (root / INDEX).is_file():
        index_file = root / INDEX
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{index_file} is not a safetensors index (a JSON object with a 'weight_map' "
                f"from tensor names to shard files): {error}."
            ) from error
        files = {}
        for key, name in weight_map.items():
            shard = root / str(name)
            if not shard.is_file():
                raise ValueError(
                    f"{index_file} maps tensor {key!r} to the shard {name!r}, which is not in "
                    f"{root}; copy the missing shard, or re-save the model."
                )
            files[key] = shard
        return files
    if (root / WEIGHTS).is_file():
        return {key: root / WEIGHTS for key in _header(root / WEIGHTS)[0]}
    pickles = [name for name in _PICKLES if (root / name).is_file()]
    if pickles:
        raise ValueError(
            f"{root} holds PyTorch pickle weights ({', '.join(pickles)}) but no safetensors; "
            "slt_jax reads safetensors only. Re-save the model with transformers: "
            "AutoModelForCausalLM.from_pretrained(path).save_pretrained(path, "
            "safe_serialization=True)."
        )
    raise ValueError(f"{root} has no {WEIGHTS} and no {INDEX}: no weights to read.")


def safetensors_header(file: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """A safetensors file's tensor entries (``{key: {"dtype", "shape", "data_offsets"}}``)
    and the offset of its data, from its header alone (the data are not read).

    The file must be complete: 8 bytes giving the header's length ``N``, the header (JSON),
    then exactly the data the header describes (its largest end offset), as safetensors
    requires. A file cut short or still being written has fewer bytes than that: a
    ``ValueError`` names it and both sizes.
    """
    file = pathlib.Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(
                f"{file} is incomplete: it has {size} bytes, fewer than the 8 that give a "
                "safetensors header's length (empty, cut short, or still being written)."
            )
        length = int.from_bytes(head, "little")
        if size - 8 < length <= _MAX_HEADER and f.read(1) == b"{":
            raise ValueError(
                f"{file} is incomplete: its header alone takes {8 + length:,} bytes but the "
                f"file has {size:,} (cut short, or still being written)."
            )
        if not 0 < length <= size - 8:
            raise ValueError(f"{file} is not a safetensors file, or is cut short (bad header).")
        f.seek(8)
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{file} is not a safetensors file (bad header: {error}).") from error
    if not isinstance(header, dict):
        raise ValueError(f"{file} is not a safetensors file (its header is no JSON object).")
    header.pop("__metadata__", None)
    try:
        end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{file}: a tensor's header entry is malformed ({error!r}).") from error
    if size != 8 + length + end:
        raise ValueError(
            f"{file} is incomplete: its header describes {8 + length + end:,} bytes but the "
            f"file has {size:,} (cut short, or still being written)."
        )
    return header, 8 + length


_header = safetensors_header
_MAX_HEADER = 100_000_000  # safetensors' own limit on a header's length


def _read_file(file: pathlib.Path, keys) -> dict[str, np.ndarray]:
    header, start = _header(file)
    size = file.stat().st_size - start
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=start) if size else np.zeros(0, "u1")
    out = {}
    for key in keys:
        entry = header.get(key)
        if entry is None:
            raise ValueError(f"tensor {key!r} is not in {file}, although the index says it is.")
        try:
            dtype, shape, (begin, end) = (
                entry["dtype"],
                tuple(entry["shape"]),
                entry["data_offsets"],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{file}: the header entry of tensor {key!r} is malformed.") from error
        if dtype not in (*_DTYPES, "F16", "BF16"):
            raise ValueError(
                f"{file}: tensor {key!r} has dtype {dtype}, which slt_jax cannot read."
            )
        width = 2 if dtype in ("F16", "BF16") else np.dtype(_DTYPES[dtype]).itemsize
        if not 0 <= begin <= end <= size or end - begin != width * int(np.prod(shape)):
            raise ValueError(f"{file}: tensor {key!r} lies outside the file (cut short?).")
        raw = data[begin:end]
        if dtype == "BF16":  # the upper half of a float32
            x = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F16":
            x = raw.view("<f2").astype(np.float32)
        else:
            x = np.array(raw.view(np.dtype(_DTYPES[dtype]).newbyteorder("<")))
        out[key] = x.reshape(shape)
    return out


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the model directory ``path``, by its state-dict key, as host numpy.

    Reads ``model.safetensors`` or, if present, the shards that
    ``model.safetensors.index.json``'s ``weight_map`` names. 16-bit floats (F16, BF16) are
    widened to float32 (exactly); other dtypes are kept. Errors (``ValueError``): no weights,
    only ``pytorch_model.bin`` (re-save with ``save_pretrained(..., safe_serialization=True)``),
    an index naming a missing shard, a corrupt or truncated file.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a directory (a Hugging Face model directory).")
    by_file: dict[pathlib.Path, list[str]] = {}
    for key, file in _weight_files(root).items():
        by_file.setdefault(file, []).append(key)
    out: dict[str, np.ndarray] = {}
    for file, keys in by_file.items():
        out |= _read_file(file, keys)
    return out


def _source(root: pathlib.Path) -> str:
    return str(root / (INDEX if (root / INDEX).is_file() else WEIGHTS))


def model_params(config: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict's tensors by parameter name (``h/0/attn/c_attn/weight``).

    The base model's prefix for ``config["model_type"]`` is dropped (keys without it, as the
    original GPT-2 files have, are taken as they are), buffers are dropped, and the output
    embedding too when ``config`` ties it to the input embedding.
    """
    record = families.FAMILIES.get(config.get("model_type"))
    prefix, head = (record.prefix, record.head) if record else ("", None)
    heads = {head, *(record.head_aliases if record else ())} - {None}
    tied = bool(config.get("tie_word_embeddings", record is not None and record.tied_default))
    buffers = record.buffers if record else _ALL_BUFFERS
    out = {}
    for key, x in tensors.items():
        if key in buffers or key.endswith(tuple("." + b for b in buffers)):
            continue
        if key in heads:
            if tied:
                continue
            key = head
        elif prefix and key.startswith(prefix):
            key = key[len(prefix) :]
        out[key.replace(".", "/")] = x
    return out


def state_dict(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`model_params`: parameter names back to state-dict keys, as a
    causal-LM model of ``config["model_type"]`` saves them."""
    record = families.FAMILIES.get(config.get("model_type"))
    prefix, head = (record.prefix, record.head) if record else ("", None)
    out = {}
    for name, x in params.items():
        key = name.replace("/", ".")
        out[key if key == head else prefix + key] = x
    return out


def read_params(
    path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, params)`` of the model directory ``path``: :func:`read_config` and
    :func:`read_tensors` through :func:`model_params`.

    With ``shapes`` (``{parameter name: shape}``, the model's), each ``ValueError`` names the
    tensor (its key in the file) and the file: a tensor that is missing, one of another
    shape, one that is no known buffer and not expected, one with non-finite values.
    """
    root = pathlib.Path(path)
    config = read_config(root)
    tensors = read_tensors(root)
    params = model_params(config, tensors)
    if shapes is None:
        return config, params
    keys = _check_names(root, config, tensors, params, shapes)
    source = _source(root)
    for name in shapes:
        if not np.isfinite(params[name]).all():
            raise ValueError(f"{source}: tensor {keys[name]!r} has non-finite values (NaN, inf).")
    return config, {name: params[name] for name in shapes}


class TensorSpec(NamedTuple):
    """A tensor's shape and the numpy dtype it is read as (16-bit floats: float32)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def weight_paths(path: str | os.PathLike) -> list[pathlib.Path]:
    """The files a read of the model directory ``path`` opens: ``config.json``, the index
    (if any) and the weight files."""
    root = pathlib.Path(path)
    files = sorted(set(_weight_files(root).values()))
    index = [root / INDEX] if (root / INDEX).is_file() else []
    return [root / CONFIG, *index, *files]


def param_specs(
    path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, Any], dict[str, TensorSpec]]:
    """``(config, {parameter name: TensorSpec})`` of the model directory ``path`` from
    ``config.json`` and the safetensors headers alone (no tensor data is read): what
    :func:`read_params` would return, but shapes and dtypes. The same ``ValueError`` s as
    :func:`read_params` for a tensor missing, unexpected or of another shape (but not for
    non-finite values), and one naming a weight file that is incomplete (cut short, or
    still being written: fewer bytes than its header describes)."""
    root = pathlib.Path(path)
    config = read_config(root)
    by_file: dict[pathlib.Path, list[str]] = {}
    for key, file in _weight_files(root).items():
        by_file.setdefault(file, []).append(key)
    tensors: dict[str, TensorSpec] = {}
    for file, keys in by_file.items():
        header, _ = safetensors_header(file)
        for key in keys:
            entry = header.get(key)
            if entry is None:
                raise ValueError(f"tensor {key!r} is not in {file}, although the index says it is.")
            try:
                dtype, shape = entry["dtype"], tuple(int(n) for n in entry["shape"])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(
                    f"{file}: the header entry of tensor {key!r} is malformed."
                ) from error
            if dtype not in (*_DTYPES, "F16", "BF16"):
                raise ValueError(
                    f"{file}: tensor {key!r} has dtype {dtype}, which slt_jax cannot read."
                )
            wide = np.float32 if dtype in ("F16", "BF16") else _DTYPES[dtype]
            tensors[key] = TensorSpec(shape, np.dtype(wide))
    params = model_params(config, tensors)
    if shapes is None:
        return config, params
    _check_names(root, config, tensors, params, shapes)
    return config, {name: params[name] for name in shapes}


def _check_names(root, config, tensors, params, shapes) -> dict[str, str]:
    """Every expected parameter present, of its shape and a float, and no other: a
    ``ValueError`` naming the tensor and the file otherwise. Returns ``{name: key}``."""
    keys = {name: key for name, key in zip(params, _kept(config, tensors), strict=True)}
    source = _source(root)
    missing = [n for n in shapes if n not in params]
    if missing:
        want = state_dict(config, {n: None for n in missing})
        hint = _other_model(config, tensors)
        raise ValueError(
            f"{source} lacks the tensor{'s' * (len(missing) > 1)} {_names(list(want))} of a "
            f"{config.get('model_type')} model with this config.json{hint}."
        )
    extra = [keys[n] for n in params if n not in shapes]
    if extra:
        raise ValueError(
            f"{source} holds unexpected tensor{'s' * (len(extra) > 1)} {_names(extra)}: not "
            f"parameters of a {config.get('model_type')} model with this config.json, nor "
            "buffers that are ignored."
        )
    for name, shape in shapes.items():
        x = params[name]
        if tuple(x.shape) != tuple(shape):
            raise ValueError(
                f"{source}: tensor {keys[name]!r} has shape {tuple(x.shape)}; this config.json "
                f"makes it {tuple(shape)}."
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{source}: tensor {keys[name]!r} has dtype {x.dtype}, not a float.")
    return keys


def _kept(config, tensors) -> list[str]:
    """The keys of ``tensors`` that :func:`model_params` keeps, in its order."""
    one = {k: k for k in tensors}
    return list(model_params(config, one).values())


def _names(keys: list[str], limit: int = 6) -> str:
    more = f", … ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


def _other_model(config, tensors) -> str:
    """A hint when the weights carry another known model type's prefix."""
    for model_type, record in families.FAMILIES.items():
        if record.prefix == families.FAMILIES.get(config.get("model_type"), record).prefix:
            continue  # the same prefix tells nothing (Llama, Mistral, Qwen2)
        if any(k.startswith(record.prefix) for k in tensors):
            return f"; its tensors look like a {model_type} model's ({record.prefix}…)"
    return ""


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``config`` that shape the function the model computes (dropout, token
    ids, versions and the like left out; the two spellings of rotary settings made one by
    the family record's ``canonical``), to compare the snapshots of a checkpoint set."""
    out = {k: v for k, v in config.items() if not _NOT_ARCHITECTURE.match(k)}
    record = families.FAMILIES.get(config.get("model_type"))
    return record.canonical(out) if record and record.canonical else out


def write(
    path: str | os.PathLike,
    config: Mapping[str, Any],
    tensors: Mapping[str, Any],
    *,
    max_shard_bytes: int | None = None,
) -> pathlib.Path:
    """Write a model directory that ``transformers`` loads: ``config.json`` and the tensors
    (by state-dict key) in ``model.safetensors``, or, with ``max_shard_bytes``, in shards of
    at most that many bytes each (a tensor larger than that has a shard of its own) named
    ``model-00001-of-0000N.safetensors`` and listed in ``model.safetensors.index.json``.

    Each file is written under a temporary name in ``path`` and then renamed; weight files of
    an earlier save that the new one does not use are removed afterwards. Returns ``path``.
    """
    import safetensors.numpy

    if max_shard_bytes is not None and (
        isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int)
    ):
        raise ValueError(f"`max_shard_bytes` must be a positive int, got {max_shard_bytes!r}.")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"`max_shard_bytes` must be positive, got {max_shard_bytes}.")
    root = pathlib.Path(path)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(x)) for k, x in tensors.items()}
    if not arrays:
        raise ValueError("no tensors to write.")
    shards: list[dict[str, np.ndarray]] = [{}]
    used = 0
    for key, x in arrays.items():
        if max_shard_bytes is not None and shards[-1] and used + x.nbytes > max_shard_bytes:
            shards.append({})
            used = 0
        shards[-1][key] = x
        used += x.nbytes
    files: dict[str, bytes] = {}
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        files[WEIGHTS] = safetensors.numpy.save(arrays, metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            files[name] = safetensors.numpy.save(shard, metadata=meta)
            weight_map |= {key: name for key in shard}
        total = sum(x.nbytes for x in arrays.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        files[INDEX] = (json.dumps(index, indent=2) + "\n").encode()
    files[CONFIG] = (json.dumps(dict(config), indent=2, sort_keys=True) + "\n").encode()
    temps = {name: write_temp(root, name, data) for name, data in files.items()}
    try:
        for name, tmp in temps.items():  # config.json last, once its weights are in place
            os.replace(tmp, root / name)
    finally:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    sync_directory(root)
    for stale in root.iterdir():
        if is_weight_file(stale.name) and stale.name not in files:
            stale.unlink()
    return root
