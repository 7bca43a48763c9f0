"""``python -m slt_jax``: the command line (see :mod:`slt_jax._src.cli`)."""

from slt_jax._src.cli import main

if __name__ == "__main__":
    main()
