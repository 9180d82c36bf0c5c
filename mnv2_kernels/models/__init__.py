"""Reference models written in plain PyTorch (no torchvision needed)."""
from .block_table import BlockShape, mobilenet_v2_blocks
from .mobilenet_v2 import InvertedResidual, MobileNetV2, imagenet_weights_path, mobilenet_v2

__all__ = ["BlockShape", "mobilenet_v2_blocks", "MobileNetV2", "InvertedResidual", "mobilenet_v2", "imagenet_weights_path"]
