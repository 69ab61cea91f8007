#!/usr/bin/env bash
# Regenerate the project's results and figures: bootstrap .venv if needed, then execute the notebooks
# (notebooks/NN_*.py) of one profile with papermill. Executed notebooks go to results/executed/<profile>/,
# figures to figures/. Notebooks whose source, parameters and bmrs sources are unchanged are skipped.
#
#   ./run_all.sh                          # profile quick (default)
#   ./run_all.sh --profile smoke          # seconds; what the tests use
#   ./run_all.sh --profile paper          # the paper's full protocol (GPU, hours to days)
#   ./run_all.sh --only 01 --force        # re-run one notebook even if up to date
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
usage: ./run_all.sh [--profile smoke|quick|paper] [--only NOTEBOOK ...] [--force] [--list]
                    [--param KEY=VALUE] [--quiet] [other options of python -m bmrs.notebook_runner]
  --profile NAME     profile configs/NAME.yaml (default: quick)
  --only NOTEBOOK    run only these notebooks (full stem or unique prefix, e.g. 01)
  --force            re-execute notebooks that are up to date
  --list             list the notebooks of the profile and whether they are up to date
USAGE
}

profile=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --profile)
      if [ $# -lt 2 ]; then echo "error: --profile needs a value" >&2; usage >&2; exit 2; fi
      profile="$2"; shift 2 ;;
    --profile=*) profile="${1#--profile=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

./scripts/bootstrap.sh
export MPLBACKEND=Agg
exec .venv/bin/python -m bmrs.notebook_runner --profile "${profile:-quick}" ${args[@]+"${args[@]}"}
