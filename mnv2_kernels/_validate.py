"""Argument validation for ``mnv2::inverted_residual``, shared by the fake, Triton and reference paths.

Mirrors ``csrc/common/checks.h`` (the C++ bindings): the same checks in the same order, the same words and
the same exception types (C++ TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError); dtypes are
named as Python spells them (``torch.float16``). tests/test_errors.py holds the two paths to that.
docs/CONTRACT.md is the contract.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch

PREFIX = "mnv2.inverted_residual: "
# dtypes an input may have at all (the reference computes each; which kernel computes which is in
# mnv2_kernels/backends.py). checks.h: kFloatingDtypes.
FLOATING_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class BlockDims:
    N: int
    Cin: int
    H: int
    W: int
    Chid: int
    Cout: int
    Ho: int
    Wo: int
    stride: int
    has_expand: bool
    residual: bool


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as Python spells it ("torch.float16"); checks.h: py_dtype_name."""
    return str(dtype)


def dtype_list(dtypes: Iterable[torch.dtype], last: str = "and") -> str:
    """"torch.float32", "torch.float32 and torch.bfloat16", "a, b and c" ("or" with last="or");
    checks.h: dtype_list."""
    names = [dtype_name(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {last} " + names[-1]


def x_dtype_message(dtype: torch.dtype) -> str:
    """Why x's dtype is no input at all (integer, bool, complex, float8); checks.h: check_x_dtype."""
    return (f"x must be a floating-point tensor ({dtype_list(FLOATING_DTYPES, 'or')}), got {dtype_name(dtype)}; "
            f"convert the input with x.to(torch.float32)")


def check_x_dtype(dtype: torch.dtype) -> None:
    """Raises TypeError unless ``dtype`` is one the op accepts at all (FLOATING_DTYPES)."""
    if dtype not in FLOATING_DTYPES:
        raise TypeError(PREFIX + x_dtype_message(dtype))


def kernel_dtype_message(kernel: str, served, dtype: torch.dtype) -> str:
    """A kernel refusing x's dtype; checks.h: check_kernel_dtype (the same words after the prefix)."""
    return (f"the {kernel} kernel supports {dtype_list(served)}, got {dtype_name(dtype)}; convert the input and "
            f"the module with .to({dtype_name(served[0])})")


def _fail(msg: str, exc=ValueError):
    raise exc(PREFIX + msg)


def _check_same_place(name: str, w: torch.Tensor, x: torch.Tensor) -> None:
    if w.device != x.device:
        _fail(f"{name} is on {w.device} but x is on {x.device}; move the module with .to(x.device)")
    if w.dtype != x.dtype:
        _fail(f"{name} is {dtype_name(w.dtype)} but x is {dtype_name(x.dtype)}; call .to({dtype_name(x.dtype)}) "
              "on the module", TypeError)


def _check_shape(name: str, w: torch.Tensor, expected) -> None:
    if tuple(w.shape) != tuple(expected):
        _fail(f"{name} must have shape {list(expected)}, got {list(w.shape)}")


def check_inverted_residual_args(x: torch.Tensor, w_expand: Optional[torch.Tensor],
                                 b_expand: Optional[torch.Tensor], w_dw: torch.Tensor, b_dw: torch.Tensor,
                                 w_project: torch.Tensor, b_project: torch.Tensor, stride: int,
                                 residual: bool) -> BlockDims:
    """Validates every argument (shapes, devices, dtypes, stride, residual) before anything is allocated.

    Returns the block's dimensions. Raises ValueError (shape, device, stride, residual) or TypeError (x not
    floating point, a weight in another dtype than x) with a message that says what was expected, what
    came and what to do; the C++ bindings (csrc/common/checks.h) raise the same type with the same words.
    """
    if x.dim() != 4:
        _fail(f"x must be a 4-D (N, C, H, W) tensor, got {x.dim()}-D; add a batch dimension with x.unsqueeze(0) "
              "for a single image")
    if x.dtype not in FLOATING_DTYPES:
        _fail(x_dtype_message(x.dtype), TypeError)
    N, Cin, H, W = x.shape
    if stride not in (1, 2):
        _fail(f"stride must be 1 or 2, got {stride}")
    if H < 1 or W < 1:
        _fail(f"x must have H, W >= 1, got {list(x.shape)}")
    if w_dw.dim() != 3 or tuple(w_dw.shape[1:]) != (3, 3):
        _fail(f"w_dw must have shape [Chid, 3, 3], got {list(w_dw.shape)}")
    Chid = w_dw.shape[0]
    if w_project.dim() != 2:
        _fail(f"w_project must have shape [Cout, Chid], got {list(w_project.shape)}")
    Cout = w_project.shape[0]
    has_expand = w_expand is not None
    if has_expand:
        if w_expand.dim() != 2:
            _fail(f"w_expand must have shape [Chid, Cin], got {list(w_expand.shape)}")
        if w_expand.shape[1] != Cin:
            _fail(f"block expects {w_expand.shape[1]} input channels, got {Cin}")
        _check_shape("w_expand", w_expand, (Chid, Cin))
        if b_expand is None:
            _fail("b_expand is required when w_expand is given")
        _check_shape("b_expand", b_expand, (Chid,))
        _check_same_place("w_expand", w_expand, x)
        _check_same_place("b_expand", b_expand, x)
    else:
        if b_expand is not None:
            _fail("b_expand given without w_expand")
        if Chid != Cin:
            _fail(f"block expects {Chid} input channels, got {Cin}")
    _check_shape("b_dw", b_dw, (Chid,))
    _check_shape("w_project", w_project, (Cout, Chid))
    _check_shape("b_project", b_project, (Cout,))
    for name, w in (("w_dw", w_dw), ("b_dw", b_dw), ("w_project", w_project), ("b_project", b_project)):
        _check_same_place(name, w, x)
    if residual and not (stride == 1 and Cin == Cout):
        _fail(f"residual needs stride 1 and equal input and output channels, got stride {stride}, "
              f"{Cin} -> {Cout} channels")
    return BlockDims(N=N, Cin=Cin, H=H, W=W, Chid=Chid, Cout=Cout, Ho=(H - 1) // stride + 1,
                     Wo=(W - 1) // stride + 1, stride=stride, has_expand=has_expand, residual=residual)


def wants_channels_last(x: torch.Tensor) -> bool:
    """Output memory format rule (as nn.Conv2d): channels_last iff x is channels_last and not NCHW-contiguous."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
