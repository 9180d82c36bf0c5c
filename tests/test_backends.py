"""The backend table (mnv2_kernels/backends.py): rows agree with what the kernels accept, "auto" picks per
device and dtype, refusals name every reason, the fallback warns once, select() caches."""
import re
import warnings
from pathlib import Path

import pytest
import torch

from mnv2_kernels import _ext, backends, ops
from mnv2_kernels._validate import FLOATING_DTYPES
from mnv2_kernels.testing import random_block_args

from conftest import requires_cuda

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
_AT = {"kFloat": torch.float32, "kHalf": torch.float16, "kBFloat16": torch.bfloat16, "kDouble": torch.float64}


@pytest.fixture
def fresh(monkeypatch):
    """A clean select() cache and fallback-warning memory, restored afterwards."""
    monkeypatch.setattr(backends, "_warned", set())
    backends.clear_cache()
    yield
    backends.clear_cache()


def _args(dtype, device="cpu"):
    return random_block_args(8, 16, 8, stride=1, residual=True, n=1, h=4, w=4, dtype=dtype, device=device)


def _cpp_dtypes(kernel, folder):
    """The dtypes a C++ binding checks with check_kernel_dtype(kernel, x, {...})."""
    pattern = re.compile(r'check_kernel_dtype\("' + kernel + r'",\s*x,\s*\{([^}]*)\}\)')
    sources = sorted((ROOT / "csrc" / folder).glob("*.cpp"))
    found = [m.group(1) for f in sources for m in pattern.finditer(f.read_text())]
    assert len(found) == 1, found
    return tuple(_AT[t.strip().removeprefix("at::")] for t in found[0].split(","))


@pytest.mark.parametrize("name,folder", [("cpu", "cpu"), ("cuda", "cuda")])
def test_table_rows_match_the_cpp_bindings(name, folder):
    """Which dtypes a kernel serves is written once in the table; the binding's check must say the same."""
    row = backends.ROWS[name]
    assert set(_cpp_dtypes(row.kernel, folder)) == set(row.dtypes_on(name))
    assert _cpp_dtypes(row.kernel, folder)[0] == row.dtypes_on(name)[0]  # the same dtype suggested


def test_cpu_row_is_what_the_cpu_kernel_computes():
    if backends.ROWS["cpu"].not_supported_reasons(CPU):
        pytest.skip(backends.ROWS["cpu"].not_supported_reasons(CPU)[0])
    for dtype in FLOATING_DTYPES:
        args = _args(dtype)
        if dtype in backends.ROWS["cpu"].dtypes_on(CPU):
            assert torch.ops.mnv2.inverted_residual(*args).dtype == dtype
        else:
            with pytest.raises(TypeError, match=f"got {dtype}"):
                torch.ops.mnv2.inverted_residual(*args)


def test_triton_row_on_the_interpreter():
    row = backends.ROWS["triton"]
    assert torch.bfloat16 not in row.dtypes_on(CPU)  # issue 8 item 8: the interpreter's bf16 tl.dot is wrong
    with pytest.raises(TypeError, match="interpreter computes bfloat16 tl.dot wrongly"):
        backends.select("triton", CPU, torch.bfloat16)
    if row.not_supported_reasons(CPU):
        pytest.skip(row.not_supported_reasons(CPU)[0])
    from mnv2_kernels.triton import inverted_residual_triton
    for dtype in FLOATING_DTYPES:
        args = _args(dtype)
        if dtype in row.dtypes_on(CPU):
            assert backends.select("triton", CPU, dtype).run(*args).dtype == dtype
        else:
            with pytest.raises(TypeError):
                inverted_residual_triton(*args)


def test_triton_with_the_interpreter_off(monkeypatch, fresh):
    monkeypatch.setattr(backends, "_triton_interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match=r"backend='triton' is unavailable for torch.float32 tensors on cpu: "
                                           r"Triton runs CPU tensors only in its interpreter.*TRITON_INTERPRET=1"):
        backends.select("triton", CPU, torch.float32)


def test_auto_on_the_cpu(fresh):
    if backends.ROWS["cpu"].not_supported_reasons(CPU):
        pytest.skip(backends.ROWS["cpu"].not_supported_reasons(CPU)[0])
    assert backends.select("auto", CPU, torch.float32).name == "cpu"
    # bfloat16 too: the CPU kernel computes it in float32, far faster than PyTorch's bf16 reference
    assert backends.select("auto", "cpu", torch.bfloat16).name == "cpu"
    with pytest.warns(backends.ReferenceFallbackWarning):
        assert backends.select("auto", CPU, torch.float16).name == "reference"
    # the Triton interpreter is never "auto"'s choice, even with the interpreter on
    assert "triton" not in backends.auto_priority(CPU)


