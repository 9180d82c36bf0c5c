"""What the extensions are built from: the one description setup.py and the first-import fallback share.

No torch import here: setup.py loads this file by path (importing the package would load the extensions).

  mnv2_kernels._C       the fused CPU kernel (csrc/cpu/*.cpp). The instruction set is chosen at run time
                        inside the sources, so the flags carry no -m<isa> options.
  mnv2_kernels._C_cuda  the fused CUDA kernel (csrc/cuda/*.cu + binding), when torch is a CUDA build and
                        nvcc is found; TORCH_CUDA_ARCH_LIST (default "8.0;9.0a").
"""
from __future__ import annotations

import glob
import hashlib
import os
import sys
from typing import Dict, List

VERSION_FILE = "_version.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout (setup.py's folder)
CSRC = os.path.join(ROOT, "csrc")
COMMON_INCLUDE = os.path.join(CSRC, "common")
CUDA_ARCH_LIST_DEFAULT = "8.0;9.0a"


def version() -> str:
    ns: Dict[str, str] = {}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), VERSION_FILE)) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def openmp_flags() -> List[str]:
    """at::parallel_for is header-inline: without OpenMP the CPU kernel runs on one thread."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def cpu_sources(relative: bool = False) -> List[str]:
    files = sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    return [os.path.relpath(f, ROOT) for f in files] if relative else files


def cpu_cxx_flags() -> List[str]:
    flags = ["-O3"]  # the C++ standard comes from torch's BuildExtension (C++17 or C++20 by torch version)
    # No -m<isa>: csrc/cpu compiles its AVX2 and AVX-512 kernels with `#pragma GCC target` and picks one at
    # run time (issue 14).
    return flags + openmp_flags()


def cuda_sources(relative: bool = False) -> List[str]:
    files = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")) + glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
    return [os.path.relpath(f, ROOT) for f in files] if relative else files


def cuda_include_dirs(root: str = ROOT) -> List[str]:
    """Our headers (of the checkout at ``root``: the static report also compiles older trees), plus the CUDA
    headers shipped in pip's nvidia packages (torch 2.14 CUDA wheels) for machines without a full toolkit."""
    dirs = [os.path.join(root, "csrc", "common"), os.path.join(root, "csrc", "cuda")]
    for p in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            d = os.path.join(p, sub)
            if os.path.isdir(d):
                dirs.append(d)
    return dirs


def nvcc_flags() -> List[str]:
    flags = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    if os.environ.get("MNV2_PTXAS_VERBOSE", "0") == "1":
        flags.append("-Xptxas=-v")
    return flags


def guess_cuda_home() -> None:
    """torch guesses CUDA_HOME from `which nvcc`; a wrapper script in /usr/local/bin misleads it."""
    if "CUDA_HOME" in os.environ or "CUDA_PATH" in os.environ:
        return
    cand = "/usr/local/cuda"
    if os.path.isfile(os.path.join(cand, "bin", "nvcc")) and os.path.isdir(os.path.join(cand, "include")):
        os.environ["CUDA_HOME"] = cand


def cpu_fingerprint() -> str:
    """Hash of everything the CPU extension is built from (sources, headers, flags): names the cache
    folder of the first-import build, so a later import reuses it without asking the compiler."""
    h = hashlib.sha256()
    files = cpu_sources() + sorted(glob.glob(os.path.join(COMMON_INCLUDE, "*")))
    for f in files:
        h.update(f.encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    h.update(" ".join(cpu_cxx_flags()).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]
