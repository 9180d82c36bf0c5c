#!/usr/bin/env bash
# One-call GPU check for the device machine (torch/triton preinstalled, no network), within ~8 minutes:
# build the package (CPU + CUDA extensions, sm_90a), run the GPU tests, compute-sanitizer on a small shape,
# the per-block GPU benchmarks and the full-network timing. Everything lands under $OUT (default
# ./results_local). Each step has its own time limit and the script goes on after a failed step.
#   usage: bash benchmarks/gpu_check.sh            (on a machine with an NVIDIA GPU)
set -u -o pipefail
OUT=${OUT:-$PWD/results_local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
export MNV2_RESULTS=$SUMMARY
: > "$SUMMARY"
t0=$(date +%s)
step() {  # step NAME LIMIT_S CMD...: run with a time limit, log, record status
  local name=$1 limit=$2; shift 2
  local s=$(date +%s)
  echo "=== [$(( s - t0 ))s] $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - s ))s" | tee -a "$LOG"
  echo "- $name: rc=$rc, $(( $(date +%s) - s )) s" >> "$SUMMARY.steps"
  return 0
}
{
  echo "# GPU check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} | tee -a "$SUMMARY"

if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (the offline ImageNet weights)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
step build 160 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a MNV2_PTXAS_VERBOSE=1 \
  python3 -m pip install --no-deps --no-build-isolation --no-index -e .
grep -E "registers|spill|bytes stack" "$LOG" | sort -u | head -40 > "$OUT/ptxas.txt"
python3 -c "import mnv2_kernels, mnv2_kernels._ext as e; print('cpu ext:', e.CPU_EXT_ERROR or 'ok', '| cuda ext:', e.CUDA_EXT_ERROR or 'ok')" 2>&1 | tee -a "$SUMMARY"

step tests 150 python3 -m pytest -q -rs --maxfail=20 --timeout=60 -p no:cacheprovider \
  tests/test_inverted_residual_cuda.py tests/test_inverted_residual_triton.py tests/test_gpu_network.py \
  --junitxml="$OUT/tests.xml"
tail -5 "$LOG" | tee -a "$SUMMARY"

step sanitizer 50 compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_small.py
step racecheck 40 compute-sanitizer --tool racecheck --error-exitcode 9 python3 tools/sanitize_small.py

step bench_blocks 80 python3 -m pytest -q -p no:cacheprovider benchmarks/bench_inverted_residual_gpu.py \
  --benchmark-json="$OUT/bench_blocks.json" --benchmark-columns=median,iqr,rounds
step network 110 python3 -m mnv2_kernels --device cuda --dtype float16 --batches 1 256 --iters 20 \
  --backends cuda triton --cuda-graphs --markdown "$SUMMARY"
grep -E "^\[.*\]     " "$LOG" >> "$SUMMARY"   # per-variant lines, in case the table was cut short
cat "$SUMMARY.steps" >> "$SUMMARY"; rm -f "$SUMMARY.steps"
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$SUMMARY"
tail -60 "$SUMMARY"
