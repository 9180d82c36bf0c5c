"""BatchNorm folding for inverted-residual blocks (eval mode only).

For a conv ``y = W x + c`` followed by BN with (gamma, beta, mean, var, eps):
``s = gamma / sqrt(var + eps)``, ``W' = W * s`` per output channel, ``b' = beta + (c - mean) * s``.
Done in float64 with each BN's own eps, then cast once to the kernel's dtype.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn


class FoldedBlock(NamedTuple):
    """Folded weights of one block, laid out as docs/CONTRACT.md says (all in one dtype, on one device)."""
    w_expand: Optional[torch.Tensor]   # [Chid, Cin] or None (no expand conv)
    b_expand: Optional[torch.Tensor]   # [Chid] or None
    w_dw: torch.Tensor                 # [Chid, 3, 3]
    b_dw: torch.Tensor                 # [Chid]
    w_project: torch.Tensor            # [Cout, Chid]
    b_project: torch.Tensor            # [Cout]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Folds ``bn`` (running statistics, its own eps) into ``conv``; returns (weight, bias) in float64.

    weight has conv.weight's shape [Cout, Cin/groups, kh, kw]; bias is [Cout]. Traceable (pure tensor ops).
    Raises ValueError if the BN does not track running statistics (folding needs them).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    w = conv.weight.detach().to(torch.float64)
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    conv_bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return w * scale.reshape(-1, 1, 1, 1), beta + (conv_bias - mean) * scale


def fold_block(expand: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]], depthwise: Tuple[nn.Conv2d, nn.BatchNorm2d],
               project: Tuple[nn.Conv2d, nn.BatchNorm2d], dtype: torch.dtype) -> FoldedBlock:
    """Folds the three conv+BN pairs of a block and casts them to ``dtype`` in the contract's layouts."""
    def cast(t):
        return t.to(dtype).contiguous()

    w_e = b_e = None
    if expand is not None:
        w, b = fold_conv_bn(*expand)
        w_e, b_e = cast(w.flatten(1)), cast(b)
    w, b = fold_conv_bn(*depthwise)
    w_d, b_d = cast(w[:, 0]), cast(b)
    w, b = fold_conv_bn(*project)
    return FoldedBlock(w_e, b_e, w_d, b_d, cast(w.flatten(1)), cast(b))


class FoldedBlockEx(NamedTuple):
    """Folded weights of a generalised block, in the order of torch.ops.mnv2.inverted_residual_ex's tensors."""
    w_expand: Optional[torch.Tensor]     # [Chid, Cin] or None
    b_expand: Optional[torch.Tensor]     # [Chid] or None
    w_dw: torch.Tensor                   # [Chid, k, k]
    b_dw: torch.Tensor                   # [Chid]
    w_se_reduce: Optional[torch.Tensor]  # [Crd, Chid] or None (no squeeze-excite)
    b_se_reduce: Optional[torch.Tensor]  # [Crd]
    w_se_expand: Optional[torch.Tensor]  # [Chid, Crd]
    b_se_expand: Optional[torch.Tensor]  # [Chid]
    w_project: torch.Tensor              # [Cout, Chid] (layer scale folded in)
    b_project: torch.Tensor              # [Cout]
    w_dw_start: Optional[torch.Tensor] = None  # [Cin, k0, k0] leading depthwise (MobileNetV4 UIB) or None
    b_dw_start: Optional[torch.Tensor] = None  # [Cin]


def fold_block_ex(expand: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]], depthwise: Tuple[nn.Conv2d, nn.BatchNorm2d],
                  se: Optional[Tuple[nn.Conv2d, nn.Conv2d]], project: Tuple[nn.Conv2d, nn.BatchNorm2d],
                  layer_scale: Optional[torch.Tensor], dtype: torch.dtype,
                  dw_start: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]] = None) -> FoldedBlockEx:
    """Folds a generalised block: BN into expand / depthwise / project, the squeeze-excite convs as they are
    (no BN; a missing bias is zeros), a layer scale gamma [Cout] into the project (W *= gamma, b *= gamma)."""
    def cast(t):
        return t.to(dtype).contiguous()

    def conv_wb(conv):
        w = conv.weight.detach().to(torch.float64).flatten(1)
        b = (conv.bias.detach().to(torch.float64) if conv.bias is not None
             else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
        return w, b

    w_e = b_e = None
    if expand is not None:
        w, b = fold_conv_bn(*expand)
        w_e, b_e = cast(w.flatten(1)), cast(b)
    w, b = fold_conv_bn(*depthwise)
    w_d, b_d = cast(w[:, 0]), cast(b)
    se_t = (None, None, None, None)
    if se is not None:
        (w_r, b_r), (w_x, b_x) = conv_wb(se[0]), conv_wb(se[1])
        se_t = (cast(w_r), cast(b_r), cast(w_x), cast(b_x))
    w, b = fold_conv_bn(*project)
    w, b = w.flatten(1), b
    if layer_scale is not None:
        g = layer_scale.detach().to(torch.float64)
        w, b = w * g[:, None], b * g
    w0 = b0 = None
    if dw_start is not None:
        w0, b0 = fold_conv_bn(*dw_start)
        w0, b0 = cast(w0[:, 0]), cast(b0)
    return FoldedBlockEx(w_e, b_e, w_d, b_d, *se_t, cast(w), cast(b), w0, b0)
