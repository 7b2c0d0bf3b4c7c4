#!/usr/bin/env bash
# make test: the whole suite (unit tests, distributed gloo tests, every lesson at PRESET=smoke).
set -euo pipefail
py=${1:-.venv/bin/python}
root=$(pwd)
export NANOGPT_COURSE_PRESET=smoke
export NANOGPT_COURSE_CACHE=${NANOGPT_COURSE_CACHE:-$root/.test-cache/cache}
export NANOGPT_COURSE_RUNS=${NANOGPT_COURSE_RUNS:-$root/.test-cache/runs}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
if [ -z "${NANOGPT_COURSE_DATA:-}" ] && [ -d ../shared/data ]; then
  export NANOGPT_COURSE_DATA=$(cd ../shared/data && pwd)
fi
echo "[test] data mirror: ${NANOGPT_COURSE_DATA:-<unset: real-data tests skip>}"
# Notebooks run once each under nbval; 09_pretrain runs under papermill (it takes parameters).
exec "$py" -m pytest tests lessons --nbval-lax --ignore=lessons/09_pretrain.ipynb \
  -p no:cacheprovider --durations=15 --timeout=900 "${@:2}"
