#!/usr/bin/env python3
"""Compile-only check of the fused CUDA kernel (csrc/cuda/inverted_residual_cuda.cu); needs nvcc, no GPU, no torch.

Compiles the .cu alone for sm_80 and sm_90a (-O3, -Xptxas -v) into a temporary directory, parses the ptxas
report and prints one row per kernel instantiation and arch: registers, static shared memory, stack frame,
spill stores / loads. (The kernel's shared memory is dynamic, sized per block shape at launch; the table below
it lists those sizes for the MobileNetV2 block shapes when the host can run a small host-only program.)

Exit status: 0 when everything compiled without spills; 1 on any spill (stores or loads > 0); 2 on a compile
error or when nvcc is missing or ptxas reported nothing.

    python tools/cuda_build_check.py [--nvcc PATH] [--fast-math] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "inverted_residual_cuda.cu")
GENCODE = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]

# MobileNetV2 block shapes (Cin, Chid, Cout, stride, has_expand): shared/NOTES.md section 2 (+ t=1 without expand).
SHAPES = [(32, 32, 16, 1, 0), (32, 32, 16, 1, 1), (16, 96, 24, 2, 1), (24, 144, 24, 1, 1), (24, 144, 32, 2, 1),
          (32, 192, 32, 1, 1), (32, 192, 64, 2, 1), (64, 384, 64, 1, 1), (64, 384, 96, 1, 1), (96, 576, 96, 1, 1),
          (96, 576, 160, 2, 1), (160, 960, 160, 1, 1), (160, 960, 320, 1, 1)]

RE_COMPILING = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
RE_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"Used (\d+) registers")
RE_SMEM = re.compile(r"(\d+) bytes smem")


def demangle(names):
    """Readable names through c++filt when available (else the mangled ones)."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=30).stdout
        lines = out.splitlines()
        if len(lines) == len(names):
            return dict(zip(names, (re.sub(r"\(anonymous namespace\)::", "", s) for s in lines)))
    except (OSError, subprocess.SubprocessError):
        pass
    return {n: n for n in names}


def parse_ptxas(text):
    """Rows {name, arch, regs, smem, stack, spill_st, spill_ld} from a ptxas -v report."""
    rows, cur = [], None
    for line in text.splitlines():
        m = RE_COMPILING.search(line)
        if m:
            cur = {"name": m.group(1), "arch": m.group(2), "regs": None, "smem": 0, "stack": None,
                   "spill_st": None, "spill_ld": None}
            rows.append(cur)
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
            cur["smem"] = int(s.group(1)) if s else 0
    return rows


def smem_table(nvcc, obj_dir, flags):
    """Dynamic shared memory per MobileNetV2 block shape, from the launcher's own size function (host only)."""
    src = os.path.join(obj_dir, "smem_main.cpp")
    exe = os.path.join(obj_dir, "smem_main")
    with open(src, "w") as f:
        f.write('#include "inverted_residual_cuda.cuh"\n#include <cstdio>\nint main() {\n')
        for cin, chid, cout, s, e in SHAPES:
            f.write(f'  std::printf("%zu\\n", mnv2_ir_cuda_smem_bytes({cin}, {chid}, {cout}, {s}, {e}));\n')
        f.write("  return 0;\n}\n")
    cmd = [nvcc, "-std=c++17", "-O1", "-gencode=arch=compute_80,code=sm_80", "-I", os.path.dirname(SOURCE),
           src, SOURCE, "-o", exe] + flags
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return None, "host program did not build: " + r.stderr.strip()[-400:]
        r = subprocess.run([exe], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None, f"host program exited {r.returncode}"
        return [int(v) for v in r.stdout.split()], None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"), help="nvcc to use (default: nvcc on PATH)")
    ap.add_argument("--fast-math", action="store_true", help="also pass setup.py's --use_fast_math -lineinfo")
    ap.add_argument("--no-smem-table", action="store_true", help="skip the per-shape dynamic shared memory table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    nvcc = shutil.which(args.nvcc) or (args.nvcc if os.path.isfile(args.nvcc) else None)
    if nvcc is None:
        print(f"cuda_build_check: nvcc not found ({args.nvcc!r}); put it on PATH or pass --nvcc", file=sys.stderr)
        return 2
    flags = ["--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"] if args.fast_math else []
    tmp = tempfile.mkdtemp(prefix="mnv2_cuda_check_")
    try:
        cmd = [nvcc, "-std=c++17", "-O3"] + GENCODE + ["-Xptxas", "-v", "-c", SOURCE, "-o",
                                                       os.path.join(tmp, "inverted_residual_cuda.o")] + flags
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            print("cuda_build_check: nvcc timed out after 900 s", file=sys.stderr)
            return 2
        dt = time.time() - t0
        report = r.stdout + r.stderr
        if r.returncode != 0:
            print(report, file=sys.stderr)
            print(f"cuda_build_check: FAILED: nvcc exited {r.returncode}", file=sys.stderr)
            return 2
        rows = parse_ptxas(report)
        if not rows or any(row["regs"] is None or row["spill_st"] is None for row in rows):
            print(report, file=sys.stderr)
            print("cuda_build_check: FAILED: could not parse the ptxas report", file=sys.stderr)
            return 2
        names = demangle(sorted({row["name"] for row in rows}))
        header = ("kernel", "arch", "regs", "smem B", "stack B", "spill st B", "spill ld B")
        table = [(names[r["name"]], r["arch"], str(r["regs"]), str(r["smem"]), str(r["stack"]), str(r["spill_st"]),
                  str(r["spill_ld"])) for r in rows]
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
        print(fmt.format(*header))
        for t in table:
            print(fmt.format(*t))
        print(f"compiled {len(rows)} kernel instantiation(s) x arch in {dt:.1f} s")
        archs = {r["arch"] for r in rows}
        missing = {"sm_80", "sm_90a"} - archs
        if missing:
            print(f"cuda_build_check: FAILED: no ptxas report for {sorted(missing)}", file=sys.stderr)
            return 2

        if not args.no_smem_table:
            sizes, why = smem_table(nvcc, tmp, flags)
            if sizes is None:
                print(f"(dynamic shared memory table skipped: {why})")
            else:
                print("dynamic shared memory per CTA (A100 allows 166912 B, H100/H200 232448 B):")
                print("  Cin  Chid  Cout  stride  expand     bytes")
                for (cin, chid, cout, s, e), b in zip(SHAPES, sizes):
                    print(f"  {cin:>3}  {chid:>4}  {cout:>4}  {s:>6}  {'yes' if e else 'no':>6}  {b:>8}")

        spills = [t for t, r in zip(table, rows) if r["spill_st"] > 0 or r["spill_ld"] > 0]
        if spills:
            for t in spills:
                print(f"cuda_build_check: SPILL in {t[0]} ({t[1]}): {t[5]} B stores, {t[6]} B loads", file=sys.stderr)
            return 1
        print("cuda_build_check: OK (no spills)")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
