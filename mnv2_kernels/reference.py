"""Plain-PyTorch reference of one eval-mode inverted-residual block from folded weights.

The same function is the ``backend="reference"`` path and the oracle of every kernel test.
"""
from __future__ import annotations

from typing import Optional

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
