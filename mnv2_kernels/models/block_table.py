"""The inverted-residual block shapes of MobileNetV2, derived from the model definition (Table 2).

One place for the table that tests, benchmarks and tools use (blocks 5-6, 8-10, 12-13 and 15-16 repeat a
shape, so a 224x224 network has 12 distinct shapes):

    >>> [b.name for b in mobilenet_v2_blocks()][:4]
    ['1', '2', '3', '4']
"""
from __future__ import annotations

from typing import List, NamedTuple

from .mobilenet_v2 import INVERTED_RESIDUAL_SETTING, _make_divisible


class BlockShape(NamedTuple):
    name: str       # block number(s) in the network, "5-6" for a repeated shape
    cin: int        # input channels
    chid: int       # hidden (expanded) channels; == cin when t == 1
    cout: int       # output channels
    h: int          # input height (= width)
    stride: int     # depthwise stride
    expand: bool    # has a 1x1 expand conv (t != 1 in the paper)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    @property
    def h_out(self) -> int:
        return (self.h - 1) // self.stride + 1

    def flops(self, n: int) -> int:
        """Multiply-adds x 2 of one forward at batch ``n`` (expand, depthwise 3x3, project)."""
        hw, hwo = self.h * self.h, self.h_out * self.h_out
        macs = (hw * self.cin * self.chid if self.expand else 0) + hwo * self.chid * 9 + hwo * self.chid * self.cout
        return 2 * n * macs

    def fused_bytes(self, n: int, elt: int) -> int:
        """Bytes a fused block must move at batch ``n`` with ``elt``-byte elements: read the input once, write
        the output once, read the weights once (the floor of section "roofline" in RESULTS.md)."""
        acts = n * (self.h * self.h * self.cin + self.h_out * self.h_out * self.cout)
        weights = (self.chid * (self.cin + 1) if self.expand else 0) + self.chid * 10 + self.cout * (self.chid + 1)
        return elt * (acts + weights)

    def floor_seconds(self, n: int, elt: int, flops_per_s: float, bytes_per_s: float) -> float:
        """Roofline floor: max(bytes / bandwidth, flops / peak)."""
        return max(self.fused_bytes(n, elt) / bytes_per_s, self.flops(n) / flops_per_s)


def mobilenet_v2_blocks(input_size: int = 224, width_mult: float = 1.0, distinct: bool = True) -> List[BlockShape]:
    """The 17 blocks of MobileNetV2 in order (``distinct=False``), or the 12 distinct shapes with repeated
    blocks named as a range ("5-6"). The stem conv has stride 2, so block 1 sees input_size / 2."""
    h = (input_size - 1) // 2 + 1
    cin = _make_divisible(32 * width_mult)
    blocks: List[BlockShape] = []
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        cout = _make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            blocks.append(BlockShape(str(len(blocks) + 1), cin, int(round(cin * t)), cout, h, stride, t != 1))
            h = (h - 1) // stride + 1
            cin = cout
    if not distinct:
        return blocks
    merged: List[BlockShape] = []
    for b in blocks:
        if merged and merged[-1]._replace(name=b.name) == b:
            first = merged[-1].name.split("-")[0]
            merged[-1] = b._replace(name=f"{first}-{b.name}")
        else:
            merged.append(b)
    return merged
