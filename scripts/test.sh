#!/usr/bin/env bash
# Runs the whole test suite, as CI does (CPU, tiny models, 2 workers).
# Not yet measured end to end after the 2026-12-02 refactor (before it: 36 min
# wall, 30 CPU-min on the shared 2-core machine, issue #10).
#
# While developing, skip the slow integration tests (subprocess kill/resume,
# multi-process and 8-device runs, notebooks, the VTAB sweep, the benchmark
# suite run; marked @pytest.mark.slow, see pytest.ini):
#   bash scripts/test.sh -m "not slow"
# or run one file: .venv/bin/python -m pytest -q tests/test_losa.py
# Each test file runs on one worker (--dist loadfile), so a module's compiled
# fixtures (bench run, 8-device worker, cost-guard compiles) are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
export TFDS_DISABLE_DOWNLOAD=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile \
  -q tests "$@"
