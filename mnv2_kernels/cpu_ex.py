"""The CPU implementation of ``torch.ops.mnv2.inverted_residual_ex`` (issue 13; docs/CONTRACT.md, "The
generalised block"): the fused C++ kernel of csrc/cpu/kernel_ex_impl.h for float32 and bfloat16, the
plain-PyTorch reference for the rest.

Layers: kernel (csrc/cpu/kernel_ex_impl.h) -> launcher (``mnv2_kernels._C.inverted_residual_ex_cpu``: packing
cache, scratch, threads) -> this registered implementation (argument checks: ``ops.check_inverted_residual_ex_args``,
the op's own errors; dtype / availability routing) -> the modules (``modules.FoldedInvertedResidual``) through
``backends.EX_SUPPORT["cpu"]``.

Routed to the reference (``ops._ex_reference_impl``), so the op still computes every CPU call:
  - dtypes the kernel does not serve (float16, float64);
  - a machine or build without the kernel (no AVX2/FMA, ``mnv2_kernels._C`` missing);
  - a depthwise weight that is NaN or +-Inf (the kernel says so by returning None: its zero padding would not
    multiply those weights as the reference's does).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from . import ops

_ACT_CODES = {"none": 0, "relu6": 1, "relu": 2, "hardswish": 3, "silu": 4, "gelu": 5, "gelu_tanh": 6,
              "sigmoid": 7, "hardsigmoid": 8}   # cpu_kernel.h, ExAct
KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def kernel_unavailable_reason() -> Optional[str]:
    """Why the fused CPU kernel of the generalised block cannot run on this machine (None: it can)."""
    if _ext.CPU_EXT is None:
        return f"the CPU extension is not built ({_ext.CPU_EXT_ERROR})"
    try:
        _ext.CPU_EXT.cpu_isa()
    except RuntimeError as e:  # no AVX2/FMA
        return str(e)
    return None


_UNAVAILABLE = kernel_unavailable_reason()


def inverted_residual_ex_cpu(x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand,
                             b_se_expand, w_project, b_project, stride, residual, act_expand, act_dw, padding,
                             se_act, se_gate, act_project, w_dw_start=None, b_dw_start=None, stride_start=1):
    """The op on CPU tensors (arguments and shapes: ``ops.inverted_residual_ex``). Returns [N, Cout, Ho, Wo] in
    x's dtype and memory format. Raises ValueError / TypeError as ``ops.check_inverted_residual_ex_args``."""
    args = (w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, w_project,
            b_project, stride, residual, act_expand, act_dw, padding, se_act, se_gate, act_project, w_dw_start,
            b_dw_start, stride_start)
    ops.check_inverted_residual_ex_args(x, *args)
    if x.dtype in KERNEL_DTYPES and _UNAVAILABLE is None:
        y = _ext.CPU_EXT.inverted_residual_ex_cpu(
            x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, w_project,
            b_project, stride, residual, _ACT_CODES[act_expand], _ACT_CODES[act_dw], padding == "tf_same",
            _ACT_CODES[se_act], _ACT_CODES[se_gate], _ACT_CODES[act_project], w_dw_start, b_dw_start,
            stride_start)
        if y is not None:
            return y
    return ops._ex_reference_impl(x, *args)


def set_se_scratch_bytes(nbytes: int) -> int:
    """Squeeze-excite blocks: one image's depthwise output ([Ho*Wo, Chid] float32) stays in the thread's scratch
    (one pass) up to ``nbytes`` (default 4 MiB, env MNV2_CPU_SE_SCRATCH_BYTES), else the kernel runs two passes
    (the second recomputes expand + depthwise). Returns the previous value. For tests and benchmarks."""
    return _ext.CPU_EXT.set_se_scratch_bytes(int(nbytes))


ops._lib.impl("inverted_residual_ex", inverted_residual_ex_cpu, "CPU")
