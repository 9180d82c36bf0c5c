"""mnv2_kernels: MobileNetV2 inverted-residual blocks as single fused launches.

    import mnv2_kernels
    fused = mnv2_kernels.fuse(model.eval())          # torchvision / timm / hand-written models
    with torch.inference_mode():
        y = fused(x)

Backends: "cpu" (fused C++ kernel), "cuda" (fused CUDA kernel), "triton" (Triton kernel; CPU tensors run
in Triton's interpreter with TRITON_INTERPRET=1), "reference" (plain PyTorch), "auto" (fastest available).
"""
from . import ops
from .folding import FoldedBlock, fold_block, fold_conv_bn
from .fuse import BlockReport, FuseReport, fuse, prepare
from .modules import FusedInvertedResidual, FusedPathWarning, refresh
from .recognize import BlockPlan, NotFusable, recognize_block
from .reference import inverted_residual_reference

__all__ = ["ops", "fuse", "prepare", "refresh", "FuseReport", "BlockReport", "FusedInvertedResidual",
           "FusedPathWarning", "BlockPlan", "NotFusable",
           "recognize_block", "fold_block", "fold_conv_bn", "FoldedBlock", "inverted_residual_reference",
           "models"]
from ._version import __version__  # noqa: E402  (the one place the version is written)


def __getattr__(name):
    # Lazy `mnv2_kernels.models`. importlib, not `from . import models`: the latter asks this module for the
    # attribute `models` again and recursed forever.
    if name == "models":
        import importlib
        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
