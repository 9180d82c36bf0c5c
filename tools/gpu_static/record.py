"""Assembles a recorded GPU run (schema "mnv2-gpu-run/1", tools/gpu_static/runs.py) from the measurement
lines the GPU benchmarks append (MNV2_GPU_RUN_RECORDS, one JSON object a line) plus the machine's card,
software versions, the command and the git commit / source hashes of the kernels that ran.

    python3 tools/gpu_static/record.py RECORDS.jsonl OUT.json --what "..." --command "..."
Copy OUT.json to benchmarks/gpu_runs/<date>-h200-<what>.json and commit it: the static report refits on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from gpu_static import repo  # noqa: E402


def _cmd(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def append(path, **m):
    """Appends one measurement line (used by the GPU benchmarks)."""
    with open(path, "a") as f:
        f.write(json.dumps(m) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records")
    ap.add_argument("out")
    ap.add_argument("--what", default="GPU check")
    ap.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    a = ap.parse_args()
    ms = []
    if os.path.isfile(a.records):
        with open(a.records) as f:
            ms = [json.loads(line) for line in f if line.strip()]
    head = _cmd(["git", "-C", repo.ROOT, "rev-parse", "HEAD"]) or "unknown"
    dirty = bool(_cmd(["git", "-C", repo.ROOT, "status", "--porcelain", "--", *repo.KERNEL_PATHS]))
    versions = {}
    try:
        import torch
        versions.update(torch=torch.__version__, cuda=torch.version.cuda)
        import triton
        versions["triton"] = triton.__version__
    except ImportError:
        pass
    versions["python"] = sys.version.split()[0]
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total", "--format=csv,noheader"])
    name = smi.split(",")[0].strip() if smi else "unknown"
    sms = None
    try:
        import torch
        if torch.cuda.is_available():
            pr = torch.cuda.get_device_properties(0)
            name, sms = pr.name, pr.multi_processor_count
    except Exception:
        pass
    hashes = {p: repo.tree_hash(repo.ROOT, p) for p in repo.KERNEL_PATHS + ("mnv2_kernels/triton",)}
    for m in ms:
        m.setdefault("commit", head)
        if m.get("backend") in ("triton", "cuda"):
            m.setdefault("source_sha256", hashes["mnv2_kernels/triton" if m["backend"] == "triton" else "csrc/cuda"])
    run = {"schema": "mnv2-gpu-run/1", "date": time.strftime("%Y-%m-%d", time.gmtime()), "what": a.what,
           "device": {"name": name, "sms": sms, "nvidia_smi": smi}, "software": versions, "command": a.command,
           "timing": "median of triton.testing.do_bench(warmup=10, rep=50) (CUDA events, L2 flushed), microseconds",
           "git_commit": head, "source_dirty": dirty, "source_sha256": hashes, "measurements": ms}
    if dirty:
        run["warning"] = ("kernel sources differed from git_commit when this ran: the static report compiles "
                          "git_commit, so commit the kernels first (or fix 'commit' per measurement)")
    with open(a.out, "w") as f:
        json.dump(run, f, indent=1)
    print(f"record: {len(ms)} measurements -> {a.out}" + (" (WARNING: kernel sources dirty)" if dirty else ""))


if __name__ == "__main__":
    main()
