"""Drop-in modules that run BatchNorm-folded fused computations in eval mode.

Both share the original module's children, parameters and buffers (the same dicts, so state dicts are
interchangeable and a layer replaced on either is seen by both), expose the original's plain attributes
(``stride``, ``use_res_connect``, ``out_channels``, ...), and run the original module's own forward whenever
the fused computation might not be exactly the original's (rules: docs/CONTRACT.md, "Modules").

- ``FusedInvertedResidual``: a whole inverted-residual block as one fused op.
- ``FoldedConvBNAct``: a conv -> BN [-> ReLU/ReLU6] outside the blocks (stem, head) as one convolution with
  folded weights and an in-place activation.
"""
from __future__ import annotations

import functools
import math
import threading
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as _fwad
from torch.nn.modules import module as _nn_module

from . import backends, ops
from .folding import FoldedBlock, fold_block, fold_conv_bn
from .recognize import BlockPlan, ConvBNPlan, NotFusable, recognize_block, recognize_conv_bn

# Folding is rare (first call, after a weight change); one lock for all modules keeps it simple and the
# modules picklable. Readers never take it: cache entries are immutable tuples swapped in atomically.
_FOLD_LOCK = threading.RLock()


class FusedPathWarning(UserWarning):
    """A fused module ran its original (unfused) forward, or an export/trace will not contain the fused op."""


def _walk(m: nn.Module, out: List[nn.Module]) -> List[nn.Module]:
    """m and all its descendants, pre-order (cheaper than Module.modules(): no memo set, no names)."""
    out.append(m)
    for c in m._modules.values():
        if c is not None:
            _walk(c, out)
    return out


def _geometry(m: nn.Module) -> tuple:
    """The non-tensor attributes of a folded-from module that change what it computes (eps, conv geometry)."""
    if isinstance(m, nn.Conv2d):
        return (m.stride, m.padding, m.dilation, m.groups, m.padding_mode)
    return (getattr(m, "eps", None), getattr(m, "track_running_stats", None), m._buffers.get("running_var") is None,
            m._buffers.get("running_mean") is None)


# Layers that compute the same in training and eval mode (a freshly built Conv2d is in training mode).
_MODE_FREE = (nn.Conv2d, nn.Hardtanh, nn.ReLU, nn.Identity, nn.Sequential, nn.Hardswish, nn.SiLU, nn.GELU,
              nn.Sigmoid, nn.Hardsigmoid, nn.AdaptiveAvgPool2d)


def _fallback_reason(nodes: tuple) -> Optional[str]:
    """Why the modules of a block cannot run fused right now (None when they can); nodes as _Structure's."""
    for m, _, mode_matters in nodes:
        if m.training and mode_matters:
            return f"{type(m).__name__} is in training mode"
        if m._forward_hooks or m._forward_pre_hooks:
            return f"{type(m).__name__} has forward hooks"
        if "forward" in m.__dict__:
            return f"{type(m).__name__} has an instance-level forward"
    if _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks:
        return "global module forward hooks are registered"
    return None


class _Structure(NamedTuple):
    """What the fused computation was derived from: checked by identity and attributes every call."""
    mods: List[nn.Module]            # the original and all its descendants
    nodes: tuple                     # (module, tuple of its children, whether its mode matters) for each of mods
    plan: Any                        # BlockPlan / ConvBNPlan, or None when the block is no longer fusable
    targets: Tuple[nn.Module, ...]   # the folded-from modules (convs and BNs)
    geometry: tuple                  # _geometry() of each target
    reason: Optional[str]            # why plan is None


class _CacheEntry(NamedTuple):
    key: tuple                       # (data_ptr, version) of each folded-from tensor when folded
    folded: Any
    sources: tuple                   # the folded-from tensors, kept alive so their addresses stay unique
    targets: tuple                   # the folded-from modules
    run: Optional[Callable]          # the backend's op for this (device, dtype) (blocks only)
    original_because: Optional[str] = None   # set: these folded weights must not run fused (why)


def _clear_kernel_caches() -> None:
    """Drops the CPU kernel's packed weights. That cache is keyed by tensor identity and version counter, so,
    like the folded weights, it cannot see `.data` / numpy writes; refresh() and a training/eval switch
    clear it with the folded weights (it includes weights passed straight from a model, e.g. CPULinear)."""
    from . import _ext

    clear = getattr(_ext.CPU_EXT, "clear_pack_cache", None)
    if clear is not None:
        clear()


def _recognized(cls: type, block: nn.Module, recognize: Callable, verb: str) -> Any:
    """``recognize(block)`` for ``cls.from_module``: TypeError when ``block`` is not a module, ValueError with
    every reason when it is not the pattern."""
    if not isinstance(block, nn.Module):
        raise TypeError(f"{cls.__name__}.from_module: expected a torch.nn.Module (one block), got "
                        f"{type(block).__name__}")
    try:
        return recognize(block)
    except NotFusable as exc:
        raise ValueError(f"cannot {verb} {type(block).__name__}: {exc}") from None


