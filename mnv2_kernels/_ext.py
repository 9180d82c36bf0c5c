"""Loads the compiled extensions; a missing or broken one is never a crash at import.

``CPU_EXT_ERROR`` / ``CUDA_EXT_ERROR`` hold the reason an extension is unavailable (None when loaded); the
backend table (mnv2_kernels/backends.py) reports it when a backend that needs the extension is asked for.

The build path is `pip install --no-build-isolation -e .` (setup.py). When the package was installed
without its extensions (a plain, build-isolated ``pip install -e .`` has no torch to build with), the CPU
extension is compiled once at first import from the same description (mnv2_kernels/_build_config.py) into
a cache folder named by the sources' hash; later imports load that file directly, without the compiler.
MNV2_JIT_BUILD=0 turns the first-import build off.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from . import _build_config as _cfg

_JIT_NAME = "mnv2_kernels_C"


def _jit_dir() -> str:
    import torch

    base = os.environ.get("MNV2_EXT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mnv2_kernels")
    return os.path.join(base, f"cpu-{_cfg.cpu_fingerprint()}-torch{torch.__version__}")


def _import_file(path: str):
    spec = importlib.util.spec_from_file_location(_JIT_NAME, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jit_build_cpu():
    build_dir = _jit_dir()
    built = os.path.join(build_dir, f"{_JIT_NAME}.so")
    if os.path.isfile(built):          # built by an earlier import: no compiler, no ninja, no CUDA_HOME probing
        return _import_file(built)
    sources = _cfg.cpu_sources()
    if not sources:
        raise ImportError("no C++ sources found next to the package (csrc/cpu)")
    from torch.utils.cpp_extension import load

    os.makedirs(build_dir, exist_ok=True)
    print("mnv2_kernels: compiling the CPU extension once (about 2 minutes; cached in "
          f"{build_dir}). `pip install --no-build-isolation -e .` builds it at install time instead.",
          file=sys.stderr, flush=True)
    return load(name=_JIT_NAME, sources=sources, extra_include_paths=[_cfg.COMMON_INCLUDE],
                extra_cflags=_cfg.cpu_cxx_flags(), extra_ldflags=_cfg.openmp_flags(), build_directory=build_dir,
                verbose=False)


def _load(name: str, jit=None):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, or OSError from an ABI mismatch
        first = f"{type(exc).__name__}: {exc}"
    if jit is not None and os.environ.get("MNV2_JIT_BUILD", "1") != "0":
        try:
            return jit(), None
        except Exception as exc:
            first += f"; first-import build failed: {type(exc).__name__}: {exc}"
    return None, first


CPU_EXT, CPU_EXT_ERROR = _load("mnv2_kernels._C", jit=_jit_build_cpu)
# No warning here: the backend table (mnv2_kernels/backends.py) says it once, when it matters, with the dtype
# and this reason: backend='auto' warns once per (device, dtype) that it falls back to the reference;
# backend='cpu' raises.

CUDA_EXT, CUDA_EXT_ERROR = _load("mnv2_kernels._C_cuda")
