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
from .fuse import BlockReport, FuseReport, fuse
from .modules import FusedInvertedResidual
from .recognize import BlockPlan, NotFusable, recognize_block
from .reference import inverted_residual_reference

__all__ = ["ops", "fuse", "FuseReport", "BlockReport", "FusedInvertedResidual", "BlockPlan", "NotFusable",
           "recognize_block", "fold_block", "fold_conv_bn", "FoldedBlock", "inverted_residual_reference",
           "models"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "models":
        from . import models
        return models
    raise AttributeError(name)
