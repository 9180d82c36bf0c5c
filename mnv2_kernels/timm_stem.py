"""timm's stem and head conv -> BN(+act) pairs as one folded convolution (issue 13).

timm's EfficientNet (EfficientNet-B0/Lite, MNASNet, FBNet, SPNASNet, TinyNet, MixNet) and MobileNetV3
(MobileNetV3, MobileNetV4, LCNet) models keep their stem as two sibling layers, ``conv_stem`` and ``bn1`` (a
BatchNormAct2d: BN + activation), called one after the other by the model's ``forward_features``; EfficientNet
keeps its head (``conv_head``, ``bn2``) the same way. No module holds the pair, so ``fuse()`` cannot swap a
module for a FoldedConvBNAct as it does for torchvision's Conv2dNormActivation without changing the state-dict
keys (and ``model.conv_stem(x)`` must still return the plain convolution). Instead ``fold_timm_stem_head``
changes the model's class (only the class: parameters, buffers, children, hooks and keys stay) to a subclass
whose ``forward_features`` runs each pair through a FoldedConvBNAct built on a holder of the two layers (kept
outside the module tree, so ``state_dict()``, ``.to()``, ``.train()`` see only the original layers). Every
FoldedConvBNAct rule holds: the original layers run in training mode, with gradients, with hooks on either
layer, when either is in training mode; a replaced ``conv_stem`` / ``bn1`` makes the model run timm's own
``forward_features``.

The subclass's ``forward_features`` repeats timm's; it is used only when timm's function compiles to the same
bytecode as the copy here (``_same_code``), so another timm version whose forward_features differs is left
alone (the report says so).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from .modules import FoldedConvBNAct
from .recognize import NotFusable, recognize_conv_bn

try:
    from timm.models._manipulate import checkpoint_seq
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
except ImportError:  # timm is optional
    EfficientNet = MobileNetV3 = None


class _Pair(nn.Module):
    """conv -> bn (the layers are the model's own; this holder is not part of the model's module tree)."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _FoldedPairs:
    """Mixin: runs the model's (conv, bn) sibling pairs through FoldedConvBNAct holders in ``__dict__``."""

    def _mnv2_pair(self, key: str, conv_name: str, bn_name: str, x: torch.Tensor) -> torch.Tensor:
        conv, bn = getattr(self, conv_name), getattr(self, bn_name)
        folded = self.__dict__.get(key)
        pair = None if folded is None else folded.__dict__["_original"]
        if pair is None or pair._modules.get("conv") is not conv or pair._modules.get("bn") is not bn:
            return bn(conv(x))   # a replaced layer: the model's own layers, as timm's forward_features calls them
        if folded.training != self.training:   # follow the model's mode (not the layers': they keep their own)
            folded.__dict__["_cache"] = {}
            folded.training = pair.training = self.training
        return folded(x)

    def _mnv2_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks, as timm's forward_features runs them (checkpointed when grad_checkpointing is set)."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x, flatten=True)
        return self.blocks(x)


# Verbatim copies of timm's forward_features (the reference _same_code compares timm's against): they must stay
# literal, statement for statement, for their bytecode to equal timm's, so they repeat each other's lines and
# cannot call a shared helper (the folded classes below do, through _FoldedPairs._mnv2_blocks).
def _efficientnet_forward_features(self, x: torch.Tensor) -> torch.Tensor:
    """Forward pass through feature extraction layers."""
    x = self.conv_stem(x)
    x = self.bn1(x)
    if self.grad_checkpointing and not torch.jit.is_scripting():
        x = checkpoint_seq(self.blocks, x, flatten=True)
    else:
        x = self.blocks(x)
    x = self.conv_head(x)
    x = self.bn2(x)
    return x


def _mobilenetv3_forward_features(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv_stem(x)
    x = self.bn1(x)
    if self.grad_checkpointing and not torch.jit.is_scripting():
        x = checkpoint_seq(self.blocks, x, flatten=True)
    else:
        x = self.blocks(x)
    return x


def _same_code(a, b) -> bool:
    """Whether two functions compile to the same bytecode and names (docstrings and line numbers aside)."""
    return a.__code__.co_code == b.__code__.co_code and a.__code__.co_names == b.__code__.co_names


if EfficientNet is not None:
    class FoldedStemEfficientNet(_FoldedPairs, EfficientNet):
        """timm's EfficientNet with conv_stem + bn1 and conv_head + bn2 each run as one folded convolution."""

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self._mnv2_blocks(self._mnv2_pair("_mnv2_stem", "conv_stem", "bn1", x))
            return self._mnv2_pair("_mnv2_head", "conv_head", "bn2", x)

    class FoldedStemMobileNetV3(_FoldedPairs, MobileNetV3):
        """timm's MobileNetV3 (also MobileNetV4, LCNet) with conv_stem + bn1 run as one folded convolution (its
        head conv runs after the global pool, on a 1x1 map: nothing to gain)."""

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self._mnv2_blocks(self._mnv2_pair("_mnv2_stem", "conv_stem", "bn1", x))

    _CLASSES = {EfficientNet: (FoldedStemEfficientNet, _efficientnet_forward_features,
                               (("_mnv2_stem", "conv_stem", "bn1"), ("_mnv2_head", "conv_head", "bn2"))),
                MobileNetV3: (FoldedStemMobileNetV3, _mobilenetv3_forward_features,
                              (("_mnv2_stem", "conv_stem", "bn1"),))}
else:
    _CLASSES = {}


def fold_timm_stem_head(model: nn.Module) -> List[Tuple[str, str]]:
    """Folds the stem (and EfficientNet's head) of a timm EfficientNet / MobileNetV3 model in place (class
    change, see the module docstring). Returns [(path, detail)] for the report: "conv_stem+bn1" and
    "conv+bn+silu"-like details for folded pairs, or ("<model>", why not) when the class is timm's but its
    forward_features is not the one this module repeats. Anything else: []."""
    entry = _CLASSES.get(type(model))
    if entry is None:
        return []
    cls, reference, pairs = entry
    if not _same_code(type(model).forward_features, reference):
        return [("", f"stem/head not folded: this timm version's {type(model).__name__}.forward_features differs "
                     "from the one mnv2_kernels.timm_stem repeats")]
    out = []
    for key, conv_name, bn_name in pairs:
        conv, bn = getattr(model, conv_name, None), getattr(model, bn_name, None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            continue
        pair = _Pair(conv, bn)
        try:
            plan = recognize_conv_bn(pair)
        except NotFusable:
            continue
        folded = FoldedConvBNAct(pair, plan)
        folded.training = pair.training = model.training
        model.__dict__[key] = folded
        out.append((f"{conv_name}+{bn_name}", plan.describe()))
    if out:
        model.__class__ = cls
    return out


def folded_pairs(model: nn.Module) -> Optional[List[FoldedConvBNAct]]:
    """The FoldedConvBNAct holders of a model folded by fold_timm_stem_head (None when it was not)."""
    if not isinstance(model, _FoldedPairs):
        return None
    return [m for k, m in model.__dict__.items() if k.startswith("_mnv2_") and isinstance(m, FoldedConvBNAct)]
