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
# llama-cpp-python compiles from source with -march=native. On CPUs with AMX (Sapphire Rapids and later) that turns
# on ggml's AMX kernels, which crash (SIGSEGV in llama_decode, seen with 0.3.36 on this project's build machines)
# where the kernel or sandbox does not grant the AMX tile state; without them the same build runs, and fast. So it
# is built once without AMX, before the project (which pins the same version); the marker records how it was built.
LLAMA_SPEC="llama-cpp-python==0.3.36"
LLAMA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DCMAKE_C_FLAGS='$LLAMA_FLAGS' -DCMAKE_CXX_FLAGS='$LLAMA_FLAGS'}"
if [ "$(cat .venv/.llama-cpp-build 2>/dev/null)" != "$LLAMA_SPEC $LLAMA_CMAKE_ARGS" ]; then
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" .venv/bin/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
    "$LLAMA_SPEC"
  echo "$LLAMA_SPEC $LLAMA_CMAKE_ARGS" > .venv/.llama-cpp-build
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import dagster, duckdb, torch; print("dagster", dagster.__version__, "duckdb", duckdb.__version__, "torch", torch.__version__)')"
