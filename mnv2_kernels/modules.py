"""Drop-in modules that run BatchNorm-folded fused computations in eval mode.

Both keep the original module's layers as their own children (same names, so state dicts are
interchangeable) and, in training mode or when gradients are requested, run the original module's own
forward, so results, gradients and BN statistics are exactly the original's.

- ``FusedInvertedResidual``: a whole inverted-residual block as one fused op.
- ``FoldedConvBNAct``: a conv -> BN [-> ReLU/ReLU6] outside the blocks (stem, head) as one convolution with
  folded weights and an in-place activation.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .folding import FoldedBlock, fold_block, fold_conv_bn
from .recognize import BlockPlan, ConvBNPlan, NotFusable, recognize_block

log = logging.getLogger("mnv2_kernels")


class _FoldedModule(nn.Module):
    """Adopts an original module's children and caches weights folded from them per dtype."""

    def __init__(self, original: nn.Module):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        for name, p in original.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in original.named_buffers(recurse=False):
            self.register_buffer(name, b)
        object.__setattr__(self, "_original", original)  # not a child: its layers are already ours
        self.training = original.training
        self._cache_key: Optional[tuple] = None
        self._cache: Any = None
        self._warned_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._original.train(mode)
        return self

    def _fold(self, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def _fold_paths(self) -> Tuple[str, ...]:
        """Paths (relative to self) of the modules whose tensors the folded weights depend on."""
        raise NotImplementedError

    def _fold_targets(self) -> Tuple[nn.Module, ...]:
        """The modules at ``_fold_paths()``, resolved once: .to(), load_state_dict() and optimisers keep
        the module objects."""
        mods = self.__dict__.get("_fold_modules")
        if mods is None:
            mods = tuple(self.get_submodule(p) for p in self._fold_paths())
            object.__setattr__(self, "_fold_modules", mods)
        return mods

    def _state_key(self, dtype: torch.dtype) -> tuple:
        """Changes whenever a folded-from tensor is replaced (.to(), load_state_dict(assign=True)) or
        modified in place (optimiser steps, load_state_dict): storage pointers and version counters."""
        key: list = [dtype]
        for m in self._fold_targets():
            for tensors in (m._parameters, m._buffers):
                for t in tensors.values():
                    if t is not None:
                        key += (t.data_ptr(), t._version, t.device)
        return tuple(key)

    def folded(self, dtype: torch.dtype) -> Any:
        """The folded weights in ``dtype`` on the parameters' device (cached until a weight changes)."""
        if torch.compiler.is_compiling():
            return self._fold(dtype)  # traced: inductor treats it as constant work
        key = self._state_key(dtype)
        if key != self._cache_key:
            self._cache = self._fold(dtype)
            self._cache_key = key
        return self._cache

    def _use_original(self, x: torch.Tensor) -> bool:
        if self.training:
            return True
        if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        if not self._warned_grad and not torch.compiler.is_compiling():
            self._warned_grad = True
            log.info("%s: gradients are enabled in eval mode, running the unfused module; use torch.no_grad() "
                     "or torch.inference_mode() for the fused path", type(self).__name__)
        return True


class FusedInvertedResidual(_FoldedModule):
    """Eval-mode fused inverted-residual block (expand -> depthwise -> project [+ x]) in one launch.

    Input: [N, Cin, H, W], float32 (any backend), float16/bfloat16 (CUDA, Triton; bfloat16 on CPU).
    Output: [N, Cout, Ho, Wo] in the input's memory format. Weights are folded in float64 and cast to the
    input's dtype (so autocast works); the folded copy is refreshed whenever a parameter or BN buffer
    changes (load_state_dict, optimiser steps, .to()).
    """

    def __init__(self, block: nn.Module, plan: BlockPlan, backend: str = "auto"):
        if backend not in ops.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {ops.BACKENDS}")
        super().__init__(block)
        self.plan = plan
        self.backend = backend

    @classmethod
    def from_module(cls, block: nn.Module, backend: str = "auto") -> "FusedInvertedResidual":
        """Builds the fused block from a torchvision, timm or hand-written block.

        Raises ValueError naming why the block cannot be fused exactly (see mnv2_kernels.recognize).
        """
        try:
            plan = recognize_block(block)
        except NotFusable as exc:
            raise ValueError(f"cannot fuse {type(block).__name__}: {exc}") from None
        return cls(block, plan, backend)

    def extra_repr(self) -> str:
        return f"{self.plan.describe()}, backend={self.backend!r}"

    def _fold_paths(self) -> Tuple[str, ...]:
        p = self.plan
        return (*(p.expand or ()), *p.depthwise, *p.project)

    def _fold(self, dtype: torch.dtype) -> FoldedBlock:
        m = self._fold_targets()  # (expand conv, bn)?, dw conv, bn, project conv, bn
        exp = (m[0], m[1]) if self.plan.expand is not None else None
        return fold_block(exp, (m[-4], m[-3]), (m[-2], m[-1]), dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_original(x):
            return self._original(x)
        w = self.folded(x.dtype)
        return ops.inverted_residual(x, *w, self.plan.stride, self.plan.residual, backend=self.backend)


_ACTIVATIONS: dict = {None: None, "relu": F.relu_, "relu6": lambda t: t.clamp_(0.0, 6.0)}


class FoldedConvBNAct(_FoldedModule):
    """Eval-mode conv -> BN [-> ReLU | ReLU6] as one convolution with folded weights (any conv geometry)."""

    def __init__(self, module: nn.Module, plan: ConvBNPlan):
        super().__init__(module)
        self.plan = plan

    def extra_repr(self) -> str:
        return self.plan.describe()

    def _fold_paths(self) -> Tuple[str, ...]:
        return (self.plan.conv, self.plan.bn)

    def _fold(self, dtype: torch.dtype):
        w, b = fold_conv_bn(*self._fold_targets())
        return w.to(dtype), b.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_original(x):
            return self._original(x)
        w, b = self.folded(x.dtype)
        conv = self._fold_targets()[0]
        y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        act: Optional[Callable] = _ACTIVATIONS[self.plan.activation]
        return y if act is None else act(y)
