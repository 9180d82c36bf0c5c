"""Recognises inverted-residual blocks by what their forward does, not by class names.

A block's forward is traced with torch.fx (convs, BatchNorms and activations as leaves). It is fusable when
the traced graph is exactly the chain

    [conv1x1 -> BN -> ReLU6] -> depthwise conv3x3 (stride 1|2, padding 1) -> BN -> ReLU6 -> conv1x1 -> BN

optionally followed by ``+ x`` (the block's own input), with identity-like modules (Identity, Dropout,
DropPath, all identities in eval mode) anywhere in between. Anything else (squeeze-excite, other
activations, asymmetric padding, other kernel sizes, extra ops) is refused with a reason.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

_IDENTITY_TYPES = (nn.Identity, nn.Dropout, nn.Dropout2d)
_ADD_TARGETS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class BlockPlan:
    """Where a recognised block keeps its layers (paths relative to the block) and what it computes."""
    expand: Optional[Tuple[str, str]]   # (conv path, bn path) of the 1x1 expand conv, or None
    depthwise: Tuple[str, str]          # (conv path, bn path) of the 3x3 depthwise conv
    project: Tuple[str, str]            # (conv path, bn path) of the 1x1 project conv
    stride: int
    residual: bool
    in_channels: int
    hidden_channels: int
    out_channels: int

    def describe(self) -> str:
        t = "expand" if self.expand is not None else "no expand"
        return (f"{self.in_channels}->{self.hidden_channels}->{self.out_channels}, stride {self.stride}, {t}"
                f"{', residual' if self.residual else ''}")


@dataclass(frozen=True)
class ConvBNPlan:
    """A conv -> BN [-> activation] module outside the blocks (e.g. the stem): paths relative to it."""
    conv: str
    bn: str
    activation: Optional[str]   # None, "relu" or "relu6"

    def describe(self) -> str:
        return f"conv+bn{'+' + self.activation if self.activation else ''}"


class NotFusable(Exception):
    """Raised with the reason a module is not a fusable inverted-residual block."""


def _is_identity(m: nn.Module) -> bool:
    """Identity in eval mode: nn.Identity / Dropout (not a subclass with its own forward), timm's DropPath."""
    if type(m).__name__ == "DropPath":
        return True
    return any(isinstance(m, t) and type(m).forward is t.forward for t in _IDENTITY_TYPES)


def _is_relu6(m) -> bool:
    """nn.ReLU6 (a Hardtanh(0, 6)), or a Hardtanh(0, 6); a subclass with its own forward is not."""
    return (isinstance(m, nn.Hardtanh) and type(m).forward is nn.Hardtanh.forward and m.min_val == 0.0
            and m.max_val == 6.0)


def _check_plain_modules(block: nn.Module) -> None:
    """Refuses blocks whose layers do more than their class's forward: hooks, instance-level forwards."""
    for path, m in block.named_modules():
        where = path or "the block"
        if m._forward_hooks or m._forward_pre_hooks:
            raise NotFusable(f"{where} ({type(m).__name__}) has forward hooks or pre-hooks (e.g. old-style "
                             "weight_norm); the fused op would skip them")
        if "forward" in m.__dict__:
            raise NotFusable(f"{where} ({type(m).__name__}) has an instance-level forward")


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or len(m._modules) == 0 or super().is_leaf_module(m, qualname)


def _bn_act(bn: nn.BatchNorm2d, path: str) -> List[tuple]:
    """A BN as tokens: plain BatchNorm2d, or a BN+activation module (timm's BatchNormAct2d: .drop, .act)."""
    if type(bn).forward is nn.BatchNorm2d.forward or type(bn).forward is nn.modules.batchnorm._BatchNorm.forward:
        return [("bn", path, bn)]
    owner = next(c for c in type(bn).__mro__ if "forward" in c.__dict__)
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if (owner.__name__ != "BatchNormAct2d" or not owner.__module__.startswith("timm.") or act is None
            or (drop is not None and not _is_identity(drop))):
        raise NotFusable(f"{path}: BatchNorm subclass {type(bn).__name__} computes something else")
    tokens = [("bn", path, bn)]
    if not _is_identity(act):
        tokens.append(("act", f"{path}.act", act))
    return tokens


def _tokens(block: nn.Module) -> Tuple[List[tuple], bool]:
    """The block's forward as a list of (kind, path, module) tokens and whether it adds its input."""
    _check_plain_modules(block)
    try:
        graph = _Tracer().trace(block)
    except Exception as exc:
        raise NotFusable(f"its forward cannot be traced ({type(exc).__name__}: {exc})") from None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(placeholders) != 1:
        raise NotFusable(f"its forward takes {len(placeholders)} inputs, not one")
    x = placeholders[0]
    node = outputs[0].args[0]
    residual = False
    if isinstance(node, torch.fx.Node) and (
            (node.op == "call_function" and node.target in _ADD_TARGETS) or
            (node.op == "call_method" and node.target in ("add", "add_"))):
        if len(node.args) != 2 or node.kwargs:
            raise NotFusable(f"unsupported add {node.format_node()}")
        a, b = node.args
        if a is x and b is not x:
            node, residual = b, True
        elif b is x and a is not x:
            node, residual = a, True
        else:
            raise NotFusable("it adds two computed tensors, not its input")
    modules = dict(block.named_modules())
    chain = []
    while node is not x:
        if not isinstance(node, torch.fx.Node):
            raise NotFusable(f"its output is not a tensor computed from its input ({node!r})")
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.BatchNorm2d):
                chain[:0] = _bn_act(m, node.target)
            elif not _is_identity(m):
                chain.insert(0, ("act" if not isinstance(m, nn.Conv2d) else "conv", node.target, m))
        elif node.op == "call_function" and node.target is F.relu6:
            chain.insert(0, ("act", str(node), nn.ReLU6()))
        else:
            raise NotFusable(f"it computes {node.op} {getattr(node.target, '__name__', node.target)!s}, which is "
                             "not part of an inverted residual (squeeze-excite or another op?)")
        if len(node.all_input_nodes) != 1 or len(node.args) != 1:
            raise NotFusable(f"{node.target} takes extra inputs (not a plain chain)")
        node = node.all_input_nodes[0]
    return chain, residual


