#!/usr/bin/env bash
# Installs triton 3.6.0 (the GPU machine's version, RESULTS.md) into a private directory for
# tools/gpu_static_report.py, which compiles the kernels for sm_90a with the same Triton as the recorded
# GPU runs. The venv keeps its own pinned triton; this copy is only put on sys.path of the report's compile
# subprocess. Idempotent; prints the directory.
#   usage: bash tools/install_triton36.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
VER=3.6.0
DIR=${MNV2_GPU_STATIC_CACHE:-$HOME/.cache/mnv2_gpu_static}/triton-$VER
if [ ! -f "$DIR/.complete" ]; then
  echo "install_triton36: installing triton==$VER into $DIR" >&2
  rm -rf "$DIR"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$DIR" "triton==$VER" >&2
  touch "$DIR/.complete"
fi
echo "$DIR"
