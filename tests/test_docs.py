"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

import slt_jax.adapters
import slt_jax.inline
import slt_jax.llc
import slt_jax.sweep
import slt_jax.temperatures

MODULES = [
    slt_jax.llc,
    slt_jax.adapters,
    slt_jax.sweep,
    slt_jax.inline,
    importlib.import_module("slt_jax.calibrate"),
    slt_jax.temperatures,
    importlib.import_module("slt_jax.refined"),
    importlib.import_module("slt_jax.models.tms"),
    importlib.import_module("slt_jax.models.icl"),
    importlib.import_module("slt_jax.models.optimizer_bias"),
    importlib.import_module("slt_jax.models.simplicial"),
    importlib.import_module("slt_jax.models.turing"),
]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
