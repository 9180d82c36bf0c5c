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
from typing import List, Optional, Tuple

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
    activation: Optional[str]   # None, "relu", "relu6", "hardswish", "silu", "gelu" or "gelu_tanh"

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
    def __init__(self, leaves: frozenset = frozenset()):
        super().__init__()
        self._extra_leaves = leaves   # ids of modules traced as one node (recognised squeeze-excite modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, nn.BatchNorm2d) or len(m._modules) == 0 or id(m) in self._extra_leaves
                or super().is_leaf_module(m, qualname))


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


def _tokens(block: nn.Module, se_ids: frozenset = frozenset(), extended: bool = False,
            mixed: Optional[dict] = None) -> Tuple[List[tuple], bool]:
    """The block's forward as a list of (kind, path, module) tokens and whether it adds its input.

    ``extended`` (the generalised block): modules in ``se_ids`` are one ("se", path, module) token,
    functional activations are ("act", name, None) tokens with their name, torchvision's StochasticDepth is
    an identity (eval mode) and timm's LayerScale2d is an ("ls", path, module) token. ``mixed`` ({id: MixedConv
    or the reason it is not one}, modules traced as one node): a MixConv is a ("conv", path, MixedConv) token.
    A sum of conv -> BN branches of one tensor is one ("rep", path, RepBranches) token (conv and BN in one)."""
    _check_plain_modules(block)
    try:
        graph = _Tracer(se_ids).trace(block)
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
            elif extended and mixed and id(m) in mixed:
                if isinstance(mixed[id(m)], str):
                    raise NotFusable(f"{node.target} ({type(m).__name__}): {mixed[id(m)]}")
                chain.insert(0, ("conv", node.target, mixed[id(m)]))
            elif extended and id(m) in se_ids:
                chain.insert(0, ("se", node.target, m))
            elif extended and _is_layer_scale(m):
                chain.insert(0, ("ls", node.target, m))
            elif extended and type(m).__name__ == "StochasticDepth" and type(m).__module__.startswith("torchvision."):
                pass  # identity in eval mode (the fused module runs the original in training mode)
            elif not _is_identity(m):
                chain.insert(0, ("act" if not isinstance(m, nn.Conv2d) else "conv", node.target, m))
        elif node.op == "call_function" and node.target is F.relu6:
            chain.insert(0, ("act", str(node), nn.ReLU6()))
        elif extended and _functional_act(node) is not None:
            chain.insert(0, ("act", _functional_act(node), None))
        elif extended and _is_add(node):
            rep, src = _rep_branches(node, modules)
            chain.insert(0, ("rep", rep.name, rep))
            node = src
            continue
        elif extended and node.op == "call_function" and node.target in (torch.cat, torch.split):
            raise NotFusable("it splits channels into groups and concatenates them in its own forward; put the "
                             "split -> one conv per group -> concatenation in its own module (as timm's "
                             "MixedConv2d does), which is then recognised as one MixConv layer")
        elif (extended and node.op in ("call_function", "call_method")
              and getattr(node.target, "__name__", node.target) in ("mul", "mul_")):
            raise NotFusable("it multiplies inside its forward (squeeze-excite written inline?); put the "
                             "squeeze-excite in its own module whose forward returns x * gate(...)")
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
        act = activation_name(m)
        if act not in ("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none"):
            raise NotFusable(f"activation {type(m).__name__} is not folded")
        act = None if act == "none" else act
    return ConvBNPlan(conv_path, bn_path, act)


# ----------------------------------------------------------------------------------------------------------
# The generalised block (issue 13): activations, 3/5/7 depthwise, TF "same" padding, squeeze-excite,
# layer scale. docs/CONTRACT.md, "The generalised block".
# ----------------------------------------------------------------------------------------------------------
# Activation modules by exact class (a subclass with its own forward is not one of them).
_ACT_MODULES = {nn.ReLU6: "relu6", nn.ReLU: "relu", nn.Hardswish: "hardswish", nn.SiLU: "silu",
                nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.Identity: "none"}
# timm's own activation classes (timm.layers.activations / activations_me): same maths, own forward.
_TIMM_ACTS = {"Swish": "silu", "SwishMe": "silu", "HardSwish": "hardswish", "HardSwishMe": "hardswish",
              "HardSigmoid": "hardsigmoid", "HardSigmoidMe": "hardsigmoid", "Sigmoid": "sigmoid",
              "GELU": "gelu", "GELUTanh": "gelu_tanh"}
_FUNCTIONAL_ACTS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
                    F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid if hasattr(F, "sigmoid") else torch.sigmoid:
                    "sigmoid", F.hardsigmoid: "hardsigmoid", F.gelu: "gelu"}
_METHOD_ACTS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}


def activation_name(m: Optional[nn.Module]) -> Optional[str]:
    """The contract's name for an activation module (reference.ACTIVATIONS / SE_GATES), None if unknown."""
    if m is None:
        return None
    if _is_relu6(m):
        return "relu6"
    t = type(m)
    if t in _ACT_MODULES:
        return _ACT_MODULES[t]
    if isinstance(m, nn.GELU) and t.forward is nn.GELU.forward:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(m.approximate)
    if t.__module__.startswith("timm.layers.activations") and t.__name__ in _TIMM_ACTS:
        return _TIMM_ACTS[t.__name__]
    return None


