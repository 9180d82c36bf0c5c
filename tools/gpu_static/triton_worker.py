"""Subprocess worker: plans of every GPU kernel variant at a given source tree, and sm_90a compiles of the
Triton ones with a chosen Triton (the GPU machine's version), cached by content hash.

    python tools/gpu_static/triton_worker.py JOB.json OUT.json
JOB: {"src": dir with mnv2_kernels/ and csrc/, "triton_path": dir to put first on sys.path or "",
      "shapes": [{name, cin, chid, cout, h, w, stride, has_expand, residual}], "dtypes": ["fp16", ...],
      "batch": 256, "cache": dir, "only": [variant names] or null, "compile": true}
OUT: {"triton_version", "plans": [record per (shape, dtype, variant)], "errors": [...]}
It loads the launcher modules without running mnv2_kernels/__init__.py (which needs the C++ extensions).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
import types

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))


def _setup(job):
    if job.get("triton_path"):
        sys.path.insert(0, job["triton_path"])
    sys.path.insert(0, os.path.dirname(HERE))             # tools/ (for gpu_static.legacy)
    pkg = types.ModuleType("mnv2_kernels")                # skip mnv2_kernels/__init__ (C++ extensions)
    pkg.__path__ = [os.path.join(job["src"], "mnv2_kernels")]
    sys.modules["mnv2_kernels"] = pkg


def _find_static_plans(pkg_name):
    """static_plans of a package or of one of its modules (None when there is none)."""
    try:
        mod = importlib.import_module(pkg_name)
    except ImportError:
        return None
    if hasattr(mod, "static_plans"):
        return mod.static_plans
    path = getattr(mod, "__path__", None)
    if path:
        for f in sorted(os.listdir(path[0])):
            if f.endswith(".py") and f != "__init__.py":
                m = importlib.import_module(f"{pkg_name}.{f[:-3]}")
                if hasattr(m, "static_plans"):
                    return m.static_plans
    return None


def plan_functions(src):
    """{backend: fn(N, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype) -> plans}."""
    from gpu_static import legacy
    fns = {}
    sp = _find_static_plans("mnv2_kernels.triton")
    if sp is None and os.path.isfile(os.path.join(src, "mnv2_kernels", "triton", "inverted_residual_triton.py")):
        launcher = importlib.import_module("mnv2_kernels.triton.inverted_residual_triton")
        kernel = importlib.import_module("mnv2_kernels.triton.inverted_residual_kernel").inverted_residual_kernel
        sp = lambda *a: legacy.triton_plans(launcher, kernel, *a)  # noqa: E731
    if sp is not None:
        fns["triton"] = sp
    if os.path.isfile(os.path.join(src, "mnv2_kernels", "cuda_plan.py")):
        fns["cuda"] = importlib.import_module("mnv2_kernels.cuda_plan").static_plans
    else:
        cu = os.path.join(src, "csrc", "cuda", "inverted_residual_cuda.cu")
        if os.path.isfile(cu):
            text = open(cu).read()
            if "make_layout" in text:
                fns["cuda"] = lambda *a: legacy.cuda_plans(text, *a)  # noqa: E731
    return fns


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _specialise(K, args, consts, torch):
    """signature / constexprs / attrs as JITFunction.run builds them for these arguments."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import MockTensor
    dt = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32, fp8=torch.float8_e4m3fn,
              i32=torch.int32, i64=torch.int64, u8=torch.uint8, i8=torch.int8)
    sig, cx, attrs = {}, {}, {}
    for i, p in enumerate(K.params):
        if p.is_constexpr:
            if p.name not in consts:
                raise KeyError(f"constexpr {p.name} missing from the plan's constexprs")
            sig[p.name], cx[(i,)] = "constexpr", consts[p.name]
            continue
        if p.name not in args:
            raise KeyError(f"argument {p.name} missing from the plan's args")
        a = args[p.name]
        if isinstance(a, str) and a.startswith("ptr:"):
            a = MockTensor(dt[a[4:]])
        elif isinstance(a, torch.Tensor):
            a = MockTensor(a.dtype)
        ty, key = native_specialize_impl(BaseBackend, a, False, not p.do_not_specialize, True)
        sig[p.name] = ty
        if ty == "constexpr":
            cx[(i,)] = key
        elif key:
            attrs[(i,)] = BaseBackend.parse_attr(key)
    return sig, cx, attrs


def _kernel_source_hash(K):
    """Hash of the kernel's module source and everything it calls (Triton's own cache key covers this)."""
    h = hashlib.sha256()
    mod = sys.modules.get(getattr(K, "__module__", ""), None) or sys.modules.get(K.fn.__module__)
    f = getattr(mod, "__file__", None)
    if f and os.path.isfile(f):
        h.update(open(f, "rb").read())
    h.update(getattr(K, "cache_key", "").encode() if isinstance(getattr(K, "cache_key", ""), str) else b"")
    return h.hexdigest()


RE_REGS = re.compile(r"Used (\d+) registers")
RE_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_numbers(log):
    m, s = RE_REGS.search(log or ""), RE_SPILL.search(log or "")
    if not m or not s:
        return None
    return dict(regs=int(m.group(1)), stack=int(s.group(1)), spill_st=int(s.group(2)), spill_ld=int(s.group(3)))


