#!/usr/bin/env bash
# Create .venv and install the project with its test tools, CPU-only.
# torch is installed first, on its own: otherwise pip resolves sentence-transformers' torch to a
# multi-GB CUDA build. TORCH_SPEC overrides the pin (e.g. on machines without the local CPU wheel:
#   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import dagster, duckdb, torch; print("dagster", dagster.__version__, "duckdb", duckdb.__version__, "torch", torch.__version__)')"
