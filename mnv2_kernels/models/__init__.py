"""Reference models written in plain PyTorch (no torchvision needed)."""
from .mobilenet_v2 import InvertedResidual, MobileNetV2, imagenet_categories, imagenet_weights_path, mobilenet_v2

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenet_v2", "imagenet_categories", "imagenet_weights_path"]
