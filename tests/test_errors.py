"""One error style: every path raises the same exception type with the same words for the same mistake.

For each mistake a user can make with the op's arguments, the C++ CPU op (csrc/common/checks.h), the Python
validation (mnv2_kernels/_validate.py: the fake, the reference backend) and the Triton launcher must raise
the same type (ValueError for shapes/devices/stride/residual, TypeError for dtypes) with the same message;
a kernel refusing a dtype says the same words through the C++ op and through the backend table.
"""
import re
import warnings

import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels import _ext, backends, ops
from mnv2_kernels._validate import FLOATING_DTYPES, check_inverted_residual_args, kernel_dtype_message
from mnv2_kernels.testing import random_block_args

requires_cpu_ext = pytest.mark.skipif(_ext.CPU_EXT is None, reason=f"CPU extension not built: {_ext.CPU_EXT_ERROR}")
_CPP_TRAILER = re.compile(r"\n(Exception raised from|frame #).*", re.S)


def _raised(fn, *args):
    """(exception type, message) of fn(*args); fails if it returns."""
    with pytest.raises(Exception) as info:
        fn(*args)
    return type(info.value), _CPP_TRAILER.sub("", str(info.value))


def _args(expand=True, residual=True):
    cin, chid = 8, 16 if expand else 8
    return list(random_block_args(cin, chid, 8, stride=1, residual=residual, expand=expand, n=1, h=5, w=4, seed=3))


def _with(args, **changes):
    names = ("x", "w_expand", "b_expand", "w_dw", "b_dw", "w_project", "b_project", "stride", "residual")
    out = list(args)
    for k, v in changes.items():
        out[names.index(k)] = v(out[names.index(k)]) if callable(v) else v
    return out


def _mistakes():
    a, n = _args(), _args(expand=False)
    return {
        "x 3-D": (_with(a, x=lambda x: x[0]), ValueError),
        "x int64": (_with(a, x=lambda x: x.long()), TypeError),
        "x bool": (_with(a, x=lambda x: x > 0), TypeError),
        "x complex64": (_with(a, x=lambda x: x.to(torch.complex64)), TypeError),
        "x uint8": (_with(a, x=lambda x: x.to(torch.uint8)), TypeError),
        "x float8": (_with(a, x=lambda x: x.to(torch.float8_e4m3fn)), TypeError),
        "stride 3": (_with(a, stride=3, residual=False), ValueError),
        "empty image": (_with(a, x=lambda x: x[:, :, :0]), ValueError),
        "w_dw [Chid, 9]": (_with(a, w_dw=lambda w: w.reshape(w.shape[0], 9)), ValueError),
        "w_project 3-D": (_with(a, w_project=lambda w: w[None]), ValueError),
        "w_expand 3-D": (_with(a, w_expand=lambda w: w[None]), ValueError),
        "input channels": (_with(a, x=lambda x: torch.randn(1, 5, 5, 4)), ValueError),
        "w_expand rows": (_with(a, w_expand=lambda w: torch.randn(w.shape[0] + 1, w.shape[1])), ValueError),
        "b_expand missing": (_with(a, b_expand=None), ValueError),
        "b_expand shape": (_with(a, b_expand=lambda b: b[:-1]), ValueError),
        "b_expand without w_expand": (_with(n, b_expand=torch.zeros(8)), ValueError),
        "no expand, channels": (_with(n, x=lambda x: torch.randn(1, 6, 5, 4), residual=False), ValueError),
        "b_dw shape": (_with(a, b_dw=lambda b: b[:-1]), ValueError),
        "w_project columns": (_with(a, w_project=lambda w: w[:, :-1]), ValueError),
        "b_project shape": (_with(a, b_project=lambda b: torch.zeros(9)), ValueError),
        "w_dw float64": (_with(a, w_dw=lambda w: w.double()), TypeError),
        "b_expand bfloat16": (_with(a, b_expand=lambda b: b.bfloat16()), TypeError),
        "w_project on meta": (_with(a, w_project=lambda w: w.to("meta")), ValueError),
        "residual with stride 2": (_with(a, stride=2), ValueError),
        "residual, channels differ": (_with(a, w_project=lambda w: torch.randn(12, w.shape[1]),
                                            b_project=torch.zeros(12)), ValueError),
    }


MISTAKES = _mistakes()


def _triton_launcher():
    from mnv2_kernels.triton import inverted_residual_triton
    return inverted_residual_triton


