#!/usr/bin/env python3
"""Static sm_90a report of the generalised Triton block (issue 13), GPU-free.

For representative blocks of the model zoo (MobileNetV3's hardswish + squeeze-excite 5x5, EfficientNet-B0's
SiLU + SE, MNASNet's ReLU 5x5, a tf_same stride-2 block) it asks mnv2_kernels/triton/launcher_ex.py's
``static_plans_ex`` for every launch (with SE: pass 1 "-pool" and pass 2), compiles each for sm_90a with
triton 3.6 (as tools/gpu_static_report.py does, same cache and worker code), reads registers / spills /
SASS, and predicts the H200 time with the baseline's fitted coefficients (benchmarks/gpu_static_baseline.json,
the model of docs/GPU_STATIC.md). Next to it: the same shape as a MobileNetV2 block (3x3, relu6, no SE) from
the MobileNetV2 launcher, so the cost of the generalisation reads as a ratio. There is no recorded eager
measurement of these blocks on a GPU: the "x eager" column of the main report has no counterpart here.

    .venv/bin/python tools/gpu_static_ex.py [--dtype fp16] [--batch 256]
Exit status 1 when a launch fails to compile or spills.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# name, cin, chid, cout, h (= w), stride, residual, k, padding, act_expand, act_dw, (se_act, se_gate) or False
# [, leading depthwise k]
BLOCKS = [
    ("MobileNetV3-L 160-960-160 5x5 hswish SE 7x7", 160, 960, 160, 7, 1, True, 5, "symmetric", "hardswish",
     "hardswish", ("relu", "hardsigmoid")),
    ("MobileNetV3-L 112-672-160 5x5 s2 hswish SE 14x14", 112, 672, 160, 14, 2, False, 5, "symmetric", "hardswish",
     "hardswish", ("relu", "hardsigmoid")),
    ("MobileNetV3-L 40-120-40 5x5 relu SE 28x28", 40, 120, 40, 28, 1, True, 5, "symmetric", "relu", "relu",
     ("relu", "hardsigmoid")),
    ("EfficientNet-B0 40-240-40 5x5 silu SE 28x28", 40, 240, 40, 28, 1, True, 5, "symmetric", "silu", "silu", ("silu", "sigmoid")),
    ("EfficientNet-B0 80-480-80 3x3 silu SE 14x14", 80, 480, 80, 14, 1, True, 3, "symmetric", "silu", "silu", ("silu", "sigmoid")),
    ("tf_EfficientNet-B0 24-144-40 5x5 s2 tf_same silu SE 56x56", 24, 144, 40, 56, 2, False, 5, "tf_same", "silu",
     "silu", ("silu", "sigmoid")),
    ("MNASNet 40-120-40 5x5 relu 28x28", 40, 120, 40, 28, 1, True, 5, "symmetric", "relu", "relu", False),
    ("MNASNet 24-72-40 5x5 s2 relu 56x56", 24, 72, 40, 56, 2, False, 5, "symmetric", "relu", "relu", False),
    ("GELU (erf / tanh) 160-640-160 7x7 k7 SE, gelu MLP", 160, 640, 160, 7, 1, True, 7, "symmetric", "gelu",
     "gelu_tanh", ("gelu", "sigmoid")),
    ("MobileNetV4 UIB ExtraDW 96-384-96 3x3+3x3 relu 14x14", 96, 384, 96, 14, 1, True, 3, "symmetric", "relu",
     "relu", False, 3),
]
DTYPE_SIZE = dict(fp16=2, bf16=2, fp32=4)


def worker(job_path, out_path):
    """Subprocess (triton 3.6 first on sys.path): plans and sm_90a compiles of every launch."""
    from gpu_static import triton_worker as tw
    with open(job_path) as f:
        job = json.load(f)
    tw._setup(job)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="mnv2_triton_cache_")
    import importlib

    import torch
    import triton
    dt = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32)[job["dtype"]]
    lex = importlib.import_module("mnv2_kernels.triton.launcher_ex")
    lmv2 = importlib.import_module("mnv2_kernels.triton.launcher")
    out = dict(triton_version=triton.__version__, plans=[])
    for name, cin, chid, cout, h, stride, res, k, padding, act_e, act_d, se, *start in BLOCKS:
        plans = [dict(p, block=name, kind="ex") for p in lex.static_plans_ex(
            job["batch"], cin, chid, cout, h, h, stride, True, res, dt, k=k, padding=padding, act_expand=act_e,
            act_dw=act_d, se=bool(se), se_act=se[0] if se else "relu", se_gate=se[1] if se else "sigmoid",
            dw_start=start[0] if start else 0)]
        plans += [dict(p, block=name, kind="mv2") for p in lmv2.static_plans(job["batch"], cin, chid, cout, h, h,
                                                                             stride, True, res, dt)]
        for p in plans:
            rec = dict(block=name, kind=p["kind"], name=p["name"], chosen=bool(p["chosen"]), programs=p["programs"],
                       num_warps=p["num_warps"], trips={int(a): int(b) for a, b in p["trips"].items()},
                       variant=p.get("variant", p["name"].split("-")[-1]))
            try:
                rec["compile"] = tw.compile_triton(p, job["dtype"], job["cache"], torch)
            except Exception as exc:  # reported, and fails the exit status
                rec["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
            out["plans"].append(rec)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--detail", action="store_true", help="print each launch's SASS mix and feature times")
    ap.add_argument("--blocks", nargs="*", help="only blocks whose name contains one of these words")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    from gpu_static import model, repo, sass
    import gpu_static_report as gsr
    tpath = os.path.join(repo.CACHE, f"triton-{gsr.TRITON_VERSION}")
    if not os.path.isfile(os.path.join(tpath, "triton", "__init__.py")):
        print(f"gpu_static_ex: triton {gsr.TRITON_VERSION} not found at {tpath}; run `bash tools/install_triton36.sh`",
              file=sys.stderr)
        return 2
    with open(gsr.BASELINE) as f:
        coef = json.load(f)["coefficients"]
    tmp = tempfile.mkdtemp(prefix="mnv2_gpu_static_ex_")
    jp, op = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
    with open(jp, "w") as f:
        json.dump(dict(src=repo.ROOT, triton_path=tpath, dtype=args.dtype, batch=args.batch, cache=repo.CACHE), f)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", jp, op], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return 2
    with open(op) as f:
        out = json.load(f)
    nvdisasm = sass.tool("nvdisasm", tpath)
    shapes = {b[0]: dict(cin=b[1], chid=b[2], cout=b[3], h=b[4], w=b[4], stride=b[5], has_expand=True, residual=b[6])
              for b in BLOCKS}
    failures = []
    print(f"Generalised Triton block, static sm_90a (triton {out['triton_version']}), {args.dtype}, batch {args.batch}; "
          "predicted with the baseline's coefficients")
    print(f"{'launch':<26}{'ch':>3} {'progs':>6} {'wp':>3} {'regs':>5} {'spill':>6} {'smemKB':>7} {'cta/SM':>6} "
          f"{'dots':<7} {'pred µs':>8}")
    summary = []
    for name, *_ in BLOCKS:
        if args.blocks and not any(w in name for w in args.blocks):
            continue
        print(f"-- {name} (floor {model.floor_us(shapes[name], args.batch, DTYPE_SIZE[args.dtype]):.0f} µs)")
        totals = {}
        for p in [q for q in out["plans"] if q["block"] == name]:
            tag = f"{p['kind']}:{p['name']:<22}{'*' if p['chosen'] else '':>3} "
            if "error" in p:
                failures.append(f"{name} {p['name']}: {p['error'][:300]}")
                print(tag + "ERROR " + p["error"][:200])
                continue
            c = p["compile"]
            p.update(regs=c["regs"], spill_st=c["spill_st"], spill_ld=c["spill_ld"], smem=c["smem"],
                     num_warps=c["num_warps"])
            p["mix"] = sass.analyse_cubin(c["cubin"], None, p["trips"], nvdisasm)
            p["ctas_per_sm"] = model.occupancy(p["regs"], p["smem"], p["num_warps"])
            feat = model.features(p, shapes[name], args.batch, DTYPE_SIZE[args.dtype])
            t = model.predict(feat, coef)
            st = p["mix"]["static"]
            dots = "wgmma" if st.get("HGMMA") else ("mma" if st.get("HMMA") else "fma")
            spill = p["spill_st"] + p["spill_ld"]
            if spill or c.get("stack"):
                failures.append(f"{name} {p['name']}: spills {spill} B, stack {c.get('stack')} B")
            print(tag + f"{p['programs']:>6} {p['num_warps']:>3} {p['regs']:>5} {spill:>6} {p['smem'] / 1024:>7.1f} "
                  f"{p['ctas_per_sm']:>6} {dots:<7} {t:>8.0f}")
            if args.detail:
                keys = [k for k in sass.KEYS if p["mix"].get(k)]
                print("      warp-instr/program: " + " ".join(f"{k}={p['mix'][k] * p['num_warps']}" for k in keys)
                      + " | features µs: " + " ".join(f"{k} {v:.0f}" for k, v in feat.items()))
            totals.setdefault((p["kind"], p["variant"]), [0.0, p["chosen"]])[0] += t
        extra = sum(t for (kind, v), (t, ch) in totals.items() if kind == "ex" and v == "dwstart")
        ex = [(v, t + extra) for (kind, v), (t, ch) in totals.items() if kind == "ex" and ch and v != "dwstart"]
        mv = [(v, t) for (kind, v), (t, ch) in totals.items() if kind == "mv2" and ch]
        if ex and mv:
            print(f"   chosen: ex {ex[0][0]} {ex[0][1]:.0f} µs (all launches) vs MobileNetV2-options block {mv[0][1]:.0f} µs: "
                  f"{ex[0][1] / mv[0][1]:.2f}x")
            summary.append((name, ex[0][1], mv[0][1]))
    for fl in failures:
        print("FAIL: " + fl)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
