"""The examples in the docstrings run and print what they say.

Every module of the package is searched (``pkgutil.walk_packages``): a docstring example
anywhere in ``slt_jax`` is a test, without a list to keep up to date. Modules whose
optional dependencies are missing are skipped, by name.
"""

import doctest
import importlib
import pkgutil

import pytest

import slt_jax

FINDER = doctest.DocTestFinder()


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(slt_jax.__path__, "slt_jax."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an extra that is not installed: the module's own tests skip
            continue
        if any(test.examples for test in FINDER.find(module)):
            names.append(info.name)
    return names


NAMES = _modules_with_examples()


def test_examples_are_found():
    # The discovery itself can fail silently (an import error swallowed, a renamed
    # package): these modules are known to carry examples.
    for name in (
        "slt_jax._src.jobs.llc",
        "slt_jax._src.sources",
        "slt_jax._src.io.formats",
        "slt_jax.models.dln",
    ):
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