@requires_cpu_ext
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_cpp_and_python_paths_raise_alike(mistake):
    args, expected_type = MISTAKES[mistake]
    cpp = _raised(torch.ops.mnv2.inverted_residual, *args)
    paths = {
        "validation": _raised(check_inverted_residual_args, *args),
        "reference backend": _raised(ops.inverted_residual, *args, "reference"),
        "auto backend": _raised(ops.inverted_residual, *args, "auto"),
        "Triton launcher": _raised(_triton_launcher(), *args),
    }
    assert cpp[0] is expected_type, cpp
    assert cpp[1].startswith("mnv2.inverted_residual: "), cpp
    for path, got in paths.items():
        assert got == cpp, f"{path}: {got} != C++ {cpp}"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.float8_e5m2])
def test_non_float_inputs_get_the_packages_message(dtype):
    """Issue 8 item 7: backend="auto", "reference" and FusedInvertedResidual say what was expected, what
    came and what to do, as a TypeError (not a PyTorch-internal message)."""
    from mnv2_kernels.models import InvertedResidual

    block = mk.FusedInvertedResidual.from_module(InvertedResidual(8, 8, 1, 2)).eval()
    x = torch.ones(1, 8, 4, 4).to(dtype)
    for fn in (lambda: ops.inverted_residual(x, *_args()[1:], backend="auto"),
               lambda: ops.inverted_residual(x, *_args()[1:], backend="reference"),
               lambda: block(x)):
        with torch.inference_mode():
            exc_type, msg = _raised(fn)
        assert exc_type is TypeError, msg
        assert msg == (f"mnv2.inverted_residual: x must be a floating-point tensor (torch.float32, torch.float16, "
                       f"torch.bfloat16 or torch.float64), got {dtype}; convert the input with x.to(torch.float32)")


@requires_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_a_dtype_the_cpu_kernel_lacks(dtype):
    """The C++ op and backend="cpu" (the table) refuse it alike: TypeError, the same sentence."""
    args = _with(_args(), x=lambda x: x.to(dtype), w_expand=lambda w: w.to(dtype), b_expand=lambda b: b.to(dtype),
                 w_dw=lambda w: w.to(dtype), b_dw=lambda b: b.to(dtype), w_project=lambda w: w.to(dtype),
                 b_project=lambda b: b.to(dtype))
    cpp = _raised(torch.ops.mnv2.inverted_residual, *args)
    table = _raised(ops.inverted_residual, *args, "cpu")
    sentence = kernel_dtype_message("CPU", backends.ROWS["cpu"].dtypes_on("cpu"), dtype)
    assert cpp == (TypeError, "mnv2.inverted_residual: " + sentence)
    assert table[0] is TypeError
    assert table[1].startswith(f"mnv2_kernels: backend='cpu' is unavailable for {dtype} tensors on cpu: "
                               + sentence), table[1]


@requires_cpu_ext
def test_cpp_names_dtypes_as_python_does():
    """Every dtype a CPU tensor can have is named in the C++ message exactly as str(dtype)."""
    a = _args()
    dtypes = {v for v in vars(torch).values() if isinstance(v, torch.dtype)}
    checked = 0
    for dtype in sorted(dtypes, key=str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "ComplexHalf support is experimental"
                x = torch.zeros(1, 8, 5, 4, dtype=dtype)
        except (RuntimeError, TypeError):
            continue  # not creatable on the CPU (quantized, bits, ...)
        if dtype in (torch.float32, torch.bfloat16):
            continue  # served
        weights = [w.to(dtype) if dtype in FLOATING_DTYPES else w for w in a[1:7]]
        _, msg = _raised(torch.ops.mnv2.inverted_residual, x, *weights, *a[7:])
        assert f"got {dtype};" in msg, msg
        checked += 1
    assert checked >= 10


def test_explicit_backend_names_itself_once():
    """Issue 12: backend='cuda' on a CPU tensor said "backend='cuda'" twice in one message."""
    exc_type, msg = _raised(ops.inverted_residual, *_args(), "cuda")
    assert exc_type is RuntimeError
    assert msg.count("backend='cuda'") == 1, msg
    assert "  " not in msg.replace("\n  ", "\n"), msg  # no double spaces inside a line
    assert "CUDA tensors only, got a tensor on cpu" in msg
    assert f"backend='auto' picks {ops.resolve_backend('auto', torch.device('cpu'), torch.float32)!r}" in msg


def test_unknown_backend_is_a_value_error_listing_the_choices():
    for bad in ("npu", "CPU", None, 3):
        exc_type, msg = _raised(ops.inverted_residual, *_args(), bad)
        assert exc_type is ValueError
        assert msg == ("mnv2_kernels: unknown backend " + repr(bad)
                       + "; choose one of 'auto', 'cpu', 'cuda', 'triton', 'reference'")
