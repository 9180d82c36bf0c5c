#!/usr/bin/env python3
"""Static H200 prediction for the Triton ring kernel, from its sm_90a compile on a GPU-less machine.

For each MobileNetV2 block shape it takes the launcher's ``static_plans`` (the exact configs the launcher
launches), compiles each plan for sm_90a with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90,
32))``, reads registers and spills from ``ptxas -v`` (Triton's own ptxas and flags), counts the SASS
instructions (``nvdisasm``) with each loop body weighted by the plan's ``trips`` per loop depth, and turns the
warp-instructions of the whole batch into an issue-bound time: instructions / (132 SMs x 4 issue/clk x 1.98
GHz), x 2.71 (the calibration of the first Triton kernel's 24 H200 measurements, log-sd 0.21). It is the
method of the project's first static look (RESULTS.md); tools/gpu_static_report.py (issue 7) is the project's
general tool and reads the same ``static_plans``.

    .venv/bin/python mnv2_kernels/triton/static_predict.py [--batch 256] [--dtype fp16] [--out DIR] [--json F]

Needs triton and torch (no GPU); runs without importing mnv2_kernels/__init__ (no C++ extensions).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import types

sys.dont_write_bytecode = True

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# MobileNetV2 blocks at 224x224 (name, Cin, t, Cout, stride, H) and eager cuDNN's measured H200 time (µs, fp16,
# batch 256, channels_last; RESULTS.md, GPU device runs, 2026-11-28).
BLOCKS = [("1", 32, 1, 16, 1, 112, 1027), ("2", 16, 6, 24, 2, 112, 1613), ("3", 24, 6, 24, 1, 56, 1183),
          ("4", 24, 6, 32, 2, 56, 727), ("5-6", 32, 6, 32, 1, 28, 400), ("7", 32, 6, 64, 2, 28, 293),
          ("8-10", 64, 6, 64, 1, 14, 394), ("11", 64, 6, 96, 1, 14, 212), ("12-13", 96, 6, 96, 1, 14, 327),
          ("14", 96, 6, 160, 2, 14, 199), ("15-16", 160, 6, 160, 1, 7, 279), ("17", 160, 6, 320, 1, 7, 209)]
H200 = dict(sms=132, clk_ghz=1.98, regs_per_sm=65536, smem_per_sm=233472, max_warps=64, max_ctas=32)
CALIB = 2.71
CLASSES = [("HGMMA", r"^HGMMA"), ("HMMA", r"^HMMA"), ("LDG", r"^LDG"), ("STG", r"^STG"), ("LDS", r"^LDS"),
           ("STS", r"^STS"), ("SHFL", r"^SHFL"), ("FFMA", r"^FFMA"), ("F2F", r"^(F2F|HADD2\.F32)"),
           ("BAR", r"^BAR"), ("LDL/STL", r"^(LDL|STL)")]


def load_launcher():
    pkg = types.ModuleType("mnv2_kernels")          # skip mnv2_kernels/__init__ (it loads C++ extensions)
    pkg.__path__ = [os.path.join(REPO, "mnv2_kernels")]
    sys.modules.setdefault("mnv2_kernels", pkg)
    import importlib
    return importlib.import_module("mnv2_kernels.triton.launcher")


def specialise(K, args, consts):
    """signature / constexprs / attrs as JITFunction.run builds them (pointers 16-byte aligned)."""
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import MockTensor
    dts = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32)
    sig, cx, attrs = {}, {}, {}
    for i, p in enumerate(K.params):
        if p.is_constexpr:
            sig[p.name], cx[(i,)] = "constexpr", consts[p.name]
            continue
        v = args[p.name]
        if isinstance(v, str) and v.startswith("ptr:"):
            v = MockTensor(dts[v[4:]])
        ty, key = native_specialize_impl(BaseBackend, v, False, not p.do_not_specialize, True)
        sig[p.name] = ty
        if ty == "constexpr":
            cx[(i,)] = key
        elif key:
            attrs[(i,)] = BaseBackend.parse_attr(key)
    return sig, cx, attrs


def tool(name):
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas(ptx_path):
    r = subprocess.run([tool("ptxas"), "-v", "--gpu-name=sm_90a", ptx_path, "-o", ptx_path + ".o"],
                       capture_output=True, text=True)
    t = r.stderr + r.stdout
    g = lambda rx: int(m.group(1)) if (m := re.search(rx, t)) else None    # noqa: E731
    return dict(regs=g(r"Used (\d+) registers"), spill_st=g(r"(\d+) bytes spill stores"),
                spill_ld=g(r"(\d+) bytes spill loads"))


def sass(cubin_path):
    """[(addr, opcode)] and loops [(start, end)] (backward branches) from nvdisasm."""
    out = subprocess.run([tool("nvdisasm"), "-c", cubin_path], capture_output=True, text=True).stdout
    ins, labels, pending = [], {}, []
    for line in out.splitlines():
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*)", line)
        if m:
            addr = int(m.group(1), 16)
            for p in pending:
                labels[p] = addr
            pending = []
            ins.append((addr, m.group(2), m.group(3)))
    loops = []
    for addr, op, rest in ins:
        if op.startswith("BRA"):
            t = re.search(r"(\.L_x_\d+)", rest)
            if t and labels.get(t.group(1), addr + 1) < addr:
                loops.append((labels[t.group(1)], addr))
    return ins, loops


def classify(op):
    for name, rx in CLASSES:
        if re.match(rx, op):
            return name
    return "other"


def analyse(plan, out_dir, tag):
    import triton
    from triton.backends.compiler import GPUTarget
    K = plan["kernel"]
    K = getattr(K, "fn", K) if not hasattr(K, "params") else K
    sig, cx, attrs = specialise(K, plan["args"], plan["constexprs"])
    ck = triton.compile(triton.compiler.ASTSource(fn=K, signature=sig, constexprs=cx, attrs=attrs),
                        target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=plan["num_warps"], num_stages=plan["num_stages"],
                                     **({"maxnreg": plan["maxnreg"]} if plan.get("maxnreg") else {})))
    d = os.path.join(out_dir, tag)
    os.makedirs(d, exist_ok=True)
    for k, v in ck.asm.items():
        with open(os.path.join(d, f"kernel.{k}"), "wb" if isinstance(v, bytes) else "w") as f:
            f.write(v)
    pr = ptxas(os.path.join(d, "kernel.ptx"))
    ins, loops = sass(os.path.join(d, "kernel.cubin"))
    trips = {int(k): v for k, v in plan["trips"].items()}
    deepest = max(trips)
    mix = collections.Counter()
    for addr, op, _ in ins:
        depth = sum(1 for s, e in loops if s <= addr <= e)
        mult = 1 if depth == 0 else trips.get(depth, trips[deepest])
        mix[classify(op)] += mult
        mix["TOTAL"] += mult
    warps = ck.metadata.num_warps
    per_prog = {k: v * warps for k, v in mix.items()}                 # warp-instructions per program
    programs = plan["programs"]
    issue_us = per_prog["TOTAL"] * programs / 4 / H200["sms"] / (H200["clk_ghz"] * 1e3)
    regs = pr["regs"] or 0
    ptx = ck.asm["ptx"]
    ctas = min(H200["regs_per_sm"] // (max(8, -(-regs // 8) * 8) * 32 * warps),
               H200["smem_per_sm"] // (ck.metadata.shared + 1024), H200["max_warps"] // warps, H200["max_ctas"])
    return dict(regs=regs, spill_st=pr["spill_st"], spill_ld=pr["spill_ld"], smem=ck.metadata.shared,
                warps=warps, ctas_per_sm=ctas, programs=programs, loops=len(loops), per_program=per_prog,
                wgmma=len(re.findall(r"wgmma\.mma_async", ptx)), mma_sync=len(re.findall(r"\bmma\.sync", ptx)),
                ld_nc=len(re.findall(r"ld\.global\.nc", ptx)), issue_us=issue_us, pred_us=issue_us * CALIB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--blocks", nargs="*", help="block names (default: all 12)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "mnv2-ring-sm90"))
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(a.out, "triton_cache"))
    import torch
    launcher = load_launcher()
    dtype = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32)[a.dtype]
    rows = []
    print("| block | shape | variant | regs | spills st/ld B | smem KB | warps | CTAs/SM | programs | wgmma | "
          "warp-instr/program | predicted µs | eager µs | speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, cin, t, cout, s, h, eager in BLOCKS:
        if a.blocks and name not in a.blocks:
            continue
        chid = cin * t
        plans = launcher.static_plans(a.batch, cin, chid, cout, h, h, s, True, s == 1 and cin == cout, dtype)
        for plan in plans:
            r = analyse(plan, a.out, f"blk{name}_{plan['name']}_{a.dtype}")
            r.update(block=name, shape=f"{cin}-{chid}-{cout} s{s} {h}x{h}", variant=plan["name"],
                     chosen=plan["chosen"], eager_us=eager, speedup=eager / r["pred_us"],
                     constexprs={k: v for k, v in plan["constexprs"].items()}, trips=plan["trips"])
            rows.append(r)
            print(f"| {name} | {r['shape']} | {r['variant']}{'*' if r['chosen'] else ''} | {r['regs']} | "
                  f"{r['spill_st']}/{r['spill_ld']} | {r['smem'] / 1024:.1f} | {r['warps']} | {r['ctas_per_sm']} | "
                  f"{r['programs']} | {r['wgmma']} | {r['per_program']['TOTAL']} | {r['pred_us']:.0f} | {eager} | "
                  f"{r['speedup']:.2f}x |", flush=True)
    chosen = [r for r in rows if r["chosen"]]
    if chosen:
        g = math.exp(sum(math.log(r["speedup"]) for r in chosen) / len(chosen))
        print(f"\ngeometric mean of the predicted speed-up over eager ({len(chosen)} blocks): {g:.2f}x; "
              f"slowest block: {min(r['speedup'] for r in chosen):.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
