"""CPU tests of the static sm_90a report (tools/gpu_static_report.py, issue 7): the recorded GPU runs parse
and match the package's block table, the model fit recovers known coefficients, the SASS parser finds loops
and weights them by trip counts on a tiny nvcc-compiled kernel, occupancy arithmetic, and the committed
baseline covers every block. Compiles nothing big; the nvcc test skips without nvcc / nvdisasm."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from gpu_static import cuda, model, repo, runs, sass  # noqa: E402

RUNS = os.path.join(ROOT, "benchmarks", "gpu_runs")
BASELINE = os.path.join(ROOT, "benchmarks", "gpu_static_baseline.json")


def test_recorded_runs_parse_and_match_the_block_table():
    recorded = runs.load_runs(RUNS)
    assert recorded, "benchmarks/gpu_runs/ holds no run"
    blocks = {b["name"]: b for b in repo.mobilenet_v2_blocks()}
    assert len(blocks) == 12
    kernel = runs.kernel_measurements(recorded)
    assert len(kernel) >= 24
    for m in kernel:
        shape = {k: v for k, v in blocks[m["block"]].items() if k != "name"}
        assert m["shape"] == shape, f"block {m['block']}: recorded shape {m['shape']} != block table {shape}"
        assert m["median_us"] > 0 and len(m["commit"]) >= 7
    eager = runs.reference_times(recorded, "eager")
    assert {b for b, d, n in eager if d == "fp16" and n == 256} == set(blocks)


def test_recorded_commits_exist_in_git():
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    shallow = subprocess.run(["git", "-C", ROOT, "rev-parse", "--is-shallow-repository"], capture_output=True,
                             text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("shallow clone: the recorded runs' commits may be missing")
    for c in {m["commit"] for m in runs.kernel_measurements(runs.load_runs(RUNS))}:
        r = subprocess.run(["git", "-C", ROOT, "cat-file", "-e", c + "^{commit}"], capture_output=True)
        assert r.returncode == 0, f"commit {c} of a recorded run is not in this repository"


def test_bad_run_file_is_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": "mnv2-gpu-run/1", "measurements": [{"block": "2"}]}))
    with pytest.raises(ValueError, match="lacks"):
        runs.load_runs(str(tmp_path))
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="schema"):
        runs.load_runs(str(tmp_path))


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    true = dict(issue=0.9, latency=3.0, smem=0.5, l2=0.2, tc=1.5, dram=1.0)
    rows = []
    for _ in range(40):
        f = {k: float(rng.uniform(1, 300)) for k in model.FEATURES}
        rows.append((f, model.predict(f, true) * math.exp(rng.normal(0, 0.02))))
    coef, resid = model.fit(rows)
    assert model.log_sd(resid) < 0.05
    for k in ("issue", "latency", "tc"):       # the large terms are identified
        assert abs(math.log(coef[k] / true[k])) < 0.35, (k, coef[k], true[k])
    # a model that cannot explain the data shows it in the error figure
    bad = [(f, t * (5.0 if i % 2 else 0.2)) for i, (f, t) in enumerate(rows)]
    assert model.log_sd(model.fit(bad)[1]) > 0.5


def test_occupancy_and_floor():
    assert model.occupancy(255, 16384, 4) == 2            # 256 regs x 128 threads = 32 K regs per CTA
    assert model.occupancy(128, 100 * 1024, 8) == 2       # 2 x (100 KB + 1 KB) fits 228 KB
    assert model.occupancy(64, 200 * 1024, 4) == 1
    assert model.occupancy(32, 0, 32) == 2                # 64 warps per SM
    b3 = next(b for b in repo.mobilenet_v2_blocks() if b["name"] == "3")
    nbytes, flops = model.block_cost(b3, 256, 2)
    assert abs(nbytes / 1e6 - 77.1) < 0.5                 # NOTES.md / RESULTS.md roofline table: 77.1 MB
    assert abs(flops / 1e9 - 13.18) < 0.05


def test_sass_mix_weights_loops_by_trip_counts(tmp_path):
    nvcc = cuda.find_nvcc()
    try:
        nvdisasm = sass.tool("nvdisasm")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "k.cu"
    src.write_text(r'''
extern "C" __global__ void two_loops(const float* __restrict__ x, float* __restrict__ y, int n, int m) {
  float acc = 0.f;
  for (int i = 0; i < n; ++i) {                      // depth 1
    acc += x[i * 32 + threadIdx.x];
    for (int j = 0; j < m; ++j) acc = acc * 0.5f + x[j];   // depth 2
  }
  y[threadIdx.x] = acc;
}
''')
    cubin = tmp_path / "k.cubin"
    r = subprocess.run([nvcc, "-arch=sm_90a", "-cubin", "-O3", "-Xptxas", "-v", str(src), "-o", str(cubin)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ents = cuda.parse_ptxas(r.stdout + r.stderr)
    assert list(ents) == ["two_loops"] and ents["two_loops"]["spill_st"] == 0 and ents["two_loops"]["regs"] > 0
    one = sass.analyse_cubin(str(cubin), "two_loops", {1: 1, 2: 1}, nvdisasm)
    many = sass.analyse_cubin(str(cubin), "two_loops", {1: 10, 2: 1000}, nvdisasm)
    assert one["loops"] >= 2 and one["max_depth"] >= 2
    assert one["TOTAL"] == sum(one["static"].values())            # trips of 1: the static count
    assert many["TOTAL"] > 500 * one["static"].get("FFMA", 1)     # the inner body dominates
    assert many["LDG"] > 100 * one["LDG"] // 2 and many["gld_B"] >= many["LDG"] * 32   # >= 1 B per lane


def test_sass_classes_and_tensor_core_flops():
    assert sass.classify("HGMMA.64x32x16.F32") == "HGMMA"
    assert sass.classify("HMMA.16816.F32") == "HMMA"
    assert sass.classify("LDG.E.128.CONSTANT") == "LDG"
    assert sass.classify("SHFL.IDX") == "SHFL"
    assert sass.classify("IMAD.WIDE.U32") == "INT"
    assert sass._tc_flops("HGMMA.64x32x16.F32") == 2 * 64 * 32 * 16 // 4
    assert sass._tc_flops("HMMA.16816.F32") == 2 * 16 * 8 * 16
    assert sass._tc_flops("HMMA.1688.F32.TF32") == 2 * 16 * 8 * 8


def test_baseline_covers_every_block_and_has_coefficients():
    if not os.path.isfile(BASELINE):
        pytest.skip("no baseline committed yet")
    with open(BASELINE) as f:
        base = json.load(f)
    assert set(base["coefficients"]) == set(model.FEATURES)
    names = {b["name"] for b in repo.mobilenet_v2_blocks()}
    fp16 = {(b["block"], b.get("backend") or b["variant"].split("-")[0]) for b in base["blocks"] if b["dtype"] == "fp16"}
    for backend in {v for _, v in fp16}:
        assert {b for b, v in fp16 if v == backend} == names, f"baseline misses blocks of {backend}"
    assert all(b["time_us"] > 0 for b in base["blocks"])
    assert base["fit_log_sd"] <= 0.25


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_gpu_check_records_assemble_into_a_loadable_run(tmp_path):
    """What benchmarks/gpu_check.sh does with the benchmark's measurement lines: a run file the report reads."""
    b2 = next(b for b in repo.mobilenet_v2_blocks() if b["name"] == "2")
    shape = {k: v for k, v in b2.items() if k != "name"}
    lines = tmp_path / "records.jsonl"
    lines.write_text(json.dumps(dict(block="2", shape=shape, batch=256, dtype="fp16", layout="channels_last",
                                     variant="triton-ring", backend="triton", median_us=123.4, chosen=True)) + "\n"
                     + json.dumps(dict(block="2", shape=shape, batch=256, dtype="fp16", layout="channels_last",
                                       variant="eager", backend="torch", median_us=1600.0)) + "\n")
    out_dir = tmp_path / "runs"
    out_dir.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_static", "record.py"), str(lines),
                        str(out_dir / "run.json"), "--what", "test"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recorded = runs.load_runs(str(out_dir))
    (m,) = runs.kernel_measurements(recorded)
    assert m["variant"] == "triton-ring" and m["median_us"] == 123.4 and len(m["commit"]) == 40
    assert len(m["source_sha256"]) == 64
    assert runs.reference_times(recorded) == {("2", "fp16", 256): 1600.0}
