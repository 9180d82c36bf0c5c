"""The layers around the fused blocks on the CPU kernel's own threads: stem, head and classifier (issue 14).

After ``fuse()``, a MobileNetV2 forward is 17 fused blocks plus a few ATen ops: the stem convolution (3x3,
stride 2, 3 -> 32, ReLU6), the head convolution (1x1, 320 -> 1280, ReLU6), the global average pool and the
classifier (nn.Linear 1280 -> 1000). Each ATen op is an OpenMP parallel region, and a region ends in a barrier
that waits until every OpenMP thread has been scheduled: on a machine whose cores are busy, each region can
cost a scheduler time slice (milliseconds; at batch 1 these ops took ~50 ms each with 2 threads on a loaded
2-core machine, against ~1 ms with 1 thread). Here they run on the fused kernel's pool instead (the caller
works, helpers join when they can; csrc/cpu/thread_pool.cpp), with weights packed once:

  torch.ops.mnv2.conv3x3_bias_act(x, w, b, stride, relu6)  dense 3x3 convolution, padding 1 (+ ReLU6)
  torch.ops.mnv2.dense_bias_act(x, w, b, relu6)            1x1 convolution ([N, K, H, W]) or linear ([M, K])
  torch.ops.mnv2.dense_relu6_mean(x, w, b)                 mean over H, W of relu6(1x1 convolution): [N, Ncols]
  torch.ops.mnv2.stem_inverted_residual(x, w_stem, b_stem, stem_stride, stem_relu6, w_dw, b_dw, w_project,
      b_project, stride, residual)                         the stem convolution and the first block (no expand
                                                           conv) as one pass: the stem's output (at batch 32
                                                           a 51 MB map) never reaches memory

Modules (drop-in: same parameters, buffers, state-dict keys and hooks; anything the kernels do not cover
runs the parent class's forward):

- ``CPUFoldedConvBNAct``: a ``FoldedConvBNAct`` whose folded convolution is a 3x3 (padding 1, stride 1 or 2,
  groups 1, Cin <= 64, Cout <= 64) or 1x1 (stride 1, padding 0, groups 1) convolution with ReLU6 or no
  activation, on float32 CPU tensors, runs the ops above.
- ``CPULinear``: an ``nn.Linear`` that runs ``dense_bias_act`` on float32 CPU inputs [M, K] when no gradient
  is needed.

- ``PooledHeadMobileNetV2`` / ``PooledHeadTorchvisionMobileNetV2``: the model classes with the head
  convolution (1x1 + ReLU6) and the global average pool as one op, ``torch.ops.mnv2.dense_relu6_mean`` (the
  1280-channel map never reaches memory; no OpenMP region for the pool), and the stem with the first block
  as one op, ``torch.ops.mnv2.stem_inverted_residual``, once both layers have run fused on the CPU kernels
  and nothing about them changed since (their own per-call fast-path checks, modules._FastPath, plus no hooks
  on them; ``STEM_INTO_BLOCK = False`` turns it off). After a forward in which every feature layer took its
  fast path, they record the feature stack as one chain of kernel calls and run it while every layer's checks
  still hold (checked in one pass; ``CHAIN = False`` turns it off; see _chain_run).

``use_cpu_kernels(model)`` turns a fused model's FoldedConvBNAct, nn.Linear and MobileNetV2 modules into these
(in place, by class; ``fuse()`` calls it). torch.compile, torch.jit.trace, ONNX export, gradients, other dtypes and
devices take the parents' paths.
"""
from __future__ import annotations

import sys
import weakref
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as _fwad
from torch.nn.modules import module as _nn_module

from . import ops  # noqa: F401  (loads the CPU extension, which defines the two ops)
from ._ext import CPU_EXT
from .modules import (_FAST_EXT, _MISSING, FoldedConvBNAct, FusedInvertedResidual, _autocast_on, _fast_valid,
                      _modes_active)