def _functional_act(node: torch.fx.Node) -> Optional[str]:
    if node.op == "call_function" and node.target in _FUNCTIONAL_ACTS:
        name = _FUNCTIONAL_ACTS[node.target]
        if name == "gelu":
            return {"none": "gelu", "tanh": "gelu_tanh"}.get(node.kwargs.get("approximate", "none"))
        return name
    if node.op == "call_method" and node.target in _METHOD_ACTS:
        return _METHOD_ACTS[node.target]
    return None


def _is_layer_scale(m: nn.Module) -> bool:
    """timm's LayerScale2d (x * gamma per channel), which folds into the project conv."""
    return (type(m).__name__ == "LayerScale2d" and type(m).__module__.startswith("timm.")
            and isinstance(getattr(m, "gamma", None), torch.Tensor) and m.gamma.dim() == 1)


@dataclass(frozen=True)
class SEPlan:
    """A squeeze-excite module: mean over H, W -> reduce 1x1 conv -> act -> expand 1x1 conv -> gate; x * gate.
    Paths relative to the SE module."""
    reduce: str
    expand: str
    act: str
    gate: str


def _is_pool(node: torch.fx.Node, x: torch.fx.Node, modules: dict) -> bool:
    """x.mean((2, 3), keepdim=True), AdaptiveAvgPool2d(1) or F.adaptive_avg_pool2d(x, 1) of the SE's input."""
    if node.op == "call_method" and node.target == "mean" and node.args and node.args[0] is x:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        return keep is True and dims is not None and sorted(d % 4 for d in dims) == [2, 3]
    if node.op == "call_module" and node.args and node.args[0] is x:
        m = modules[node.target]
        return (type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1)))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d and node.args and node.args[0] is x:
        return (node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")) in (1, (1, 1))
    return False


def recognize_se(module: nn.Module) -> SEPlan:
    """Plan of a squeeze-excite module (timm's SqueezeExcite / SEModule, torchvision's SqueezeExcitation, or a
    hand-written one computing the same); raises NotFusable otherwise."""
    _check_plain_modules(module)
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:
        raise NotFusable(f"its forward cannot be traced ({type(exc).__name__})") from None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise NotFusable("not a one-input module")
    x = placeholders[0]
    out = [n for n in graph.nodes if n.op == "output"][0].args[0]
    if not (isinstance(out, torch.fx.Node) and len(out.args) == 2 and (
            (out.op == "call_function" and out.target in (operator.mul, torch.mul))
            or (out.op == "call_method" and out.target == "mul"))):
        raise NotFusable("its output is not x * gate")
    a, b = out.args
    node = b if a is x else a if b is x else None
    if node is None:
        raise NotFusable("its output does not multiply its input")
    modules = dict(module.named_modules())
    chain: List[tuple] = []
    while not _is_pool(node, x, modules):
        if not isinstance(node, torch.fx.Node) or node is x or len(node.all_input_nodes) != 1:
            raise NotFusable("the gate is not computed from the global average pool of the input")
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.Conv2d):
                chain.insert(0, ("conv", node.target, m))
            elif not _is_identity(m):
                name = activation_name(m)
                if name is None:
                    raise NotFusable(f"{node.target} ({type(m).__name__}) is not a known activation")
                chain.insert(0, ("act", name, m))
        elif _functional_act(node) is not None:
            chain.insert(0, ("act", _functional_act(node), None))
        else:
            raise NotFusable(f"it computes {node.op} {getattr(node.target, '__name__', node.target)!s}")
        node = node.all_input_nodes[0]
    kinds = [k for k, _, _ in chain]
    if kinds == ["conv", "act", "conv", "act"]:
        act, gate = chain[1][1], chain[3][1]
    elif kinds == ["conv", "conv", "act"]:
        act, gate = "none", chain[2][1]
    else:
        raise NotFusable("its layers are " + " -> ".join(kinds) + "; expected conv1x1 -> act -> conv1x1 -> gate")
    if gate not in ("sigmoid", "hardsigmoid"):
        raise NotFusable(f"its gate is {gate}; sigmoid and hardsigmoid are in the contract")
    convs = [c for c in chain if c[0] == "conv"]
    for _, path, conv in convs:
        if (type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward
                or conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1)
                or conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1)):
            raise NotFusable(f"{path} is not a plain 1x1 conv")
    if convs[0][2].out_channels != convs[1][2].in_channels or convs[0][2].in_channels != convs[1][2].out_channels:
        raise NotFusable("its convs do not chain C -> Crd -> C")
    return SEPlan(convs[0][1], convs[1][1], act, gate)


def _find_se_modules(block: nn.Module) -> dict:
    """{id(module): (path, SEPlan)} for the block's submodules that are squeeze-excite modules."""
    found = {}
    for path, m in block.named_modules():
        if not path or not m._modules:
            continue
        leaves = [c for c in m.modules() if not c._modules]
        if not (3 <= len(leaves) <= 8) or sum(isinstance(c, nn.Conv2d) for c in leaves) != 2 or any(
                isinstance(c, nn.BatchNorm2d) for c in leaves):
            continue
        try:
            found[id(m)] = (path, recognize_se(m))
        except NotFusable:
            pass
    return found


