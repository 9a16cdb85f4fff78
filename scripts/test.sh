#!/usr/bin/env bash
# Runs the tests (CPU, tiny models, 2 workers).
#
#   bash scripts/test.sh             the fast tests: everything but the slow
#                                    integration tests (-m "not slow")
#   bash scripts/test.sh -m slow     only the slow integration tests
#   bash scripts/test.sh --all       every test (what CI runs, in two calls:
#                                    see .ci/run)
#
# The virtualenv: $VENV, else the one scripts/setup.sh makes for $PYTHON
# (default python3; see scripts/venv.sh), e.g.
#   VENV=.venv312 bash scripts/test.sh     the Python 3.12 environment
#
# Other arguments go to pytest (a later -m replaces the default one), e.g.
#   bash scripts/test.sh -k bf16     bash scripts/test.sh tests/test_losa.py
# or one file, without this script:
#   .venv/bin/python -m pytest -q tests/test_losa.py
# Measured 2026-12-02 14:09 UTC (`/usr/bin/time -v`, 2-core x86_64 CPU,
# Python 3.11, jax 0.10.2, load average 1.0-2.3): the fast set, from an empty
# JAX compilation cache, 591 tests in 6 min 41 s wall and 11.9 CPU-min; then
# `-m slow` (cache warm), 29 tests in 7 min 27 s wall and 13.7 CPU-min. Before the speed-ups
# of issue #10 everything ran here: 36 min wall, 30 CPU-min.
#
# The slow integration tests (subprocess kill/resume, multi-process and
# 8-device runs, notebooks, the VTAB sweep, the benchmark suite run, the CLI
# end-to-end duplicates of checks also made in-process) carry
# @pytest.mark.slow (see pytest.ini). Each test file runs on one worker
# (--dist loadfile), so a module's compiled fixtures (bench run, 8-device
# worker, cost-guard compiles) are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if [ ! -x "$VENV/bin/python" ]; then
  echo "test.sh: no virtualenv $VENV: run scripts/setup.sh (with the same" \
       "PYTHON / VENV) first" >&2
  exit 2
fi
export TFDS_DISABLE_DOWNLOAD=1 TF_CPP_MIN_LOG_LEVEL=2
marker=(-m "not slow")
if [[ "${1:-}" == "--all" ]]; then
  marker=()
  shift
fi
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile \
  -q ${marker[@]+"${marker[@]}"} "$@"   # no path given: pytest.ini's testpaths
