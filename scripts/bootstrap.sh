#!/usr/bin/env bash
# Create .venv (if missing or stale) and install the project into it. Sourced by run_all.sh and
# run_tests.sh; safe to run on its own. Set PYTHON to choose the interpreter (>= 3.11).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.bmrs-installed"
PY="${PYTHON:-python3}"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: $PY not found; install Python >= 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: $PY is $("$PY" -V 2>&1); BMRS needs Python >= 3.11 (set PYTHON=...)" >&2
  exit 1
fi

# Debian ships the full Fashion-MNIST; install it when we may (root, apt present) and it is missing.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ] \
   && [ -z "${BMRS_SKIP_APT:-}" ]; then
  echo "[bootstrap] installing Debian package dataset-fashion-mnist (set BMRS_SKIP_APT=1 to skip)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "[bootstrap] warning: could not install dataset-fashion-mnist; Fashion-MNIST runs will need the files under BMRS_DATA_DIR" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[bootstrap] installing bmrs and its dependencies into .venv (torch from the local wheel cache when present)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" 2>&1 | grep -v -E "^WARNING: Location|ignored: it is neither" >&2 || true
  "$VENV/bin/python" -c "import bmrs, torch, torchvision, papermill, jupytext" \
    || { echo "error: installation into .venv failed; see the pip output above" >&2; exit 1; }
  touch "$STAMP"
fi