_HAVE_OPS = CPU_EXT is not None and hasattr(torch.ops.mnv2, "dense_bias_act")
# What the modules' fast path (modules._FastPath) calls: the ops' CPU kernels without the dispatcher
# (csrc/cpu/fast_path.cpp), or the ops when this build lacks them.
if _HAVE_OPS:
    _CONV3X3_RUN = getattr(CPU_EXT, "conv3x3_bias_act_cpu", None) or torch.ops.mnv2.conv3x3_bias_act.default
    _DENSE_RUN = getattr(CPU_EXT, "dense_bias_act_cpu", None) or torch.ops.mnv2.dense_bias_act.default
    _DENSE_MEAN_RUN = getattr(CPU_EXT, "dense_relu6_mean_cpu", None) or torch.ops.mnv2.dense_relu6_mean.default
    _STEM_BLOCK_RUN = (getattr(CPU_EXT, "stem_inverted_residual_cpu", None)
                       or torch.ops.mnv2.stem_inverted_residual.default)
_IR_RUN = getattr(_FAST_EXT, "inverted_residual_cpu", None)  # what a FusedInvertedResidual's CPU record calls

if _HAVE_OPS:
    def _fake_conv3x3(x, w, b, stride, relu6):
        ho, wo = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return x.new_empty((x.shape[0], w.shape[0], ho, wo)).contiguous(
            memory_format=torch.channels_last if cl else torch.contiguous_format)

    def _fake_dense(x, w, b, relu6):
        if x.dim() == 2:
            return x.new_empty((x.shape[0], w.shape[0]))
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return x.new_empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3])).contiguous(
            memory_format=torch.channels_last if cl else torch.contiguous_format)

    def _fake_dense_mean(x, w, b):
        return x.new_empty((x.shape[0], w.shape[0]))

    def _fake_stem_block(x, w_stem, b_stem, stem_stride, stem_relu6, w_dw, b_dw, w_project, b_project, stride,
                         residual):
        h1, w1 = (x.shape[2] - 1) // stem_stride + 1, (x.shape[3] - 1) // stem_stride + 1
        ho, wo = (h1 - 1) // stride + 1, (w1 - 1) // stride + 1
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return x.new_empty((x.shape[0], w_project.shape[0], ho, wo)).contiguous(
            memory_format=torch.channels_last if cl else torch.contiguous_format)

    try:
        torch.library.register_fake("mnv2::dense_relu6_mean", _fake_dense_mean)
        torch.library.register_fake("mnv2::conv3x3_bias_act", _fake_conv3x3)
        torch.library.register_fake("mnv2::dense_bias_act", _fake_dense)
        torch.library.register_fake("mnv2::stem_inverted_residual", _fake_stem_block)
    except RuntimeError:  # already registered (module reloaded)
        pass


