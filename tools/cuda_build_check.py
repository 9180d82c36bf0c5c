#!/usr/bin/env python3
"""Compile-only check and static H200 prediction of the fused CUDA kernel (csrc/cuda/inverted_residual_cuda.cu);
needs nvcc, no GPU.

Check (default): compiles the .cu alone for sm_80 and sm_90a with setup.py's nvcc flags and torch's
half-operator defines, -Xptxas -v, prints one row per kernel instantiation and arch (registers, stack frame,
spill stores / loads), the launch plan of every MobileNetV2 block shape (mnv2_kernels/cuda_plan.py, the Python
mirror of the C++ plan) and fails on any spill or local-memory use.

Predict (--predict): disassembles the sm_90a cubin (nvdisasm -gi, line info), assigns every SASS instruction
to a kernel phase (load_rows, expand_chunk, depthwise_chunk, project, kernel body) by its innermost source line,
finds the loops from backward branches, weights each instruction by the trip count of its loop from the plan's
schedule (cuda_plan.schedule) and applies the issue model of docs/CUDA_KERNEL.md:
    issue µs   = warp-instructions of the busiest SM / (4 schedulers x 1.98 GHz)
    predicted  = max(2.71 x issue, DRAM floor (fused bytes / 4.3 TB/s), tensor floor (mma.sync 2048 flop/clk/SM))
and prints per block: registers, shared memory, CTAs/SM, the plan, predicted µs, eager µs (RESULTS.md, H200,
batch 256 fp16 channels_last) and the predicted speed-up, plus the geometric means.

Exit status: 0 when everything compiled without spills or local memory; 1 on a spill / local memory; 2 on a
compile error or a missing tool.

    python tools/cuda_build_check.py [--nvcc PATH] [--predict [--json OUT]] [--keep]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
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
# setup.py's nvcc flags, plus the defines torch's CUDAExtension adds (no implicit half conversions)
FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-D__CUDA_NO_HALF2_OPERATORS__"]

# MobileNetV2 blocks (the numbering of mnv2_kernels.models.mobilenet_v2_blocks(), which tests/test_cuda_emulation.py
# checks this copy against): name, Cin, Chid, Cout, H (= W), stride, residual, repeats,
# eager µs (RESULTS.md, H200, batch 256, fp16, channels_last).
BLOCKS = [("1", 32, 32, 16, 112, 1, False, 1, 1027), ("2", 16, 96, 24, 112, 2, False, 1, 1613),
          ("3", 24, 144, 24, 56, 1, True, 1, 1183), ("4", 24, 144, 32, 56, 2, False, 1, 727),
          ("5-6", 32, 192, 32, 28, 1, True, 2, 400), ("7", 32, 192, 64, 28, 2, False, 1, 293),
          ("8-10", 64, 384, 64, 14, 1, True, 3, 394), ("11", 64, 384, 96, 14, 1, False, 1, 212),
          ("12-13", 96, 576, 96, 14, 1, True, 2, 327), ("14", 96, 576, 160, 14, 2, False, 1, 199),
          ("15-16", 160, 960, 160, 7, 1, True, 2, 279), ("17", 160, 960, 320, 7, 1, False, 1, 209)]

H200 = dict(sms=132, clk_ghz=1.98, dram_Bps=4.3e12, hmma_flop_per_clk=2048, smem_optin=232448)
CALIBRATION = 2.71  # measured / issue-bound time of the first H200 run (docs/CUDA_KERNEL.md)

RE_COMPILING = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
RE_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"Used (\d+) registers")
RE_SMEM = re.compile(r"(\d+) bytes smem")


def load_cuda_plan():
    spec = importlib.util.spec_from_file_location("cuda_plan", os.path.join(ROOT, "mnv2_kernels", "cuda_plan.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def demangle(names):
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


def find_tool(name):
    cands = [shutil.which(name), os.path.join("/usr/local/cuda/bin", name)]
    try:
        import triton  # bundles nvdisasm / cuobjdump
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


# ---------------------------------------------------------------------------------------------------------
# SASS analysis

PHASES = [("load_rows", r"void load_rows\("), ("expand", r"void expand_chunk\("), ("dw", r"void depthwise_chunk\("),
          ("project", r"void project\("), ("kernel", r"mnv2_ir_ring_kernel\(const Params"), ("host", r"^// Host side")]


def phase_ranges(src_path):
    lines = open(src_path).read().splitlines()
    starts = []
    for name, pat in PHASES:
        for i, l in enumerate(lines, 1):
            if re.search(pat, l):
                starts.append((i, name))
                break
        else:
            raise RuntimeError(f"{name} not found in {src_path}")
    starts.sort()
    return [(a, starts[k + 1][0] if k + 1 < len(starts) else 10 ** 9, n) for k, (a, n) in enumerate(starts)]


def disassemble(cubin, nvdisasm, src_path, lines_out=None):
    """{function: [(addr, opcode, operands, phase)]}, {function: [(start, end)]} (loops from backward branches).
    lines_out (a dict): filled with {function: [this file's line chain of each instruction, innermost first]}."""
    out = subprocess.run([nvdisasm, "-c", "-gi", cubin], capture_output=True, text=True, check=True).stdout
    ranges = phase_ranges(src_path)
    base = os.path.basename(src_path)

    def phase_of(line_nums):
        for ln in line_nums:  # innermost first; the first that lies in a phase function decides
            for a, b, n in ranges:
                if a <= ln < b and n != "host":
                    return n
        return "kernel"

    funcs, loops, fn, labels, branches, cur_lines, in_comments = {}, {}, None, {}, [], [], False
    re_ins = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
    for line in out.splitlines():
        m = re.match(r"^\.text\.(\S+):$", line.strip())
        if m:
            if fn is not None:
                loops[fn] = [(labels[t], a) for a, t in branches if t in labels and labels[t] < a and a - labels[t] >= 16]
            fn = m.group(1)
            funcs[fn], labels, branches, cur_lines = [], {}, [], []
            continue
        if fn is None:
            continue
        if line.lstrip().startswith("//## File"):
            if base in line:  # consecutive comments describe the next instruction: innermost chain first
                # only this file's lines (a header's line numbers, e.g. cuda_fp16.hpp, would be misread)
                nums = [int(n) for f, n in re.findall(r'"([^"]+)", line (\d+)', line) if os.path.basename(f) == base]
                cur_lines = (cur_lines + nums) if in_comments else nums
                in_comments = True
            continue
        in_comments = False
        m = re.match(r"^\s*(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = None  # address of the next instruction
            pending = m.group(1)
            labels["__pending__" + pending] = True
            continue
        m = re_ins.search(line)
        if m:
            addr = int(m.group(1), 16)
            for k in [k for k in labels if k.startswith("__pending__")]:
                labels[k[len("__pending__"):]] = addr
                del labels[k]
            op, operands = m.group(3), m.group(4)
            funcs[fn].append((addr, op, operands, phase_of(cur_lines)))
            if lines_out is not None:
                lines_out.setdefault(fn, []).append(tuple(cur_lines))
            if op.startswith("BRA"):
                t = re.search(r"(\.L_x_\d+)", operands)
                if t:
                    branches.append((addr, t.group(1)))
    if fn is not None:
        loops[fn] = [(labels[t], a) for a, t in branches if t in labels and labels[t] < a and a - labels[t] >= 16]
    return funcs, loops


def weighted_counts(instrs, loops, sched, has_expand, weights=None):
    """Warp-instructions per warp of one CTA (the busiest), and HMMA count, weighted by the schedule's trips.
    weights: optional per-instruction factors (0 for code a configuration never executes)."""
    loops = sorted(set(loops))

    def enclosing(addr):
        return [(s, e) for s, e in loops if s <= addr <= e]

    # loops per phase, classified by content
    loop_info = {}
    for s, e in loops:
        body = [i for i in instrs if s <= i[0] <= e]
        phases = [i[3] for i in body]
        ph = max(set(phases), key=phases.count)
        if phases.count(ph) < 0.9 * len(phases):  # spans several phases: an item / step / chunk loop of the kernel
            ph = "kernel"
        loop_info[(s, e)] = dict(phase=ph, hmma=any(i[1].startswith("HMMA") for i in body),
                                 depth=sum(1 for s2, e2 in loops if s2 <= s and e <= e2 and (s2, e2) != (s, e)))

    # how many HMMA-holding loops nest inside each phase (2: tile loop > K loop)
    max_hmma_depth = {}
    for ph in ("expand", "project"):
        hl = [lp for lp, inf in loop_info.items() if inf["phase"] == ph and inf["hmma"]]
        max_hmma_depth[ph] = max((sum(1 for o in hl if o[0] <= lp[0] and lp[1] <= o[1]) for lp in hl), default=0)
    sc = sched
    # the kernel's own loops (they span several phases): item > step > chunk, by nesting
    kloops = sorted([lp for lp, inf in loop_info.items() if inf["phase"] == "kernel"], key=lambda lp: lp[0] - lp[1])
    kdepth = {lp: sum(1 for o in kloops if o[0] <= lp[0] and lp[1] <= o[1] and o != lp) for lp in kloops}
    ktrips = [sc["items"], sc["steps"], sc["chunks"]]

    def outer_trips(addr):
        """Trips of the innermost kernel loop holding addr (items, steps or chunks); 1 outside all of them."""
        ds = [kdepth[lp] for lp in kloops if lp[0] <= addr <= lp[1]]
        return ktrips[min(max(ds), 2)] if ds else 1
    total, hmma, by_phase = 0.0, 0.0, {}
    for idx, (addr, op, operands, ph) in enumerate(instrs):
        encl = [lp for lp in enclosing(addr) if loop_info[lp]["phase"] == ph]
        calls = dict.fromkeys(("load_rows", "expand", "dw", "project", "kernel"), outer_trips(addr))
        if ph == "load_rows":
            mult = sc["load_vec"] if encl else calls[ph]
        elif ph == "expand":
            n_h = sum(1 for lp in encl if loop_info[lp]["hmma"])
            other = [lp for lp in encl if not loop_info[lp]["hmma"]]
            if not has_expand:
                mult = 0 if n_h else (sc["copy_vec"] if other else calls[ph])
            elif n_h >= 2 or (n_h == 1 and max_hmma_depth["expand"] == 1):
                mult = sc["expand_tiles"] * sc["expand_k"]
            elif n_h == 1:
                mult = sc["expand_tiles"]
            elif other:
                mult = sc["stage"] * (sc.get("ksize", 1) ** 2 if len(other) >= 2 else 1)  # ex: a runtime tap loop
            else:
                mult = calls[ph]
        elif ph == "dw":
            # the generalised kernel's depthwise nests a tap-row and a tap-column loop (K trips each) in the item
            # loop; the MobileNetV2 kernel's has the item loop only
            mult = sc["dw_items"] * sc.get("ksize", 1) ** max(0, len(encl) - 1) if encl else calls[ph]
        elif ph == "project":
            n_h = sum(1 for lp in encl if loop_info[lp]["hmma"])
            if n_h >= 2 or (n_h == 1 and max_hmma_depth["project"] == 1):
                mult = sc["proj_tiles"] * sc["proj_k"]
            elif n_h == 1:
                mult = sc["proj_tiles"]
            else:
                mult = calls[ph]
        else:
            mult = calls["kernel"]
        if weights is not None:
            mult *= weights[idx]
        total += mult
        by_phase[ph] = by_phase.get(ph, 0.0) + mult
        if op.startswith("HMMA"):
            hmma += mult
    return total, hmma, by_phase, loop_info


def fused_bytes(cin, chid, cout, h, stride, batch, itemsize=2):
    ho = (h - 1) // stride + 1
    weights = chid * cin + chid + chid * 10 + cout * chid + cout
    return itemsize * (batch * (h * h * cin + ho * ho * cout) + weights)


def predict(cubin, regs_by_symbol, batch=256, dtype="float16", json_out=None):
    cp = load_cuda_plan()
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None:
        print("cuda_build_check: nvdisasm not found (CUDA toolkit or Triton's bundled copy)", file=sys.stderr)
        return 2
    funcs, loops = disassemble(cubin, nvdisasm, SOURCE)
    rows = []
    for name, cin, chid, cout, h, s, res, reps, eager in BLOCKS:
        plans = cp.static_plans(batch, cin, chid, cout, h, h, s, True, res, dtype)
        pl = plans[0]
        p, sc = pl["plan"], dict(pl["loops"])
        L = sc["layout"]
        # staging of the depthwise weights (one loop over the chunk's channels), once per chunk (chunk mode) or once per CTA
        sc["stage"] = math.ceil(p["chunk"] / cp.THREADS) * (sc["chunks"] if p["nchunks"] > 1 else 1)
        fn = [f for f in funcs if pl["symbol"] in f]
        assert len(fn) == 1, (pl["symbol"], list(funcs))
        per_warp, hmma_w, by_phase, _ = weighted_counts(funcs[fn[0]], loops[fn[0]], sc, True)
        cin8, chid8, cout8 = cp.kernel_channels(cin, chid, cout, True)
        scc = cp.schedule(batch, cin8, chid8, cout8, h, h, s, p, critical_path=True)
        scc["stage"] = sc["stage"]
        per_warp_cp = weighted_counts(funcs[fn[0]], loops[fn[0]], scc, True)[0]
        warp_instr_cta = per_warp * cp.WARPS
        ctas_on_sm = min(p["ctas_per_sm"], math.ceil(p["grid"] / H200["sms"]))
        clk_per_us = H200["clk_ghz"] * 1e3
        issue_us = ctas_on_sm * warp_instr_cta / 4 / clk_per_us
        issue_cp_us = ctas_on_sm * per_warp_cp * cp.WARPS / 4 / clk_per_us
        tc_us = ctas_on_sm * hmma_w * cp.WARPS * 4096 / H200["hmma_flop_per_clk"] / clk_per_us
        dram_us = fused_bytes(cin, chid, cout, h, s, batch) / H200["dram_Bps"] * 1e6
        pred = max(CALIBRATION * issue_us, tc_us, dram_us)
        regs = regs_by_symbol.get(pl["symbol"])
        rows.append(dict(block=name, reps=reps, regs=regs, smem=p["smem"], ctas_per_sm=p["ctas_per_sm"],
                         rows=p["rows"], chunk=p["chunk"], nchunks=p["nchunks"], bands=p["bands"], grid=p["grid"],
                         warp_instr_cta=warp_instr_cta, issue_us=issue_us, issue_cp_us=issue_cp_us, tc_us=tc_us, dram_us=dram_us,
                         predicted_us=pred, eager_us=eager, speedup=eager / pred,
                         phase_share={k: v / per_warp for k, v in by_phase.items()}))
    print(f"\nstatic prediction, H200, batch {batch}, {dtype}, channels_last (sm_90a SASS weighted by the plan's "
          f"trip counts; predicted = max({CALIBRATION} x issue, tensor floor, DRAM floor); 'crit' = issue time if every "
          f"warp took as long as the busiest warp of each phase):")
    hdr = (f"{'block':>6} {'regs':>4} {'smem KB':>7} {'CTA/SM':>6} {'R':>3} {'HC':>4} {'chunks':>6} {'bands':>5} "
           f"{'issue us':>8} {'crit us':>7} {'tc us':>6} {'dram us':>7} {'pred us':>7} {'eager us':>8} {'speed-up':>8}  phases")
    print(hdr)
    for r in rows:
        ph = " ".join(f"{k}:{v:.0%}" for k, v in sorted(r["phase_share"].items(), key=lambda kv: -kv[1]))
        print(f"{r['block']:>6} {r['regs'] or 0:>4} {r['smem'] / 1024:>7.1f} {r['ctas_per_sm']:>6} {r['rows']:>3} "
              f"{r['chunk']:>4} {r['nchunks']:>6} {r['bands']:>5} {r['issue_us']:>8.1f} {r['issue_cp_us']:>7.1f} {r['tc_us']:>6.1f} "
              f"{r['dram_us']:>7.1f} {r['predicted_us']:>7.1f} {r['eager_us']:>8} {r['speedup']:>7.2f}x  {ph}")
    g12 = math.exp(sum(math.log(r["speedup"]) for r in rows) / len(rows))
    g17 = math.exp(sum(r["reps"] * math.log(r["speedup"]) for r in rows) / sum(r["reps"] for r in rows))
    print(f"geometric mean speed-up over eager: {g12:.2f}x over the 12 distinct shapes, {g17:.2f}x over the 17 blocks")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(dict(batch=batch, dtype=dtype, calibration=CALIBRATION, rows=rows, geomean_12=g12,
                           geomean_17=g17), f, indent=1)
    return 0


# Generalised blocks (issue 13) for --predict-ex: name, Cin, Chid, Cout, H (= W), stride, residual, K, padding,
# act_expand, act_dw, SE reduced channels (0: none). The zoo's representative shapes (tools/gpu_static_ex.py has
# the same list for the Triton kernel).
EX_BLOCKS = [
    ("MobileNetV3-L 160-960-160 5x5 hswish SE 7x7", 160, 960, 160, 7, 1, True, 5, "symmetric", "hardswish", 240),
    ("MobileNetV3-L 112-672-160 5x5 s2 hswish SE 14x14", 112, 672, 160, 14, 2, False, 5, "symmetric", "hardswish",
     168),
    ("MobileNetV3-L 40-120-40 5x5 relu SE 28x28", 40, 120, 40, 28, 1, True, 5, "symmetric", "relu", 32),
    ("EfficientNet-B0 40-240-40 5x5 silu SE 28x28", 40, 240, 40, 28, 1, True, 5, "symmetric", "silu", 10),
    ("EfficientNet-B0 80-480-80 3x3 silu SE 14x14", 80, 480, 80, 14, 1, True, 3, "symmetric", "silu", 20),
    ("tf_EfficientNet-B0 24-144-40 5x5 s2 tf_same silu SE 56x56", 24, 144, 40, 56, 2, False, 5, "tf_same", "silu", 6),
    ("MNASNet 40-120-40 5x5 relu 28x28", 40, 120, 40, 28, 1, True, 5, "symmetric", "relu", 0),
    ("MNASNet 24-72-40 5x5 s2 relu 56x56", 24, 72, 40, 56, 2, False, 5, "symmetric", "relu", 0),
]


def eager_bytes(cin, chid, cout, h, stride, batch, se, residual, itemsize=2):
    """DRAM bytes eager PyTorch moves at least for one block with BN folded (each op reads its inputs and writes its
    output once): expand conv, act, depthwise, act, [SE: mean, gate multiply], project, [residual add]."""
    ho = (h - 1) // stride + 1
    x, hid, hid2, y = batch * h * h * cin, batch * h * h * chid, batch * ho * ho * chid, batch * ho * ho * cout
    b = (x + hid) + 2 * hid + (hid + hid2) + 2 * hid2 + (hid2 + y)
    if se:
        b += hid2 + 2 * hid2  # mean reads it, the gate multiply reads and writes it
    if residual:
        b += 3 * y
    return itemsize * b


def branch_lines(src_path):
    """Line numbers of the generalised kernel's branches in the .cu, by their text: which activation (act_smooth's
    three forms, act_f2's packed ReLU6 / ReLU and its smooth path) and which squeeze-excite mode (the depthwise's
    pass-1 pooling block, its pass-2 gate block and store) each line serves."""
    lines = open(src_path).read().splitlines()

    def find(text, start=0):
        for i in range(start, len(lines)):
            if text in lines[i]:
                return i + 1
        raise RuntimeError(f"{text!r} not found in {src_path}")

    m = {}
    m["gelu"] = {find("m = 0.5f * (1.f + erff(v * 0.70710678118654752f));")}
    m["hardswish"] = {find("m = fminf(fmaxf(v + 3.f, 0.f), 6.f) * (1.f / 6.f);")}
    z = find("const float z = a == MNV2_ACT_SILU")
    m["sigmoid"] = {z, z + 1}
    a0 = find("__device__ __forceinline__ float act_smooth(int a, float v)")
    m["smooth_any"] = set(range(a0, find("return v * m;", a0) + 1))
    m["relu6"], m["relu"], m["smooth_f2"] = set(), set(), set()
    start = 0
    for _ in range(2):  # Tr<__half>, Tr<__nv_bfloat16>
        f0 = find("static __device__ __forceinline__ uint32_t act_f2(int act, float a, float b)", start)
        r6 = find("if (act == MNV2_ACT_RELU6) {", f0)
        r = find("} else if (act == MNV2_ACT_RELU) {", f0)
        sm = find("} else if (act != MNV2_ACT_NONE) {", f0)
        end = find("return *reinterpret_cast<const uint32_t*>(&h);", f0)
        m["relu6"] |= set(range(r6 + 1, r))
        m["relu"] |= set(range(r + 1, sm))
        m["smooth_f2"] |= set(range(sm + 1, end - 1))
        start = end
    s1 = find("if (p.se_mode == 1) {  // pass 1")
    m["se_pass1"] = set(range(s1 + 1, find("continue;", s1) + 1))
    s2 = find("if (p.se_mode == 2) {  // h * gate")
    m["se_store"] = set(range(s2, find("if (ox < p.Wo) sts16(sDW", s2) + 1))
    return m


def branch_weight(chain, phase, marks, acts, pass_):
    """1 when an instruction (its line chain, innermost first) runs for activations `acts` (per phase) and
    squeeze-excite pass `pass_` (0: none, 1, 2), else 0."""
    if not chain:
        return 1.0
    act = acts.get(phase, "none")
    inner = chain[0]
    smooth = act in ("hardswish", "silu", "gelu", "gelu_tanh")
    form = {"gelu": "gelu", "hardswish": "hardswish", "silu": "sigmoid", "gelu_tanh": "sigmoid"}.get(act)
    for name in ("gelu", "hardswish", "sigmoid"):
        if inner in marks[name] and form != name:
            return 0.0
    if inner in marks["smooth_any"] and not smooth:
        return 0.0
    if any(ln in marks["smooth_f2"] for ln in chain) and not smooth:
        return 0.0
    if any(ln in marks["relu6"] for ln in chain) and act != "relu6":
        return 0.0
    if any(ln in marks["relu"] for ln in chain) and act != "relu":
        return 0.0
    if phase == "dw":
        if any(ln in marks["se_pass1"] for ln in chain) and pass_ != 1:
            return 0.0
        if any(ln in marks["se_store"] for ln in chain) and pass_ == 1:
            return 0.0
    return 1.0


args_all_branches = False


def predict_ex(cubin, regs_by_symbol, batch=256, dtype="float16"):
    """Static prediction of the generalised kernel (mnv2_ir_ex_kernel) on EX_BLOCKS: the issue model of predict()
    on its SASS, weighted by the plan's trip counts (the depthwise's tap loops by K, the weight staging's tap loop
    by K^2); with squeeze-excite, pass 1 (expand + depthwise + pool, no project) + pass 2 (everything). Both sides of
    every branch are counted: the epilogues hold all smooth activations (GELU, hardswish, sigmoid forms) and both
    squeeze-excite modes: with --all-branches that upper bound is printed, by default the instructions of the branches
    a block never takes (other activations, the other squeeze-excite mode; found by their source lines) are not
    counted. Eager: no GPU measurement of these blocks exists; the
    estimate is the DRAM floor of the unfused block (eager_bytes / 4.3 TB/s) times the median measured / floor ratio
    of the 12 MobileNetV2 blocks (RESULTS.md)."""
    cp = load_cuda_plan()
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None:
        print("cuda_build_check: nvdisasm not found (CUDA toolkit or Triton's bundled copy)", file=sys.stderr)
        return 2
    chains = {}
    funcs, loops = disassemble(cubin, nvdisasm, SOURCE, lines_out=chains)
    tname = "__half" if dtype == "float16" else "__nv_bfloat16"
    fn = [f for f in funcs if f"mnv2_ir_ex_kernelI{len(tname)}{tname}E" in f]
    assert len(fn) == 1, list(funcs)
    fn = fn[0]
    marks = branch_lines(SOURCE)
    ratios = sorted(eager / (eager_bytes(cin, chid, cout, h, s, batch, False, res) / H200["dram_Bps"] * 1e6)
                    for _, cin, chid, cout, h, s, res, _, eager in BLOCKS)
    eager_factor = ratios[len(ratios) // 2]
    clk_per_us = H200["clk_ghz"] * 1e3
    rows = []
    for name, cin, chid, cout, h, s, res, k, padding, act, se in EX_BLOCKS:
        cin8, chid8, cout8 = cp.kernel_channels(cin, chid, cout, True)
        pt = cp.pads(h, k, s, padding)[0]
        p = cp.plan(batch, cin8, chid8, cout8, h, h, s, True, kernel=k, pad_t=pt)
        total_issue, total_tc, phases = 0.0, 0.0, {}
        for pass_ in ((1, 2) if se else (0,)):
            sc = cp.schedule(batch, cin8, chid8, cout8, h, h, s, p, kernel=k, pad_t=pt)
            sc["stage"] = math.ceil(p["chunk"] / cp.THREADS) * (sc["chunks"] if p["nchunks"] > 1 else 1)
            sc["ksize"] = k
            if pass_ == 1:
                sc["proj_tiles"] = 0
            w = None
            if not args_all_branches:
                w = [branch_weight(ch, ins[3], marks, dict(expand=act, dw=act, project="none"), pass_)
                     for ch, ins in zip(chains[fn], funcs[fn])]
            per_warp, hmma_w, by_phase, _ = weighted_counts(funcs[fn], loops[fn], sc, True, weights=w)
            for k_, v_ in by_phase.items():
                phases[k_] = phases.get(k_, 0.0) + v_
            ctas_on_sm = min(p["ctas_per_sm"], math.ceil(p["grid"] / H200["sms"]))
            total_issue += ctas_on_sm * per_warp * cp.WARPS / 4 / clk_per_us
            total_tc += ctas_on_sm * hmma_w * cp.WARPS * 4096 / H200["hmma_flop_per_clk"] / clk_per_us
        ho = (h - 1) // s + 1
        fused = 2 * batch * ((2 if se else 1) * h * h * cin + ho * ho * cout)
        dram_us = fused / H200["dram_Bps"] * 1e6
        pred = max(CALIBRATION * total_issue, total_tc, dram_us)
        eager = eager_factor * eager_bytes(cin, chid, cout, h, s, batch, bool(se), res) / H200["dram_Bps"] * 1e6
        tot = sum(phases.values()) or 1.0
        rows.append((name, p, total_issue, dram_us, pred, eager, {k_: v_ / tot for k_, v_ in phases.items()}))
    regs = regs_by_symbol.get(fn)
    print(f"\nstatic prediction of the generalised kernel {demangle([fn])[fn]} ({regs} registers), H200, batch {batch}, "
          f"{dtype}, channels_last; predicted = max({CALIBRATION} x issue ("
          f"{'every branch counted: an upper bound' if args_all_branches else 'branches the block takes'}), tensor "
          f"floor, DRAM floor); SE = pass 1 + pass 2; eager estimate = unfused DRAM floor x {eager_factor:.2f} (median "
          f"measured / floor of the MobileNetV2 blocks):")
    print(f"{'block':<58} {'R':>3} {'HC':>4} {'chunks':>6} {'CTA/SM':>6} {'issue us':>8} {'dram us':>7} "
          f"{'pred us':>7} {'eager~ us':>9} {'speed-up':>8}  phases")
    for name, p, iss, dram, pred, eager, ph in rows:
        phs = " ".join(f"{k_}:{v_:.0%}" for k_, v_ in sorted(ph.items(), key=lambda kv: -kv[1]))
        print(f"{name:<58} {p['rows']:>3} {p['chunk']:>4} {p['nchunks']:>6} {p['ctas_per_sm']:>6} {iss:>8.1f} "
              f"{dram:>7.1f} {pred:>7.1f} {eager:>9.1f} {eager / pred:>7.2f}x  {phs}")
    g = math.exp(sum(math.log(r[5] / r[4]) for r in rows) / len(rows))
    print(f"geometric mean predicted speed-up over the eager estimate: {g:.2f}x")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"), help="nvcc to use (default: nvcc on PATH)")
    ap.add_argument("--predict", action="store_true", help="static H200 prediction per MobileNetV2 block")
    ap.add_argument("--json", help="with --predict: write the prediction table as JSON here")
    ap.add_argument("--all-branches", action="store_true",
                    help="with --predict-ex: count every branch of the epilogues (an upper bound)")
    ap.add_argument("--predict-ex", action="store_true",
                    help="static H200 prediction of the generalised kernel (issue 13) on the zoo's blocks")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    global args_all_branches
    args_all_branches = args.all_branches

    nvcc = shutil.which(args.nvcc) or (args.nvcc if os.path.isfile(args.nvcc) else None)
    if nvcc is None:
        print(f"cuda_build_check: nvcc not found ({args.nvcc!r}); put it on PATH or pass --nvcc", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="mnv2_cuda_check_")
    try:
        obj = os.path.join(tmp, "inverted_residual_cuda.o")
        cmd = [nvcc] + FLAGS + GENCODE + ["-Xptxas", "-v", "-c", SOURCE, "-o", obj]
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired:
            print("cuda_build_check: nvcc timed out after 1200 s", file=sys.stderr)
            return 2
        dt = time.time() - t0
        report = r.stdout + r.stderr
        if r.returncode != 0:
            print(report, file=sys.stderr)
            print(f"cuda_build_check: FAILED: nvcc exited {r.returncode}", file=sys.stderr)
            return 2
        rows = [row for row in parse_ptxas(report) if "kernel" in row["name"]]
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
        missing = {"sm_80", "sm_90a"} - {r["arch"] for r in rows}
        if missing:
            print(f"cuda_build_check: FAILED: no ptxas report for {sorted(missing)}", file=sys.stderr)
            return 2

        cp = load_cuda_plan()
        print("\nlaunch plan per MobileNetV2 block (batch 256, H200: 132 SMs, 227 KB opt-in shared memory):")
        print(f"  {'block':>5} {'Cin':>4} {'Chid':>5} {'Cout':>5} {'HxW':>7} {'s':>2}  {'R':>3} {'HC':>4} {'chunks':>6} "
              f"{'ring rows':>9} {'bands':>5} {'CTA/SM':>6} {'grid':>5} {'smem B':>7}")
        for name, cin, chid, cout, h, s, res, reps, eager in BLOCKS:
            p = cp.plan(256, *cp.kernel_channels(cin, chid, cout, True), h, h, s)
            print(f"  {name:>5} {cin:>4} {chid:>5} {cout:>5} {f'{h}x{h}':>7} {s:>2}  {p['rows']:>3} {p['chunk']:>4} "
                  f"{p['nchunks']:>6} {p['ring_rows']:>9} {p['bands']:>5} {p['ctas_per_sm']:>6} {p['grid']:>5} "
                  f"{p['smem']:>7}")

        # local memory: ptxas' stack frame and any LDL / STL in the SASS
        bad = [t for t, r in zip(table, rows) if r["spill_st"] > 0 or r["spill_ld"] > 0 or r["stack"] > 0]
        for t in bad:
            print(f"cuda_build_check: SPILL / LOCAL MEMORY in {t[0]} ({t[1]}): stack {t[4]} B, spill stores "
                  f"{t[5]} B, loads {t[6]} B", file=sys.stderr)
        cuobjdump = find_tool("cuobjdump")
        if cuobjdump:
            sass = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True).stdout
            nlocal = len(re.findall(r"\b(LDL|STL)\b", sass))
            print(f"SASS local-memory instructions (LDL/STL), both archs: {nlocal}")
            if nlocal:
                bad.append(("LDL/STL in SASS",))
        else:
            print("(cuobjdump not found: SASS local-memory scan skipped)")
        status = 1 if bad else 0
        if status == 0:
            print("cuda_build_check: OK (no spills, no local memory)")

        if args.predict or args.predict_ex:
            cubin = os.path.join(tmp, "k90.cubin")
            c = subprocess.run([nvcc] + FLAGS + ["-arch=sm_90a", "-cubin", SOURCE, "-o", cubin],
                               capture_output=True, text=True, timeout=1200)
            if c.returncode != 0:
                print(c.stdout + c.stderr, file=sys.stderr)
                return 2
            regs = {}
            for r in rows:
                if r["arch"] == "sm_90a":
                    m = re.search(r"mnv2_ir_ring_kernelI(\d+\w+?Li\dE)", r["name"])
                    if m:
                        regs["mnv2_ir_ring_kernelI" + m.group(1)] = r["regs"]
                    if "mnv2_ir_ex_kernel" in r["name"]:
                        regs[r["name"]] = r["regs"]
            if args.predict:
                status = max(status, predict(cubin, regs, json_out=args.json))
            if args.predict_ex:
                status = max(status, predict_ex(cubin, regs))
        return status
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
