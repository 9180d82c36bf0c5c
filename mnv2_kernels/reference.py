"""Plain-PyTorch reference of one eval-mode inverted-residual block from folded weights.

The same function is the ``backend="reference"`` path and the oracle of every kernel test.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def inverted_residual_reference(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                                w_dw: torch.Tensor, b_dw: torch.Tensor, w_project: torch.Tensor,
                                b_project: torch.Tensor, stride: int, residual: bool) -> torch.Tensor:
    """Computes the block exactly as docs/CONTRACT.md defines it, with ATen convolutions.

    x: [N, Cin, H, W]; w_expand: [Chid, Cin] or None; b_expand: [Chid] or None; w_dw: [Chid, 3, 3];
    b_dw: [Chid]; w_project: [Cout, Chid]; b_project: [Cout]. Returns [N, Cout, Ho, Wo] in x's dtype.
    Any dtype and device that F.conv2d supports; pass float64 tensors for a high-precision oracle.
    """
    h = x
    if w_expand is not None:
        h = F.conv2d(h, w_expand[:, :, None, None], b_expand).clamp_(0.0, 6.0)
    h = F.conv2d(h, w_dw[:, None], b_dw, stride=stride, padding=1, groups=w_dw.shape[0]).clamp_(0.0, 6.0)
    y = F.conv2d(h, w_project[:, :, None, None], b_project)
    if residual:
        y = y + x
    return y


def stem_inverted_residual_reference(x: torch.Tensor, w_stem: torch.Tensor, b_stem: torch.Tensor, stem_stride: int,
                                     stem_relu6: bool, w_dw: torch.Tensor, b_dw: torch.Tensor,
                                     w_project: torch.Tensor, b_project: torch.Tensor, stride: int,
                                     residual: bool) -> torch.Tensor:
    """torch.ops.mnv2.stem_inverted_residual with ATen: the stem (dense 3x3 convolution, padding 1, + bias,
    + ReLU6 if stem_relu6) then the block without expand conv.

    x: [N, Cin, H, W]; w_stem: [C1, Cin, 3, 3]; b_stem: [C1]; the block's weights as in
    inverted_residual_reference with Cin = C1. Returns [N, Cout, Ho, Wo] in x's dtype.
    """
    h = F.conv2d(x, w_stem, b_stem, stride=stem_stride, padding=1)
    if stem_relu6:
        h = h.clamp_(0.0, 6.0)
    return inverted_residual_reference(h, None, None, w_dw, b_dw, w_project, b_project, stride, residual)


# ----------------------------------------------------------------------------------------------------------
# The generalised block (issue 13): docs/CONTRACT.md, "The generalised block".
# ----------------------------------------------------------------------------------------------------------
ACTIVATIONS = ("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none")
SE_ACTIVATIONS = ACTIVATIONS
SE_GATES = ("sigmoid", "hardsigmoid")
PADDINGS = ("symmetric", "tf_same")
KERNEL_SIZES = (1, 3, 5, 7, 9)  # 1: UIB "ConvNeXt" identity middle depthwise; 9: MixNet (embedded MixConv)


def activation(t: torch.Tensor, name: str) -> torch.Tensor:
    """``name`` (one of ACTIVATIONS or SE_GATES) applied to ``t`` (out of place). Raises ValueError otherwise."""
    if name == "relu6":
        return t.clamp(0.0, 6.0)
    if name == "relu":
        return F.relu(t)
    if name == "hardswish":
        return F.hardswish(t)
    if name == "silu":
        return F.silu(t)
    if name == "gelu":
        return F.gelu(t)
    if name == "gelu_tanh":
        return F.gelu(t, approximate="tanh")
    if name == "none":
        return t
    if name == "sigmoid":
        return torch.sigmoid(t)
    if name == "hardsigmoid":
        return F.hardsigmoid(t)
    raise ValueError(f"mnv2.inverted_residual_ex: unknown activation {name!r}; choose one of "
                     f"{', '.join(ACTIVATIONS + SE_GATES)}")


def tf_same_pads(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: (before, after); the extra pixel goes after (bottom/right).

    total = max((ceil(size / stride) - 1) * stride + kernel - size, 0); before = total // 2. Output size
    ceil(size / stride). At stride 1 with an odd kernel this is symmetric (k // 2 each side); at stride 2 it
    is asymmetric when ``size`` is even (e.g. k=3: (0, 1); k=5: (1, 2)).
    """
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _depthwise(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, padding: str) -> torch.Tensor:
    """Depthwise conv (w [C, k, k], b [C]) with symmetric (k // 2) or TF "same" padding."""
    k = w.shape[-1]
    if padding == "tf_same":
        top, bottom = tf_same_pads(h.shape[-2], k, stride)
        left, right = tf_same_pads(h.shape[-1], k, stride)
        h = F.pad(h, (left, right, top, bottom))
        pad = 0
    elif padding == "symmetric":
        pad = k // 2
    else:
        raise ValueError(f"mnv2.inverted_residual_ex: padding must be one of {PADDINGS}, got {padding!r}")
    return F.conv2d(h, w[:, None], b, stride=stride, padding=pad, groups=w.shape[0])


