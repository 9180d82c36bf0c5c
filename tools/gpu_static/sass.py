"""SASS of an sm_90a cubin: per-kernel instruction lists (nvdisasm), loops from backward branches, and the
instruction mix per program weighted by loop trip counts (traffic in bytes, tensor-core flops)."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess

# Instruction classes (first match wins), on the opcode with its modifiers.
CLASSES = [("HGMMA", r"^HGMMA"), ("HMMA", r"^HMMA"), ("LDGSTS", r"^LDGSTS"), ("TMA", r"^(UTMALDG|UTMASTG|UBLKCP|UTMAPF)"),
           ("LDG", r"^LDG"), ("STG", r"^(STG|RED|ATOM)"), ("LDSM", r"^LDSM"), ("LDS", r"^LDS"), ("STS", r"^STS"),
           ("LDL/STL", r"^(LDL|STL)"), ("SHFL", r"^SHFL"), ("FFMA", r"^FFMA"),
           ("FP32other", r"^(FADD|FMUL|FMNMX|FSEL|FSETP|FCHK|MUFU|FRND)"), ("HALF2", r"^H(FMA2|ADD2|MUL2|MNMX2|SETP2)"),
           ("CVT", r"^(F2F|F2FP|I2F|F2I|I2FP|F2IP)"), ("BAR", r"^(BAR|SYNCS|WARPSYNC|MEMBAR|DEPBAR|WARPGROUP|LDGDEPBAR|ARRIVES|FENCE|ELECT)"),
           ("BRANCH", r"^(BRA|BSSY|BSYNC|EXIT|CALL|RET|BRX|JMP)"), ("UNIFORM", r"^U"),
           ("INT", r"^(IMAD|IADD|LOP|ISETP|SEL|LEA|SHF|PRMT|VIADD|IABS|SGXT|IMNMX|VIMNMX|P2R|R2P|R2UR|PLOP3|CS2R|MOV|S2R|S2UR|LDC|POPC|FLO|BMSK|BREV|IDP|IMUL|VOTE|NOP)")]
_CLASS_RX = [(n, re.compile(rx)) for n, rx in CLASSES]
KEYS = [n for n, _ in CLASSES] + ["other"]


def tool(name, triton_path=None):
    """nvdisasm / cuobjdump: on PATH, in the CUDA toolkit, or bundled with Triton (the report's Triton)."""
    cands = [shutil.which(name), os.path.join("/usr/local/cuda/bin", name)]
    if triton_path:
        cands.append(os.path.join(triton_path, "triton", "backends", "nvidia", "bin", name))
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(f"gpu_static: {name} not found (PATH, /usr/local/cuda/bin, Triton's bundled tools); "
                            "install the CUDA toolkit or run tools/install_triton36.sh")


RE_FUNC = re.compile(r"^\.text\.([\w.$]+):")
RE_LABEL = re.compile(r"^(\.L_x_\d+):")
RE_INS = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:\{\s*)?(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*)")


_DISASM = {}


def disassemble(cubin, nvdisasm):
    """{function name: [(addr, opcode, operands, predicated)]}, {function: [(loop start, loop end)]}
    (memoised per cubin file and modification time)."""
    key = (os.path.abspath(cubin), os.path.getmtime(cubin))
    if key not in _DISASM:
        cached = cubin + ".sass.json"     # parsed listing beside the cubin (the cache dir is content-keyed)
        try:
            with open(cached) as f:
                d = json.load(f)
            if d.get("mtime") != key[1]:
                raise ValueError("stale")
            funcs = {k: [tuple(i) for i in v] for k, v in d["funcs"].items()}
            loops = {k: [tuple(x) for x in v] for k, v in d["loops"].items()}
        except (OSError, ValueError, KeyError):
            funcs, loops = _disassemble(cubin, nvdisasm)
            try:
                with open(cached + ".tmp", "w") as f:
                    json.dump(dict(mtime=key[1], funcs=funcs, loops=loops), f)
                os.replace(cached + ".tmp", cached)
            except OSError:
                pass
        _DISASM[key] = (funcs, loops)
    return _DISASM[key]


def _disassemble(cubin, nvdisasm):
    out = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True, check=True).stdout
    funcs, loops_of, fn, labels, pending, branches = {}, {}, None, {}, [], []

    def close():
        if fn is not None:
            loops = []
            for addr, target in branches:
                start = labels.get(target)
                if start is not None and start < addr:
                    loops.append((start, addr))
            # a trailing `BRA self` after EXIT is the kernel's trap padding, not a loop
            loops_of[fn] = [(s, e) for s, e in loops if e - s >= 16]

    for line in out.splitlines():
        m = RE_FUNC.match(line)
        if m:
            close()
            fn, labels, pending, branches = m.group(1), {}, [], []
            funcs[fn] = []
            continue
        m = RE_LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = RE_INS.match(line)
        if m and fn is not None:
            addr = int(m.group(1), 16)
            for p in pending:
                labels[p] = addr
            pending = []
            op, rest = m.group(3), m.group(4)
            funcs[fn].append((addr, op, rest, bool(m.group(2))))
            if op.startswith("BRA"):
                t = re.search(r"(\.L_x_\d+)", rest)
                if t:
                    branches.append((addr, t.group(1)))
    close()
    return funcs, loops_of


