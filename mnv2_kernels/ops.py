"""The registered ops, and ``inverted_residual(..., backend=...)`` which runs one block on a backend.

Layers (see docs/CONTRACT.md): kernels live in csrc/cpu, csrc/cuda and mnv2_kernels/triton; this module
defines the op schemas (torch.library), their fake implementations (for torch.compile / torch.export) and
the Triton op's implementation. Which backend serves which device and dtype, and what "auto" picks, is the
backend table in mnv2_kernels/backends.py; ``BACKENDS``, ``resolve_backend`` and
``backend_unavailable_reason`` here are thin shims over it for older callers.

Ops:
  torch.ops.mnv2.inverted_residual         CPU: fused C++ kernel (mnv2_kernels._C)
                                           CUDA: fused CUDA kernel (mnv2_kernels._C_cuda)
  torch.ops.mnv2.inverted_residual_triton  any device: the Triton kernel (CPU tensors need TRITON_INTERPRET=1)
"""
from __future__ import annotations

from typing import Optional

import torch

from ._validate import check_inverted_residual_args, wants_channels_last

_ARGS = ("(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, Tensor w_project, "
         "Tensor b_project, int stride, bool residual) -> Tensor")

_lib = torch.library.Library("mnv2", "DEF")
_lib.define("inverted_residual" + _ARGS)
_lib.define("inverted_residual_triton" + _ARGS)

from . import _ext  # noqa: E402  (loads the C++ kernels, which register themselves for the schema above)


def _fake(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual):
    d = check_inverted_residual_args(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)
    fmt = torch.channels_last if wants_channels_last(x) else torch.contiguous_format
    return x.new_empty((d.N, d.Cout, d.Ho, d.Wo)).contiguous(memory_format=fmt)


torch.library.register_fake("mnv2::inverted_residual", _fake, lib=_lib)
torch.library.register_fake("mnv2::inverted_residual_triton", _fake, lib=_lib)

if _ext.CPU_EXT is None:
    def _cpu_missing(*args):
        raise RuntimeError(f"mnv2.inverted_residual: the fused CPU kernel is not built ({_ext.CPU_EXT_ERROR}); "
                           "rebuild with `pip install --no-build-isolation -e .`, or use backend='reference'")
    _lib.impl("inverted_residual", _cpu_missing, "CPU")


def _triton_impl(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual):
    from .triton import inverted_residual_triton
    return inverted_residual_triton(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)


for _key in ("CPU", "CUDA"):
    _lib.impl("inverted_residual_triton", _triton_impl, _key)

from . import backends  # noqa: E402  (the backend table; needs the ops above)

BACKENDS = backends.NAMES  # ("auto", "cpu", "cuda", "triton", "reference")


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the Triton backend cannot run tensors on ``device`` (None when it can). Shim over the table."""
    return backend_unavailable_reason("triton", device)


def backend_unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run tensors on ``device`` whatever their dtype (None when it can); shim over
    ``backends.ROWS[backend].not_supported_reasons(device)``. Raises ValueError for an unknown name."""
    if backends.check_name(backend) == "auto":
        return None
    reasons = backends.ROWS[backend].not_supported_reasons(device)
    return "; ".join(reasons) if reasons else None


def resolve_backend(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The name of the row ``backends.select(backend, device, dtype)`` picks (shim for older callers).

    Without ``dtype`` only the device and the environment are checked (nothing warns): "auto" names the first
    row of its priority list that can run on ``device``; an explicit backend that cannot raises RuntimeError.
    Errors: see ``backends.select``.
    """
    if dtype is not None:
        return backends.select(backend, device, dtype).name
    backends.check_name(backend)
    device = torch.device(device)
    if backend == "auto":
        return next(n for n in backends.auto_priority(device) if not backends.ROWS[n].not_supported_reasons(device))
    row = backends.ROWS[backend]
    refusals = row._refusals(device, None)
    if refusals:
        raise backends._explicit_error(row, device, None, refusals)
    return backend


def inverted_residual(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                      w_dw: torch.Tensor, b_dw: torch.Tensor, w_project: torch.Tensor, b_project: torch.Tensor,
                      stride: int, residual: bool, backend: str = "auto") -> torch.Tensor:
    """One eval-mode inverted-residual block from folded weights, on the chosen backend.

    Shapes (docs/CONTRACT.md): x [N, Cin, H, W]; w_expand [Chid, Cin] or None; b_expand [Chid] or None;
    w_dw [Chid, 3, 3]; b_dw [Chid]; w_project [Cout, Chid]; b_project [Cout]; all weights in x's dtype and on
    x's device. stride 1 or 2; residual only with stride 1 and Cin == Cout. Returns
    [N, Cout, (H-1)//stride+1, (W-1)//stride+1] in x's memory format. dtypes: float32, float16, bfloat16
    (float64 on the reference); which backend computes which: mnv2_kernels/backends.py.
    ``backend``: one of BACKENDS; the row is ``backends.select(backend, x.device, x.dtype)``.

    Raises ValueError (bad shape, device, stride, residual; unknown backend), TypeError (x not floating
    point, weights in another dtype, a dtype the backend's kernel lacks) or RuntimeError (the backend cannot
    run on x's device here), each saying what was expected, what came and what to do.
    """
    return backends.select(backend, x.device, x.dtype).run(x, w_expand, b_expand, w_dw, b_dw, w_project,
                                                           b_project, stride, residual)
