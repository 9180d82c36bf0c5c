"""The registered op: routing between backends, validation and errors, opcheck, torch.export.

The backend table itself: tests/test_backends.py; the Python and C++ error paths compared: tests/test_errors.py.
"""
import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels import _ext, ops
from mnv2_kernels.reference import inverted_residual_reference
from mnv2_kernels.testing import random_block_args, to_float64

from conftest import requires_cuda

requires_cpu_ext = pytest.mark.skipif(_ext.CPU_EXT is None, reason=f"CPU extension not built: {_ext.CPU_EXT_ERROR}")


def _check(got, args, rtol=1e-5):
    ref = inverted_residual_reference(*to_float64(args))
    err = (got.double() - ref).abs().max().item() / ref.abs().max().item()
    assert err < rtol, err


@pytest.mark.parametrize("backend", ["auto", pytest.param("cpu", marks=requires_cpu_ext), "reference"])
def test_backends_compute_the_contract(backend):
    args = random_block_args(16, 48, 16, stride=1, residual=True, h=10, w=7, seed=4)
    _check(ops.inverted_residual(*args, backend=backend), args)


@requires_cpu_ext
def test_resolve_backend_shim():
    cpu = torch.device("cpu")
    assert ops.resolve_backend("auto", cpu) == "cpu"
    assert ops.resolve_backend("auto", cpu, torch.bfloat16) == "cpu"
    assert ops.resolve_backend("reference", cpu) == "reference"
    with pytest.raises(RuntimeError, match="backend='cuda' is unavailable"):
        ops.resolve_backend("cuda", cpu)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.resolve_backend("npu", cpu)
    assert ops.BACKENDS == ("auto", "cpu", "cuda", "triton", "reference")
    assert ops.backend_unavailable_reason("cpu", cpu) is None
    assert "CUDA tensors only" in ops.backend_unavailable_reason("cuda", cpu)


@pytest.mark.parametrize("op", [pytest.param(torch.ops.mnv2.inverted_residual, marks=requires_cpu_ext),
                                ops.inverted_residual])
def test_errors_say_what_to_do(op):
    args = list(random_block_args(24, 144, 24, residual=True))
    x = args[0]
    with pytest.raises(ValueError, match=r"block expects 24 input channels, got 15"):
        op(torch.randn(2, 15, 9, 9), *args[1:])
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\) tensor, got 3-D; add a batch dimension"):
        op(x[0], *args[1:])
    with pytest.raises(TypeError, match=r"w_dw is torch.float64 but x is torch.float32; call .to\(torch.float32\)"):
        op(x, *args[1:3], args[3].double(), *args[4:])
    with pytest.raises(ValueError, match=r"w_project is on meta but x is on cpu"):
        op(x, *args[1:5], args[5].to("meta"), *args[6:])
    with pytest.raises(ValueError, match=r"stride must be 1 or 2, got 3"):
        op(*args[:7], 3, False)
    with pytest.raises(ValueError, match=r"residual needs stride 1"):
        op(*args[:7], 2, True)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor .*got torch.int64"):
        op(x.long(), *args[1:])
    snapshot = x.clone()
    with pytest.raises(ValueError):
        op(x, *args[1:5], args[5][:, :-1].contiguous(), *args[6:])
    assert torch.equal(x, snapshot)


@requires_cpu_ext
def test_cpu_kernel_rejects_float16_clearly():
    args = random_block_args(8, 16, 8, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"the CPU kernel supports torch.float32 and torch.bfloat16, got "
                                        r"torch.float16; convert the input and the module with .to\(torch.float32\)"):
        ops.inverted_residual(*args, backend="cpu")


def test_empty_batch_returns_empty_output():
    for fmt in (torch.contiguous_format, torch.channels_last):
        args = list(random_block_args(8, 24, 12, stride=2, n=0, h=9, w=6))
        args[0] = args[0].contiguous(memory_format=fmt)
        y = ops.inverted_residual(*args)
        assert y.shape == (0, 12, 5, 3)


@requires_cpu_ext
def test_opcheck_cpu_op():
    for stride, residual, expand in [(1, True, True), (2, False, True), (1, False, False)]:
        cin = 12
        args = random_block_args(cin, 36 if expand else cin, 12 if residual else 20, stride=stride,
                                 residual=residual, expand=expand, h=6, w=5)
        torch.library.opcheck(torch.ops.mnv2.inverted_residual.default, args)


def test_opcheck_triton_op_in_interpreter():
    if ops.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip(ops.triton_unavailable_reason(torch.device("cpu")))
    args = random_block_args(8, 16, 8, stride=1, residual=True, n=1, h=4, w=4)
    torch.library.opcheck(torch.ops.mnv2.inverted_residual_triton.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@requires_cpu_ext
def test_torch_export_traces_a_fused_block():
    from mnv2_kernels.models import InvertedResidual
    from mnv2_kernels.testing import randomize_bn_

    block = mk.FusedInvertedResidual.from_module(randomize_bn_(InvertedResidual(16, 16, 1, 6))).eval()
    for p in block.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 16, 8, 8)
    ep = torch.export.export(block, (x,))
    assert any("mnv2.inverted_residual" in str(n.target) for n in ep.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), block(x), rtol=1e-5, atol=1e-5)


@requires_cuda
def test_auto_prefers_a_gpu_kernel_on_cuda():
    assert ops.resolve_backend("auto", torch.device("cuda")) in ("cuda", "triton")