# ----------------------------------------------------------------------------------------------------------
# Composite depthwise / pointwise layers that fold into one conv of the generalised block (issue 13):
# MixNet's MixConv (channel groups, one conv each, concatenated) and re-parameterisable depthwise branches
# (PP-LCNetV2: conv -> BN branches of one tensor, summed).
# ----------------------------------------------------------------------------------------------------------
_MAX_KERNEL = 9


def _is_add(node: torch.fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADD_TARGETS)
            or (node.op == "call_method" and node.target in ("add", "add_")))


def _depthwise_kind(conv: nn.Conv2d, path: str, problems: List[str]) -> str:
    """'symmetric' or 'tf_same' for one depthwise part (odd square kernel <= 9, no dilation); appends problems."""
    k = conv.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or k[0] > _MAX_KERNEL:
        problems.append(f"{path} has kernel size {k}; odd square kernels up to 9x9 are in the contract")
    if conv.stride not in ((1, 1), (2, 2)):
        problems.append(f"{path} has stride {conv.stride}; 1 and 2 are in the contract")
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        problems.append(f"{path} has dilation {conv.dilation} / padding mode {conv.padding_mode!r}")
    mode = _conv_padding_mode(conv, path, problems)
    if mode == "tf_same" and conv.stride != (1, 1) and k[0] < 3:
        # TF 'same' pads of a 1x1 at stride 2 are clamped at 0 on even sizes: not centred in a larger kernel
        problems.append(f"{path} is a {k[0]}x{k[0]} TF 'same' conv at stride 2, whose padding is not centred "
                        "in the larger kernel")
    return mode


