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


# ----------------------------------------------------------------------------------------------------------
# The generalised block (issue 13): activations, 1-9 depthwise, TF "same" padding, squeeze-excite, leading
# depthwise. docs/CONTRACT.md, "The generalised block". Implementations: the plain-PyTorch reference below
# (CompositeExplicitAutograd: any device without a kernel of its own), the fused CPU kernel (registered for
# the CPU key by mnv2_kernels/cpu_ex.py), the CUDA kernel (CUDA key, csrc/cuda/inverted_residual_binding.cpp),
# and the Triton kernels as their own op, mnv2::inverted_residual_ex_triton (end of this file). Which serves
# what is backends.EX_SUPPORT.
# ----------------------------------------------------------------------------------------------------------
_EX_ARGS = ("(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, Tensor? w_se_reduce, "
            "Tensor? b_se_reduce, Tensor? w_se_expand, Tensor? b_se_expand, Tensor w_project, Tensor b_project, "
            "int stride, bool residual, str act_expand, str act_dw, str padding, str se_act, str se_gate, "
            "str act_project, Tensor? w_dw_start, Tensor? b_dw_start, int stride_start) -> Tensor")
_lib.define("inverted_residual_ex" + _EX_ARGS)

_EX = "mnv2.inverted_residual_ex: "


