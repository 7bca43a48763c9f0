"""What identifies a sweep's results on disk: the shapes and content hashes of the
checkpoints and the data, a fingerprint of the loss function's traced program, and the
manifest that holds them (compared on resume, :mod:`slt_jax._src.io.store`)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import jax
import numpy as np

from slt_jax._src import sources, validation
from slt_jax._src.version import __version__

PyTree = Any


def _shapes(tree: PyTree) -> dict[str, list]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): [list(leaf.shape), str(np.dtype(leaf.dtype))]
        for path, leaf in leaves
    }


def _digest(leaves) -> str:
    h = hashlib.sha256()
    for leaf in leaves:
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{leaf.dtype}{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()[:24]


def loss_fingerprint(loss_fn, params: PyTree, data: PyTree, batch_size: int) -> dict:
    """What identifies the computation of ``loss_fn``: a hash of the text of its jaxpr (traced,
    never compiled, on ``params`` and a minibatch's shapes) and one of the jaxpr's constants
    (the arrays it closes over). The text depends on the JAX version (and precision)."""
    closed = jax.make_jaxpr(loss_fn)(params, validation.batch_like(data, batch_size))
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr))  # no object addresses
    constants = []
    for constant in closed.consts:
        dtype = getattr(constant, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            constant = jax.random.key_data(constant)
        constants.append(np.asarray(constant))
    return {
        "jaxpr_sha256": hashlib.sha256(text.encode()).hexdigest()[:24],
        "constants_sha256": _digest(constants),
    }


def checkpoint_hashes(checkpoint_set) -> list[str]:
    """A content hash of each checkpoint of ``checkpoint_set`` (a lazy set reads them all,
    one at a time; a sweep takes them from each chunk's own read instead)."""
    return list(checkpoint_set.load(slice(None)).hashes)


def data_hash(data: PyTree) -> str:
    """A content hash of a data set (a host source fingerprints itself)."""
    if sources.is_source(data):
        return data.fingerprint()
    return _digest(np.asarray(x) for x in jax.tree.leaves(data))


def manifest(config, checkpoint_set, data, key, chunk_size, loss) -> dict:
    """Everything that determines the results (compared on resume), and the platform.

    A set in memory is identified by each checkpoint's content hash
    (``checkpoint_hashes``); a lazy one, whose files are not read before their chunk runs,
    by each checkpoint's stamp (``checkpoint_stamps``: its files' names, sizes and
    modification times), its content hashes being written with each chunk (see
    :mod:`slt_jax._src.io.lazy`)."""
    identity = (
        {"checkpoint_stamps": checkpoint_set.stamps()}
        if checkpoint_set.lazy
        else {"checkpoint_hashes": checkpoint_hashes(checkpoint_set)}
    )
    return {
        "config": config.to_dict(),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "steps": [int(s) for s in checkpoint_set.steps],
        "chunk_size": int(chunk_size),
        "params": _shapes(checkpoint_set.template),
        **identity,
        "data": _shapes(data.like(len(data)) if sources.is_source(data) else data),
        "data_hash": data_hash(data),
        "loss_fn": loss,
        "slt_jax_version": __version__,
        "platform": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "x64": bool(jax.config.jax_enable_x64),
        },
    }