def test_fallback_warns_once_per_device_and_dtype_with_the_reasons(monkeypatch, fresh):
    """Issue 12: with the CPU extension missing the warning fired twice, once with a double space and no dtype."""
    monkeypatch.setattr(_ext, "CPU_EXT", None)
    monkeypatch.setattr(_ext, "CPU_EXT_ERROR", "ImportError: no _C here")
    args = _args(torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.resolve_backend("auto", CPU)  # fuse() checks the device this way, without a dtype: no warning
        for _ in range(3):
            y = ops.inverted_residual(*args)
        backends.clear_cache()
        ops.inverted_residual(*args)  # the warning is once per process, not once per cache
        with pytest.raises(RuntimeError, match=r"backend='cpu' is unavailable .*the CPU extension is not built "
                                               r"\(ImportError: no _C here\); rebuild with"):
            ops.inverted_residual(*args, backend="cpu")
    ours = [w for w in caught if issubclass(w.category, backends.ReferenceFallbackWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = str(ours[0].message)
    assert msg.startswith("mnv2_kernels: no fused kernel serves torch.float32 tensors on cpu, so backend='auto' "
                          "runs the plain PyTorch reference"), msg
    assert "the CPU extension is not built (ImportError: no _C here)" in msg
    assert all("  " not in line.strip() for line in msg.splitlines()), msg
    torch.testing.assert_close(y, backends.ROWS["reference"].run(*args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.inverted_residual(*_args(torch.bfloat16))  # another dtype: its own warning
    assert len([w for w in caught if "torch.bfloat16 tensors on cpu" in str(w.message)]) == 1


def test_explicit_refusal_lists_every_backend(fresh):
    with pytest.raises(RuntimeError) as info:
        backends.select("cuda", CPU, torch.float16)
    msg = str(info.value)
    first, *rest = msg.splitlines()
    assert first == ("mnv2_kernels: backend='cuda' is unavailable for torch.float16 tensors on cpu: it runs CUDA "
                     "tensors only, got a tensor on cpu")
    named = {n for n in backends.ROWS if n != "cuda" and re.search(rf"'{n}'|^  {n}: ", "\n".join(rest), re.M)}
    assert named == set(backends.ROWS) - {"cuda"}, msg  # every other row: serving, or refusing with its reasons
    if not backends.ROWS["cpu"].not_supported_reasons(CPU):
        assert "  cpu: the CPU kernel supports torch.float32 and torch.bfloat16, got torch.float16" in msg


def test_dtype_only_refusal_is_a_type_error(fresh):
    if backends.ROWS["cpu"].not_supported_reasons(CPU):
        pytest.skip(backends.ROWS["cpu"].not_supported_reasons(CPU)[0])
    with pytest.raises(TypeError, match="the CPU kernel supports .*\n.*backend='auto' picks 'reference'"):
        backends.select("cpu", CPU, torch.float16)


def test_name_checked_in_one_place():
    for bad in ("npu", "", "Auto", None):
        with pytest.raises(ValueError, match=r"unknown backend .*; choose one of 'auto', 'cpu', 'cuda', 'triton', "
                                             r"'reference'"):
            backends.select(bad, CPU, torch.float32)
    assert backends.NAMES == ops.BACKENDS == ("auto",) + tuple(backends.ROWS)
    assert all(n in backends.ROWS for prio in backends.AUTO_PRIORITY.values() for n in prio)
    assert backends.auto_priority("mps") == ("reference",)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_select_refuses_non_float_dtypes(dtype, fresh):
    for name in backends.NAMES:
        with pytest.raises(TypeError, match=rf"x must be a floating-point tensor .*got {dtype}; convert"):
            backends.select(name, CPU, dtype)


def test_select_is_cached_until_cleared(monkeypatch, fresh):
    if backends.ROWS["cpu"].not_supported_reasons(CPU):
        pytest.skip(backends.ROWS["cpu"].not_supported_reasons(CPU)[0])
    row = backends.select("auto", CPU, torch.float32)
    hits = backends._select.cache_info().hits
    assert backends.select("auto", "cpu", torch.float32) is row
    assert backends._select.cache_info().hits == hits + 1
    # availability is read once (documented): a change is seen after clear_cache()
    monkeypatch.setattr(_ext, "CPU_EXT", None)
    assert backends.select("auto", CPU, torch.float32).name == "cpu"
    backends.clear_cache()
    with pytest.warns(backends.ReferenceFallbackWarning):
        assert backends.select("auto", CPU, torch.float32).name == "reference"


@requires_cuda
def test_cuda_rows_on_the_gpu(fresh):
    dev = torch.device("cuda")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        row = backends.select("auto", dev, dtype)
        assert row.name in ("cuda", "triton")
        assert row.run(*_args(dtype, "cuda")).dtype == dtype
    cuda = backends.ROWS["cuda"]
    if not cuda.not_supported_reasons(dev):
        for dtype in FLOATING_DTYPES:
            if dtype in cuda.dtypes_on(dev):
                assert torch.ops.mnv2.inverted_residual(*_args(dtype, "cuda")).dtype == dtype
            else:
                with pytest.raises(TypeError, match=f"got {dtype}"):
                    torch.ops.mnv2.inverted_residual(*_args(dtype, "cuda"))
