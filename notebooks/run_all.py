"""Regenerate every notebook from notebooks/src/ and execute it in place (full size).

Usage: ``bash scripts/dev.sh notebooks [01_theory ...]`` (default: all).
"""

import pathlib
import sys
import time

import nbformat
from make_notebook import main as make
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent


def run(name: str) -> None:
    source, target = HERE / "src" / f"{name}.py", HERE / f"{name}.ipynb"
    make(str(source), str(target))
    nb = nbformat.read(target, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    nbformat.write(nb, target)
    print(f"{name}: executed in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem for p in (HERE / "src").glob("*.py"))
    for name in names:
        run(name)
