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
    w = conv.weight.detach().to(torch.float64)
    conv_bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else None
    return fold_weight_bn(w, conv_bias, bn)


def fold_weight_bn(w: torch.Tensor, conv_bias: Optional[torch.Tensor], bn: nn.BatchNorm2d
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Folds ``bn`` into a conv weight ``w`` [Cout, ...] (float64) and bias (None: zeros); (weight, bias)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    if conv_bias is None:
        conv_bias = torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return w * scale.reshape((-1,) + (1,) * (w.dim() - 1)), beta + (conv_bias - mean) * scale


def fold_block(expand: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]], depthwise: Tuple[nn.Conv2d, nn.BatchNorm2d],
               project: Tuple[nn.Conv2d, nn.BatchNorm2d], dtype: torch.dtype) -> FoldedBlock:
    """Folds the three conv+BN pairs of a block and casts them to ``dtype`` in the contract's layouts."""
    def cast(t):
        return t.to(dtype).contiguous()

    w_e, b_e, w_d, b_d = _fold_expand_dw(expand, depthwise, cast)
    w, b = fold_conv_bn(*project)
    return FoldedBlock(w_e, b_e, w_d, b_d, cast(w.flatten(1)), cast(b))


def _fold_expand_dw(expand: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]], depthwise: Tuple[nn.Conv2d, nn.BatchNorm2d],
                    cast) -> Tuple[Optional[torch.Tensor], ...]:
    """The expand (w [Chid, Cin], b [Chid]; None, None without one) and depthwise (w [Chid, k, k], b [Chid])
    conv+BN pairs folded, each through ``cast``: shared by fold_block and fold_block_ex."""
    w_e = b_e = None
    if expand is not None:
        w, b = fold_conv_bn(*expand)
        w_e, b_e = cast(w.flatten(1)), cast(b)
    w, b = fold_conv_bn(*depthwise)
    return w_e, b_e, cast(w[:, 0]), cast(b)


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
    w_tail: Optional[torch.Tensor] = None      # [Cout, Cproj] a 1x1 conv after the op (PP-LCNetV2 split_pw) or None
    b_tail: Optional[torch.Tensor] = None      # [Cout]


def _fold_se(reduce: nn.Conv2d, expand: nn.Conv2d, cast) -> Tuple[torch.Tensor, ...]:
    """The squeeze-excite convs as they are (no BN; a missing bias is zeros): (w_reduce [Crd, Chid], b_reduce
    [Crd], w_expand [Chid, Crd], b_expand [Chid]), each through ``cast``."""
    out = []
    for conv in (reduce, expand):
        w = conv.weight.detach().to(torch.float64).flatten(1)
        b = (conv.bias.detach().to(torch.float64) if conv.bias is not None
             else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
        out += [cast(w), cast(b)]
    return tuple(out)


def fold_block_ex(expand: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]], depthwise: Tuple[nn.Conv2d, nn.BatchNorm2d],
                  se: Optional[Tuple[nn.Conv2d, nn.Conv2d]], project: Tuple[nn.Conv2d, nn.BatchNorm2d],
                  layer_scale: Optional[torch.Tensor], dtype: torch.dtype,
                  dw_start: Optional[Tuple[nn.Conv2d, nn.BatchNorm2d]] = None) -> FoldedBlockEx:
    """Folds a generalised block: BN into expand / depthwise / project, the squeeze-excite convs as they are
    (no BN; a missing bias is zeros), a layer scale gamma [Cout] into the project (W *= gamma, b *= gamma)."""
    def cast(t):
        return t.to(dtype).contiguous()

    w_e, b_e, w_d, b_d = _fold_expand_dw(expand, depthwise, cast)
    se_t = (None, None, None, None) if se is None else _fold_se(se[0], se[1], cast)
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


def _centred(w: torch.Tensor, k: int) -> torch.Tensor:
    """w [C, 1, kw, kw] zero-padded to [C, 1, k, k], centred (kw odd, k odd, kw <= k)."""
    pad = (k - w.shape[-1]) // 2
    return torch.nn.functional.pad(w, (pad, pad, pad, pad)) if pad else w