@dataclass(frozen=True, eq=False)
class MixedConv:
    """A MixConv layer (timm's MixedConv2d, or a module computing the same): its forward splits the input's
    channels into groups, runs one conv per group and concatenates the results along channels.

    Depthwise groups (kernels 3, 5, 7, 9) fold into ONE kxk depthwise conv (k = the largest), each group's
    kernel zero-padded and centred (exact for symmetric padding k // 2 and for TF 'same' padding: the
    centres coincide); 1x1 groups fold into one block-diagonal dense 1x1 conv. Looks like an nn.Conv2d to
    the recogniser (in_channels, out_channels, kernel_size, stride, groups, dilation, padding_mode)."""
    parts: Tuple[str, ...]          # paths of the group convs relative to the MixConv module, channel order
    convs: Tuple[nn.Conv2d, ...]
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]    # the largest group kernel
    stride: Tuple[int, int]
    depthwise: bool                 # True: depthwise groups; False: 1x1 groups (block-diagonal dense)
    padding_name: str               # "symmetric" or "tf_same"
    dilation: Tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"

    @property
    def groups(self) -> int:
        return self.in_channels if self.depthwise else 1

    @property
    def padding(self) -> Tuple[int, int]:
        return (self.kernel_size[0] // 2,) * 2

    def describe(self) -> str:
        if self.depthwise:
            ks = "/".join(str(c.kernel_size[0]) for c in self.convs)
            return f"MixConv {ks} as one {self.kernel_size[0]}x{self.kernel_size[0]} depthwise"
        return f"{len(self.convs)}-group 1x1 as one block-diagonal 1x1"


def recognize_mixed(module: nn.Module) -> MixedConv:
    """The MixedConv of a module whose forward is split(x, sizes, dim=1) -> one conv per chunk -> cat(dim=1)
    (timm's MixedConv2d, or a hand-written equivalent); raises NotFusable otherwise."""
    _check_plain_modules(module)
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:
        raise NotFusable(f"its forward cannot be traced ({type(exc).__name__})") from None
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise NotFusable("not a one-input module")
    x = placeholders[0]
    out = [n for n in nodes if n.op == "output"][0].args[0]
    if not (isinstance(out, torch.fx.Node) and out.op == "call_function" and out.target is torch.cat):
        raise NotFusable("its output is not a concatenation")
    dim = out.args[1] if len(out.args) > 1 else out.kwargs.get("dim", 0)
    if dim not in (1, -3) or not isinstance(out.args[0], (list, tuple)):
        raise NotFusable(f"it concatenates along dim {dim}, not channels")
    modules = dict(module.named_modules())
    parts, convs, split = [], [], None
    for idx, c in enumerate(out.args[0]):
        if not (isinstance(c, torch.fx.Node) and c.op == "call_module" and isinstance(modules[c.target], nn.Conv2d)
                and len(c.args) == 1 and not c.kwargs and len(c.users) == 1):
            raise NotFusable("a concatenated tensor is not one conv's output")
        g = c.args[0]
        if not (isinstance(g, torch.fx.Node) and g.op == "call_function" and g.target is operator.getitem
                and g.args[1] == idx):
            raise NotFusable("the convs do not take the split chunks in order")
        if split is None:
            split = g.args[0]
        elif g.args[0] is not split:
            raise NotFusable("the convs take chunks of different splits")
        parts.append(c.target)
        convs.append(modules[c.target])
    is_split = isinstance(split, torch.fx.Node) and (
        (split.op == "call_function" and getattr(split.target, "__name__", "") == "split")
        or (split.op == "call_method" and split.target == "split"))
    if not is_split or split.args[0] is not x:
        raise NotFusable("it does not split its input")
    sizes = split.args[1] if len(split.args) > 1 else split.kwargs.get("split_size_or_sections",
                                                                      split.kwargs.get("split_size"))
    sdim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if sdim not in (1, -3):
        raise NotFusable(f"it splits along dim {sdim}, not channels")
    if isinstance(sizes, int):
        sizes = [sizes] * len(convs)
    if list(sizes) != [c.in_channels for c in convs] or len(split.users) != len(convs):
        raise NotFusable(f"its split sizes {sizes} are not the convs' input channels "
                         f"{[c.in_channels for c in convs]}")
    problems: List[str] = []
    depthwise = all(c.groups == c.in_channels == c.out_channels for c in convs) and not all(
        c.kernel_size == (1, 1) and c.groups == 1 for c in convs)
    if depthwise:
        modes = {_depthwise_kind(c, p, problems) for p, c in zip(parts, convs)}
        if len(modes) > 1:
            problems.append("its groups mix symmetric and TF 'same' padding")
        if len({c.stride for c in convs}) > 1:
            problems.append("its groups have different strides")
        mode = modes.pop() if len(modes) == 1 else "symmetric"
    else:
        for p, c in zip(parts, convs):
            problems += _pointwise_problems(c, p)
        mode = "symmetric"
    if problems:
        raise NotFusable("; ".join(problems))
    k = max(c.kernel_size[0] for c in convs)
    return MixedConv(tuple(parts), tuple(convs), sum(c.in_channels for c in convs),
                     sum(c.out_channels for c in convs), (k, k), convs[0].stride, depthwise, mode)


def _find_mixed_modules(block: nn.Module) -> dict:
    """{id(module): MixedConv, or the reason it is not one} for the block's submodules that split their input
    into channel groups, one conv per group, and concatenate (candidates: modules with their own forward whose
    children are Conv2d, or ModuleLists / ModuleDicts of Conv2d, and that are not a Sequential)."""
    def convs_only(m: nn.Module) -> bool:   # children: Conv2d, or ModuleList / ModuleDict of them
        kids = [c for c in m._modules.values() if c is not None]
        return bool(kids) and all(isinstance(c, nn.Conv2d) or (isinstance(c, (nn.ModuleList, nn.ModuleDict))
                                                               and convs_only(c)) for c in kids)

    found = {}
    for path, m in block.named_modules():
        if (not path or isinstance(m, (nn.Sequential, nn.Conv2d)) or type(m).forward is nn.Module.forward
                or not convs_only(m)):
            continue
        try:
            found[id(m)] = recognize_mixed(m)
        except NotFusable as exc:
            if any(getattr(n, "target", None) is torch.cat for n in _safe_nodes(m)):
                found[id(m)] = f"a MixConv-like layer outside the contract: {exc}"
    return found


def _safe_nodes(m: nn.Module) -> list:
    try:
        return list(_Tracer().trace(m).nodes)
    except Exception:
        return []


@dataclass(frozen=True, eq=False)
class RepBranches:
    """Re-parameterisable depthwise branches (PP-LCNetV2's RepDepthwiseSeparable, RepVGG-style blocks): conv
    -> BN branches of one tensor (a branch without a conv: BN of the tensor itself), summed. Folds, exactly in
    eval mode, into ONE kxk depthwise conv (k = the largest branch kernel; each branch's BN folded, kernels
    zero-padded, centred and summed). Looks like an nn.Conv2d to the recogniser."""
    name: str
    conv_paths: Tuple[Optional[str], ...]   # per branch, relative to the block (None: an identity branch)
    bn_paths: Tuple[str, ...]
    kernels: Tuple[int, ...]
    in_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding_name: str
    dilation: Tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def groups(self) -> int:
        return self.in_channels

    def describe(self) -> str:
        ks = "/".join(str(k) if c is not None else "BN" for k, c in zip(self.kernels, self.conv_paths))
        return f"{len(self.kernels)} depthwise branches {ks} summed as one {self.kernel_size[0]}x{self.kernel_size[0]}"


def _rep_branches(node: torch.fx.Node, modules: dict) -> Tuple[RepBranches, torch.fx.Node]:
    """The RepBranches whose sum is ``node`` and the tensor they start from; NotFusable otherwise."""
    what = ("it adds two computed tensors that are not conv -> BN branches of one tensor (re-parameterisable "
            "depthwise branches): not an inverted residual")
    leaves, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, torch.fx.Node) and _is_add(n) and (n is node or len(n.users) == 1):
            if len(n.args) != 2 or n.kwargs:
                raise NotFusable(f"unsupported add {n.format_node()}")
            stack.extend(reversed(n.args))
        else:
            leaves.append(n)

    def skip_identities(n):
        while (isinstance(n, torch.fx.Node) and n.op == "call_module" and _is_identity(modules[n.target])
               and len(n.users) == 1):
            n = n.args[0]
        return n

    branches, sources, problems = [], [], []
    for leaf in leaves:
        n = skip_identities(leaf)
        if not (isinstance(n, torch.fx.Node) and n.op == "call_module" and isinstance(modules[n.target], nn.BatchNorm2d)
                and len(n.users) == 1 and len(n.args) == 1):
            raise NotFusable(what)
        bn_path, bn = n.target, modules[n.target]
        if len(_bn_act(bn, bn_path)) != 1:
            raise NotFusable(f"{bn_path}: a branch has an activation before the sum")
        n = skip_identities(n.args[0])
        conv_path = conv = None
        if (isinstance(n, torch.fx.Node) and n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)
                and len(n.users) == 1):
            conv_path, conv = n.target, modules[n.target]
            if len(n.args) != 1 or n.kwargs:
                raise NotFusable(what)
            n = skip_identities(n.args[0])
        branches.append((conv_path, conv, bn_path, bn))
        sources.append(n)
    if len(branches) < 2 or any(s is not sources[0] for s in sources) or not isinstance(sources[0], torch.fx.Node):
        raise NotFusable(what)
    convs = [(p, c) for p, c, _, _ in branches if c is not None]
    if not convs:
        raise NotFusable("it sums BatchNorms of one tensor without a conv: not an inverted residual")
    chans = {c.in_channels for _, c in convs} | {c.out_channels for _, c in convs}
    if any(not (c.groups == c.in_channels == c.out_channels) for _, c in convs) or len(chans) != 1:
        raise NotFusable(what + " (the summed branches are not depthwise convs of one width)")
    channels = chans.pop()
    modes = {_depthwise_kind(c, p, problems) for p, c in convs}
    strides = {c.stride for _, c in convs} | ({(1, 1)} if len(convs) < len(branches) else set())
    if len(modes) > 1:
        problems.append("its branches mix symmetric and TF 'same' padding")
    if len(strides) > 1:
        problems.append(f"its branches have different strides {sorted(strides)}")
    for _, _, bp, bn in branches:
        try:
            _check_bn(bn, bp, channels)
        except NotFusable as exc:
            problems.append(str(exc))
    if problems:
        raise NotFusable("; ".join(problems))
    kernels = tuple(c.kernel_size[0] if c is not None else 1 for _, c, _, _ in branches)
    k = max(kernels)
    name = branches[0][2].rpartition(".")[0] or branches[0][2]
    return (RepBranches(name, tuple(p for p, _, _, _ in branches), tuple(b for _, _, b, _ in branches), kernels,
                        channels, (k, k), convs[0][1].stride, modes.pop()), sources[0])


