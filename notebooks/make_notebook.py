"""Turn a percent-format script (``# %%`` code cells, ``# %% [markdown]`` text cells) into
an .ipynb, so the notebooks' sources stay reviewable as plain Python.

Usage: ``python notebooks/make_notebook.py notebooks/src/01_theory.py notebooks/01_theory.ipynb``
"""

import json
import sys


def cells(text: str) -> list[dict]:
    out, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind is not None and body:
            if kind == "markdown":
                body = "\n".join(
                    line[2:] if line.startswith("# ") else line.lstrip("#")
                    for line in body.splitlines()
                )
            source = [line + "\n" for line in body.splitlines()]
            source[-1] = source[-1].rstrip("\n")
            cell = {"cell_type": kind, "id": f"cell-{len(out)}", "metadata": {}, "source": source}
            if kind == "code":
                cell.update(execution_count=None, outputs=[])
            out.append(cell)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return out


def main(src: str, dst: str) -> None:
    with open(src) as f:
        nb = {
            "cells": cells(f.read()),
            "metadata": {
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"},
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    with open(dst, "w") as f:
        json.dump(nb, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
