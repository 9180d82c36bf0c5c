"""``fuse(model)``: swaps every recognisable inverted-residual block for a ``FusedInvertedResidual``."""
from __future__ import annotations

import copy
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from . import backends, ops
from .modules import FoldedConvBNAct, FoldedInvertedResidual, FusedInvertedResidual, FusedPathWarning, _fallback_reason
from .recognize import BlockPlanEx, NotFusable, recognize_block, recognize_block_ex, recognize_conv_bn

log = logging.getLogger("mnv2_kernels")


@dataclass(frozen=True)
class BlockReport:
    """One line of the fusion report: a block found in the model, fused or skipped, and why."""
    path: str
    fused: bool
    detail: str           # the block's shape when fused, the reason when skipped
    kind: str = "block"   # "block" (inverted residual), "reference" (a generalised block folded onto the
                          # reference path: fused=False), "conv_bn" (a conv -> BN [-> act] outside blocks) or
                          # "other" (a depthwise conv outside any inverted residual, left alone; not a block)

    def __str__(self) -> str:
        what = "fused" if self.fused else "skipped"
        if self.kind == "conv_bn":
            what = "folded"
        elif self.kind == "reference":
            what = "folded (reference path)"
        return f"{self.path or '<root>'}: {what} ({self.detail})"


class FuseReport(List[BlockReport]):
    """The per-block report of one ``fuse`` call (a list of BlockReport)."""

    @property
    def fused(self) -> List[BlockReport]:
        """Inverted-residual blocks replaced by FusedInvertedResidual."""
        return [r for r in self if r.fused and r.kind == "block"]

    @property
    def skipped(self) -> List[BlockReport]:
        """Blocks left as they were, with the reason."""
        return [r for r in self if not r.fused and r.kind == "block"]

    @property
    def reference(self) -> List[BlockReport]:
        """Generalised blocks replaced by a FoldedInvertedResidual that the device's kernel row cannot compute
        (BN folded, run by the PyTorch reference; on the CPU in float32 / bfloat16 the fused kernel serves every
        option, so this is empty there)."""
        return [r for r in self if r.kind == "reference"]

    @property
    def folded(self) -> List[BlockReport]:
        """conv -> BN [-> act] modules outside the blocks replaced by FoldedConvBNAct."""
        return [r for r in self if r.kind == "conv_bn"]

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self)


def _is_depthwise(m: nn.Module) -> bool:
    """A depthwise conv: one group per input channel (a block with one hidden channel has groups == 1)."""
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels and (
        m.groups > 1 or (m.out_channels == 1 and m.kernel_size != (1, 1)))


def _depthwise_counts(model: nn.Module) -> Dict[str, int]:
    counts = {}
    for path, m in model.named_modules():
        counts[path] = 0
    for path, m in model.named_modules():
        if _is_depthwise(m):
            parts = path.split(".") if path else []
            for i in range(len(parts) + 1):
                counts[".".join(parts[:i])] += 1
    return counts


def _is_layer(m: nn.Module) -> bool:
    """One conv layer (a module holding one Conv2d: conv, conv+BN+act), a MixConv (only Conv2d children), or a
    ModuleList / ModuleDict of such layers (re-parameterisable branches, PP-LCNetV2)."""
    if isinstance(m, nn.Conv2d):
        return True
    convs = sum(isinstance(c, nn.Conv2d) for c in m.modules())
    kids = [c for c in m._modules.values() if c is not None]
    if convs == 1 or (kids and all(isinstance(c, nn.Conv2d) or (isinstance(c, (nn.ModuleList, nn.ModuleDict))
                                                                and _is_layer(c)) for c in kids)):
        return True
    return isinstance(m, (nn.ModuleList, nn.ModuleDict)) and bool(kids) and all(_is_layer(c) for c in kids)