def fold_spec(spec, mods) -> Tuple[torch.Tensor, torch.Tensor]:
    """One conv of a generalised block as (weight [Cout, Cin/groups, k, k], bias [Cout]) in float64, from
    ``spec`` (recognize.ConvSpec) and ``mods`` (path -> module):

    * plain: the conv with its BN folded;
    * mixed (MixConv): the group convs' weights placed in one conv -- depthwise groups zero-padded to the
      largest kernel and centred, 1x1 groups as the blocks of a block-diagonal dense 1x1 -- then the BN;
    * branches: each branch's BN folded into its conv (a branch without a conv is BN(x): a 1x1 kernel of
      ones), zero-padded to the largest kernel, centred and summed (weights and biases);
    * identity: a [C, 1, 1, 1] kernel of ones, bias 0 (the UIB 'ConvNeXt' variant's missing middle depthwise).
    Exact for finite inputs (the added zero taps / blocks multiply neighbours by 0)."""
    if spec.kind == "identity":
        some = next(iter(mods.values()))
        dev = some.weight.device if hasattr(some, "weight") else None
        return (torch.ones(spec.channels, 1, 1, 1, dtype=torch.float64, device=dev),
                torch.zeros(spec.channels, dtype=torch.float64, device=dev))
    if spec.kind == "plain":
        return fold_conv_bn(mods[spec.convs[0]], mods[spec.bns[0]])
    if spec.kind == "mixed":
        convs = [mods[p] for p in spec.convs]
        k = spec.kernel
        dev = convs[0].weight.device
        cout = sum(c.out_channels for c in convs)
        if spec.depthwise:
            w = torch.cat([_centred(c.weight.detach().to(torch.float64), k) for c in convs])
        else:
            cin = sum(c.in_channels for c in convs)
            w = torch.zeros(cout, cin, 1, 1, dtype=torch.float64, device=dev)
            r = q = 0
            for c in convs:
                w[r:r + c.out_channels, q:q + c.in_channels] = c.weight.detach().to(torch.float64)
                r, q = r + c.out_channels, q + c.in_channels
        biases = [c.bias.detach().to(torch.float64) if c.bias is not None
                  else torch.zeros(c.out_channels, dtype=torch.float64, device=dev) for c in convs]
        return fold_weight_bn(w, torch.cat(biases), mods[spec.bns[0]])
    if spec.kind == "branches":
        w_sum = b_sum = None
        for conv_path, bn_path in zip(spec.convs, spec.bns):
            bn = mods[bn_path]
            if conv_path is None:
                ones = torch.ones(bn.num_features, 1, 1, 1, dtype=torch.float64, device=bn.running_mean.device)
                w, b = fold_weight_bn(ones, None, bn)
            else:
                w, b = fold_conv_bn(mods[conv_path], bn)
            w = _centred(w, spec.kernel)
            w_sum, b_sum = (w, b) if w_sum is None else (w_sum + w, b_sum + b)
        return w_sum, b_sum
    raise ValueError(f"unknown conv spec kind {spec.kind!r}")


def fold_plan_ex(plan, mods, dtype: torch.dtype) -> FoldedBlockEx:
    """Folds a generalised block from its plan (recognize.BlockPlanEx, with ``specs``) and ``mods`` (path ->
    module, the paths of ``plan.target_paths()``); weights in the contract's layouts, cast to ``dtype``."""
    def cast(t):
        return t.to(dtype).contiguous()

    got = {}
    for sp in plan.specs:
        w, b = fold_spec(sp, mods)
        got[sp.role] = (w[:, 0] if sp.depthwise else w.flatten(1), b)
    w_p, b_p = got["project"]
    if plan.layer_scale:
        g = mods[plan.layer_scale].gamma.detach().to(torch.float64)
        w_p, b_p = w_p * g[:, None], b_p * g
    se_t = (None, None, None, None) if plan.se is None else _fold_se(mods[plan.se[0]], mods[plan.se[1]], cast)
    w_e, b_e = got.get("expand", (None, None))
    w0, b0 = got.get("dw_start", (None, None))
    w_d, b_d = got["dw"]
    if w_d.device != w_p.device:   # the identity depthwise is made on the first module's device
        w_d, b_d = w_d.to(w_p.device), b_d.to(w_p.device)
    c = lambda t: None if t is None else cast(t)  # noqa: E731
    w_t, b_t = got.get("tail", (None, None))
    return FoldedBlockEx(c(w_e), c(b_e), cast(w_d), cast(b_d), *se_t, cast(w_p), cast(b_p), c(w0), c(b0), c(w_t),
                         c(b_t))