def _plain_cpu_f32(x: torch.Tensor) -> bool:
    """x can take the CPU kernels: float32 on the CPU, outside tracing / compiling / exporting."""
    return (_HAVE_OPS and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def _conv_kind(conv: nn.Conv2d) -> Optional[str]:
    """'3x3' or '1x1' when the kernels cover this convolution's geometry, else None."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return None
    if (conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride in ((1, 1), (2, 2))
            and conv.in_channels <= 64 and conv.out_channels <= 64):
        return "3x3"
    if conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.stride == (1, 1):
        return "1x1"
    return None


class CPUFoldedConvBNAct(FoldedConvBNAct):
    """FoldedConvBNAct whose float32 CPU forward runs the kernel's stem/head ops (see the module docstring).

    Input [N, Cin, H, W]; output [N, Cout, Ho, Wo] in the input's memory format, as nn.Conv2d returns it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp = self._fast(x)  # the last call's decisions, still valid (modules.py, _FastPath)
        if fp is not None:
            run, args = fp.call
            return run(x, *args)
        if not _plain_cpu_f32(x):
            return super().forward(x)
        st = self._fused_structure(x)
        if st is None or st.plan.activation not in (None, "relu6"):
            return super().forward(x)
        conv = st.targets[0]
        kind = _conv_kind(conv)
        if kind is None:
            return super().forward(x)
        entry = self._folded(st, x.dtype, x.device)
        if entry.original_because is not None:   # non-finite folded weights: FoldedConvBNAct runs the original
            return super().forward(x)
        w, b = entry.folded
        relu6 = st.plan.activation == "relu6"
        if kind == "3x3":
            y = torch.ops.mnv2.conv3x3_bias_act(x, w, b, conv.stride[0], relu6)
            run, args = _CONV3X3_RUN, (w, b, conv.stride[0], relu6)
        else:
            y = torch.ops.mnv2.dense_bias_act(x, w, b, relu6)
            run, args = _DENSE_RUN, (w, b, relu6)
        # the geometry _conv_kind read is part of the record's checks (conv stride, padding, groups, ...);
        # kernel_size and channel counts are fixed by the folded weights' shapes
        self._set_fast(st, entry, x, (run, args))
        return y

    def _pooled_head_fast(self, x: torch.Tensor):
        """(w, b) of this head for dense_relu6_mean when the last call's decisions still hold, else None."""
        fp = self._fast(x)
        if fp is not None and fp.call[0] is _DENSE_RUN and fp.call[1][2] is True:
            return fp.call[1][:2]
        return None


class CPULinear(nn.Linear):
    """nn.Linear whose float32 CPU forward (inputs [M, K], no gradient needed) runs ``dense_bias_act``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 2 and self.bias is not None and _plain_cpu_f32(x) and self.weight.dtype == torch.float32
                and self.weight.device.type == "cpu" and not _autocast_on(x) and _fwad._current_level < 0
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                                      or self.bias.requires_grad))):
            if torch.is_grad_enabled() or type(x) is not torch.Tensor or _modes_active():
                return torch.ops.mnv2.dense_bias_act.default(x, self.weight, self.bias, False)
            return _DENSE_RUN(x, self.weight, self.bias, False)  # the op's kernel, no dispatcher
        return F.linear(x, self.weight, self.bias)


def _no_hooks(*mods: nn.Module) -> bool:
    return (not _nn_module._global_forward_hooks and not _nn_module._global_forward_pre_hooks
            and not any(m._forward_hooks or m._forward_pre_hooks for m in mods))


# Whether the pooled-head MobileNetV2 classes run the stem and the first block as one op (see the module
# docstring); False: as two (for A/B benchmarks and tests).
STEM_INTO_BLOCK = True

_IR_WRAPPERS: tuple = ()  # InvertedResidual classes whose forward is `self.conv(x)` when not use_res_connect


def _fused_inner(blk: nn.Module) -> Optional[FusedInvertedResidual]:
    """blk when it is a FusedInvertedResidual; its `conv` when blk is this package's or torchvision's
    InvertedResidual without shortcut around one (its forward is then `self.conv(x)`); else None."""
    if type(blk) is FusedInvertedResidual:
        return blk
    d = blk.__dict__
    if (type(blk) not in _IR_WRAPPERS or d.get("use_res_connect") is not False or "forward" in d
            or list(blk._modules) != ["conv"]):
        return None
    inner = blk._modules["conv"]
    return inner if type(inner) is FusedInvertedResidual else None


def _stem_block_args(fs, fb) -> Optional[tuple]:
    """The arguments after x of stem_inverted_residual for the stem's and block 1's fast-path records (their
    CPU kernel calls), or None when the pair does not fit the op (an expand conv, a channel mismatch)."""
    if fs.call[0] is not _CONV3X3_RUN or _IR_RUN is None or fb.call[0] is not _IR_RUN:
        return None
    w_s, b_s, s_s, relu6 = fs.call[1]
    w_e, _, w_dw, b_dw, w_p, b_p, stride, residual = fb.call[1]
    if w_e is not None or w_s.shape[0] != w_dw.shape[0]:
        return None
    return (w_s, b_s, s_s, relu6, w_dw, b_dw, w_p, b_p, stride, residual)


def _stem_block_fast(feats: nn.Sequential, x: torch.Tensor) -> Optional[torch.Tensor]:
    """feats[1](feats[0](x)) as one op (torch.ops.mnv2.stem_inverted_residual), or None when that does not
    apply (then nothing has run). It applies when feats[0] is a CPUFoldedConvBNAct and feats[1] a
    FusedInvertedResidual without expand conv (or this package's / torchvision's InvertedResidual around one,
    without shortcut), no hooks on any of them, and both layers' last calls ran their CPU kernels with
    decisions that still hold (_FoldedModule._fast: the same checks a call of the layer itself passes): the op
    then computes what the two kernels compute, from the same folded weights."""
    if not STEM_INTO_BLOCK or len(feats) < 3:
        return None
    stem, blk = feats[0], feats[1]
    if type(stem) is not CPUFoldedConvBNAct:
        return None
    inner = _fused_inner(blk)
    if inner is None or not _no_hooks(stem, blk, inner):
        return None
    fs = stem._fast(x)
    fb = inner._fast(x) if fs is not None else None  # x stands for the stem's output: same type, dtype, device
    args = _stem_block_args(fs, fb) if fb is not None else None
    return None if args is None else _STEM_BLOCK_RUN(x, *args)


# The whole feature stack as one recorded chain of kernel calls (session 4): after a forward in which every layer
# took its fast path (the stem + block 1 op, every block, the pooled head), the next forwards check all those
# layers' records in one fast_valid pass and run the recorded calls back to back, without a module call per
# layer (batch 1, 2 threads, interleaved on / off: 5.20 vs 5.31 ms; docs/cpu_runtime.md). False: per layer.
CHAIN = True


class _Chain(NamedTuple):
    feats: nn.Sequential
    device: torch.device
    dtype: torch.dtype
    types: tuple      # (module, its class) for every module the chain stands for
    check: tuple      # (nodes, attrs, dicts, tensors) for fast_valid: every layer's record, plus the layers
                      # themselves (no hooks, eval mode, the same record / cache / backend), the wrappers and feats
    steps: tuple      # ((callable, args after h), ...): the stem + block 1 op, then each block
    head: tuple       # (w, b) of the head for dense_relu6_mean


_CHAINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> _Chain (never copied or pickled)


def _layer_check(m: nn.Module, fp, x: torch.Tensor, nodes: list, attrs: list, dicts: list, tensors: list) -> bool:
    """Adds what m._fast(x) checks for the record fp, plus m's own hooks (its __call__ is skipped), to the lists;
    False when the record is not one for x's dtype and device (then no chain)."""
    if fp.dtype is not x.dtype or fp.device != x.device:
        return False
    d = m.__dict__
    nodes += fp.nodes
    nodes.append((d, m._modules, tuple(m._modules.values()), True))
    attrs += fp.attrs
    attrs += [(d, "_fastpath", fp), (d, "training", False), (d, "_cache", fp.cache),
              (d, "backend", d["backend"] if "backend" in d else _MISSING)]
    dicts += fp.dicts
    tensors += fp.tensors
    return True


def _build_chain(model: nn.Module, feats: nn.Sequential, x: torch.Tensor) -> Optional[_Chain]:
    """The chain of feats' recorded calls, or None when a layer has no record usable here."""
    if len(feats) < 3 or type(feats[0]) is not CPUFoldedConvBNAct or type(feats[-1]) is not CPUFoldedConvBNAct:
        return None
    nodes: list = [(feats.__dict__, feats._modules, tuple(feats._modules.values()), False)]
    attrs: list = []
    dicts: list = []
    tensors: list = []
    types = [(feats, type(feats))]
    stem, head = feats[0], feats[-1]
    fs, fh = stem.__dict__.get("_fastpath"), head.__dict__.get("_fastpath")
    if (fs is None or fs.call[0] is not _CONV3X3_RUN or fh is None or fh.call[0] is not _DENSE_RUN
            or fh.call[1][2] is not True):
        return None
    if not (_layer_check(stem, fs, x, nodes, attrs, dicts, tensors)
            and _layer_check(head, fh, x, nodes, attrs, dicts, tensors)):
        return None
    types += [(stem, type(stem)), (head, type(head))]
    steps = []
    for i, blk in enumerate(list(feats)[1:-1], start=1):
        inner = _fused_inner(blk)
        fp = inner.__dict__.get("_fastpath") if inner is not None else None
        if fp is None or _IR_RUN is None or fp.call[0] is not _IR_RUN:
            return None
        if blk is not inner:
            bd = blk.__dict__
            nodes.append((bd, blk._modules, (inner,), False))
            attrs.append((bd, "use_res_connect", False))
            types.append((blk, type(blk)))
        if not _layer_check(inner, fp, x, nodes, attrs, dicts, tensors):
            return None
        types.append((inner, type(inner)))
        if i == 1:
            args = _stem_block_args(fs, fp)
            if args is None:
                return None
            steps.append((_STEM_BLOCK_RUN, args))
        else:
            steps.append(fp.call)
    return _Chain(feats, x.device, x.dtype, tuple(types), (tuple(nodes), tuple(attrs), tuple(dicts), tuple(tensors)),
                  tuple(steps), tuple(fh.call[1][:2]))


def _chain_run(model: nn.Module, feats: nn.Sequential, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The pooled features of x by the model's chain when every check of it holds (the checks each layer's
    own call would pass, once), else None (nothing has run). The caller (_pooled_head_forward) has checked grad
    mode, tracing, compiling and global hooks."""
    ch = _CHAINS.get(model)
    if (ch is None or not CHAIN or not STEM_INTO_BLOCK or ch.feats is not feats or type(x) is not torch.Tensor
            or x.dtype is not ch.dtype or x.device != ch.device or _autocast_on(x) or _fwad._current_level >= 0
            or _modes_active() or any(type(m) is not t for m, t in ch.types) or not _fast_valid(*ch.check)):
        return None
    h = x
    for run, args in ch.steps:
        h = run(h, *args)
    return _DENSE_MEAN_RUN(h, *ch.head)


def _pooled_head_forward(model: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``classifier(flatten(adaptive_avg_pool2d(features(x), 1)))`` with the last feature layer (1x1 conv +
    ReLU6) and the pool as one op (torch.ops.mnv2.dense_relu6_mean), or None when that does not apply
    (then nothing has run)."""
    feats = getattr(model, "features", None)
    if (torch.is_grad_enabled() or not _plain_cpu_f32(x) or not isinstance(feats, nn.Sequential)
            or len(feats) < 2 or type(feats[-1]) is not CPUFoldedConvBNAct or not _no_hooks(feats, feats[-1])):
        return None
    pooled = _chain_run(model, feats, x)
    if pooled is not None:
        return model.classifier(pooled)
    head = feats[-1]
    mods = list(feats)[:-1]
    h = _stem_block_fast(feats, x)
    stem_op = h is not None
    if h is None:
        h = x
    else:
        mods = mods[2:]
    for mod in mods:
        h = mod(h)
    wb = head._pooled_head_fast(h)
    if wb is not None:  # the head's last call ran this 1x1 + ReLU6 fused and nothing changed since
        pooled = _DENSE_MEAN_RUN(h, *wb)
        ch = _build_chain(model, feats, x) if stem_op and CHAIN else None
        if ch is not None:
            _CHAINS[model] = ch
        else:
            _CHAINS.pop(model, None)
        return model.classifier(pooled)
    st = head._fused_structure(h) if _plain_cpu_f32(h) else None
    if st is None or st.plan.activation != "relu6" or _conv_kind(st.targets[0]) != "1x1":
        h = head(h)  # the layer as it is (same result as the original forward from here on)
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
    entry = head._folded(st, h.dtype, h.device)
    if entry.original_because is not None:   # non-finite folded weights: the head runs its original layers
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(head(h), 1), 1))
    w, b = entry.folded
    y = model.classifier(torch.ops.mnv2.dense_relu6_mean(h, w, b))
    head._set_fast(st, entry, h, (_DENSE_RUN, (w, b, True)))
    return y