def _multi_depthwise_blocks(modules: Dict[str, nn.Module], counts: Dict[str, int]) -> Dict[str, str]:
    """{path: reason} of blocks with several depthwise convs, each a layer of the block itself (MixNet's
    MixConv, MobileNetV4's universal inverted bottleneck with a leading depthwise): outside the contract."""
    out: Dict[str, str] = {}
    for path, m in modules.items():
        if counts[path] < 2 or not m._modules or any(path.startswith(p + ".") for p in out):
            continue
        kids = [c for c in m._modules.values() if c is not None]
        with_dw = [c for c in kids if any(_is_depthwise(d) for d in c.modules())]
        if not with_dw or not all(_is_layer(c) for c in with_dw):
            continue
        mixed = [c for c in with_dw if not isinstance(c, nn.Conv2d) and type(c).forward is not nn.Module.forward
                 and sum(isinstance(d, nn.Conv2d) for d in c.modules()) > 1]
        if mixed:
            sizes = sorted({d.kernel_size[0] for c in mixed for d in c.modules() if isinstance(d, nn.Conv2d)})
            out[path] = f"mixed depthwise kernel sizes {sizes} in one layer (MixConv)"
        elif any(isinstance(c, (nn.ModuleList, nn.ModuleDict)) for c in with_dw):
            out[path] = (f"{counts[path]} depthwise convs as re-parameterisable branches (a ModuleList of conv -> "
                         "BN branches, summed)")
        else:
            out[path] = f"{counts[path]} depthwise convs in one block"
    return out


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    model.get_submodule(parent_path)._modules[name] = new


def _first_param_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _fold_conv_bn_modules(model: nn.Module, taken: List[str], report: "FuseReport") -> List[tuple]:
    """conv -> BN [-> ReLU|ReLU6] modules (stem, head) outside the paths in ``taken``."""
    found: List[tuple] = []
    for path, m in model.named_modules():
        if not m._modules or any(path == t or path.startswith(t + ".") for t in taken):
            continue
        leaves = [c for c in m.modules() if not c._modules or isinstance(c, nn.BatchNorm2d)]
        if not (2 <= len(leaves) <= 4 and sum(isinstance(c, nn.Conv2d) for c in leaves) == 1):
            continue
        try:
            plan = recognize_conv_bn(m)
        except NotFusable:
            continue
        found.append((path, plan))
        taken.append(path)
        report.append(BlockReport(path, True, plan.describe(), kind="conv_bn"))
    return found