def _select_op(backend: str, device: Optional[torch.device], dtype: torch.dtype) -> Callable:
    """The op that runs ``backend`` for (device, dtype): the backend table's row, resolved once per cache slot
    (raises its ValueError / TypeError / RuntimeError when the backend cannot serve them)."""
    try:
        from . import backends
    except ImportError:  # an older ops module without the table
        return functools.partial(ops.inverted_residual, backend=backend)
    return backends.select(backend, device, dtype).run


def _tensors(m: nn.Module, out: list) -> list:
    """Every tensor a folded-from module computes its weights from, including parametrizations' originals
    (BN's num_batches_tracked is not one: it only counts training steps)."""
    out += [t for t in m._parameters.values() if t is not None]
    out += [t for k, t in m._buffers.items() if t is not None and k != "num_batches_tracked"]
    if m._modules:  # e.g. torch.nn.utils.parametrize's `parametrizations`
        for c in m._modules.values():
            if c is not None:
                _tensors(c, out)
    return out


def _version(t: torch.Tensor) -> int:
    """t's version counter, -1 for inference tensors."""
    try:
        return t._version
    except RuntimeError:  # an inference tensor: no version counter (it cannot change outside inference_mode)
        return -1


_MISSING = object()
# The fast path's checks and direct op calls in C++ (csrc/cpu/fast_path.cpp), when the CPU extension has them.
_FAST_EXT = getattr(backends._ext, "CPU_EXT", None)
_FAST_VALID = getattr(_FAST_EXT, "fast_valid", None)
if _FAST_VALID is not None:
    _FAST_EXT.set_fast_missing(_MISSING)
_len_fn_modes = getattr(torch._C, "_len_torch_function_stack", None)
_len_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)


def _modes_active() -> bool:
    """A torch function / dispatch mode is active (or this torch cannot say): the fast path steps aside."""
    if _len_fn_modes is None or _len_dispatch_modes is None:
        return True
    return bool(_len_fn_modes() or _len_dispatch_modes())


def _fast_valid_py(nodes: tuple, attrs: tuple, dicts: tuple, tensors: tuple) -> bool:
    """fast_valid of csrc/cpu/fast_path.cpp in Python (when the CPU extension is not built)."""
    for md, mods, kids, mode_matters in nodes:
        if ((mode_matters and md["training"]) or md["_forward_hooks"] or md["_forward_pre_hooks"] or "forward" in md
                or md["_modules"] is not mods or len(mods) != len(kids)):
            return False
        for a, b in zip(mods.values(), kids):
            if a is not b:
                return False
    for md, name, value in attrs:
        cur = md.get(name, _MISSING)
        if cur is not value and (value is _MISSING or cur is _MISSING or not cur == value):
            return False
    for dct, vals in dicts:
        if len(dct) != len(vals):
            return False
        for a, b in zip(dct.values(), vals):
            if a is not b:
                return False
    for t, ptr, ver in tensors:
        if t.is_inference() or t._version != ver or t.data_ptr() != ptr:
            return False
    return True


_fast_valid = _FAST_VALID if _FAST_VALID is not None else _fast_valid_py


class _FastPath(NamedTuple):
    """The decisions of the last fused call, for the next call's one cheap pass (issue 14: the per-call
    checks cost ~35 us per block, ~0.5 ms per batch-1 MobileNetV2 forward). Valid while every fact it was
    built from still holds; ``_FoldedModule._fast`` checks each of them every call, so it never decides
    differently from the full checks (``_fused_structure`` + ``_folded``): anything it cannot vouch for sends
    the call down the full path."""
    st: _Structure
    entry: _CacheEntry
    cache: dict                      # the module's _cache dict the entry lives in (a reset replaces it)
    device: torch.device
    dtype: torch.dtype
    backend: Any
    nodes: tuple                     # (module __dict__, its _modules, children tuple, mode matters)
    attrs: tuple                     # (__dict__, name, value): the geometry of the folded-from modules
    dicts: tuple                     # (dict, tuple of its values): the dicts the folded-from tensors come from
    tensors: tuple                   # (tensor, data_ptr, version) when folded (entry.sources, entry.key)
    call: Any                        # what the subclass runs: (callable, args after x), or its own payload


def _geometry_attrs(m: nn.Module) -> Optional[list]:
    """_geometry(m) as (__dict__, name, value) triples read from m.__dict__, or None when an attribute lives
    elsewhere (a property): then the module keeps the full per-call checks."""
    md = m.__dict__
    names = (("stride", "padding", "dilation", "groups", "padding_mode") if isinstance(m, nn.Conv2d)
             else ("eps", "track_running_stats"))
    out = []
    for n in names:
        if n not in md:
            if isinstance(m, nn.Conv2d) or hasattr(m, n):
                return None
            out.append((md, n, _MISSING))  # getattr(m, n, None) is None: must stay absent
        else:
            out.append((md, n, md[n]))
    return out