def check_inverted_residual_ex_args(x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand,
                                    b_se_expand, w_project, b_project, stride, residual, act_expand, act_dw,
                                    padding, se_act, se_gate, act_project, w_dw_start=None, b_dw_start=None,
                                    stride_start=1):
    """Validates the generalised op's arguments (docs/CONTRACT.md); returns (N, Cout, Ho, Wo).

    ValueError for shapes, channel counts, kernel size, stride, residual, option names and devices; TypeError
    for dtypes (x not floating point, a tensor in another dtype than x). Each message says what was expected,
    what came and what to do.
    """
    from .reference import ACTIVATIONS, KERNEL_SIZES, PADDINGS, SE_GATES
    from ._validate import check_x_dtype
    if x.dim() != 4:
        raise ValueError(_EX + f"x must be a 4-D (N, C, H, W) tensor, got {x.dim()}-D")
    check_x_dtype(x.dtype)
    N, Cin, H, W = x.shape
    if w_dw.dim() != 3 or w_dw.shape[1] != w_dw.shape[2] or w_dw.shape[1] not in KERNEL_SIZES:
        raise ValueError(_EX + f"w_dw must be [Chid, k, k] with k in {KERNEL_SIZES}, got {list(w_dw.shape)}")
    Chid = w_dw.shape[0]
    Cout = w_project.shape[0] if w_project.dim() == 2 else -1
    expected = {"w_dw": (w_dw, [Chid, w_dw.shape[1], w_dw.shape[1]]), "b_dw": (b_dw, [Chid]),
                "w_project": (w_project, [Cout, Chid]), "b_project": (b_project, [Cout])}
    if (w_expand is None) != (b_expand is None):
        raise ValueError(_EX + "w_expand and b_expand must both be given or both be None")
    if w_expand is not None:
        expected.update(w_expand=(w_expand, [Chid, Cin]), b_expand=(b_expand, [Chid]))
    elif Chid != Cin:
        raise ValueError(_EX + f"block expects {Chid} input channels (no expand conv), got {Cin}")
    se = (w_se_reduce, b_se_reduce, w_se_expand, b_se_expand)
    if any(t is None for t in se) and not all(t is None for t in se):
        raise ValueError(_EX + "the squeeze-excite tensors (w_se_reduce, b_se_reduce, w_se_expand, b_se_expand) "
                               "must all be given or all be None")
    if w_se_reduce is not None:
        Crd = w_se_reduce.shape[0]
        expected.update(w_se_reduce=(w_se_reduce, [Crd, Chid]), b_se_reduce=(b_se_reduce, [Crd]),
                        w_se_expand=(w_se_expand, [Chid, Crd]), b_se_expand=(b_se_expand, [Chid]))
    if (w_dw_start is None) != (b_dw_start is None):
        raise ValueError(_EX + "w_dw_start and b_dw_start must both be given or both be None")
    H1, W1 = H, W
    if w_dw_start is not None:
        k0 = w_dw_start.shape[-1]
        if k0 not in KERNEL_SIZES:
            raise ValueError(_EX + f"w_dw_start must be [Cin, k, k] with k in {KERNEL_SIZES}, got "
                                   f"{list(w_dw_start.shape)}")
        expected.update(w_dw_start=(w_dw_start, [Cin, k0, k0]), b_dw_start=(b_dw_start, [Cin]))
        if stride_start not in (1, 2):
            raise ValueError(_EX + f"stride_start must be 1 or 2, got {stride_start}")
        H1, W1 = (H - 1) // stride_start + 1, (W - 1) // stride_start + 1
    elif stride_start != 1:
        raise ValueError(_EX + f"stride_start is {stride_start} but there is no leading depthwise (w_dw_start)")
    for name, (t, shape) in expected.items():
        if list(t.shape) != shape:
            raise ValueError(_EX + f"{name} must have shape {shape}, got {list(t.shape)}")
        if t.device != x.device:
            raise ValueError(_EX + f"{name} is on {t.device} but x is on {x.device}; move the module with "
                                   ".to(x.device)")
        if t.dtype != x.dtype:
            raise TypeError(_EX + f"{name} is {t.dtype} but x is {x.dtype}; call .to({x.dtype}) on the module")
    if stride not in (1, 2):
        raise ValueError(_EX + f"stride must be 1 or 2, got {stride}")
    if residual and not (stride == 1 and stride_start == 1 and Cin == Cout):
        raise ValueError(_EX + f"residual needs stride 1 and Cin == Cout, got stride {stride} (leading "
                               f"{stride_start}), {Cin} -> {Cout}")
    for name, value, choices in (("act_expand", act_expand, ACTIVATIONS), ("act_dw", act_dw, ACTIVATIONS),
                                 ("se_act", se_act, ACTIVATIONS), ("se_gate", se_gate, SE_GATES),
                                 ("act_project", act_project, ACTIVATIONS),
                                 ("padding", padding, PADDINGS)):
        if value not in choices:
            raise ValueError(_EX + f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return N, Cout, (H1 - 1) // stride + 1, (W1 - 1) // stride + 1


def _ex_fake(x, *args):
    N, Cout, Ho, Wo = check_inverted_residual_ex_args(x, *args)
    fmt = torch.channels_last if wants_channels_last(x) else torch.contiguous_format
    return x.new_empty((N, Cout, Ho, Wo)).contiguous(memory_format=fmt)


def _ex_reference_impl(x, *args):
    from .reference import inverted_residual_ex_reference
    check_inverted_residual_ex_args(x, *args)
    y = inverted_residual_ex_reference(x, *args)
    return y.contiguous(memory_format=torch.channels_last if wants_channels_last(x) else torch.contiguous_format)


torch.library.register_fake("mnv2::inverted_residual_ex", _ex_fake, lib=_lib)
_lib.impl("inverted_residual_ex", _ex_reference_impl, "CompositeExplicitAutograd")
from . import cpu_ex  # noqa: E402,F401  (registers the fused CPU kernel of inverted_residual_ex for CPU tensors)


def inverted_residual_ex(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                         w_dw: torch.Tensor, b_dw: torch.Tensor, w_se_reduce: Optional[torch.Tensor],
                         b_se_reduce: Optional[torch.Tensor], w_se_expand: Optional[torch.Tensor],
                         b_se_expand: Optional[torch.Tensor], w_project: torch.Tensor, b_project: torch.Tensor,
                         stride: int, residual: bool, act_expand: str = "relu6", act_dw: str = "relu6",
                         padding: str = "symmetric", se_act: str = "relu", se_gate: str = "sigmoid",
                         act_project: str = "none", w_dw_start: Optional[torch.Tensor] = None,
                         b_dw_start: Optional[torch.Tensor] = None, stride_start: int = 1,
                         backend: str = "auto") -> torch.Tensor:
    """One generalised eval-mode block from folded weights (docs/CONTRACT.md, "The generalised block").

    Shapes: x [N, Cin, H, W]; w_expand [Chid, Cin] or None; w_dw [Chid, k, k], k in 1, 3, 5, 7, 9; SE tensors
    [Crd, Chid], [Crd], [Chid, Crd], [Chid] or all None; w_project [Cout, Chid]. Returns [N, Cout, Ho, Wo].
    ``backend``: the row is ``backends.select_ex(backend, x.device, x.dtype, config)`` ("auto": the fused CPU
    kernel on the CPU; the CUDA kernel for float16/bfloat16 and Triton for float32 on CUDA; ``backends.ex_refusals``
    says why a row refuses).
    Raises ValueError / TypeError (arguments) and RuntimeError (a backend that cannot serve the block).
    """
    cfg = backends.BlockConfig(w_dw.shape[-1], act_expand if w_expand is not None else "relu6", act_dw, padding,
                               w_se_reduce is not None, se_act, se_gate, act_project,
                               0 if w_dw_start is None else w_dw_start.shape[-1])
    run = backends.select_ex(backend, x.device, x.dtype, cfg)
    return run(x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, w_project,
               b_project, stride, residual, act_expand, act_dw, padding, se_act, se_gate, act_project, w_dw_start,
               b_dw_start, stride_start)


# ----------------------------------------------------------------------------------------------------------
# issue 13, Triton backend: mnv2::inverted_residual_ex_triton (same schema as inverted_residual_ex), any device
# (CPU tensors need TRITON_INTERPRET=1); mnv2_kernels/triton/launcher_ex.py. backends.EX_SUPPORT["triton"]
# calls it.
# ----------------------------------------------------------------------------------------------------------
_lib.define("inverted_residual_ex_triton" + _EX_ARGS)
torch.library.register_fake("mnv2::inverted_residual_ex_triton", _ex_fake, lib=_lib)


def _ex_triton_impl(x, *args):
    from .triton.launcher_ex import inverted_residual_ex_triton
    return inverted_residual_ex_triton(x, *args)


for _key in ("CPU", "CUDA"):
    _lib.impl("inverted_residual_ex_triton", _ex_triton_impl, _key)