def fuse(model: nn.Module, *, backend: str = "auto", inplace: bool = False, fold_conv_bn: bool = True,
         return_report: bool = False, prepare: bool = True):
    """Returns ``model`` with every inverted-residual block it recognises replaced by a FusedInvertedResidual.

    Blocks are recognised by what their forward computes (mnv2_kernels.recognize), so torchvision's and
    timm's MobileNetV2 / EfficientNet-Lite and hand-written models work alike. Blocks outside the block
    contract (anti-aliasing pools, depthwise kernels over 9x9) stay as they are, with the reason in the report.
    Generalised blocks (issue 13: other activations, 5x5-9x9 depthwise, TF padding, squeeze-excite, MobileNetV4
    UIB incl. its 'ConvNeXt' variant, MixNet's MixConv, PP-LCNetV2's re-parameterisable branches) become
    FoldedInvertedResidual (docs/CONTRACT.md, "The generalised block").
    With ``fold_conv_bn`` (default), conv -> BN [-> act] modules outside the blocks (the stem and head of
    MobileNetV2) become FoldedConvBNAct: one convolution on folded weights, same keys; timm's EfficientNet /
    MobileNetV3 stem and head pairs (conv_stem + bn1, conv_head + bn2) too (mnv2_kernels.timm_stem).
    The state dict keeps its keys and values. ``backend``: "auto", "cpu", "cuda", "triton" or "reference";
    one that cannot serve the model's device raises RuntimeError naming what is missing.
    ``inplace=False`` works on a deep copy. With ``return_report=True`` returns (model, FuseReport); the
    report is also logged on the "mnv2_kernels" logger (INFO). Skipped blocks (how many, why) and a model
    still in training mode are also a ``FusedPathWarning``.
    ``prepare`` (default True): when the fused model is in eval mode (every module), all its parameters and
    buffers are float32 CPU tensors, the CPU extension is built and ``backend`` is "auto" or "cpu", the fused
    layers' weights are folded and packed for the CPU kernel here (``mnv2_kernels.prepare``), not on the first
    call: the first call is then as fast as the later ones, and the packed weights count as setup (as ONNX
    Runtime packs at session creation). Same results either way; ``prepare=False`` leaves it to the first call.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mnv2_kernels.fuse: expected a torch.nn.Module (your model), got {type(model).__name__}")
    backends.check_name(backend)
    ops.resolve_backend(backend, _first_param_device(model))  # fail early if it cannot serve the model
    if not inplace:
        model = copy.deepcopy(model)
    device = _first_param_device(model)
    counts = _depthwise_counts(model)
    modules = dict(model.named_modules())
    report = FuseReport()
    replacements = []
    def place(chosen_path: str, plan) -> None:
        """Queues the replacement of one recognised block and reports it."""
        if isinstance(plan, BlockPlanEx):
            cfg = plan.config()
            gap = backends.ex_kernel_gaps(cfg, device)
            refusals = backends.ex_refusals(cfg, device)
            if backend != "auto" and refusals[backend]:
                report.append(BlockReport(chosen_path, False, f"{plan.describe()}: backend={backend!r} cannot run "
                                          f"it ({'; '.join(refusals[backend])}); fuse with backend='auto' or "
                                          "'reference' to run it folded on the reference path"))
                return
            served = [n for n in backends.auto_priority(device) if not refusals[n]] if backend == "auto" else [backend]
            replacements.append((chosen_path, plan))
            if served and served[0] != "reference":
                report.append(BlockReport(chosen_path, True, plan.describe()))
            else:
                report.append(BlockReport(chosen_path, False, f"{plan.describe()}; {gap}", kind="reference"))
            return
        replacements.append((chosen_path, plan))
        report.append(BlockReport(chosen_path, True, plan.describe()))

    multi = _multi_depthwise_blocks(modules, counts)
    for path, reason in multi.items():
        if isinstance(modules[path], FusedInvertedResidual):
            continue  # fused by an earlier call
        try:
            place(path, recognize_block_ex(modules[path]))   # MobileNetV4 UIB ExtraDW: a leading depthwise
        except NotFusable as exc:
            report.append(BlockReport(path, False, f"{reason}: {exc}"))
    for path, m in modules.items():
        if counts[path] != 1 or not m._modules:
            continue
        if any(path.startswith(p + ".") for p in multi):
            continue  # a layer of a block with several depthwise convs: reported with its block
        parent = path.rpartition(".")[0] if path else None
        if parent is not None and counts[parent] == 1:
            continue  # not the outermost module holding this depthwise conv: handled with its ancestor
        chain = [p for p in modules if (p == path or p.startswith(path + ".") if path else True)
                 and counts[p] == 1 and modules[p]._modules]
        if any(isinstance(modules[p], FusedInvertedResidual) for p in chain):
            continue  # fused by an earlier call
        plans: List[tuple] = []
        outer_reason: Optional[str] = None
        for p in chain:  # pre-order: outermost first
            try:
                plans.append((p, recognize_block(modules[p])))
            except NotFusable as exc:
                if p == path:
                    outer_reason = str(exc)
        if not plans:  # not the MobileNetV2 block: the generalised block (issue 13)?
            for p in chain:
                try:
                    plans.append((p, recognize_block_ex(modules[p])))
                except NotFusable as exc:
                    if p == path:
                        outer_reason = str(exc)
        if not plans:
            why = outer_reason or "no inverted-residual pattern"
            # a module around a depthwise conv that is no inverted residual at all (attention's key/value
            # downsampling) is listed, but not counted as a skipped block
            report.append(BlockReport(path, False, why, kind="other" if "not an inverted residual" in why else "block"))
            continue
        with_residual = [pp for pp in plans if pp[1].residual]
        chosen_path, plan = (with_residual or plans)[-1]  # innermost, preferring one that owns the shortcut
        place(chosen_path, plan)
    taken = [p for p, _ in replacements] + [p for p, m in modules.items()
                                             if isinstance(m, (FusedInvertedResidual, FoldedConvBNAct))]
    folds = _fold_conv_bn_modules(model, taken, report) if fold_conv_bn else []
    for path, plan in replacements:
        cls = FoldedInvertedResidual if isinstance(plan, BlockPlanEx) else FusedInvertedResidual
        fused = cls(modules[path], plan, backend)
        if path:
            _set_submodule(model, path, fused)
        else:
            model = fused
    for path, plan in folds:
        if path:
            _set_submodule(model, path, FoldedConvBNAct(modules[path], plan))
    if fold_conv_bn and type(model).__module__.startswith("timm."):
        # timm's stem / head: sibling conv_stem + bn1 (conv_head + bn2) pairs, no module around them
        from .timm_stem import fold_timm_stem_head
        for path, detail in fold_timm_stem_head(model):
            report.append(BlockReport(path, bool(path), detail, kind="conv_bn" if path else "other"))
    # issue 14: on the CPU, the stem/head convolutions and nn.Linear layers run on the fused kernel's threads
    # (no OpenMP region per layer; mnv2_kernels/stem_head.py). Same parameters, keys and results.
    if backend in ("auto", "cpu") and _first_param_device(model).type == "cpu":
        from .stem_head import use_cpu_kernels
        use_cpu_kernels(model)
    for r in report:
        log.info("mnv2_kernels.fuse: %s", r)
    _warn_about(model, report)
    if (prepare and backend in ("auto", "cpu") and not any(m.training for m in model.modules())
            and _cpu_f32_tensors(model)):
        _prepare(model)
    return (model, report) if return_report else model


def _warn_about(model: nn.Module, report: FuseReport) -> None:
    """FusedPathWarning for what would otherwise be silently slow: skipped blocks, a model in train mode."""
    skipped = report.skipped
    on_reference = report.reference
    if on_reference:
        gaps: Dict[str, int] = {}
        for r in on_reference:
            gap = r.detail.rpartition("; ")[2]
            gaps[gap] = gaps.get(gap, 0) + 1
        warnings.warn(f"mnv2_kernels.fuse: {len(on_reference)} of {len(report.fused) + len(on_reference) + len(skipped)}"
                      " blocks are folded but run on the reference path (BN folded, plain PyTorch; not a fused "
                      "launch): " + "; ".join(f"{n} x {g}" for g, n in gaps.items()) + ". They compute the same "
                      "as the original; fuse(..., return_report=True) lists them.", FusedPathWarning, stacklevel=3)
    if skipped:
        reasons: Dict[str, List[str]] = {}
        for r in skipped:
            reasons.setdefault(r.detail, []).append(r.path or "<root>")
        lines = "; ".join(f"{len(paths)} x {reason} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})"
                          for reason, paths in reasons.items())
        warnings.warn(f"mnv2_kernels.fuse: {len(skipped)} of {len(skipped) + len(report.fused) + len(on_reference)} "
                      f"blocks left "
                      f"unfused: {lines}. They run as before; fuse(..., return_report=True) lists them.",
                      FusedPathWarning, stacklevel=3)
    if model.training and (report.fused or report.folded or report.reference):
        warnings.warn("mnv2_kernels.fuse: the model is in training mode, so nothing runs fused until you call "
                      ".eval() (training and eval with gradients enabled run the original layers)",
                      FusedPathWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------------
# prepare(): the one-time weight work at setup instead of the first call (issue 14)
# ------------------------------------------------------------------------------------------------------------
_PREPARE_SIZE = 8   # the spatial size of the zero inputs prepare() runs (any size packs the same weights)


def _cpu_f32_tensors(m: nn.Module) -> bool:
    """Every floating parameter and buffer of ``m`` is float32 on the CPU, every other buffer on the CPU."""
    for t in (*m.parameters(), *m.buffers()):
        if t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32):
            return False
    return True


def _own_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)


def _prepare_input(m: nn.Module) -> Optional[torch.Tensor]:
    """The zero input that runs ``m`` once down its fused CPU path, or None when ``m`` must not run now: a
    layer in training mode, with hooks or an instance-level forward (its own or its layers'), weights that are
    not float32 CPU tensors, a backend other than the CPU kernel, folded weights that would run the original
    (non-finite), or an input size it cannot tell."""
    from .stem_head import CPULinear
    if m.training or _own_hooks(m) or not _cpu_f32_tensors(m):
        return None
    if isinstance(m, CPULinear):
        if m.bias is None:
            return None
        return torch.zeros(1, m.in_features)
    if not isinstance(m, (FusedInvertedResidual, FoldedConvBNAct)):
        return None
    st = m.__dict__["_struct"]
    if st.plan is None or not m._unchanged(st):
        # recognised again (after refresh() or a changed attribute) as the next call would, unless a layer is in
        # training mode or has hooks / an instance forward (its forward would run the original)
        if _fallback_reason(m._build_structure(None, None).nodes) is not None:
            return None
        st = m._structure()
        if st.plan is None or not m._unchanged(st):
            return None
    if isinstance(m, FusedInvertedResidual):
        backend = m.__dict__.get("backend")
        if backend not in ("auto", "cpu") or backends.ROWS["cpu"]._refusals(torch.device("cpu"), torch.float32):
            return None
        cin = st.plan.in_channels
        size = _PREPARE_SIZE
    else:
        conv = st.targets[0]
        if not isinstance(conv, nn.Conv2d):
            return None
        cin = conv.in_channels
        size = max(_PREPARE_SIZE, *(d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)))
    if not isinstance(cin, int) or cin < 1:
        return None
    x = torch.zeros(1, cin, size, size)
    entry = m._folded(st, x.dtype, x.device)   # folds (what the first call would do)
    if entry.original_because is not None:
        return None   # its forward would warn and run the original: leave that to a real call
    return x


def _prepare_layers(model: nn.Module) -> List[nn.Module]:
    """The layers prepare() runs, in module order: fused modules, CPULinear, timm's folded stem / head."""
    from .stem_head import CPULinear
    timm_stem = sys.modules.get(__package__ + ".timm_stem")   # (imported by fuse() for timm models only)
    out: List[nn.Module] = []
    for m in model.modules():
        if isinstance(m, (FusedInvertedResidual, FoldedConvBNAct, CPULinear)):
            out.append(m)
        pairs = timm_stem.folded_pairs(m) if timm_stem is not None else None
        if pairs:   # holders outside the module tree; they follow the model's mode (timm_stem._mnv2_pair)
            out += [p for p in pairs if p.training == m.training]
    return out


def prepare(model: nn.Module) -> nn.Module:
    """Folds and packs the weights of a fused model's layers now, so that its first call is as fast as the
    later ones and the one-time weight work is part of setup (issue 14). ``fuse()`` calls it (``prepare=True``);
    call it again after ``.eval()``, ``.to()`` or a weight change (``refresh()``), or leave it to the first call.

    Each fused layer (FusedInvertedResidual, FoldedInvertedResidual, FoldedConvBNAct and its CPU kernel form,
    CPULinear) runs its own forward once under ``torch.no_grad()`` on a small zero input (``[1, Cin, 8, 8]``;
    ``[1, in_features]`` for a linear layer), which folds its BatchNorm into the weights, packs them for the CPU
    kernel and records the fast path, exactly as a first call would; the MobileNetV2 classes' stem + block op
    and pooled head then apply from the first real call. Nothing else changes: same results, parameters,
    buffers (BatchNorm statistics included) and state dict.

    A layer is left to its first call when it is in training mode, has forward hooks or an instance-level
    forward (its own or one of its layers'), holds weights that are not float32 CPU tensors, runs a backend
    other than the CPU kernel, or has non-finite folded weights; the whole model is left alone (a no-op) when
    the CPU extension is not built, global module forward hooks are registered, or this runs under
    torch.autocast, a forward-AD level, a torch function / dispatch mode, torch.jit tracing or
    torch.compile. It never fires hooks or warns. Returns ``model``; TypeError when it is not an nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mnv2_kernels.prepare: expected a torch.nn.Module (a fused model), got "
                        f"{type(model).__name__}")
    from . import _ext
    from .modules import _autocast_on, _modes_active
    from torch.autograd import forward_ad
    from torch.nn.modules import module as nn_module
    probe = torch.zeros(())
    if (_ext.CPU_EXT is None or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
            or _autocast_on(probe) or forward_ad._current_level >= 0 or _modes_active()
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return model
    layers = _prepare_layers(model)
    if not layers:
        return model
    # (in this order: inference_mode(False) turns grad mode back on; folded weights then get version counters
    # even inside torch.inference_mode(), so the CPU kernel can cache their packed form)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # (nothing should warn; a warning left over belongs to a real call)
        for m in layers:
            warned = m.__dict__.get("_warned")
            before = set(warned) if warned is not None else None
            try:
                x = _prepare_input(m)
                if x is not None:
                    m.forward(x)   # the layer's own forward, not __call__: no hooks (it has none anyway)
            except Exception:  # noqa: BLE001  (whatever it is, the first real call meets it and reports it)
                pass
            if before is not None:
                warned.intersection_update(before)   # a real call still warns once for anything seen here
    return model


_prepare = prepare   # (fuse's keyword argument `prepare` hides the function inside fuse)
