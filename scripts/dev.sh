#!/usr/bin/env bash
# Set up (or reuse) the project virtual environment, then run a job in it.
#   bash scripts/dev.sh demo [args]   train a small MLP on digits and estimate its LLC
#   bash scripts/dev.sh test [args]   lint, then run the test suite on every core (pytest args
#                                     pass through)
#   bash scripts/dev.sh notebooks [names]  regenerate and execute notebooks/ (full size)
#   bash scripts/dev.sh setup         only create/update the environment
# PYTHON picks the interpreter for a new environment (default: python3; 3.11 and 3.12 work).
# VENV picks its folder (default: .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$VENV/.slt_jax-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # --no-compile: Python byte-compiles each module when it is first imported, so installing
  # does not byte-compile every file of torch and transformers first (~35 s of one core).
  "$VENV/bin/python" -m pip install --quiet --no-compile --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --no-compile -e ".[test]"
  echo "$want" > "$stamp"
fi

job=${1:-setup}
shift || true
case "$job" in
  setup) ;;
  demo) exec "$VENV/bin/python" -m slt_jax demo "$@" ;;
  test)
    "$VENV/bin/ruff" check .
    # One worker per logical core (at most 4; CI's 2 cores give 2); each test file runs whole on
    # one worker, so its module fixtures are built once, the longest files first (conftest.py).
    # SLT_JAX_TEST_WORKERS=0 runs the tests in this process.
    exec "$VENV/bin/python" -m pytest -n "${SLT_JAX_TEST_WORKERS:-logical}" --maxprocesses 4 \
      --dist loadfile --no-loadscope-reorder "$@" ;;
  notebooks)
    "$VENV/bin/python" -m pip install --quiet --no-compile -e ".[test,notebooks]"
    exec "$VENV/bin/python" notebooks/run_all.py "$@" ;;
  *) echo "unknown job '$job' (demo, test, notebooks, setup)" >&2; exit 2 ;;
esac
