#!/usr/bin/env bash
# Runs the test suite (CPU, tiny models; about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
export TFDS_DISABLE_DOWNLOAD=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" -q tests "$@"
