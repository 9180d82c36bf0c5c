"""The registered ops and the backend choice.

Layers (see docs/CONTRACT.md): kernels live in csrc/cpu, csrc/cuda and mnv2_kernels/triton; this module
defines the op schemas (torch.library), their fake implementations (for torch.compile / torch.export), the
Triton op's implementation, and ``inverted_residual(..., backend=...)`` which routes a call to one backend.

Ops:
  torch.ops.mnv2.inverted_residual         CPU: fused C++ kernel (mnv2_kernels._C)
                                           CUDA: fused CUDA kernel (mnv2_kernels._C_cuda)
  torch.ops.mnv2.inverted_residual_triton  any device: the Triton kernel (CPU tensors need TRITON_INTERPRET=1)
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from ._validate import check_inverted_residual_args, wants_channels_last
from .reference import inverted_residual_reference

_ARGS = ("(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, Tensor w_project, "
         "Tensor b_project, int stride, bool residual) -> Tensor")

_lib = torch.library.Library("mnv2", "DEF")
_lib.define("inverted_residual" + _ARGS)
_lib.define("inverted_residual_triton" + _ARGS)

from . import _ext  # noqa: E402  (loads the C++ kernels, which register themselves for the schema above)

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
# dtypes each kernel computes (an explicit backend given another dtype raises the kernel's own message;
# "auto" skips it)
KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.bfloat16),
    "cuda": (torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}


def _fake(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual):
    d = check_inverted_residual_args(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)
    fmt = torch.channels_last if wants_channels_last(x) else torch.contiguous_format
    return x.new_empty((d.N, d.Cout, d.Ho, d.Wo)).contiguous(memory_format=fmt)


torch.library.register_fake("mnv2::inverted_residual", _fake, lib=_lib)
torch.library.register_fake("mnv2::inverted_residual_triton", _fake, lib=_lib)

if _ext.CPU_EXT is None:
    def _cpu_missing(*args):
        raise RuntimeError(f"mnv2.inverted_residual: the fused CPU kernel is not built ({_ext.CPU_EXT_ERROR}); "
                           "reinstall with `pip install --no-build-isolation -e .`, or use backend='reference'")
    _lib.impl("inverted_residual", _cpu_missing, "CPU")


def _triton_impl(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual):
    from .triton import inverted_residual_triton
    return inverted_residual_triton(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)


for _key in ("CPU", "CUDA"):
    _lib.impl("inverted_residual_triton", _triton_impl, _key)


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the Triton backend cannot serve tensors on ``device`` (None when it can)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc}); pip install triton"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return ("Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing "
                "triton or mnv2_kernels")
    if device.type not in ("cpu", "cuda"):
        return f"Triton has no path for {device.type} tensors"
    return None


def backend_unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot serve tensors on ``device`` (None when it can)."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"backend='cpu' runs CPU tensors only, got a tensor on {device}"
        return None if _ext.CPU_EXT is not None else f"the CPU extension is not built ({_ext.CPU_EXT_ERROR})"
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend='cuda' runs CUDA tensors only, got a tensor on {device}"
        return None if _ext.CUDA_EXT is not None else f"the CUDA extension is not built ({_ext.CUDA_EXT_ERROR})"
    if backend == "triton":
        return triton_unavailable_reason(device)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


_warned_fallback = set()


def resolve_backend(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """Maps ``backend`` (one of BACKENDS) to the concrete backend used for tensors on ``device``.

    "auto" picks the fastest available kernel that computes ``dtype`` (when given): cpu -> C++ kernel;
    cuda -> CUDA kernel, else Triton; and the plain PyTorch reference (with a one-time warning) when no
    kernel is available. An explicit backend that cannot serve the device raises RuntimeError naming what
    is missing.
    """
    if backend != "auto":
        reason = backend_unavailable_reason(backend, device)
        if reason is not None:
            raise RuntimeError(f"mnv2_kernels: backend={backend!r} is unavailable: {reason}")
        return backend
    candidates = {"cpu": ("cpu", "triton"), "cuda": ("cuda", "triton")}.get(device.type, ())
    for name in candidates:
        if (dtype is None or dtype in KERNEL_DTYPES[name]) and backend_unavailable_reason(name, device) is None:
            return name
    if (device.type, dtype) not in _warned_fallback:
        _warned_fallback.add((device.type, dtype))
        warnings.warn(f"mnv2_kernels: no fused kernel serves {dtype or ''} {device.type} tensors here; using the "
                      "plain PyTorch reference (correct, not faster)")
    return "reference"


def inverted_residual(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                      w_dw: torch.Tensor, b_dw: torch.Tensor, w_project: torch.Tensor, b_project: torch.Tensor,
                      stride: int, residual: bool, backend: str = "auto") -> torch.Tensor:
    """One eval-mode inverted-residual block from folded weights, on the chosen backend.

    Shapes (docs/CONTRACT.md): x [N, Cin, H, W] float32/float16/bfloat16 (the CPU kernel: float32, bfloat16);
    w_expand [Chid, Cin] or None; b_expand [Chid] or None; w_dw [Chid, 3, 3]; b_dw [Chid]; w_project
    [Cout, Chid]; b_project [Cout]; all weights in x's dtype and on x's device. stride 1 or 2; residual only
    with stride 1 and Cin == Cout. Returns [N, Cout, (H-1)//stride+1, (W-1)//stride+1] in x's memory format.
    Raises ValueError/TypeError/RuntimeError with what was expected and got; RuntimeError when ``backend``
    cannot serve x's device.
    """
    name = resolve_backend(backend, x.device, x.dtype)
    args = (x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)
    if name == "reference":
        check_inverted_residual_args(*args)
        return inverted_residual_reference(*args)
    if name == "triton":
        return torch.ops.mnv2.inverted_residual_triton(*args)
    return torch.ops.mnv2.inverted_residual(*args)
