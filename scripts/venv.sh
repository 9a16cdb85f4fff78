# Sourced by setup.sh and test.sh: which Python, virtualenv and lock file.
#   PYTHON  the interpreter that creates the virtualenv (default: python3)
#   VENV    the virtualenv folder (default: one per Python version, so both
#           environments live side by side: .venv for 3.11, .venv312 for 3.12)
# Sets PY, PYVER (e.g. 3.12), VENV and LOCK (empty: no lock for this Python).
PY=${PYTHON:-python3}
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$PYVER" in
  3.11) LOCK=requirements-lock.txt; default_venv=.venv ;;
  3.12) LOCK=requirements-lock-py312.txt; default_venv=.venv312 ;;
  *) LOCK=; default_venv=.venv${PYVER/./} ;;
esac
VENV=${VENV:-$default_venv}