def classify(op):
    for name, rx in _CLASS_RX:
        if rx.match(op):
            return name
    return "other"


def _width(op, default=4):
    """Bytes per thread of a memory instruction from its modifiers."""
    for tag, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if tag in op:
            return b
    return default


def _tc_flops(op):
    """Tensor-core flops of one warp-level instruction (HGMMA: the warpgroup's M x N x K over its 4 warps)."""
    m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op)
    if m:
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) // 4
    m = re.match(r"HMMA\.(\d+)", op)
    if m:   # HMMA.16816 = m16 n8 k16; HMMA.1688 = m16 n8 k8; HMMA.1684 = m16 n8 k4 (tf32)
        shape = m.group(1)
        k = int(shape[3:]) if shape.startswith("168") else int(shape[2:]) if len(shape) > 2 else 16
        return 2 * 16 * 8 * k
    return 0


def weighted_mix(instrs, loops, trips):
    """Instruction mix of one program, per warp: each instruction counted once per execution of its loop
    nest (depth = number of loops containing it; trips[depth], a missing depth -> the deepest given).
    Returns dict: per-class warp-instruction counts, 'TOTAL', bytes per warp of global loads/stores
    ('gld_B', 'gst_B'), shared ('smem_B'), local ('local_B'), tensor-core flops per warp ('hgmma_flops', 'hmma_flops'),
    'static' per-class counts, 'loops' count and 'max_depth'."""
    trips = {int(k): int(v) for k, v in (trips or {}).items()}
    deepest = max(trips) if trips else 0

    def mult(depth):
        if depth <= 0:
            return 1
        if depth in trips:
            return trips[depth]
        lower = [d for d in trips if d <= depth]
        return trips[max(lower)] if lower else (trips[deepest] if trips else 1)

    mix, static = collections.Counter(), collections.Counter()
    max_depth = 0
    for addr, op, rest, _pred in instrs:
        depth = sum(1 for s, e in loops if s <= addr <= e)
        max_depth = max(max_depth, depth)
        k = mult(depth)
        c = classify(op)
        static[c] += 1
        mix[c] += k
        mix["TOTAL"] += k
        if c in ("LDG", "LDGSTS"):
            mix["gld_B"] += k * 32 * _width(op)
        elif c == "STG":
            mix["gst_B"] += k * 32 * _width(op)
        if c in ("LDS", "STS"):
            mix["smem_B"] += k * 32 * _width(op)
        elif c == "LDSM":
            n = 4 if ".X4" in op else 2 if ".X2" in op else 1
            mix["smem_B"] += k * 128 * n
        elif c == "LDGSTS":
            mix["smem_B"] += k * 32 * _width(op)
        elif c == "LDL/STL":
            mix["local_B"] += k * 32 * _width(op)
        if c in ("HGMMA", "HMMA"):
            mix["hgmma_flops" if c == "HGMMA" else "hmma_flops"] += k * _tc_flops(op)
    out = dict(mix)
    out["static"] = dict(static)
    out["loops"] = len(loops)
    out["max_depth"] = max_depth
    return out


def analyse_cubin(cubin, symbol, trips, nvdisasm):
    """weighted_mix of the function in `cubin` whose name contains `symbol` (the only one when None)."""
    funcs, loops_of = disassemble(cubin, nvdisasm)
    names = [f for f in funcs if symbol is None or symbol in f]
    if len(names) != 1:
        raise RuntimeError(f"gpu_static: {len(names)} functions match {symbol!r} in {cubin}: {sorted(funcs)[:8]}")
    f = names[0]
    return dict(weighted_mix(funcs[f], loops_of[f], trips), function=f)
