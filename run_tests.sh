#!/usr/bin/env bash
# Bootstrap the environment if needed, then run the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
export MPLBACKEND=Agg BMRS_QUIET=1 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest "$@"
