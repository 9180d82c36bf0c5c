"""Recorded GPU runs (benchmarks/gpu_runs/*.json, schema "mnv2-gpu-run/1"): one file per device run, written
by benchmarks/gpu_check.sh (benchmarks/gpu_run_record.py) or converted from RESULTS.md.

Each measurement: block, shape {cin, chid, cout, h, w, stride, has_expand, residual}, batch, dtype
("fp16" | "bf16" | "fp32"), layout, variant (a kernel variant name as the launchers' static_plans call it,
e.g. "triton-gather", or "eager" / "eager-folded" / "compile" for the references; block "network" holds
whole-network times, not fitted), backend, median_us, and
for kernel variants the git commit the kernel source was at (commit) and the config the launcher picked.
"""
from __future__ import annotations

import glob
import json
import os

SCHEMA = "mnv2-gpu-run/1"
REFERENCE_VARIANTS = ("eager", "eager-folded", "compile")


def load_runs(directory):
    """[(path, run dict)] sorted by file name; raises ValueError on a file with another schema or a
    measurement without the required keys."""
    runs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            run = json.load(f)
        if run.get("schema") != SCHEMA:
            raise ValueError(f"{path}: schema {run.get('schema')!r}, expected {SCHEMA!r}")
        for i, m in enumerate(run.get("measurements", [])):
            missing = [k for k in ("block", "shape", "batch", "dtype", "variant", "median_us") if k not in m]
            if not missing and m["variant"] not in REFERENCE_VARIANTS and m["block"] != "network" and "commit" not in m and "git_commit" not in run:
                missing = ["commit"]
            if missing:
                raise ValueError(f"{path}: measurement {i} lacks {missing}")
        runs.append((path, run))
    return runs


def kernel_measurements(runs):
    """Measurements of fused-kernel variants: [dict(m, commit=..., run=path)]."""
    out = []
    for path, run in runs:
        for m in run.get("measurements", []):
            if m["variant"] in REFERENCE_VARIANTS or m.get("failed") or m["block"] == "network":
                continue
            out.append(dict(m, commit=m.get("commit") or run["git_commit"], run=os.path.basename(path)))
    return out


def reference_times(runs, variant="eager"):
    """{(block, dtype, batch): µs} of a reference variant, the latest run winning."""
    ref = {}
    for _path, run in runs:
        for m in run.get("measurements", []):
            if m["variant"] == variant and not m.get("failed"):
                ref[(m["block"], m["dtype"], int(m["batch"]))] = float(m["median_us"])
    return ref