@dataclass(frozen=True)
class ConvSpec:
    """How one conv of a generalised block is computed from the original's layers (paths relative to the
    block). kind: "plain" (convs[0] -> bns[0]), "mixed" (a MixConv: convs over channel groups, concatenated,
    -> bns[0]), "branches" (sum over i of convs[i] -> bns[i]; convs[i] None: BN of the input) or "identity"
    (no layer: the UIB 'ConvNeXt' variant's missing middle depthwise, a [channels, 1, 1] kernel of ones)."""
    role: str                          # "dw_start", "expand", "dw" or "project"
    kind: str
    convs: Tuple[Optional[str], ...]
    bns: Tuple[str, ...]
    kernel: int                        # the folded kernel size (1 for 1x1 convs)
    depthwise: bool
    channels: int = 0                  # output channels (used by "identity")

    def paths(self) -> Tuple[str, ...]:
        return tuple(p for p in self.convs if p is not None) + self.bns


@dataclass(frozen=True)
class BlockPlanEx(BlockPlan):
    """A generalised block (docs/CONTRACT.md, "The generalised block"): BlockPlan plus what it computes."""
    kernel: int = 3
    act_expand: str = "relu6"       # "relu6" when there is no expand conv
    act_dw: str = "relu6"
    padding: str = "symmetric"      # or "tf_same"
    se: Optional[Tuple[str, str]] = None   # (reduce conv path, expand conv path) relative to the block
    se_act: str = "relu"
    se_gate: str = "sigmoid"
    layer_scale: Optional[str] = None      # path of a LayerScale2d folded into the project conv
    act_project: str = "none"              # an activation after the project BN (LCNet), before the add
    dw_start: Optional[Tuple[str, str]] = None  # (conv, bn) of a leading depthwise (MobileNetV4 UIB ExtraDW)
    dw_start_kernel: int = 0
    stride_start: int = 1
    specs: Tuple[ConvSpec, ...] = ()       # how each conv folds (dw_start?, expand?, dw, project), in order
    notes: Tuple[str, ...] = ()            # what was folded into the contract's layers (MixConv, branches, ...)
    tail: Optional[Tuple[str, str]] = None  # (conv, bn) of a 1x1 conv after the project (PP-LCNetV2 split_pw),
    act_tail: str = "none"                  # run after the op as one folded 1x1 conv; the residual adds after it

    def config(self):
        from .backends import BlockConfig
        return BlockConfig(self.kernel, self.act_expand, self.act_dw, self.padding, self.se is not None,
                           self.se_act, self.se_gate, self.act_project, self.dw_start_kernel)

    @property
    def embedded(self) -> bool:
        """Whether a conv holds zero taps or zero blocks the original does not compute (an embedded MixConv,
        summed branches, block-diagonal 1x1): exact for finite values only, so the module checks each call's
        input and output for NaN / Inf and runs the original's forward when it finds any."""
        return any(sp.kind in ("mixed", "branches") for sp in self.specs)

    def target_paths(self) -> Tuple[str, ...]:
        """Paths (relative to the block) of every module the folded weights are computed from."""
        out: List[str] = []
        for sp in self.specs:
            out += sp.paths()
            if sp.role == "dw" and self.se:
                out += self.se
        if self.layer_scale:
            out.append(self.layer_scale)
        return tuple(out)

    def describe(self) -> str:
        extra = (self.config().features() + (["layer scale"] if self.layer_scale else []) + list(self.notes))
        return super().describe() + (f", {', '.join(extra)}" if extra else "")


