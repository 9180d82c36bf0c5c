"""Loads the compiled extensions; a missing or broken one is a warning, never a crash at import.

``CPU_EXT_ERROR`` / ``CUDA_EXT_ERROR`` hold the reason an extension is unavailable (None when loaded).
The CPU extension is compiled at first import (torch.utils.cpp_extension.load, cached) when the package
was installed without it (e.g. a plain, build-isolated ``pip install -e .``); MNV2_JIT_BUILD=0 turns that off.
"""
from __future__ import annotations

import glob
import importlib
import os
import platform
import sys
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join(os.path.dirname(_HERE), "csrc")


def _jit_build_cpu():
    from torch.utils.cpp_extension import load

    sources = sorted(glob.glob(os.path.join(_CSRC, "cpu", "*.cpp")))
    if not sources:
        raise ImportError("no C++ sources found next to the package (csrc/cpu)")
    omp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    flags = ["-O3"] + (["-mavx2", "-mfma"] if platform.machine() in ("x86_64", "AMD64") else []) + omp
    print("mnv2_kernels: compiling the CPU extension once (about 2 minutes; cached afterwards)...",
          file=sys.stderr, flush=True)
    return load(name="mnv2_kernels_C", sources=sources, extra_include_paths=[os.path.join(_CSRC, "common")],
                extra_cflags=flags, extra_ldflags=omp, verbose=False)


def _load(name: str, jit=None):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, or OSError from an ABI mismatch
        first = f"{type(exc).__name__}: {exc}"
    if jit is not None and os.environ.get("MNV2_JIT_BUILD", "1") != "0":
        try:
            return jit(), None
        except Exception as exc:
            first += f"; JIT build failed: {type(exc).__name__}: {exc}"
    return None, first


CPU_EXT, CPU_EXT_ERROR = _load("mnv2_kernels._C", jit=_jit_build_cpu)
if CPU_EXT_ERROR is not None:
    warnings.warn(f"mnv2_kernels: the fused CPU kernel is unavailable ({CPU_EXT_ERROR}). backend='auto' falls "
                  "back to the plain PyTorch reference on CPU. Rebuild with "
                  "`pip install --no-build-isolation -e .` in an environment that has torch.", stacklevel=2)

CUDA_EXT, CUDA_EXT_ERROR = _load("mnv2_kernels._C_cuda")
