#!/usr/bin/env bash
# Regenerate the project's results and figures: bootstrap .venv if needed, then execute the notebooks
# (notebooks/NN_*.py) of one profile with papermill. Executed notebooks go to results/executed/<profile>/,
# figures to figures/. Notebooks whose source, parameters and bmrs sources are unchanged are skipped.
#
#   ./run_all.sh                          # profile quick (default)
#   ./run_all.sh --profile smoke          # seconds; what the tests use
#   ./run_all.sh --profile paper          # the paper's full protocol (GPU, hours to days)
#   ./run_all.sh --only 01 --force        # re-run one notebook even if up to date
#   ./run_all.sh --profile fmnist --executor local --workers 2      # the grid on 2 local workers, then the notebooks
#   ./run_all.sh --profile paper --executor slurm --partition gpu --gpus-per-job 1 --time 24:00:00
#                                         # the grid as Slurm jobs (waits for them), then the notebooks
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
usage: ./run_all.sh [--profile smoke|quick|fmnist|paper] [--only NOTEBOOK ...] [--force] [--list]
                    [--param KEY=VALUE] [--quiet] [--executor local|slurm] [--workers N] [Slurm job settings]
                    [other options of python -m bmrs.notebook_runner]
  --profile NAME     profile configs/NAME.yaml (default: quick)
  --only NOTEBOOK    run only these notebooks (full stem or unique prefix, e.g. 01)
  --force            re-execute notebooks that are up to date
  --list             list the notebooks of the profile and whether they are up to date
  --executor local|slurm
                     first compute every run of the profile with python -m bmrs grid (local worker
                     processes, or Slurm jobs: it waits for them), then execute the notebooks
  --workers N        local workers of the grid (implies --executor local)
  --partition P, --time T, --gpus-per-job N, --cpus-per-job N, --mem M, --array-parallelism N,
  --slurm-extra KEY=VALUE
                     job settings of --executor slurm (see python -m bmrs grid --help)
USAGE
}

profile=""
executor=""
args=()
grid_args=()
need_value() { if [ "$2" -lt 2 ]; then echo "error: $1 needs a value" >&2; usage >&2; exit 2; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --profile) need_value "$1" $#; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#--profile=}"; shift ;;
    --executor) need_value "$1" $#; executor="$2"; shift 2 ;;
    --executor=*) executor="${1#--executor=}"; shift ;;
    --workers|--partition|--time|--gpus-per-job|--cpus-per-job|--mem|--array-parallelism|--slurm-extra)
      need_value "$1" $#; grid_args+=("$1" "$2"); shift 2 ;;
    --workers=*|--partition=*|--time=*|--gpus-per-job=*|--cpus-per-job=*|--mem=*|--array-parallelism=*|--slurm-extra=*)
      grid_args+=("$1"); shift ;;
    --configs-dir) need_value "$1" $#; grid_args+=("$1" "$2"); args+=("$1" "$2"); shift 2 ;;
    --configs-dir=*) grid_args+=("$1"); args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$executor" ] && [ ${#grid_args[@]} -gt 0 ]; then
  case " ${grid_args[*]} " in
    *" --workers "*|*" --workers="*) executor=local ;;
    *" --partition"*|*" --time"*|*" --gpus-per-job"*|*" --cpus-per-job"*|*" --mem"*|*" --array-parallelism"*|*" --slurm-extra"*)
      echo "error: Slurm job settings need --executor slurm" >&2; exit 2 ;;
  esac
fi
case "$executor" in
  ""|local|slurm) ;;
  *) echo "error: --executor must be local or slurm; got '$executor'" >&2; exit 2 ;;
esac

./scripts/bootstrap.sh
export MPLBACKEND=Agg
if [ -n "$executor" ]; then
  wait_flag=()
  [ "$executor" = slurm ] && wait_flag=(--wait)
  echo "[run_all] the grid of profile ${profile:-quick} (--executor $executor), then the notebooks" >&2
  rc=0
  .venv/bin/python -m bmrs grid --profile "${profile:-quick}" --executor "$executor" \
    ${grid_args[@]+"${grid_args[@]}"} ${wait_flag[@]+"${wait_flag[@]}"} || rc=$?
  case "$rc" in
    0) ;;
    1) echo "error: the grid did not finish every run (see above; python -m bmrs grid --profile ${profile:-quick}" \
            "--executor $executor --status); fix the failed runs and rerun, finished runs are kept" >&2
       exit 1 ;;
    *) exit "$rc" ;;  # its own one-line error (2: invalid arguments) or an interruption (130)
  esac
fi
exec .venv/bin/python -m bmrs.notebook_runner --profile "${profile:-quick}" ${args[@]+"${args[@]}"}
