#!/usr/bin/env bash
# One-shot accelerator check on a lent GPU machine: the accelerator section
# (python -m losa_jax.bench accelerator; docs/benchmarks.md, "Accelerator
# benchmark (GPU/TPU)") under a hard time limit. Its check section also
# compares the fused side network's gradients at the GPU's default matmul
# precision (TF32) with a float64 reference, against the bound the tests
# hold the emulated TF32 to (docs/method.md, "Precision of the default
# path"): `bash scripts/device_check.sh --parts check` runs that alone.
# On a CPU: `bash scripts/device_check.sh --quick --parts check`.
#
# The device image has jax (CUDA), flax, optax, orbax-checkpoint, numpy,
# absl-py and PyYAML, but not ml_collections (pure Python). Prepare its wheel
# once, here, in the repo root (.whl/ stays out of git):
#
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: -d .whl \
#       ml_collections==1.1.0
#
# then run through the device tool, carrying it:
#
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=560)
#
# Results come back as $OUT/accel/accelerator.json, $OUT/accel/results.md
# (scripts/bench_report.py) and $OUT/device_check.log. Environment knobs: BUDGET_S (the
# bench's --budget_s, default 400), LIMIT_S (hard kill, default 480),
# PYTHON (default python3), WHEELS (default .whl); other arguments go to the
# bench, e.g. `bash scripts/device_check.sh --parts check,vit_e`.
set -uo pipefail

OUT="${OUT:-/tmp/losa_device_check}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
BUDGET_S="${BUDGET_S:-400}"
LIMIT_S="${LIMIT_S:-480}"
mkdir -p "$OUT/accel"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
LOG="$OUT/device_check.log"

# Modules the bench imports -> the distribution that provides each.
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"jax": "jax", "flax": "flax", "optax": "optax",
        "orbax.checkpoint": "orbax-checkpoint", "numpy": "numpy",
        "ml_collections": "ml_collections", "absl": "absl-py",
        "yaml": "PyYAML"}
def have(mod):
  try:
    return importlib.util.find_spec(mod) is not None
  except ImportError:
    return False
print(" ".join(dist for mod, dist in need.items() if not have(mod)))
EOF
)
if [ -n "$missing" ]; then
  echo "not installed: $missing; installing the wheels in $WHEELS" | tee "$LOG"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS: see the top of this script" | tee -a "$LOG"
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site "$WHEELS"/*.whl 2>&1 | tee -a "$LOG"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,\
memory.used,driver_version --format=csv 2>&1 | tee -a "$LOG"

timeout --signal=TERM --kill-after=15 "$LIMIT_S" \
    "$PY" -m losa_jax.bench accelerator --out "$OUT/accel" \
    --budget_s "$BUDGET_S" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
"$PY" scripts/bench_report.py "$OUT/accel" 2>&1 | tee -a "$LOG"
cat "$OUT/accel/results.md" 2>/dev/null | tee -a "$LOG"
echo "device_check: exit status $rc (124: killed at ${LIMIT_S} s)" | tee -a "$LOG"
exit "$rc"