def _tensor_dicts(m: nn.Module, out: list) -> list:
    """(dict, its values) for every dict _tensors(m) reads, in the same order."""
    out.append((m._parameters, tuple(m._parameters.values())))
    out.append((m._buffers, tuple(m._buffers.values())))
    if m._modules:
        out.append((m._modules, tuple(m._modules.values())))
        for c in m._modules.values():
            if c is not None:
                _tensor_dicts(c, out)
    return out


class _FoldedModule(nn.Module):
    """Adopts an original module's children and caches weights folded from them per (device, dtype).

    Staleness (docs/CONTRACT.md, "Modules"): the folded weights are rebuilt when a folded-from tensor is
    replaced or modified in place through autograd-visible ops (its address or version counter changes), when
    a layer is replaced or a BN's eps or a conv's geometry changes (the module is recognised again), when the
    module switches between training and eval mode, and on ``refresh()``. Writes that bypass the version
    counter (``.data.mul_()``, writes through ``.numpy()``) are picked up at the next switch to eval mode or
    ``refresh()``.
    """

    def __init__(self, original: nn.Module, plan: Any):
        super().__init__()
        d = self.__dict__
        # Share the containers: a child, parameter or buffer replaced on either module is seen by both.
        d["_modules"] = original._modules
        d["_parameters"] = original._parameters
        d["_buffers"] = original._buffers
        d["_non_persistent_buffers_set"] = original._non_persistent_buffers_set
        d["_original"] = original  # not a child: its layers are already ours
        d["_cache"] = {}
        d["_struct"] = self._build_structure(plan, None)
        d["_warned"] = set()
        d["_fastpath"] = None
        d["plan"] = plan
        self.training = original.training

    # -- pickling / deepcopy: folded weights are rebuilt, never copied -----------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_warned"] = set()
        state["_fastpath"] = None
        return state

    # -- drop-in attributes -----------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)  # stride, use_res_connect, out_channels, has_skip, ...

    def __setattr__(self, name: str, value) -> None:
        d = self.__dict__
        if name == "backend":
            backends.check_name(value)
        original = d.get("_original")
        if (original is not None and name not in d and name in original.__dict__
                and not isinstance(value, (nn.Module, torch.Tensor))):
            setattr(original, name, value)   # e.g. use_res_connect: the original's forward reads it
            self._invalidate()               # recognise it again on the next call
            return
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(dir(self.__dict__["_original"])))

    # Drop-in for containers too: a replaced Sequential (torchvision's Conv2dNormActivation stem and head)
    # still indexes, iterates and has a length, as the original does (model.features[0][0].weight).
    def __getitem__(self, idx):
        return self.__dict__["_original"][idx]

    def __len__(self) -> int:
        return len(self.__dict__["_original"])

    def __iter__(self):
        return iter(self.__dict__["_original"])

    def __bool__(self) -> bool:  # a module is truthy even when the original has no length
        return True

    # -- mode, refresh ----------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        if mode != self.training:
            # A switch between training and eval drops the folded weights: .data / numpy edits made while
            # training count. (Not on every eval() call: refolding a network costs ~2.5 batch-1 forwards.)
            self.__dict__["_cache"] = {}
            _clear_kernel_caches()
        super().train(mode)
        self._original.train(mode)
        return self

    def refresh(self) -> "_FoldedModule":
        """Drops the folded weights and recognises the module again on the next call.

        Call it after changing weights in ways PyTorch does not record (``p.data.mul_()``, writes through
        ``p.detach().numpy()``, EMA updates written through ``.data``) while the module stays in eval mode
        (switching from training to eval drops the folded weights too), or after changing the original's class
        (its forward). ``mnv2_kernels.refresh(model)``
        does it for every fused module of a model. Recognising traces the block with torch.fx, which patches
        ``nn.Module`` globally while it runs: do not call it while other threads run models.
        """
        self._invalidate()
        _clear_kernel_caches()
        return self

    def _invalidate(self) -> None:
        d = self.__dict__
        d["_cache"] = {}
        st = d.get("_struct")
        if st is not None:
            d["_struct"] = st._replace(geometry=None)  # never matches: recognised again on the next eager call

    # -- subclass interface -----------------------------------------------------------------------------------
    def _recognize(self) -> Any:
        """The plan of ``self._original`` as it is now; raises NotFusable."""
        raise NotImplementedError

    def _plan_paths(self, plan: Any) -> Tuple[str, ...]:
        """Paths (relative to the original) of the modules whose tensors the folded weights depend on."""
        raise NotImplementedError

    def _fold(self, targets: Tuple[nn.Module, ...], dtype: torch.dtype) -> Any:
        """The folded weights in ``dtype`` from the folded-from modules ``targets``."""
        raise NotImplementedError

    # -- structure: which modules, which plan -----------------------------------------------------------------
    def _build_structure(self, plan: Any, reason: Optional[str]) -> _Structure:
        original = self.__dict__["_original"]
        targets = () if plan is None else tuple(original.get_submodule(p) for p in self._plan_paths(plan))
        mods = _walk(original, [])
        # parametrizations (torch.nn.utils.parametrize) run the same code for the original and the fold
        in_parametrizations = {id(p) for m in mods if isinstance(getattr(m, "parametrizations", None), nn.ModuleDict)
                               for p in m.parametrizations.modules()}
        nodes = tuple((m, tuple(m._modules.values()), not isinstance(m, _MODE_FREE) and id(m) not in in_parametrizations)
                      for m in mods)
        return _Structure(mods, nodes, plan, targets, tuple(_geometry(m) for m in targets), reason)

    def _unchanged(self, st: _Structure) -> bool:
        """True when nothing the fused path depends on changed since ``st`` was built and nothing asks for
        the original's forward (one pass over the block's modules; this runs every call)."""
        for m, kids, mode_matters in st.nodes:
            if (m.training and mode_matters) or m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
                return False
            if (tuple(m._modules.values()) != kids) if kids else m._modules:
                return False
        if _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks or st.geometry is None:
            return False
        return tuple([_geometry(m) for m in st.targets]) == st.geometry

    def _structure(self, mods: Optional[List[nn.Module]] = None) -> _Structure:
        """The current structure; recognises the original again when a layer or an attribute changed."""
        st = self.__dict__["_struct"]
        if torch.compiler.is_compiling():
            return st  # dynamo guards on the module tree itself
        if mods is None:
            mods = _walk(self._original, [])
        if st.geometry is not None and st.mods == mods and tuple(_geometry(m) for m in st.targets) == st.geometry:
            return st
        with _FOLD_LOCK:
            try:
                plan, reason = self._recognize(), None
            except NotFusable as exc:
                plan, reason = None, f"it is no longer fusable ({exc})"
            if plan is not None and "plan" in self.__dict__:
                self.__dict__["plan"] = plan
            st = self._build_structure(plan, reason)
            self.__dict__["_cache"] = {}
            self.__dict__["_struct"] = st
        return st

    # -- folded weights ---------------------------------------------------------------------------------------
    def folded(self, dtype: torch.dtype, device: Optional[torch.device] = None) -> Any:
        """The folded weights in ``dtype`` on the parameters' device (cached until a weight changes).

        ``device`` only names the cache slot (default: the parameters' device); each (device, dtype) has its
        own slot, so concurrent calls in several dtypes never see each other's weights. Raises ValueError when
        the module is no longer fusable (the reason says why).
        """
        st = self._structure()
        if st.plan is None:
            raise ValueError(f"{type(self).__name__}: {st.reason}")
        return self._folded(st, dtype, device).folded

    def _op(self, device: Optional[torch.device], dtype: torch.dtype) -> Optional[Callable]:
        """The op that runs the folded weights (None: the subclass runs them itself)."""
        return None

    def _refuse_folded(self, folded: Any) -> Optional[str]:
        """Why these folded weights must run the original's forward instead (None: they may run fused).
        Checked once per fold, never per call."""
        return None

    def _folded(self, st: _Structure, dtype: torch.dtype, device: Optional[torch.device]) -> _CacheEntry:
        if torch.compiler.is_compiling():  # traced: inductor treats the folding as constant work
            return _CacheEntry((), self._fold(st.targets, dtype), (), st.targets, None)
        tensors: list = []
        for m in st.targets:
            _tensors(m, tensors)
        # Changes whenever a folded-from tensor is replaced (.to(), load_state_dict(assign=True), a new
        # Parameter) or modified in place through PyTorch (optimiser steps, load_state_dict, copy_): addresses
        # and version counters. The entry keeps the tensors alive, so no new tensor can take an address.
        try:
            key = tuple([(t.data_ptr(), t._version) for t in tensors])
        except RuntimeError:  # inference tensors (built or converted inside torch.inference_mode())
            key = tuple([(t.data_ptr(), _version(t)) for t in tensors])
        slot = (device if device is not None else (tensors[0].device if tensors else None), dtype,
                self.__dict__.get("backend"))  # (a changed .backend gets its own slot)
        entry = self.__dict__["_cache"].get(slot)
        if entry is not None and entry.key == key and entry.targets is st.targets:
            return entry
        with _FOLD_LOCK:
            cache = self.__dict__["_cache"]
            entry = cache.get(slot)
            if entry is None or entry.key != key or entry.targets is not st.targets:
                tracing = torch._C._get_tracing_state()
                torch._C._set_tracing_state(None)  # torch.jit.trace: the folded weights become constants
                try:
                    run = self._op(slot[0], dtype)
                    # inference_mode(False) (issue 14): folded weights get version counters even when the first
                    # call runs under torch.inference_mode(), so the CPU kernel can cache their packed form.
                    with torch.no_grad(), torch.inference_mode(False):
                        folded = self._fold(st.targets, dtype)
                        entry = _CacheEntry(key, folded, tuple(tensors), st.targets, run, self._refuse_folded(folded))
                finally:
                    torch._C._set_tracing_state(tracing)
                cache[slot] = entry
        return entry

    # -- the per-call fast path (issue 14) ---------------------------------------------------------------------
    def _fast(self, x: torch.Tensor) -> Optional[_FastPath]:
        """The last fused call's record when running ``x`` fused again is certain to do exactly what the full
        checks would (same structure, same folded weights, nothing asking for the original's forward), else
        None (then take the full path). One pass (in C++ when the CPU extension is built)."""
        if torch.compiler.is_compiling():  # first: dynamo would guard on everything read below
            return None
        d = self.__dict__
        fp = d.get("_fastpath")
        if (fp is None or d["training"] or d["_cache"] is not fp.cache or d.get("backend") != fp.backend
                or type(x) is not torch.Tensor or x.dtype is not fp.dtype or x.device != fp.device
                or torch.is_grad_enabled() or torch.jit.is_tracing() or _autocast_on(x) or _fwad._current_level >= 0
                or _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks or _modes_active()):
            return None
        return fp if _fast_valid(fp.nodes, fp.attrs, fp.dicts, fp.tensors) else None

    def _set_fast(self, st: _Structure, entry: _CacheEntry, x: torch.Tensor, call: Any) -> None:
        """Records a fused call that the full checks just allowed (st, entry as they returned them), so that
        the next one can take ``_fast``. Records nothing it could not check cheaply later: inference tensors
        (no version counter), attributes outside ``__dict__``, or a state that moved on since st / entry were
        made (a layer, tensor or attribute changed meanwhile)."""
        d = self.__dict__
        if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.is_grad_enabled()
                or entry.original_because is not None or st.geometry is None or entry.targets is not st.targets
                or any(v < 0 for _, v in entry.key)):  # (an inference tensor: the full path decides every call)
            return
        cache = d["_cache"]
        if not any(e is entry for e in cache.values()):  # the cache was reset meanwhile (refresh, train/eval)
            return
        attrs: list = []
        for m in st.targets:
            a = _geometry_attrs(m)
            if a is None:
                return
            attrs += a
        if tuple(_geometry(m) for m in st.targets) != st.geometry:
            return
        dicts: list = []
        for m in st.targets:
            _tensor_dicts(m, dicts)
        now: list = []
        for m in st.targets:
            _tensors(m, now)
        if len(now) != len(entry.sources) or any(a is not b for a, b in zip(now, entry.sources)):
            return
        tensors = tuple((t, p, v) for t, (p, v) in zip(entry.sources, entry.key))
        keys = ("training", "_forward_hooks", "_forward_pre_hooks", "_modules")
        if any(not all(k in m.__dict__ for k in keys) for m, _, _ in st.nodes):
            return
        nodes = tuple((m.__dict__, m._modules, kids, bool(mode_matters)) for m, kids, mode_matters in st.nodes)
        d["_fastpath"] = _FastPath(st, entry, cache, x.device, x.dtype, d.get("backend"), nodes, tuple(attrs),
                               tuple(dicts), tensors, call)

    # -- which path -------------------------------------------------------------------------------------------
    def _warn_once(self, what: str, message: str) -> None:
        warned = self.__dict__["_warned"]
        if what not in warned:
            warned.add(what)
            warnings.warn(message, FusedPathWarning, stacklevel=4)

    def _fused_structure(self, x: torch.Tensor) -> Optional[_Structure]:
        """The structure to run fused, or None to run the original's forward (warning once per reason)."""
        if self.training:
            return None
        name = type(self).__name__
        if _autocast_on(x):   # the original's convs run in the autocast dtype
            self._warn_once("autocast", f"mnv2_kernels: {name} runs its original (unfused) forward under "
                            "torch.autocast, whose convolutions then run in the autocast dtype")
            return None
        if _forward_ad_on():   # dual tensors: the fused ops would drop the tangent
            self._warn_once("forward_ad", f"mnv2_kernels: {name} runs its original (unfused) forward inside "
                            "torch.autograd.forward_ad.dual_level() (the fused ops have no forward-AD formula)")
            return None
        if (torch.jit.is_tracing() or torch.compiler.is_compiling()) and torch.onnx.is_in_onnx_export():
            self._warn_once("onnx", f"mnv2_kernels: ONNX has no mnv2::inverted_residual, so {name} exports its "
                            "original (unfused) layers; exporting the original model gives the same graph "
                            "(ONNX runtimes fold BatchNorm themselves)")
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            if torch.compiler.is_exporting():
                self._warn_once("export", f"mnv2_kernels: exporting {name} with gradients enabled captures the "
                                "original (unfused) block; export under torch.no_grad() to capture the fused op")
            elif not torch.compiler.is_compiling():
                self._warn_once("grad", f"mnv2_kernels: {name} in eval mode with gradients enabled runs the "
                                "original (unfused, ~3x slower) block so that gradients flow; run inference under "
                                "torch.no_grad() or torch.inference_mode() for the fused path")
            return None
        st = self.__dict__["_struct"]
        if torch.compiler.is_compiling():
            return st if st.plan is not None else None
        if st.plan is not None and self._unchanged(st):
            return st  # the fast path
        mods = _walk(self._original, [])
        reason = _fallback_reason(self._build_structure(None, None).nodes)
        if reason is None:
            st = self._structure(mods)
            if st.plan is not None:
                return st
            reason = st.reason
        self._warn_once(reason, f"mnv2_kernels: {name} runs its original (unfused) forward: {reason}")
        return None

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"mnv2_kernels: torch.jit.script cannot compile {type(self).__name__} (its weight cache and "
            "recognition are Python). Use torch.jit.trace(model.eval(), x) under torch.no_grad() (it records the "
            "fused op with the folded weights as constants; load the result where mnv2_kernels is imported), "
            "torch.export / torch.compile, or script the original, unfused model.")


