#!/usr/bin/env python3
"""Static H200 report of the package's GPU kernels, computed on a GPU-less machine (issue 7).

For every kernel variant the launchers can choose (``static_plans`` of mnv2_kernels/triton and
mnv2_kernels/cuda_plan.py; plans of the first kernels are rebuilt from their launchers, see
tools/gpu_static/legacy.py) and every distinct MobileNetV2 block shape (from mnv2_kernels.models) at
batch 256, fp16 / bf16 / fp32 where a path exists, it compiles for sm_90a (Triton: triton.compile with the
GPU machine's Triton, installed by tools/install_triton36.sh; CUDA: nvcc -arch=sm_90a -cubin -Xptxas -v with
setup.py's flags) and reports registers, spills, local memory, shared memory, CTAs and warps per SM, wgmma vs
mma.sync, the SASS mix per program weighted by loop trip counts, and a predicted H200 time per block with the
speed-up over eager cuDNN (measured). The time model (tools/gpu_static/model.py) is fitted to every recorded
GPU measurement in benchmarks/gpu_runs/, each compiled at the git commit it ran.

Exit status (the CI gate): 0 when fine; 1 when a kernel fails to compile for sm_90a, spills or uses local
memory (unless the baseline lists that variant as a known exception), or a block's predicted time (with
the baseline's coefficients) rises more than 10% over benchmarks/gpu_static_baseline.json; 2 on a setup
error (no Triton 3.6 / nvcc, a bad run file).

    python tools/gpu_static_report.py                      # table + fit + gate (CI)
    python tools/gpu_static_report.py --plot docs/figures/gpu_static_h200.png
    python tools/gpu_static_report.py --write-baseline     # deliberate: commit it with a reason
Artefacts are cached by content hash under ~/.cache/mnv2_gpu_static (MNV2_GPU_STATIC_CACHE).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpu_static import cuda, model, repo, runs as runs_mod, sass  # noqa: E402

ROOT = repo.ROOT
TRITON_VERSION = "3.6.0"      # the GPU machine's Triton (RESULTS.md); the report compiles with the same
DTYPE_SIZE = dict(fp16=2, bf16=2, fp32=4)
BASELINE = os.path.join(ROOT, "benchmarks", "gpu_static_baseline.json")
RUNS_DIR = os.path.join(ROOT, "benchmarks", "gpu_runs")
GATE_RISE = 1.10


def triton_path(args):
    p = args.triton_path or os.path.join(repo.CACHE, f"triton-{TRITON_VERSION}")
    if not os.path.isfile(os.path.join(p, "triton", "__init__.py")):
        if args.install_triton:
            out = subprocess.run(["bash", os.path.join(HERE, "install_triton36.sh"), sys.executable],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"gpu_static_report: tools/install_triton36.sh failed:\n{out.stderr[-2000:]}")
            p = out.stdout.strip().splitlines()[-1]
        else:
            raise FileNotFoundError(f"triton {TRITON_VERSION} not found at {p}; run `bash tools/install_triton36.sh` "
                                    "(or pass --install-triton, or --triton-path DIR)")
    return p


def run_workers(src, shapes, dtypes, batch, tpath, cache, jobs, only=None):
    """Plans + Triton compiles of the tree at `src`, split over `jobs` worker processes."""
    groups = [shapes[i::jobs] for i in range(jobs)] if jobs > 1 else [shapes]
    groups = [g for g in groups if g]
    tmp = tempfile.mkdtemp(prefix="mnv2_gpu_static_")

    def one(i, g):
        job = dict(src=src, triton_path=tpath, shapes=g, dtypes=dtypes, batch=batch, cache=cache, only=only)
        jp, op = os.path.join(tmp, f"job{i}.json"), os.path.join(tmp, f"out{i}.json")
        with open(jp, "w") as f:
            json.dump(job, f)
        r = subprocess.run([sys.executable, os.path.join(HERE, "gpu_static", "triton_worker.py"), jp, op],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        if r.returncode != 0 or not os.path.isfile(op):
            raise RuntimeError(f"gpu_static worker failed (rc {r.returncode}) on {src}:\n{r.stderr[-3000:]}")
        with open(op) as f:
            return json.load(f)

    with concurrent.futures.ThreadPoolExecutor(len(groups)) as ex:
        outs = list(ex.map(lambda a: one(*a), enumerate(groups)))
    merged = dict(triton_version=outs[0]["triton_version"], plans=[], errors=[], backends=outs[0].get("backends", []))
    for o in outs:
        merged["plans"] += o["plans"]
        merged["errors"] += o["errors"]
    order = {s["name"]: i for i, s in enumerate(shapes)}
    merged["plans"].sort(key=lambda p: (order[p["block"]], ["fp16", "bf16", "fp32"].index(p["dtype"]), p["backend"], p["name"]))
    return merged


def analyse(plans, src, tpath, cache, nvcc, nvdisasm):
    """Adds regs / spills / smem / occupancy / SASS mix to each plan record (in place). Errors go to
    rec['error']."""
    cuda_cache = {}
    for rec in plans:
        try:
            if rec["backend"] == "triton":
                if "compile_error" in rec:
                    raise RuntimeError(rec["compile_error"])
                c = rec["compile"]
                rec.update(regs=c["regs"], stack=c["stack"], spill_st=c["spill_st"], spill_ld=c["spill_ld"],
                           smem=c["smem"], num_warps=c["num_warps"], lowering=c["lowering"])
                rec["mix"] = sass.analyse_cubin(c["cubin"], None, rec["trips"], nvdisasm)
            else:
                if nvcc is None:
                    raise RuntimeError("nvcc not found (PATH, NVCC, /usr/local/cuda/bin)")
                key = (rec["source"], tuple(rec["defines"]))
                if key not in cuda_cache:
                    cuda_cache[key] = cuda.compile_source(src, rec["source"], rec["defines"], cache, nvcc)
                c = cuda_cache[key]
                ents = [(n, e) for n, e in c["entries"].items() if rec["symbol"] in n]
                if len(ents) != 1:
                    raise RuntimeError(f"{len(ents)} kernel entries match symbol {rec['symbol']!r} in {rec['source']}")
                e = ents[0][1]
                rec.update(regs=e["regs"], stack=e["stack"], spill_st=e["spill_st"], spill_ld=e["spill_ld"],
                           smem=rec["smem_bytes"] + e.get("smem_static", 0))
                rec["mix"] = sass.analyse_cubin(c["cubin"], ents[0][0], rec["trips"], nvdisasm)
                rec["lowering"] = dict(wgmma_sass=rec["mix"]["static"].get("HGMMA", 0),
                                       mma_sync_sass=rec["mix"]["static"].get("HMMA", 0))
            st = rec["mix"]["static"]
            rec["dots"] = ("wgmma" if st.get("HGMMA") else "") + ("+" if st.get("HGMMA") and st.get("HMMA") else "") + \
                ("mma.sync" if st.get("HMMA") else "") or "none"
            rec["local_B"] = rec["mix"].get("local_B", 0)
            rec["ctas_per_sm"] = model.occupancy(rec["regs"], rec["smem"], rec["num_warps"])
            rec["warps_per_sm"] = rec["ctas_per_sm"] * rec["num_warps"]
            if rec["ctas_per_sm"] == 0:
                raise RuntimeError(f"does not fit an SM: {rec['regs']} registers x {rec['num_warps']} warps, "
                                   f"{rec['smem']} B shared memory")
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
    return plans


def shape_of(blocks, name):
    for b in blocks:
        if b["name"] == name:
            return b
    raise KeyError(name)


def markdown_table(shapes, cur, fitted, eager, batch, sd, loo_sd, rank_ok, rank_n, dtype="fp16"):
    """Per block: roofline floor, eager (measured), each measured variant as measured / fitted, each current
    variant as predicted (x eager)."""
    mv = sorted({r["variant"] for r in fitted if r["dtype"] == dtype})
    cv = sorted({p["name"] for p in cur if p["dtype"] == dtype and "error" not in p})
    head = ["block", "floor µs", "eager µs (H200)"] + [f"{v} measured / fit µs" for v in mv] + \
        [f"{v} predicted µs (x eager)" for v in cv]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    logs = {v: [] for v in cv}
    for s in shapes:
        n = s["name"]
        e = eager.get((n, dtype, batch))
        fl = next((p["floor_us"] for p in cur if p["block"] == n and "floor_us" in p), None)
        row = [n, f"{fl:.0f}" if fl else "-", f"{e:.0f}" if e else "-"]
        for v in mv:
            r = next((r for r in fitted if r["block"] == n and r["variant"] == v and r["dtype"] == dtype), None)
            row.append(f"{r['measured_us']:.0f} / {r['predicted_us']:.0f}" if r else "-")
        for v in cv:
            p = next((p for p in cur if p["block"] == n and p["name"] == v and p["dtype"] == dtype and "error" not in p), None)
            if p and e:
                logs[v].append(math.log(e / p["predicted_us"]))
            row.append((f"{p['predicted_us']:.0f}" + (f" ({e / p['predicted_us']:.2f}x)" if e else "")) if p else "-")
        lines.append("| " + " | ".join(row) + " |")
    geo = [f"{v} {math.exp(sum(l) / len(l)):.2f}x ({len(l)} blocks)" for v, l in logs.items() if l]
    chosen = {}
    for p in cur:
        e = eager.get((p["block"], dtype, batch))
        if p["dtype"] == dtype and p.get("chosen") and "error" not in p and e:
            chosen.setdefault(p["backend"], []).append(e / p["predicted_us"])
    geo += [f"the {b} launcher's choice {math.exp(sum(map(math.log, v)) / len(v)):.2f}x (slowest block {min(v):.2f}x)"
            for b, v in sorted(chosen.items())]
    lines.append("")
    lines.append(f"Fit: log-sd {sd:.3f} over {len(fitted)} H200 measurements (leave-one-out {loo_sd:.3f}); measured "
                 f"variant order reproduced on {rank_ok} of {rank_n} blocks. Predicted per-block geometric-mean "
                 f"speed-up over eager, batch {batch} {dtype}: " + ", ".join(geo) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__[__doc__.index("Exit"):])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"], choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--blocks", nargs="*", help="block names (default: all 12), e.g. 2 3 17")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default 2)")
    ap.add_argument("--cache", default=repo.CACHE, help="artefact cache (default ~/.cache/mnv2_gpu_static)")
    ap.add_argument("--triton-path", help=f"directory holding triton {TRITON_VERSION} (default: in the cache)")
    ap.add_argument("--install-triton", action="store_true", help="run tools/install_triton36.sh when missing")
    ap.add_argument("--runs", default=RUNS_DIR, help="recorded GPU runs (default benchmarks/gpu_runs)")
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--write-baseline", action="store_true", help="write the baseline from this report (commit "
                    "it deliberately, with a reason)")
    ap.add_argument("--exception-reason", default="present when this baseline was written; remove it and regenerate",
                    help="reason recorded with --write-baseline for each spilling variant it accepts")
    ap.add_argument("--no-gate", action="store_true", help="report only; exit 0 unless setup fails")
    ap.add_argument("--plot", help="write the per-block figure (PNG, needs matplotlib) to this path")
    ap.add_argument("--json", help="write every record (plans, features, predictions, fit) to this path")
    ap.add_argument("--markdown", help="write the fp16 per-block table (measured, fitted, predicted) as markdown")
    ap.add_argument("--detail", action="store_true", help="print the SASS mix of every variant")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        tpath = triton_path(args)
        nvdisasm = sass.tool("nvdisasm", tpath)
        recorded = runs_mod.load_runs(args.runs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gpu_static_report: {exc}", file=sys.stderr)
        return 2
    nvcc = cuda.find_nvcc()
    blocks = repo.mobilenet_v2_blocks()
    names = args.blocks or [b["name"] for b in blocks]
    shapes = [b for b in blocks if b["name"] in names]

    # 1. The recorded measurements, each compiled at the commit it ran.
    meas = runs_mod.kernel_measurements(recorded)
    eager = runs_mod.reference_times(recorded, "eager")
    folded = runs_mod.reference_times(recorded, "eager-folded")
    fit_rows, fitted_recs = [], []
    by_commit = {}
    for m in meas:
        by_commit.setdefault(m["commit"], []).append(m)
    for commit, ms in sorted(by_commit.items()):
        src = repo.source_dir(commit)
        mshapes = {m["block"]: dict(m["shape"], name=m["block"]) for m in ms}
        for (batch, dts) in sorted({(int(m["batch"]), m["dtype"]) for m in ms}):
            sub = [m for m in ms if int(m["batch"]) == batch and m["dtype"] == dts]
            out = run_workers(src, [mshapes[b] for b in dict.fromkeys(m["block"] for m in sub)], [dts], batch, tpath,
                              args.cache, args.jobs, only=sorted({m["variant"] for m in sub}))
            analyse(out["plans"], src, tpath, args.cache, nvcc, nvdisasm)
            idx = {(p["block"], p["name"]): p for p in out["plans"]}
            for m in sub:
                p = idx.get((m["block"], m["variant"]))
                if p is None or "error" in p:
                    print(f"warning: measured {m['variant']} of block {m['block']} ({m['run']}) could not be compiled "
                          f"at {commit[:12]}: {p and p.get('error')}", file=sys.stderr)
                    continue
                if m.get("config") and {k: m["config"][k] for k in m["config"] if k in p["config"]} != \
                        {k: p["config"][k] for k in m["config"] if k in p["config"]}:
                    print(f"warning: block {m['block']} {m['variant']}: recorded config {m['config']} differs from the "
                          f"launcher's at {commit[:12]}: {p['config']}", file=sys.stderr)
                f = model.features(p, m["shape"], batch, DTYPE_SIZE[dts])
                fit_rows.append((f, float(m["median_us"])))
                fitted_recs.append(dict(block=m["block"], variant=m["variant"], dtype=dts, batch=batch, commit=commit,
                                        measured_us=float(m["median_us"]), features=f, run=m["run"]))
    if len(fit_rows) < 3:
        print("gpu_static_report: fewer than 3 compilable recorded measurements; cannot fit", file=sys.stderr)
        return 2
    coef, resid = model.fit(fit_rows)
    for r, e in zip(fitted_recs, resid):
        r["predicted_us"] = r["measured_us"] * math.exp(e)
    sd = model.log_sd(resid)
    loo = []   # leave-one-out: each measurement predicted by a fit to the others (the honest error figure)
    for i in range(len(fit_rows)):
        c_i, _ = model.fit(fit_rows[:i] + fit_rows[i + 1:])
        loo.append(math.log(model.predict(fit_rows[i][0], c_i) / fit_rows[i][1]))
    loo_sd = model.log_sd(loo)
    corr = float(__import__("numpy").corrcoef([math.log(r["measured_us"]) for r in fitted_recs],
                                               [math.log(r["predicted_us"]) for r in fitted_recs])[0, 1])
    rank_ok, rank_n, rank_bad = 0, 0, []
    groups = {}
    for r in fitted_recs:
        groups.setdefault((r["block"], r["dtype"], r["batch"], r["run"]), []).append(r)
    for k, rs in groups.items():
        if len(rs) < 2:
            continue
        rank_n += 1
        if [x["variant"] for x in sorted(rs, key=lambda x: x["measured_us"])] == \
                [x["variant"] for x in sorted(rs, key=lambda x: x["predicted_us"])]:
            rank_ok += 1
        else:
            rank_bad.append(k[0])

    # 2. The current kernels.
    out = run_workers(ROOT, shapes, args.dtypes, args.batch, tpath, args.cache, args.jobs)
    cur = analyse(out["plans"], ROOT, tpath, args.cache, nvcc, nvdisasm)
    baseline = None
    if os.path.isfile(args.baseline):
        with open(args.baseline) as f:
            baseline = json.load(f)
    base_coef = (baseline or {}).get("coefficients") or coef
    for p in cur:
        if "error" in p:
            continue
        s = shape_of(blocks, p["block"])
        p["features"] = model.features(p, s, args.batch, DTYPE_SIZE[p["dtype"]])
        p["predicted_us"] = model.predict(p["features"], coef)
        p["gate_us"] = model.predict(p["features"], base_coef)
        p["floor_us"] = model.floor_us(s, args.batch, DTYPE_SIZE[p["dtype"]])
        e = eager.get((p["block"], p["dtype"], args.batch))
        p["eager_us"] = e
        p["speedup"] = e / p["predicted_us"] if e else None

    # 3. The table.
    print(f"Static sm_90a report: triton {out['triton_version']} (GPU runs used {TRITON_VERSION}), "
          f"nvcc {'found' if nvcc else 'MISSING'}, batch {args.batch}, kernels at {repo.git_head()} (+ working tree)")
    hdr = (f"{'block':>5} {'dtype':>4} {'variant':<18}{'ch':>2} {'progs':>7} {'wp':>2} {'regs':>4} {'spill':>5} {'lmem':>6} "
           f"{'smemKB':>6} {'cta/SM':>6} {'wp/SM':>5} {'dots':<9} {'kinstr/prog':>11} {'INT%':>4} {'SHFL%':>5} "
           f"{'pred µs':>8} {'floor':>6} {'eager':>6} {'x eager':>7}")
    print(hdr)
    for p in cur:
        tag = f"{p['block']:>5} {p['dtype']:>4} {p['name']:<18}{'*' if p['chosen'] else ' ':>2} "
        if "error" in p:
            print(tag + f"ERROR {p['error'][:300]}")
            continue
        mix = p["mix"]
        tot = mix.get("TOTAL", 0) * p["num_warps"]
        pct = lambda k: 100.0 * mix.get(k, 0) / max(1, mix.get("TOTAL", 1))  # noqa: E731
        e = p["eager_us"]
        es, xs = (f"{e:.0f}", f"{e / p['predicted_us']:.2f}") if e else ("-", "-")
        print(tag + f"{p['programs']:>7} {p['num_warps']:>2} {p['regs']:>4} {p['spill_st'] + p['spill_ld']:>5} "
              f"{p['local_B'] * p['num_warps']:>6} {p['smem'] / 1024:>6.1f} {p['ctas_per_sm']:>6} {p['warps_per_sm']:>5} "
              f"{p['dots']:<9} {tot / 1e3:>11.1f} {pct('INT'):>4.0f} {pct('SHFL'):>5.0f} {p['predicted_us']:>8.0f} "
              f"{p['floor_us']:>6.0f} {es:>6} {xs:>7}")
        if args.detail:
            keys = [k for k in sass.KEYS if mix.get(k)]
            print("        per-program warp-instr: " + " ".join(f"{k}={mix[k] * p['num_warps']}" for k in keys)
                  + f" | loops {mix['loops']} depth {mix['max_depth']} trips {p['trips']} | lowering {p.get('lowering')}")
    print("(ch: * = the variant the launcher chooses; spill = ptxas spill store+load bytes; lmem = local-memory "
          "bytes per program from LDL/STL; dots: tensor-core instructions in SASS; x eager = measured eager cuDNN "
          "/ predicted)")
    geo = {}
    for p in cur:
        if "error" not in p and p["chosen"] and p["speedup"]:
            geo.setdefault((p["backend"], p["dtype"]), []).append(p["speedup"])
    for (b, d), v in sorted(geo.items()):
        print(f"predicted per-block geometric-mean speed-up over eager, {b} {d} (chosen variants, {len(v)} blocks): "
              f"{math.exp(sum(map(math.log, v)) / len(v)):.2f}x, slowest block {min(v):.2f}x")
    print(f"\nFit: {len(fit_rows)} recorded GPU measurements ({len(recorded)} run file(s)), log-sd {sd:.3f} "
          f"(target <= 0.25; leave-one-out {loo_sd:.3f}), corr(log) {corr:.3f}; ranks the variants of {rank_ok} of {rank_n} blocks in the measured "
          f"order{(' (wrong: ' + ', '.join(rank_bad) + ')') if rank_bad else ''}")
    print("coefficients: " + ", ".join(f"{k} {v:.3g}" for k, v in coef.items()))
    worst = sorted(fitted_recs, key=lambda r: -abs(math.log(r["predicted_us"] / r["measured_us"])))[:3]
    print("largest errors: " + "; ".join(f"{r['block']} {r['variant']} {r['measured_us']:.0f} vs {r['predicted_us']:.0f} µs"
                                         for r in worst))

    if args.write_baseline:
        exc = [dict(block=p["block"], dtype=p["dtype"], variant=p["name"], spill_B=p["spill_st"] + p["spill_ld"],
                    stack_B=p["stack"], reason=args.exception_reason)
               for p in cur if "error" not in p and (p["spill_st"] or p["spill_ld"] or p["stack"] or p["local_B"])]
        data = dict(
            comment="Predicted H200 µs per block (the chosen variant) at batch %d, written by tools/gpu_static_report.py "
                    "--write-baseline; CI fails when a block's prediction (with these coefficients) rises > 10%%. "
                    "Changing this file is a deliberate commit with a reason." % args.batch,
            written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), git_head=repo.git_head(),
            triton=out["triton_version"], batch=args.batch, coefficients=coef, fit_log_sd=sd, fit_loo_log_sd=loo_sd,
            fit_measurements=len(fit_rows),
            blocks=[dict(block=p["block"], dtype=p["dtype"], backend=p["backend"], variant=p["name"],
                         time_us=round(p["predicted_us"], 2),
                         variants={q["name"]: round(q["predicted_us"], 2) for q in cur
                                   if q["block"] == p["block"] and q["dtype"] == p["dtype"] and q["backend"] == p["backend"]
                                   and "error" not in q})
                    for p in cur if "error" not in p and p["chosen"]],
            known_exceptions=exc)
        with open(args.baseline, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        print(f"wrote {args.baseline} ({len(data['blocks'])} block x dtype entries, {len(exc)} known exceptions)")
        baseline = data   # the gate below checks against what was just written (spills accepted, times equal)
        for p in cur:
            if "predicted_us" in p:
                p["gate_us"] = p["predicted_us"]


    # 4. The gate.
    failures, notes = [], []
    known = {(k["block"], k["dtype"], k["variant"]): k for k in (baseline or {}).get("known_exceptions", [])}
    for e in out["errors"]:
        failures.append(f"planning failed: {e['where']}: {e['error']}")
    for p in cur:
        key = (p["block"], p["dtype"], p["name"])
        if "error" in p:
            failures.append(f"{key}: does not compile for sm_90a / fit: {p['error'][:300]}")
            continue
        bad = []
        if p["spill_st"] or p["spill_ld"]:
            bad.append(f"spills {p['spill_st']}/{p['spill_ld']} B")
        if p["local_B"] or p["stack"]:
            bad.append(f"local memory (stack {p['stack']} B, {p['local_B'] * p['num_warps']} B/program LDL/STL)")
        if bad:
            k = known.get(key)
            spill_now = p["spill_st"] + p["spill_ld"]
            if k and spill_now <= k.get("spill_B", 0) * 1.0 and p["stack"] <= k.get("stack_B", 0):
                notes.append(f"{key}: {', '.join(bad)} (known exception in the baseline: {k.get('reason', '')})")
            else:
                failures.append(f"{key}: {', '.join(bad)}")
    if baseline:
        bl = {(b["block"], b["dtype"], b.get("backend") or b["variant"].split("-")[0]): b
              for b in baseline.get("blocks", [])}
        for p in cur:
            if "error" in p or not p["chosen"]:
                continue
            b = bl.get((p["block"], p["dtype"], p["backend"]))
            if b is None:
                notes.append(f"block {p['block']} {p['dtype']} {p['backend']}: not in the baseline")
                continue
            if p["gate_us"] > GATE_RISE * b["time_us"]:
                failures.append(f"block {p['block']} {p['dtype']} {p['backend']}: predicted {p['gate_us']:.0f} µs ({p['name']}) > "
                                f"{GATE_RISE:.2f} x baseline {b['time_us']:.0f} µs ({b['variant']})")
    else:
        notes.append(f"no baseline at {args.baseline}: time gate skipped (--write-baseline writes one)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(coefficients=coef, log_sd=sd, loo_log_sd=loo_sd, corr=corr, rank=[rank_ok, rank_n], fitted=fitted_recs,
                           current=cur, eager={f"{k[0]}|{k[1]}|{k[2]}": v for k, v in eager.items()},
                           eager_folded={f"{k[0]}|{k[1]}|{k[2]}": v for k, v in folded.items()}), f, indent=1, default=str)
    if args.plot:
        from gpu_static import plot
        plot.plot(args.plot, shapes, cur, fitted_recs, eager, folded, args.batch, sd)
        print(f"wrote {args.plot}")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(shapes, cur, fitted_recs, eager, args.batch, sd, loo_sd, rank_ok, rank_n))
        print(f"wrote {args.markdown}")

    for n in notes:
        print("note: " + n)
    for fl in failures:
        print("FAIL: " + fl)
    print(f"gpu_static_report: {len(cur)} variants x blocks x dtypes in {time.time() - t0:.0f} s: "
          + ("FAILED" if failures and not args.no_gate else "OK"))
    return 1 if failures and not args.no_gate else 0


if __name__ == "__main__":
    sys.exit(main())
