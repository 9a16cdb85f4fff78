#!/usr/bin/env bash
# Creates .venv (if missing) and installs losa_jax with the pinned versions.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  .venv/bin/pip install -q -r requirements-lock.txt
else
  # Python 3.12+ (e.g. Colab) gets a newer jax: install from setup.py ranges.
  .venv/bin/pip install -q -e ".[test,timm]"
fi
.venv/bin/pip install -q --no-deps -e .
