"""The notebooks run (with tiny settings) and match their reviewable sources.

Each notebook's code cells are run in order, in a fresh process, with
``SLT_JAX_SMOKE=1`` (the notebooks then pick tiny step counts) in a temporary directory.
This checks that they execute, not their figures; the executed notebooks in
``notebooks/`` carry the full-size outputs.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code(notebook: pathlib.Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_source(notebook):
    source = ROOT / "notebooks" / "src" / f"{notebook.stem}.py"
    assert source.exists(), f"{notebook.name} has no source {source}"
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        from make_notebook import cells
    finally:
        sys.path.pop(0)
    expected = [c["source"] for c in cells(source.read_text())]
    actual = [c["source"] for c in json.loads(notebook.read_text())["cells"]]
    assert actual == expected, f"regenerate {notebook.name} from {source.name}"


# The notebooks whose tiny settings still take over a minute on CI's 2 cores run with the
# slow tests (-m slow); the rest run in the default suite. 09 takes 50-60 s, and what it runs
# is in the default suite: the command it calls (llc --tokens --heads all, read back) in
# tests/test_lm_cli.py, saving and loading its checkpoints in tests/test_lm_models.py.
SLOW = {"01_theory", "02_tms", "03_icl", "05_calibration", "07_simplicial", "09_language_model"}


@pytest.mark.parametrize(
    "notebook",
    [pytest.param(nb, marks=pytest.mark.slow) if nb.stem in SLOW else nb for nb in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_notebook_runs_with_tiny_settings(notebook, tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(_code(notebook))
    env = {**os.environ, "SLT_JAX_SMOKE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
