#!/usr/bin/env bash
# Creates a virtualenv (if missing) and installs losa_jax with the versions of
# the lock for its Python:
#
#   bash scripts/setup.sh                        python3 (3.11: .venv)
#   PYTHON=python3.12 bash scripts/setup.sh      3.12: .venv312
#   VENV=/tmp/v PYTHON=python3.12 bash ...       another folder
#
# Python 3.11 installs requirements-lock.txt (jax 0.10.2, with torch and timm
# for the timm parity test); Python 3.12, what Colab runs, installs
# requirements-lock-py312.txt (the newest releases: jax 0.12, flax 0.12.12,
# no torch). Another Python gets setup.py's ranges, tested nowhere.
# Idempotent: a second run only checks that everything is there. Measured
# times and sizes: README.md, "Install".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
if [ -n "$LOCK" ]; then
  "$VENV/bin/pip" install -q -r "$LOCK"
else
  echo "setup.sh: no lock for Python $PYVER (3.11 and 3.12 have one):" \
       "installing setup.py's ranges into $VENV" >&2
  "$VENV/bin/pip" install -q -e ".[test,notebooks]"
fi
"$VENV/bin/pip" install -q --no-deps -e .
echo "setup.sh: Python $PYVER in $VENV (${LOCK:-setup.py ranges})"