class _PooledHeadForward:
    """Mixin for MobileNetV2 classes whose forward is features -> global average pool -> flatten ->
    classifier: the head convolution and the pool run as one op on float32 CPU inputs without gradients
    (the 1280-channel map never reaches memory, and no OpenMP region runs for the pool); anything else runs
    the class's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _pooled_head_forward(self, x)
        return super().forward(x) if y is None else y


from .models.mobilenet_v2 import MobileNetV2 as _MNV2  # noqa: E402


class PooledHeadMobileNetV2(_PooledHeadForward, _MNV2):
    """mnv2_kernels.models.MobileNetV2 with the head + pool fused on the CPU (set by use_cpu_kernels)."""


_POOLED_HEAD_CLASSES = {_MNV2: PooledHeadMobileNetV2}
from .models.mobilenet_v2 import InvertedResidual as _IR  # noqa: E402

_IR_WRAPPERS = (_IR,)


def _register_torchvision(load: bool = False) -> None:
    """Adds torchvision's MobileNetV2 / InvertedResidual to the tables above, once, when torchvision is already
    imported (a torchvision model exists only then) or ``load``. Not at import: importing torchvision pulls in
    torch.onnx, torch._dynamo, sympy and triton, ~150 MiB of resident memory a model of this package's own never
    needs (issue 14, peak memory)."""
    global _IR_WRAPPERS, PooledHeadTorchvisionMobileNetV2
    if "PooledHeadTorchvisionMobileNetV2" in globals() or not (load or "torchvision" in sys.modules):
        return
    try:
        from torchvision.models import MobileNetV2 as _TVMNV2
        from torchvision.models.mobilenetv2 import InvertedResidual as _TVIR
    except ImportError:  # torchvision is optional
        return

    class PooledHeadTorchvisionMobileNetV2(_PooledHeadForward, _TVMNV2):
        """torchvision's MobileNetV2 with the head + pool fused on the CPU (set by use_cpu_kernels)."""

    PooledHeadTorchvisionMobileNetV2.__qualname__ = "PooledHeadTorchvisionMobileNetV2"   # (pickle finds it here)
    _POOLED_HEAD_CLASSES[_TVMNV2] = PooledHeadTorchvisionMobileNetV2
    _IR_WRAPPERS = (_IR, _TVIR)


def __getattr__(name: str):
    if name == "PooledHeadTorchvisionMobileNetV2":   # e.g. unpickling a fused torchvision model
        _register_torchvision(load=True)
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_register_torchvision()


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Turns ``model``'s FoldedConvBNAct and nn.Linear modules into CPUFoldedConvBNAct / CPULinear and a
    MobileNetV2 (this package's or torchvision's) into its pooled-head subclass, in place (the class only:
    parameters, buffers, hooks and state-dict keys stay). Returns ``model``. A no-op when the CPU extension
    is not built."""
    if not _HAVE_OPS:
        return model
    _register_torchvision()
    for m in model.modules():
        if type(m) is FoldedConvBNAct:
            m.__class__ = CPUFoldedConvBNAct
        elif type(m) is nn.Linear:
            m.__class__ = CPULinear
        elif type(m) in _POOLED_HEAD_CLASSES:
            m.__class__ = _POOLED_HEAD_CLASSES[type(m)]
    return model