def compile_triton(plan, dtype_name, cache, torch):
    """Compiles one Triton plan for sm_90a; returns the compile record (cached by content hash)."""
    import triton
    from triton.backends.compiler import GPUTarget
    K = plan["kernel"]
    num_warps = int(plan.get("num_warps", 4))
    num_stages = int(plan.get("num_stages", 3))
    sig, cx, attrs = _specialise(K, plan["args"], plan["constexprs"], torch)
    extra = {k: plan[k] for k in ("num_ctas", "maxnreg") if k in plan}
    key_src = json.dumps(dict(tv=triton.__version__, src=_kernel_source_hash(K), name=K.__name__ if hasattr(K, "__name__") else str(K),
                              sig=_jsonable(sig), cx=_jsonable({str(k): v for k, v in cx.items()}),
                              attrs=_jsonable({str(k): v for k, v in attrs.items()}), w=num_warps, s=num_stages,
                              extra=_jsonable(extra)), sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    d = os.path.join(cache, "triton", key)
    rec_path = os.path.join(d, "record.json")
    if os.path.isfile(rec_path):
        with open(rec_path) as f:
            return json.load(f)
    os.makedirs(d, exist_ok=True)
    is_gluon = type(K).__name__.startswith("Gluon")
    if is_gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as Src
    else:
        Src = triton.compiler.ASTSource
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    from triton import knobs
    knobs.nvidia.dump_ptxas_log = True
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ck = triton.compile(Src(fn=K, signature=sig, constexprs=cx, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages, **extra))
    for k, v in ck.asm.items():
        if k in ("cubin", "ptx", "ttgir", "ttir"):
            with open(os.path.join(d, f"kernel.{k}"), "wb" if isinstance(v, bytes) else "w") as f:
                f.write(v)
    nums = _ptxas_numbers(buf.getvalue())
    if nums is None:   # Triton's own cache answered: run ptxas as Triton does, for the numbers
        import subprocess
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        r = subprocess.run([ptxas, "-lineinfo", "-v", "--gpu-name=sm_90a", os.path.join(d, "kernel.ptx"), "-o",
                            os.path.join(d, "ptxas.o")], capture_output=True, text=True)
        nums = _ptxas_numbers(r.stderr + r.stdout) or dict(regs=None, stack=None, spill_st=None, spill_ld=None)
    md = ck.metadata
    ttgir, ptx = ck.asm.get("ttgir", ""), ck.asm.get("ptx", "")
    rec = dict(nums, key=key, dir=d, cubin=os.path.join(d, "kernel.cubin"), smem=int(md.shared),
               num_warps=int(md.num_warps), num_stages=int(md.num_stages), kernel_name=md.name,
               lowering=dict(
                   warp_group_dot=ttgir.count("ttng.warp_group_dot") + ttgir.count("ttng.wgmma"),
                   mma_v2_dot=len(re.findall(r"= tt\.dot ", ttgir)),
                   wgmma_ptx=len(re.findall(r"wgmma\.mma_async", ptx)),
                   mma_sync_ptx=len(re.findall(r"\bmma\.sync", ptx)), gather=ttgir.count("tt.gather"),
                   local_alloc=ttgir.count("ttg.local_alloc"), convert_layout=ttgir.count("ttg.convert_layout"),
                   cp_async_ptx=len(re.findall(r"cp\.async", ptx)), tma_ptx=len(re.findall(r"cp\.async\.bulk", ptx))),
               triton_version=triton.__version__)
    with open(rec_path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(rec_path + ".tmp", rec_path)
    return rec


def main():
    job_path, out_path = sys.argv[1], sys.argv[2]
    with open(job_path) as f:
        job = json.load(f)
    _setup(job)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="mnv2_triton_cache_")
    import torch
    import triton
    dtypes = dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32)
    out = dict(triton_version=triton.__version__, plans=[], errors=[])
    try:
        fns = plan_functions(job["src"])
    except Exception as exc:
        out["errors"].append(dict(where="plans", error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc()))
        fns = {}
    out["backends"] = sorted(fns)
    only = job.get("only")
    for shape in job["shapes"]:
        for dn in job["dtypes"]:
            for backend, fn in fns.items():
                try:
                    plans = fn(job["batch"], shape["cin"], shape["chid"], shape["cout"], shape["h"], shape["w"],
                               shape["stride"], shape["has_expand"], shape["residual"], dtypes[dn])
                except Exception as exc:
                    out["errors"].append(dict(where=f"{backend} plans {shape['name']} {dn}",
                                              error=f"{type(exc).__name__}: {exc}"))
                    continue
                for p in plans:
                    if only and p["name"] not in only:
                        continue
                    rec = dict(block=shape["name"], dtype=dn, name=p["name"], backend=p.get("backend", backend),
                               chosen=bool(p.get("chosen", False)), programs=int(p["programs"]),
                               num_warps=int(p.get("num_warps", 4)),
                               trips={int(k): int(v) for k, v in p.get("trips", {}).items()},
                               config=_jsonable(p.get("config") or p.get("plan") or p.get("constexprs") or {}))
                    if rec["backend"] == "triton":
                        rec["constexprs"] = _jsonable(p.get("constexprs", {}))
                        if job.get("compile", True):
                            try:
                                rec["compile"] = compile_triton(p, dn, job["cache"], torch)
                            except Exception as exc:
                                rec["compile_error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
                    else:
                        rec.update(source=p["source"], symbol=p["symbol"], smem_bytes=int(p.get("smem_bytes", 0)),
                                   defines=list(p.get("defines", [])))
                    out["plans"].append(rec)
    shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
