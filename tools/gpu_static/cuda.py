"""sm_90a cubins of the CUDA kernels (nvcc -cubin, setup.py's flags), ptxas -v numbers per kernel entry,
cached by the hash of the CUDA sources, flags and nvcc version."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess

FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]   # setup.py's nvcc flags
ARCH = "sm_90a"
RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
RE_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"Used (\d+) registers")
RE_SMEM = re.compile(r"(\d+) bytes smem")


def find_nvcc():
    n = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    return n if os.path.isfile(n) else None


def include_dirs(src):
    """setup.py's include dirs for the tree at ``src`` (from mnv2_kernels/_build_config.py, the one build
    description, loaded by path so the package and its extensions are not imported)."""
    import importlib.util

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("_mnv2_build_config",
                                                  os.path.join(here, "mnv2_kernels", "_build_config.py"))
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    return cfg.cuda_include_dirs(src)


def parse_ptxas(text):
    """{mangled entry: {regs, smem_static, stack, spill_st, spill_ld}} for sm_90a entries."""
    rows, cur = {}, None
    for line in text.splitlines():
        m = RE_ENTRY.search(line)
        if m:
            cur = rows.setdefault(m.group(1), {}) if m.group(2) == ARCH else None
            continue
        if cur is None:
            continue
        m = RE_PROPS.search(line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = (int(g) for g in m.groups())
        m = RE_USED.search(line)
        if m:
            cur["regs"] = int(m.group(1))
            s = RE_SMEM.search(line)
            cur["smem_static"] = int(s.group(1)) if s else 0
    return rows


def compile_source(src, source, defines, cache, nvcc):
    """Compiles `source` (repo-relative) of the tree at `src` for sm_90a. Returns
    {cubin, entries: parse_ptxas(...), log} or raises RuntimeError with nvcc's output."""
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1:]
    h = hashlib.sha256(json.dumps([ver, FLAGS, ARCH, sorted(defines), source]).encode())
    for f in sorted(glob.glob(os.path.join(src, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(f) and f.endswith((".cu", ".cuh", ".h", ".hpp", ".inc")):
            h.update(os.path.relpath(f, src).encode() + b"\0" + open(f, "rb").read())
    key = h.hexdigest()[:24]
    d = os.path.join(cache, "cuda", key)
    rec_path = os.path.join(d, "record.json")
    if os.path.isfile(rec_path):
        with open(rec_path) as f:
            return json.load(f)
    os.makedirs(d, exist_ok=True)
    cubin = os.path.join(d, "kernel.cubin")
    cmd = [nvcc] + FLAGS + [f"-arch={ARCH}", "-cubin", "-Xptxas", "-v"] + \
        [f"-I{i}" for i in include_dirs(src)] + list(defines) + [os.path.join(src, source), "-o", cubin]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"nvcc exited {r.returncode} for {source} (sm_90a):\n{log[-3000:]}")
    rec = dict(cubin=cubin, entries=parse_ptxas(log), key=key, cmd=" ".join(cmd))
    with open(rec_path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(rec_path + ".tmp", rec_path)
    return rec