def _conv_padding_mode(conv: nn.Conv2d, path: str, problems: List[str]) -> str:
    """'symmetric' or 'tf_same' for a depthwise conv; appends what is wrong to ``problems``."""
    if isinstance(conv, (MixedConv, RepBranches)):
        return conv.padding_name   # checked per part when it was recognised
    k = conv.kernel_size[0]
    if type(conv).__name__ == "Conv2dSame" and type(conv).__module__.startswith("timm."):
        if conv.padding not in ((0, 0),):
            problems.append(f"{path} is a Conv2dSame with extra padding {conv.padding}")
        return "tf_same"
    if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        problems.append(f"{path} is a {type(conv).__name__}, which overrides Conv2d.forward or _conv_forward")
        return "symmetric"
    if conv.padding == "same" and conv.stride == (1, 1):
        return "symmetric"
    if conv.padding != (k // 2, k // 2):
        problems.append(f"{path} has padding {conv.padding}; symmetric padding {k // 2} or TF 'same' "
                        "(Conv2dSame) are in the contract")
    return "symmetric"


def _pointwise_problems(conv: nn.Conv2d, path: str) -> List[str]:
    if isinstance(conv, RepBranches):
        return [f"{path}: summed branches where a 1x1 conv belongs"]
    if isinstance(conv, MixedConv):
        return [] if not conv.depthwise else [f"{path} is a mixed depthwise conv where a 1x1 conv belongs"]
    if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        if not (type(conv).__name__ == "Conv2dSame" and type(conv).__module__.startswith("timm.")
                and conv.kernel_size == (1, 1) and conv.stride == (1, 1)):
            return [f"{path} is a {type(conv).__name__}, which overrides Conv2d.forward"]
    if (conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.padding not in ((0, 0), "valid", "same") or conv.padding_mode != "zeros"):
        return [f"{path} is not a plain 1x1 conv (kernel {conv.kernel_size}, groups={conv.groups}, "
                f"stride={conv.stride}, padding={conv.padding})"]
    return []


def recognize_block_ex(block: nn.Module) -> BlockPlanEx:
    """Plan of a generalised inverted-residual block, or NotFusable listing every reason it is not one.

    Pattern (by what the forward computes): [leading depthwise -> BN] -> [conv1x1 -> BN -> act] -> depthwise
    kxk (k 3|5|7|9, stride 1|2, symmetric or TF 'same' padding) -> BN -> [act] -> [squeeze-excite module] ->
    conv1x1 -> BN -> [act] -> [LayerScale2d] [+ x]; activations: reference.ACTIVATIONS. Also: MobileNetV4's
    UIB 'ConvNeXt' variant (leading depthwise -> expand -> project: an identity middle depthwise, k = 1), a
    MixConv layer (MixedConv) as any conv, re-parameterisable depthwise branches (RepBranches) as the depthwise.
    The plan's ``specs`` say how each conv folds.
    """
    se_found = _find_se_modules(block)
    mixed = _find_mixed_modules(block)
    chain, residual = _tokens(block, frozenset(se_found) | frozenset(mixed), extended=True, mixed=mixed)
    kinds = [k for k, _, _ in chain]
    for k, p, m in chain:
        if k == "act" and m is not None and (isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))
                                             or type(m).__name__ in ("BlurPool2d", "AvgPool2dSame", "MaxPool2dSame")):
            raise NotFusable(f"{p} is an anti-aliasing {type(m).__name__} after the depthwise conv's activation "
                             "(MobileNetV4 conv_aa / conv_blur: the depthwise runs at stride 1, the pool strides): "
                             "the block contract has no pool inside a block, so this block runs unfused as before "
                             "(the MobileNetV4 models without anti-aliasing fold every block)")
    problems: List[str] = [f"activation {p} is {type(m).__name__}, which is not one of relu6, relu, hardswish, "
                           "silu, gelu (a subclass with its own forward is not either)"
                           for k, p, m in chain if k == "act" and m is not None and activation_name(m) is None]
    i, n = 0, len(chain)

    def take(kind):
        nonlocal i
        if i < n and chain[i][0] == kind:
            i += 1
            return chain[i - 1]
        return None

    def act_of(tok):
        if tok is None:
            return "none"
        name = tok[1] if tok[2] is None else activation_name(tok[2])
        if name is None:
            return "none"   # listed in ``problems`` already
        if name in ("sigmoid", "hardsigmoid"):
            problems.append(f"activation {tok[1]} is {type(tok[2]).__name__}; the contract has "
                            "relu6, relu, hardswish, silu, gelu")
            return "none"
        return name

    def is_dw(tok):
        return tok[0] == "rep" or (tok[0] == "conv" and tok[2].groups > 1
                                   and tok[2].groups == tok[2].in_channels == tok[2].out_channels)

    convs_at = [j for j, k in enumerate(kinds) if k in ("conv", "rep")]
    dw0, no_mid = None, False
    if len(convs_at) in (3, 4) and kinds[:3] == ["conv", "bn", "conv"] and is_dw(chain[0]) and not is_dw(chain[2]):
        if len(convs_at) == 4:
            dw0 = (take("conv"), take("bn"))   # MobileNetV4 UIB ExtraDW: leading depthwise, no activation
        elif not is_dw(chain[convs_at[2]]):
            # MobileNetV4 UIB 'ConvNeXt' variant: leading depthwise -> expand -> project, no middle depthwise;
            # the middle depthwise is the identity (a 1x1 kernel of ones), the leading one carries the stride
            dw0, no_mid = (take("conv"), take("bn")), True
    exp = None
    act_expand = "relu6"
    first = chain[i][2] if i < n and chain[i][0] == "conv" else None
    if first is not None and first.kernel_size == (1, 1) and first.groups == 1 and kinds[i + 1:i + 2] == ["bn"]:
        exp = (take("conv"), take("bn"))
        act_expand = act_of(take("act"))
    if no_mid:
        dw: Optional[tuple] = None
        act_dw = "none"
    else:
        rep = take("rep")
        dw = (rep, None) if rep is not None else (take("conv"), take("bn"))
        act_dw = act_of(take("act"))
    se_tok = take("se")
    proj = (take("conv"), take("bn"))
    act_project = act_of(take("act"))
    ls = take("ls")
    if ls is not None and act_project != "none":
        problems.append("a layer scale after an activated project conv does not fold")
    tail, act_tail = None, "none"
    if (ls is None and None not in proj and kinds[i:i + 2] == ["conv", "bn"] and isinstance(chain[i][2], nn.Conv2d)
            and chain[i][2].kernel_size == (1, 1) and chain[i][2].groups == 1):
        # PP-LCNetV2's split_pw: a second 1x1 conv -> BN -> act after the project (kept out of the fused op, run as
        # one folded 1x1 conv after it)
        tail = (take("conv"), take("bn"))
        act_tail = act_of(take("act"))
    if kinds and kinds[-1] == "conv" and "bn" in kinds:
        raise NotFusable("its last conv has no BatchNorm after it: not an inverted residual (e.g. MobileNetV4 "
                         "attention's key/value downsampling: " + " -> ".join(kinds) + ")")
    if i != n or (dw is not None and (dw[0] is None or (dw[0][0] == "conv" and dw[1] is None))) or None in proj:
        hint = ""
        if i < n and kinds[i:i + 2] == ["conv", "bn"] and None not in proj and (
                chain[i][2].kernel_size == (1, 1)):
            hint = (" (two pointwise convs after the depthwise, as PP-LCNetV2's split_pw blocks: dw -> 1x1 -> act "
                    "-> 1x1 -> act; the contract has one project conv after the depthwise)")
        elif len(convs_at) > 3:
            hint = (" (more than one depthwise conv: only MobileNetV4's leading depthwise -> conv1x1 -> "
                    "depthwise -> conv1x1 is in the block contract)")
        raise NotFusable("; ".join(problems + ["its layers are " + " -> ".join(kinds) + "; expected [conv1x1 -> bn -> "
                                               "act] -> dwconv -> bn -> [act] -> [squeeze-excite] -> conv1x1 -> bn "
                                               "[-> layer scale]" + hint]))
    notes: List[str] = []
    if dw is None:
        chid = exp[0][2].out_channels
        k, stride, dw_path = 1, 1, None
        notes.append("UIB 'ConvNeXt' variant (no middle depthwise: identity 1x1)")
    else:
        dw_conv, dw_path = dw[0][2], dw[0][1]
        k = dw_conv.kernel_size
        if not (k[0] == k[1] and k[0] in (3, 5, 7, 9)):
            problems.append(f"{dw_path} has kernel size {k}; 3x3, 5x5, 7x7 and 9x9 are in the contract")
        k = k[0]
        if not (dw_conv.groups == dw_conv.in_channels == dw_conv.out_channels):
            problems.append(f"{dw_path} is not depthwise (groups={dw_conv.groups}, {dw_conv.in_channels}->"
                            f"{dw_conv.out_channels})")
        if dw_conv.stride not in ((1, 1), (2, 2)):
            problems.append(f"{dw_path} has stride {dw_conv.stride}; 1 and 2 are in the contract")
        if dw_conv.dilation != (1, 1) or dw_conv.padding_mode != "zeros":
            problems.append(f"{dw_path} has dilation {dw_conv.dilation} / padding mode {dw_conv.padding_mode!r}")
        stride = dw_conv.stride[0]
        chid = dw_conv.in_channels
    proj_conv = proj[0][2]
    problems += _pointwise_problems(proj_conv, proj[0][1])
    if exp is not None:
        problems += _pointwise_problems(exp[0][2], exp[0][1])
        if exp[0][2].out_channels != chid:
            problems.append(f"expand makes {exp[0][2].out_channels} channels, depthwise takes {chid}")
        cin = exp[0][2].in_channels
    else:
        cin = chid
    padding = None if dw is None else _conv_padding_mode(dw_conv, dw_path, problems)
    stride_start, k0 = 1, 0
    if dw0 is not None:
        c0, p0 = dw0[0][2], dw0[0][1]
        k0 = c0.kernel_size[0]
        if c0.kernel_size != (k0, k0) or k0 not in (3, 5, 7, 9) or c0.stride not in ((1, 1), (2, 2)):
            problems.append(f"{p0} (leading depthwise) has kernel {c0.kernel_size} / stride {c0.stride}")
        if c0.dilation != (1, 1) or c0.padding_mode != "zeros":
            problems.append(f"{p0} has dilation {c0.dilation} / padding mode {c0.padding_mode!r}")
        mode0 = _conv_padding_mode(c0, p0, problems)
        if padding is not None and mode0 != padding:
            problems.append(f"{p0} and {dw_path} use different padding modes")
        padding = mode0
        if c0.out_channels != cin:
            problems.append(f"leading depthwise makes {c0.out_channels} channels, expand takes {cin}")
        stride_start = c0.stride[0]
    for conv_tok, bn_tok in [t for t in (dw0, exp, dw, proj, tail) if t is not None and t[1] is not None]:
        try:
            _check_bn(bn_tok[2], bn_tok[1], conv_tok[2].out_channels)
        except NotFusable as exc:
            problems.append(str(exc))
    if proj_conv.in_channels != chid:
        problems.append(f"project takes {proj_conv.in_channels} channels, depthwise makes {chid}")
    cout = proj_conv.out_channels
    if tail is not None:
        problems += _pointwise_problems(tail[0][2], tail[0][1])
        if tail[0][2].in_channels != cout:
            problems.append(f"{tail[0][1]} takes {tail[0][2].in_channels} channels, the project makes {cout}")
        cout = tail[0][2].out_channels
        notes.append(f"then a 1x1 conv -> BN{' -> ' + act_tail if act_tail != 'none' else ''} outside the op "
                     "(PP-LCNetV2 split_pw)")
    se = None
    se_act, se_gate = "relu", "sigmoid"
    if se_tok is not None:
        se_path, se_plan = se_found[id(se_tok[2])]
        se = (f"{se_path}.{se_plan.reduce}", f"{se_path}.{se_plan.expand}")
        se_act, se_gate = se_plan.act, se_plan.gate
        if block.get_submodule(se[1]).out_channels != chid:
            problems.append(f"squeeze-excite {se_path} gates {block.get_submodule(se[1]).out_channels} channels, "
                            f"the depthwise makes {chid}")
    if ls is not None and ls[2].gamma.numel() != cout:
        problems.append(f"layer scale {ls[1]} has {ls[2].gamma.numel()} channels, the block makes {cout}")
    if residual and not (stride == 1 and stride_start == 1 and cin == cout):
        problems.append(f"it adds its input but changes shape (stride {stride}, {cin}->{cout})")
    if problems:
        raise NotFusable("; ".join(problems))

    def spec(role, pair, depthwise):
        (_, conv_path, c), bn_tok = pair
        if isinstance(c, RepBranches):
            notes.append(c.describe())
            return ConvSpec(role, "branches", c.conv_paths, c.bn_paths, c.kernel_size[0], True, c.out_channels)
        if isinstance(c, MixedConv):
            notes.append(c.describe())
            return ConvSpec(role, "mixed", tuple(f"{conv_path}.{p}" for p in c.parts), (bn_tok[1],),
                            c.kernel_size[0], depthwise, c.out_channels)
        return ConvSpec(role, "plain", (conv_path,), (bn_tok[1],), c.kernel_size[0], depthwise, c.out_channels)

    specs = [spec("dw_start", dw0, True)] if dw0 is not None else []
    if exp is not None:
        specs.append(spec("expand", exp, False))
    specs.append(spec("dw", dw, True) if dw is not None else ConvSpec("dw", "identity", (), (), 1, True, chid))
    specs.append(spec("project", proj, False))
    if tail is not None:
        specs.append(spec("tail", tail, False))

    def path_pair(pair):
        if pair is None:
            return None
        c = pair[0][2]
        if isinstance(c, RepBranches):
            return (c.conv_paths[0] or c.bn_paths[0], c.bn_paths[0])
        return (pair[0][1], pair[1][1])

    return BlockPlanEx(expand=path_pair(exp), depthwise=path_pair(dw), project=path_pair(proj), stride=stride,
                       residual=residual, in_channels=cin, hidden_channels=chid, out_channels=cout, kernel=k,
                       act_expand=act_expand if exp is not None else "relu6", act_dw=act_dw, padding=padding,
                       se=se, se_act=se_act, se_gate=se_gate, layer_scale=None if ls is None else ls[1],
                       act_project=act_project, dw_start=path_pair(dw0), dw_start_kernel=k0,
                       stride_start=stride_start, specs=tuple(specs), notes=tuple(dict.fromkeys(notes)),
                       tail=path_pair(tail), act_tail=act_tail)
