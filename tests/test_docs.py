"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

NAMES = [
    "slt_jax._src.jobs.llc",
    "slt_jax._src.io.adapters",
    "slt_jax._src.io.torch_bridge",
    "slt_jax._src.io.tlens",
    "slt_jax._src.lm",
    "slt_jax._src.jobs.refined_sweep",
    "slt_jax._src.jobs.checkpoints",
    "slt_jax._src.jobs.inline",
    "slt_jax._src.jobs.calibrate",
    "slt_jax._src.jobs.temperatures",
    "slt_jax._src.jobs.refined",
    "slt_jax._src.samplers.specs",
    "slt_jax._src.config",
    "slt_jax._src.data",
    "slt_jax._src.estimators.llc",
    "slt_jax.models.tms",
    "slt_jax.models.icl",
    "slt_jax.models.optimizer_bias",
    "slt_jax.models.simplicial",
    "slt_jax.models.turing",
]
MODULES = [importlib.import_module(name) for name in NAMES]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