def inverted_residual_ex_reference(x: torch.Tensor, w_expand: Optional[torch.Tensor],
                                   b_expand: Optional[torch.Tensor], w_dw: torch.Tensor, b_dw: torch.Tensor,
                                   w_se_reduce: Optional[torch.Tensor], b_se_reduce: Optional[torch.Tensor],
                                   w_se_expand: Optional[torch.Tensor], b_se_expand: Optional[torch.Tensor],
                                   w_project: torch.Tensor, b_project: torch.Tensor, stride: int, residual: bool,
                                   act_expand: str, act_dw: str, padding: str, se_act: str,
                                   se_gate: str, act_project: str = "none", w_dw_start: Optional[torch.Tensor] = None,
                                   b_dw_start: Optional[torch.Tensor] = None, stride_start: int = 1) -> torch.Tensor:
    """The generalised eval-mode inverted-residual block (docs/CONTRACT.md, "The generalised block").

    x: [N, Cin, H, W]; w_expand: [Chid, Cin] or None; b_expand: [Chid] or None; w_dw: [Chid, k, k] (k odd:
    1, 3, 5, 7, 9); b_dw: [Chid]; w_se_reduce: [Crd, Chid] or None (no squeeze-excite; then all four SE tensors
    are None); b_se_reduce: [Crd]; w_se_expand: [Chid, Crd]; b_se_expand: [Chid]; w_project: [Cout, Chid];
    b_project: [Cout]. padding "symmetric" (k // 2 on every side) or "tf_same" (tf_same_pads).
    act_expand / act_dw / se_act / act_project in ACTIVATIONS (act_project: after the project conv, before
    the residual add; "none" in every inverted residual, an activation in LCNet's blocks), se_gate in SE_GATES.
    w_dw_start: [Cin, k0, k0] or None, b_dw_start: [Cin]: a leading depthwise conv on the block's input, no
    activation, stride ``stride_start``, same padding mode (MobileNetV4's universal inverted bottleneck,
    "ExtraDW"); the residual adds the block's input x. Returns [N, Cout, Ho, Wo] in x's
    dtype, Ho = (H - 1) // stride + 1 (both paddings give that for odd k). Pass float64 for an oracle.
    """
    h = x
    if w_dw_start is not None:
        h = _depthwise(h, w_dw_start, b_dw_start, stride_start, padding)
    if w_expand is not None:
        h = activation(F.conv2d(h, w_expand[:, :, None, None], b_expand), act_expand)
    h = activation(_depthwise(h, w_dw, b_dw, stride, padding), act_dw)
    if w_se_reduce is not None:
        s = h.mean((2, 3), keepdim=True)                                               # [N, Chid, 1, 1]
        s = activation(F.conv2d(s, w_se_reduce[:, :, None, None], b_se_reduce), se_act)  # [N, Crd, 1, 1]
        s = activation(F.conv2d(s, w_se_expand[:, :, None, None], b_se_expand), se_gate)  # [N, Chid, 1, 1]
        h = h * s
    y = activation(F.conv2d(h, w_project[:, :, None, None], b_project), act_project)
    if residual:
        y = y + x
    return y