def _check_conv(conv: nn.Conv2d, path: str, kernel: int, depthwise: bool) -> int:
    if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        raise NotFusable(f"{path} is a {type(conv).__name__}, which overrides Conv2d.forward or _conv_forward "
                         "(e.g. asymmetric 'same' padding)")
    if conv.kernel_size != (kernel, kernel):
        raise NotFusable(f"{path} has kernel size {conv.kernel_size}, expected {(kernel, kernel)}")
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise NotFusable(f"{path} has dilation {conv.dilation} / padding mode {conv.padding_mode!r}")
    if depthwise:
        if not (conv.groups == conv.in_channels == conv.out_channels):
            raise NotFusable(f"{path} is not depthwise (groups={conv.groups}, {conv.in_channels}->"
                             f"{conv.out_channels})")
        if conv.stride not in ((1, 1), (2, 2)):
            raise NotFusable(f"{path} has stride {conv.stride}; only 1 and 2 are fused")
        if conv.padding != (1, 1):
            raise NotFusable(f"{path} has padding {conv.padding}; only symmetric padding 1 is fused")
        return conv.stride[0]
    if conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0):
        raise NotFusable(f"{path} is not a plain 1x1 conv (groups={conv.groups}, stride={conv.stride}, "
                         f"padding={conv.padding})")
    return 1


def _check_bn(bn: nn.BatchNorm2d, path: str, channels: int) -> None:
    if bn.running_mean is None:
        raise NotFusable(f"{path} has no running statistics")
    if bn.num_features != channels:
        raise NotFusable(f"{path} normalises {bn.num_features} channels, its conv makes {channels}")


def recognize_block(block: nn.Module) -> BlockPlan:
    """Returns the block's plan, or raises NotFusable with the reason it cannot be fused exactly."""
    chain, residual = _tokens(block)
    kinds = [k for k, _, _ in chain]
    for kind, path, m in chain:
        if kind == "act" and not _is_relu6(m):
            raise NotFusable(f"activation {path} is {type(m).__name__}; only ReLU6 is fused")
    if kinds == ["conv", "bn", "act", "conv", "bn", "act", "conv", "bn"]:
        exp, dw, proj = chain[0:2], chain[3:5], chain[6:8]
    elif kinds == ["conv", "bn", "act", "conv", "bn"]:
        exp, dw, proj = None, chain[0:2], chain[3:5]
    else:
        raise NotFusable("its layers are " + " -> ".join(kinds) +
                         "; expected [conv1x1 -> bn -> relu6] -> dwconv3x3 -> bn -> relu6 -> conv1x1 -> bn")
    dw_conv, proj_conv = dw[0][2], proj[0][2]
    stride = _check_conv(dw_conv, dw[0][1], 3, depthwise=True)
    _check_conv(proj_conv, proj[0][1], 1, depthwise=False)
    chid = dw_conv.in_channels
    if exp is not None:
        _check_conv(exp[0][2], exp[0][1], 1, depthwise=False)
        _check_bn(exp[1][2], exp[1][1], exp[0][2].out_channels)
        if exp[0][2].out_channels != chid:
            raise NotFusable(f"expand makes {exp[0][2].out_channels} channels, depthwise takes {chid}")
        cin = exp[0][2].in_channels
    else:
        cin = chid
    _check_bn(dw[1][2], dw[1][1], chid)
    if proj_conv.in_channels != chid:
        raise NotFusable(f"project takes {proj_conv.in_channels} channels, depthwise makes {chid}")
    cout = proj_conv.out_channels
    _check_bn(proj[1][2], proj[1][1], cout)
    if residual and not (stride == 1 and cin == cout):
        raise NotFusable(f"it adds its input but changes shape (stride {stride}, {cin}->{cout})")
    return BlockPlan(expand=None if exp is None else (exp[0][1], exp[1][1]), depthwise=(dw[0][1], dw[1][1]),
                     project=(proj[0][1], proj[1][1]), stride=stride, residual=residual, in_channels=cin,
                     hidden_channels=chid, out_channels=cout)


def recognize_conv_bn(module: nn.Module) -> ConvBNPlan:
    """Plan for a module whose forward is exactly conv -> BN [-> ReLU | ReLU6]; raises NotFusable otherwise."""
    chain, residual = _tokens(module)
    kinds = [k for k, _, _ in chain]
    if residual or kinds not in (["conv", "bn"], ["conv", "bn", "act"]):
        raise NotFusable("not a conv -> bn [-> act] chain")
    (_, conv_path, conv), (_, bn_path, bn) = chain[:2]
    if (type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str)):
        raise NotFusable(f"{conv_path} computes more than a zero-padded convolution")
    _check_bn(bn, bn_path, conv.out_channels)
    act = None
    if len(chain) == 3:
        m = chain[2][2]
        if _is_relu6(m):
            act = "relu6"
        elif type(m) is nn.ReLU:
            act = "relu"
        else:
            raise NotFusable(f"activation {type(m).__name__} is not folded")
    return ConvBNPlan(conv_path, bn_path, act)
