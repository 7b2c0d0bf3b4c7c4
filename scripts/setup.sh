#!/usr/bin/env bash
# make setup: create the venv, install torch only when absent, then the package.
# Usage: scripts/setup.sh VENV TORCH_SPEC EXTRAS   (EXTRAS may be empty: runtime deps only)
set -euo pipefail
venv=${1:-.venv}; torch_spec=${2:-torch==2.13.0}; extras=${3:-}
py="$venv/bin/python"
stamp="$venv/.setup-${extras:-base}"

if [ ! -x "$py" ]; then
  echo "[setup] creating $venv"
  python3 -m venv "$venv"
fi
# Quick when already done: the stamp is newer than pyproject.toml and torch imports.
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && "$py" -c "import torch" 2>/dev/null; then
  exit 0
fi
if "$py" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping installed torch $("$py" -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing $torch_spec (CPU build when it is the pinned local wheel)"
  "$py" -m pip install -q --disable-pip-version-check "$torch_spec"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "[setup] pip install -e '$target'"
"$py" -m pip install -q --disable-pip-version-check -e "$target"
touch "$stamp"
echo "[setup] done: $("$py" -c 'import torch, nanogpt_course; print("torch", torch.__version__, "| nanogpt_course", nanogpt_course.__version__)')"
