"""Build script for mnv2_kernels.

Extensions (built with torch.utils.cpp_extension and ninja):
  mnv2_kernels._C       fused CPU kernel (csrc/cpu), always built when torch is importable at build time.
  mnv2_kernels._C_cuda  fused CUDA kernel (csrc/cuda), built when a CUDA build of torch and nvcc are present.

Environment switches:
  MNV2_BUILD_CPU=0           skip the CPU extension
  MNV2_BUILD_CUDA=0|1        skip / force the CUDA extension (default: auto-detect)
  TORCH_CUDA_ARCH_LIST       CUDA archs (default "8.0;9.0a")
  MAX_JOBS                   parallel compile jobs (ninja)

torch must be importable while building: use `pip install --no-build-isolation -e .`.  Without torch at
build time (plain `pip install -e .` in an isolated build), the package installs as pure Python and the
CPU extension is compiled at first import instead (torch.utils.cpp_extension.load, cached).
"""
import glob
import os
import platform
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cxx_flags():
    flags = ["-O3"]  # the C++ standard comes from torch's BuildExtension (C++17 or C++20 by torch version)
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-mavx2", "-mfma"]
    return flags + _openmp_flags()


def _openmp_flags():
    """at::parallel_for is header-inline: without OpenMP the CPU kernel runs on one thread."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def _cuda_include_dirs():
    """CUDA headers shipped in pip's nvidia packages (torch 2.14 CUDA wheels), for machines without a toolkit."""
    dirs = []
    for p in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            d = os.path.join(p, sub)
            if os.path.isdir(d):
                dirs.append(d)
    return dirs


def _guess_cuda_home():
    """torch guesses CUDA_HOME from `which nvcc`; a wrapper script in /usr/local/bin misleads it."""
    if "CUDA_HOME" in os.environ or "CUDA_PATH" in os.environ:
        return
    for cand in ("/usr/local/cuda",):
        if os.path.isfile(os.path.join(cand, "bin", "nvcc")) and os.path.isdir(os.path.join(cand, "include")):
            os.environ["CUDA_HOME"] = cand
            return


def _extensions():
    _guess_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("mnv2_kernels: torch is not importable at build time; installing pure Python. "
              "The CPU extension will be compiled at first import. For an ahead-of-time build use "
              "`pip install --no-build-isolation -e .`", file=sys.stderr)
        return [], {}

    exts = []
    common = os.path.join(HERE, "csrc", "common")
    if os.environ.get("MNV2_BUILD_CPU", "1") != "0":
        exts.append(CppExtension(
            name="mnv2_kernels._C",
            sources=sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))),
            include_dirs=[common],
            extra_compile_args={"cxx": _cxx_flags()},
            extra_link_args=_openmp_flags(),
        ))

    want_cuda = os.environ.get("MNV2_BUILD_CUDA", "auto")
    have_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if want_cuda == "1" or (want_cuda == "auto" and have_cuda):
        if not have_cuda:
            raise RuntimeError("MNV2_BUILD_CUDA=1 but torch has no CUDA build or nvcc was not found "
                               f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                         glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        if os.environ.get("MNV2_PTXAS_VERBOSE", "0") == "1":
            nvcc_flags.append("-Xptxas=-v")
        exts.append(CUDAExtension(
            name="mnv2_kernels._C_cuda",
            sources=sources,
            include_dirs=[common, os.path.join(HERE, "csrc", "cuda")] + _cuda_include_dirs(),
            extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
        ))
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="mnv2_kernels",
    version="0.1.0",
    description="Fused MobileNetV2 inverted-residual blocks: CPU (C++), Triton and CUDA kernels",
    packages=find_packages(include=["mnv2_kernels", "mnv2_kernels.*"]),
    package_data={"mnv2_kernels": ["data/*.txt"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