class FusedInvertedResidual(_FoldedModule):
    """Eval-mode fused inverted-residual block (expand -> depthwise -> project [+ x]) in one launch.

    Input: [N, Cin, H, W], float32 (any backend), float16/bfloat16 (CUDA, Triton; bfloat16 on CPU).
    Output: [N, Cout, Ho, Wo] in the input's memory format. Weights are folded in float64 and cast to the
    input's dtype (so autocast works), cached per (device, dtype). Runs the original block's forward in
    training mode, with gradients enabled, under ONNX export, and whenever one of its layers is in training
    mode, has forward hooks or is no longer fusable (docs/CONTRACT.md, "Modules").
    """

    def __init__(self, block: nn.Module, plan: BlockPlan, backend: str = "auto"):
        backends.check_name(backend)
        super().__init__(block, plan)
        self.__dict__["backend"] = backend

    @classmethod
    def from_module(cls, block: nn.Module, backend: str = "auto") -> "FusedInvertedResidual":
        """Builds the fused block from a torchvision, timm or hand-written block.

        Raises ValueError naming why the block cannot be fused exactly (see mnv2_kernels.recognize), TypeError
        when ``block`` is not an nn.Module.
        """
        return cls(block, _recognized(cls, block, recognize_block, "fuse"), backend)

    def extra_repr(self) -> str:
        return f"{self.plan.describe()}, backend={self.backend!r}"

    def _recognize(self) -> BlockPlan:
        return recognize_block(self._original)

    def _plan_paths(self, plan: BlockPlan) -> Tuple[str, ...]:
        return (*(plan.expand or ()), *plan.depthwise, *plan.project)

    def _op(self, device: Optional[torch.device], dtype: torch.dtype) -> Callable:
        return _select_op(self.backend, device, dtype)

    def _fold(self, targets: Tuple[nn.Module, ...], dtype: torch.dtype) -> FoldedBlock:
        m = targets  # (expand conv, bn)?, dw conv, bn, project conv, bn
        exp = (m[0], m[1]) if len(m) == 6 else None
        return fold_block(exp, (m[-4], m[-3]), (m[-2], m[-1]), dtype=dtype)

    def _refuse_folded(self, folded: FoldedBlock) -> Optional[str]:
        # A NaN/Inf depthwise weight meets the zero padding at the image border: 0 * NaN is NaN by IEEE, but
        # PyTorch's own convolutions differ there (ATen's CPU depthwise skips padding taps; cuDNN depends on
        # its algorithm). Only the original's forward puts NaN/Inf exactly where the original does.
        if folded.w_dw.device.type != "meta" and not bool(torch.isfinite(folded.w_dw).all()):
            return ("its folded depthwise weights hold NaN or Inf (a conv weight or a BatchNorm statistic), "
                    "where kernels and PyTorch's convolutions treat the zero padding differently")
        return _refuse_non_finite(folded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp = self._fast(x)
        if fp is not None:  # the same decisions as the last call (issue 14: one cheap pass)
            run, args = fp.call
            return run(x, *args)
        st = self._fused_structure(x)
        if st is None:
            return self._original(x)
        entry = self._folded(st, x.dtype, x.device)
        if entry.run is None:  # traced by torch.compile / torch.export
            return ops.inverted_residual(x, *entry.folded, st.plan.stride, st.plan.residual, backend=self.backend)
        if entry.original_because is not None:
            self._warn_once(entry.original_because, f"mnv2_kernels: {type(self).__name__} runs its original "
                            f"(unfused) forward: {entry.original_because}")
            return self._original(x)
        args = (*entry.folded, st.plan.stride, st.plan.residual)
        y = entry.run(x, *args)
        run = entry.run
        if (getattr(run, "__self__", None) is backends.ROWS.get("cpu") and x.device.type == "cpu"
                and hasattr(_FAST_EXT, "inverted_residual_cpu")):
            run = _FAST_EXT.inverted_residual_cpu  # what torch.ops.mnv2.inverted_residual runs here
        self._set_fast(st, entry, x, (run, args))
        return y


_ACTIVATIONS: Dict[Optional[str], Optional[Callable]] = {
    None: None, "relu": F.relu_, "relu6": lambda t: t.clamp_(0.0, 6.0),
    # timm's stems, heads and ConvNormAct layers (issue 13)
    "hardswish": lambda t: F.hardswish(t, inplace=True), "silu": lambda t: F.silu(t, inplace=True),
    "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


class FoldedConvBNAct(_FoldedModule):
    """Eval-mode conv -> BN [-> ReLU | ReLU6] as one convolution with folded weights (any conv geometry)."""

    def __init__(self, module: nn.Module, plan: ConvBNPlan):
        super().__init__(module, plan)

    def extra_repr(self) -> str:
        return self.plan.describe()

    def _recognize(self) -> ConvBNPlan:
        return recognize_conv_bn(self._original)

    def _plan_paths(self, plan: ConvBNPlan) -> Tuple[str, ...]:
        return (plan.conv, plan.bn)

    def _fold(self, targets: Tuple[nn.Module, ...], dtype: torch.dtype):
        w, b = fold_conv_bn(*targets)
        return w.to(dtype), b.to(dtype)

    def _refuse_folded(self, folded) -> Optional[str]:
        return _refuse_non_finite(folded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self._fused_structure(x)
        if st is None:
            return self._original(x)
        entry = self._folded(st, x.dtype, x.device)
        if entry.original_because is not None:
            self._warn_once(entry.original_because, f"mnv2_kernels: {type(self).__name__} runs its original "
                            f"(unfused) forward: {entry.original_because}")
            return self._original(x)
        w, b = entry.folded
        conv = st.targets[0]
        y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        act: Optional[Callable] = _ACTIVATIONS[st.plan.activation]
        return y if act is None else act(y)


def refresh(model: nn.Module) -> nn.Module:
    """Calls ``refresh()`` on every fused module of ``model`` (after edits PyTorch does not record, such as
    ``p.data.mul_()`` or writes through ``.numpy()``, made while the model stays in eval mode)."""
    for m in model.modules():
        if isinstance(m, _FoldedModule):
            m.refresh()
        for k, v in m.__dict__.items():   # timm stems / heads folded by mnv2_kernels.timm_stem (not children)
            if k.startswith("_mnv2_") and isinstance(v, _FoldedModule):
                v.refresh()
    _clear_kernel_caches()  # also the layers that pass their own weights to a kernel (stem_head.CPULinear)
    return model


def _refuse_non_finite(folded: Any) -> Optional[str]:
    """Why folded weights holding a NaN or Inf must run the original (None when all are finite): folding moves
    an infinite BatchNorm scale (gamma = inf, running_var + eps = 0) into every weight before the conv's sum,
    so +inf and -inf products give NaN where the original's BatchNorm gives +-inf (and ReLU6 then 0 or 6).
    Checked once per fold (docs/CONTRACT.md, "Modules")."""
    for t in folded:
        if isinstance(t, torch.Tensor) and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            return ("its folded weights hold NaN or Inf (a conv weight, a BatchNorm statistic or an infinite "
                    "BatchNorm scale), which folding would turn into NaN where the original gives +-inf")
    return None


_ANY_AUTOCAST = getattr(torch._C, "_is_any_autocast_enabled", None)


def _autocast_on(x: torch.Tensor) -> bool:
    """torch.autocast is enabled: for any device type when this torch can say so in one call (~0.2 us; the
    original then runs, which is exact), else for x's device type (False for types autocast does not know)."""
    if _ANY_AUTOCAST is not None:
        return _ANY_AUTOCAST()
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:
        return False


def _forward_ad_on() -> bool:
    """A forward-mode AD level is active (torch.autograd.forward_ad.dual_level(), which no_grad does not
    stop): the fused ops have no forward-AD formula and would drop a dual input's tangent."""
    return _fwad._current_level >= 0


def _finite_sums(x: torch.Tensor, y: torch.Tensor) -> bool:
    """False when x or y holds a NaN or Inf (or their sums overflow); accumulated in float32 (float64 for
    float64 tensors)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return math.isfinite(float(x.sum(dtype=acc) + y.sum(dtype=acc)))


def _tail(y: torch.Tensor, x: torch.Tensor, f: Any, p: Any) -> torch.Tensor:
    """A generalised block's trailing 1x1 conv -> BN -> act (folded; PP-LCNetV2 split_pw), then its residual."""
    from .reference import activation
    y = activation(F.conv2d(y, f.w_tail[:, :, None, None], f.b_tail), p.act_tail)
    return y + x if p.residual else y


class FoldedInvertedResidual(FusedInvertedResidual):
    """Eval-mode generalised inverted-residual block (docs/CONTRACT.md, "The generalised block"): other
    activations, 5x5 / 7x7 depthwise, TF 'same' padding, squeeze-excite, layer scale, on BN-folded weights
    through torch.ops.mnv2.inverted_residual_ex.

    Today no fused kernel computes these blocks: the op runs the plain-PyTorch reference on the folded
    weights (one BN-free pass per layer, not one launch), and ``fuse()`` reports them as "folded (reference
    path ...)". Every rule of FusedInvertedResidual holds (runs the original in training mode, with
    gradients, hooks, replaced layers; same keys). Input/output as FusedInvertedResidual; any float dtype.
    """

    @classmethod
    def from_module(cls, block: nn.Module, backend: str = "auto") -> "FoldedInvertedResidual":
        """Builds it from a torchvision, timm or hand-written block; ValueError naming every reason when the
        block is not a generalised inverted residual, TypeError when ``block`` is not an nn.Module."""
        from .recognize import recognize_block_ex
        return cls(block, _recognized(cls, block, recognize_block_ex, "fold"), backend)

    def _recognize(self):
        from .recognize import recognize_block_ex
        return recognize_block_ex(self._original)

    def _plan_paths(self, plan) -> Tuple[str, ...]:
        return plan.target_paths()

    def _op(self, device: Optional[torch.device], dtype: torch.dtype) -> Callable:
        return backends.select_ex(self.backend, device, dtype, self.__dict__["plan"].config())

    def _fold(self, targets: Tuple[nn.Module, ...], dtype: torch.dtype):
        from .folding import fold_plan_ex
        plan = self.__dict__["plan"]
        return fold_plan_ex(plan, dict(zip(plan.target_paths(), targets)), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self._fused_structure(x)
        if st is None:
            return self._original(x)
        entry = self._folded(st, x.dtype, x.device)
        p = st.plan
        f = entry.folded
        tail = f.w_tail is not None   # PP-LCNetV2 split_pw: a 1x1 conv after the op, the residual after it
        args = (x, *f[:10], p.stride, p.residual and not tail, p.act_expand, p.act_dw, p.padding, p.se_act,
                p.se_gate, p.act_project, f.w_dw_start, f.b_dw_start, p.stride_start)
        if entry.run is None:  # traced by torch.compile / torch.export
            y = torch.ops.mnv2.inverted_residual_ex(*args)
            return _tail(y, x, f, p) if tail else y
        if entry.original_because is not None:
            self._warn_once(entry.original_because, f"mnv2_kernels: {type(self).__name__} runs its original "
                            f"(unfused) forward: {entry.original_because}")
            return self._original(x)
        y = entry.run(*args)
        if tail:
            y = _tail(y, x, f, p)
        if p.embedded and torch.jit.is_tracing():
            self._warn_once("trace-embedded", f"mnv2_kernels: tracing {type(self).__name__}, whose folded conv embeds "
                            "smaller kernels or groups with zeros: the traced graph has no per-call NaN/Inf check, so "
                            "on inputs with NaN or Inf it spreads them where the original gives finite values (trace "
                            "the original block to keep its behaviour there)")
        # Embedded MixConv / summed branches / block-diagonal 1x1 (plan.embedded): the added zero taps and blocks
        # multiply neighbours by 0, so a NaN / Inf (in x, or overflowing inside) would spread where the original
        # gives finite numbers. One check of the narrow input and output per call; any non-finite value: the
        # original's forward (docs/CONTRACT.md, "The generalised block"). A sum is NaN / Inf when any element is
        # (and, rarely, when finite values overflow it: then the original runs, still exact); ~20x cheaper on
        # the CPU than torch.isfinite(t).all(), one synchronisation on CUDA.
        if p.embedded and not _finite_sums(x, y):
            self._warn_once("non-finite", f"mnv2_kernels: {type(self).__name__} ran its original forward for an "
                            "input or output with NaN or Inf (its folded conv embeds smaller kernels or groups with "
                            "zeros, exact for finite values only)")
            return self._original(x)
        return y
