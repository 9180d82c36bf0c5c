"""The fused CUDA kernel (csrc/cuda, extension mnv2_kernels._C_cuda): registration, the 17 MobileNetV2 block
shapes x batch 1, 8, 64 x float16 / bfloat16 against float64 with poisoned outputs, odd block configs, layouts,
alignment, int64 indexing, NaN / inf semantics and error messages. (tests/test_cuda_emulation.py checks the
kernel's schedule and index arithmetic on the CPU.)

The CUDA kernel serves float16 and bfloat16 (tensor cores, float32 accumulation); float32 raises a TypeError
that names the dtypes it serves.

Accuracy rule: max |kernel - float64 reference| <= 2 x max |eager PyTorch in the same dtype - float64 reference|
+ a small atol (a few output ulps); NaN or inf never passes.

Also runnable as a script for compute-sanitizer (a few small launches, fp16 + bf16):
    compute-sanitizer --tool memcheck  python tests/test_inverted_residual_cuda.py
    compute-sanitizer --tool racecheck python tests/test_inverted_residual_cuda.py --tiny
"""
import importlib.util
import os
import sys

import pytest
import torch

if __name__ == "__main__":  # script mode (compute-sanitizer): make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mnv2_kernels  # noqa: E402  (defines the ops, loads the kernels)
from mnv2_kernels import _ext, ops  # noqa: E402
from mnv2_kernels.reference import inverted_residual_reference  # noqa: E402
from mnv2_kernels.testing import random_block_args, to_float64  # noqa: E402
from mnv2_kernels.models import mobilenet_v2_blocks  # noqa: E402

_HAS_CUDA = torch.cuda.is_available()
_CUDA_EXT_SPEC = importlib.util.find_spec("mnv2_kernels._C_cuda")

needs_cuda_kernel = pytest.mark.skipif(
    not _HAS_CUDA or _ext.CUDA_EXT is None,
    reason=("needs a CUDA GPU" if not _HAS_CUDA else
            f"the CUDA extension mnv2_kernels._C_cuda is not built ({_ext.CUDA_EXT_ERROR})"))

DTYPES = [torch.float16, torch.bfloat16]
# A few output ulps: one rounding of the output plus slack for float32 accumulation order.
ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


# ---------------------------------------------------------------------------------------------------------
# (a) registration, CPU-runnable

def test_cuda_kernel_registered_when_built():
    if _CUDA_EXT_SPEC is None:
        pytest.skip("the CUDA extension mnv2_kernels._C_cuda is not built here (no CUDA torch or nvcc at build "
                    "time, or MNV2_BUILD_CUDA=0)")
    assert _ext.CUDA_EXT is not None, f"mnv2_kernels._C_cuda exists but does not load: {_ext.CUDA_EXT_ERROR}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual", "CUDA")


# ---------------------------------------------------------------------------------------------------------
# helpers

def _run(args):
    return ops.inverted_residual(*args, backend="cuda")


def _check_accuracy(got, args, what=""):
    x = args[0]
    dt = x.dtype
    ref = inverted_residual_reference(*to_float64(args))
    eager = inverted_residual_reference(*args).to("cpu", torch.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == dt and got.device == x.device
    g = got.to("cpu", torch.float64)
    assert torch.isfinite(g).all(), f"{what}: non-finite outputs at {torch.nonzero(~torch.isfinite(g))[:5].tolist()}"
    err = (g - ref).abs().max().item()
    err_eager = (eager - ref).abs().max().item()
    atol = 4 * ULP[dt] * max(1.0, ref.abs().max().item())
    bound = 2 * err_eager + atol
    assert err <= bound, f"{what}: max error {err:.3g} > 2 x eager {err_eager:.3g} + atol {atol:.3g}"
    return err, err_eager


# (N, Cin, Chid, Cout, H, W, stride, residual, expand)
ODD_CONFIGS = [
    (1, 20, 120, 36, 7, 7, 1, False, True),      # odd channel counts, Chid not a multiple of the 32-chunk
    (3, 20, 120, 20, 15, 17, 1, True, True),     # residual, scalar loads (Cin % 8 != 0), batch 3
    (3, 20, 120, 36, 17, 15, 2, False, True),    # stride 2, odd sizes
    (1, 7, 21, 5, 5, 9, 2, False, True),         # everything odd and tiny
    (2, 24, 24, 16, 15, 15, 1, False, False),    # t = 1 without expand, vector loads
    (1, 20, 20, 20, 7, 17, 1, True, False),      # t = 1 without expand, residual, scalar loads
    (1, 24, 24, 40, 17, 17, 2, False, False),    # t = 1 without expand, stride 2
    (1, 32, 32, 16, 16, 16, 1, False, True),     # t = 1 with expand (the seed's form)
    (2, 24, 144, 24, 17, 17, 1, True, True),     # t = 6, residual, several tiles per image
    (1, 16, 96, 24, 15, 15, 2, False, True),     # t = 6, stride 2
    (1, 96, 576, 160, 15, 15, 2, False, True),   # the largest shared-memory shape (stride 2, Cin 96)
    (1, 160, 960, 320, 7, 7, 1, False, True),    # 320 output channels: 10 fragments per warp
    (1, 32, 64, 360, 9, 9, 1, False, True),      # Cout > 320: two output-channel tiles, ragged last tile
    (2, 8, 48, 8, 1, 1, 1, True, True),          # 1x1 image
    (1, 8, 48, 12, 1, 2, 2, False, True),        # 1x2 image, stride 2
    (1, 16, 96, 16, 8, 8, 1, True, True),        # exactly one tile
    (1, 16, 96, 16, 9, 9, 1, True, True),        # one tile + a one-pixel fringe
]


def _cfg_id(c):
    n, cin, chid, cout, h, w, s, res, exp = c
    return f"n{n}-{cin}-{chid}-{cout}-{h}x{w}-s{s}{'-res' if res else ''}{'' if exp else '-noexp'}"


# MobileNetV2 blocks at 224x224, from the package's one block table (mnv2_kernels.models.mobilenet_v2_blocks):
# (name, Cin, Chid, Cout, stride, H = W); block 1 also without its expand conv.
MBV2_BLOCKS = [(b.name, b.cin, b.chid, b.cout, b.stride, b.h) for b in mobilenet_v2_blocks(distinct=False)]
DISTINCT_BLOCKS = [(b.name.split("-")[0], b.cin, b.chid, b.cout, b.stride, b.h) for b in mobilenet_v2_blocks()]


def _poison_allocator(nbytes):
    """Fills freed blocks of PyTorch's CUDA caching allocator with NaN so a fresh output that the kernel fails to
    write shows up as NaN (the op allocates its output with at::empty, which reuses cached blocks)."""
    blocks = [torch.full((max(nbytes // 2, 1) + 4096,), float("nan"), dtype=torch.float16, device="cuda")
              for _ in range(3)]
    torch.cuda.synchronize()
    del blocks


# ---------------------------------------------------------------------------------------------------------
# (b) GPU tests

@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 8, 64])
@pytest.mark.parametrize("blk", DISTINCT_BLOCKS + [("1-noexp", 32, 32, 16, 1, 112)], ids=lambda b: "b" + b[0])
def test_mobilenet_v2_blocks_match_float64(blk, n, dtype):
    """The 12 distinct MobileNetV2 block shapes (the 17 blocks' shapes; repeats share a shape) and block 1 without
    its expand conv, outputs poisoned with NaN before the run; batch 8 feeds NCHW, the others channels_last."""
    name, cin, chid, cout, s, h = blk
    exp = not name.endswith("noexp")
    res = s == 1 and cin == cout
    args = list(random_block_args(cin, chid, cout, stride=s, residual=res, expand=exp, n=1, h=1, w=1, dtype=dtype,
                                  device="cuda", seed=int(name.split("-")[0])))
    g = torch.Generator(device="cuda").manual_seed(n)
    x = (torch.randn(n, cin, h, h, device="cuda", generator=g) * 2.0).to(dtype)
    args[0] = x.contiguous(memory_format=torch.channels_last) if n != 8 else x
    ho = (h - 1) // s + 1
    _poison_allocator(n * cout * ho * ho * 2 * 2)
    got = _run(args)
    torch.cuda.synchronize()
    _check_accuracy(got, args, f"block {name} n={n}")
    assert got.is_contiguous(memory_format=torch.channels_last) == (n != 8)


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inf_input_gives_what_pytorch_gives(dtype):
    # inf in one input channel: the expanded channels clamp to 0 or 6 (finite), so padded hidden channels (Chid
    # 120 -> 128 inside the kernel) must not turn it into NaN (0 * inf) anywhere
    args = list(random_block_args(20, 120, 36, stride=1, n=1, h=9, w=9, dtype=dtype, device="cuda", seed=4))
    x = args[0].clone()
    x[0, 3, 4, 4] = float("inf")
    args[0] = x
    got = _run(args).double().cpu()
    ref = inverted_residual_reference(*to_float64(args))
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), "NaN where PyTorch (float64) has none, or vice versa"
    assert torch.equal(torch.isinf(got), torch.isinf(ref))


@needs_cuda_kernel
def test_too_wide_image_is_refused_with_a_reason():
    # one image row of 3000 pixels x 96 hidden channels does not fit one CTA's shared memory
    args = random_block_args(16, 96, 24, stride=1, n=1, h=3, w=3000, dtype=torch.float16, device="cuda", seed=1)
    with pytest.raises(RuntimeError, match=r"cannot run a block .* shared memory .* use backend='triton'"):
        _run(args)

@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", ODD_CONFIGS, ids=_cfg_id)
def test_odd_configs_match_reference(cfg, dtype):
    n, cin, chid, cout, h, w, s, res, exp = cfg
    args = random_block_args(cin, chid, cout, stride=s, residual=res, expand=exp, n=n, h=h, w=w, dtype=dtype,
                             device="cuda", seed=cin * 7 + cout)
    got = _run(args)
    _check_accuracy(got, args, _cfg_id(cfg))


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stride", [1, 2])
def test_halo_padding_lives_in_expanded_space(stride, dtype):
    # a large expand bias makes relu6(bias) = 6 at the padded halo: wrong padding shows at every image border
    args = random_block_args(16, 96, 16, stride=stride, n=2, h=11, w=13, dtype=dtype, device="cuda", seed=3,
                             expand_bias_shift=8.0)
    _check_accuracy(_run(args), args, "bias shift")


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig", "misaligned"])
def test_memory_formats(layout, dtype):
    args = list(random_block_args(24, 144, 24, stride=1, residual=True, n=2, h=15, w=9, dtype=dtype,
                                  device="cuda", seed=11))
    x = args[0]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":  # every other channel of a wider tensor: neither NCHW- nor NHWC-contiguous
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=dtype, device="cuda")
        wide[:, ::2] = x
        x = wide[:, ::2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    elif layout == "misaligned":  # channels_last with a storage offset of one element: no 16-byte vector loads
        buf = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
        xm = buf[1:].view(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2)
        xm.copy_(x)
        assert xm.is_contiguous(memory_format=torch.channels_last) and xm.data_ptr() % 16 != 0
        x = xm
    args[0] = x
    got = _run(args)
    _check_accuracy(got, args, layout)
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    else:
        assert got.is_contiguous()
    # every layout feeds the kernel the same NHWC values: bitwise equal to the NCHW result
    ref_args = list(args)
    ref_args[0] = args[0].contiguous()
    assert torch.equal(got, _run(ref_args))


@needs_cuda_kernel
def test_misaligned_weights_use_scalar_loads():
    args = list(random_block_args(32, 192, 32, stride=1, residual=True, n=1, h=9, w=9, dtype=torch.float16,
                                  device="cuda", seed=5))
    for i in (1, 5):  # w_expand and w_project, offset by one element
        w = args[i]
        buf = torch.empty(w.numel() + 1, dtype=w.dtype, device="cuda")
        wm = buf[1:].view_as(w)
        wm.copy_(w)
        assert wm.is_contiguous() and wm.data_ptr() % 16 != 0
        args[i] = wm
    _check_accuracy(_run(args), args, "misaligned weights")


@needs_cuda_kernel
def test_nan_propagates():
    # no residual: the NaN must travel through expand, both ReLU6 clamps, the depthwise and the project
    args = list(random_block_args(16, 96, 16, stride=1, residual=False, n=1, h=8, w=8, dtype=torch.float16,
                                  device="cuda", seed=9))
    x = args[0].clone()
    x[0, 3, 4, 4] = float("nan")
    args[0] = x
    y = _run(args)
    assert torch.isnan(y[0, :, 3:6, 3:6]).any(), "a NaN input must not be hidden by the ReLU6 clamps"


@needs_cuda_kernel
def test_empty_batch_and_non_default_stream():
    args = list(random_block_args(16, 96, 24, stride=2, n=0, h=9, w=9, dtype=torch.float16, device="cuda"))
    y = _run(args)
    assert y.shape == (0, 24, 5, 5)
    args = random_block_args(16, 96, 24, stride=2, n=2, h=9, w=9, dtype=torch.float16, device="cuda", seed=2)
    expected = _run(args)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = _run(args)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, expected)


@needs_cuda_kernel
def test_large_batch_int64_indexing():
    # N*H*W*C passes 2^31 elements: the last images must still be right (int64 offsets)
    free, _ = torch.cuda.mem_get_info()
    cin, h, w = 32, 112, 112
    n = (2 ** 31) // (cin * h * w) + 2
    if free < 3 * n * cin * h * w * 2 + (2 << 30):
        pytest.skip(f"needs ~{3 * n * cin * h * w * 2 / 2**30:.0f} GiB of free GPU memory")
    small = random_block_args(cin, cin, 16, stride=1, expand=False, n=2, h=h, w=w, dtype=torch.float16,
                              device="cuda", seed=1)
    x = torch.zeros(n, cin, h, w, dtype=torch.float16, device="cuda", memory_format=torch.channels_last)
    x[-2:] = small[0]
    assert x.numel() > 2 ** 31
    y = _run((x,) + tuple(small[1:]))
    tail = y[-2:]
    del x, y
    _check_accuracy(tail, small, "large batch")


@needs_cuda_kernel
def test_bf16_and_fp16_results_are_deterministic():
    for dt in DTYPES:
        args = random_block_args(24, 144, 32, stride=2, n=3, h=17, w=15, dtype=dt, device="cuda", seed=8)
        assert torch.equal(_run(args), _run(args))


@needs_cuda_kernel
def test_errors():
    args = list(random_block_args(24, 144, 24, stride=1, residual=True, n=1, h=9, w=9, dtype=torch.float16,
                                  device="cuda"))
    for i, name in [(1, "w_expand"), (3, "w_dw"), (5, "w_project"), (6, "b_project")]:
        bad = list(args)
        bad[i] = args[i].cpu()
        with pytest.raises(ValueError, match=rf"{name} is on cpu but x is on cuda:\d"):
            _run(bad)
        with pytest.raises(ValueError, match=rf"{name} is on cpu but x is on cuda:\d"):
            torch.ops.mnv2.inverted_residual(*bad)
    # x on the CPU, weights on the GPU: the CUDA kernel is dispatched and says what is wrong
    with pytest.raises(ValueError, match=r"is on cuda:\d but x is on cpu"):
        torch.ops.mnv2.inverted_residual(args[0].cpu(), *args[1:])
    with pytest.raises(TypeError, match=r"supports torch.float16 and torch.bfloat16, got torch.float32"):
        _run(random_block_args(24, 144, 24, n=1, dtype=torch.float32, device="cuda"))
    bad = list(args)
    bad[5] = args[5].to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"w_project is .*but x is"):
        _run(bad)


# ---------------------------------------------------------------------------------------------------------
# (c) the generalised block (mnv2::inverted_residual_ex, issue 13): activations, K x K depthwise, TF "same"
# padding, squeeze-excite (two passes), leading depthwise, project activation, against float64

def test_cuda_ex_kernel_registered_when_built():
    if _CUDA_EXT_SPEC is None:
        pytest.skip("the CUDA extension mnv2_kernels._C_cuda is not built here (no CUDA torch or nvcc at build "
                    "time, or MNV2_BUILD_CUDA=0)")
    assert _ext.CUDA_EXT is not None, f"mnv2_kernels._C_cuda exists but does not load: {_ext.CUDA_EXT_ERROR}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual_ex", "CUDA"):
        pytest.skip("the built mnv2_kernels._C_cuda predates the generalised kernel (rebuild: "
                    "MNV2_BUILD_CUDA=1 python setup.py build_ext --inplace)")


def _ex_args_gpu(cin, chid, cout, *, k=3, stride=1, residual=False, expand=True, se=0, start=0, stride_start=1,
                 acts=("relu6", "relu6", "none"), padding="symmetric", se_fns=("relu", "sigmoid"), n=2, h=14, w=14,
                 dtype=torch.float16, seed=0):
    """Arguments of mnv2::inverted_residual_ex on the GPU in `dtype` (weights scaled like folded BN weights)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to("cuda", dtype)  # noqa: E731
    if not expand:
        chid = cin
    x = r(n, cin, h, w)
    we, be = (r(chid, cin, scale=cin ** -0.5), r(chid, scale=0.5)) if expand else (None, None)
    sev = (r(se, chid, scale=chid ** -0.5), r(se, scale=0.3), r(chid, se, scale=se ** -0.5), r(chid, scale=0.3)) \
        if se else (None,) * 4
    st = (r(cin, start, start, scale=1.0 / start), r(cin, scale=0.3)) if start else (None, None)
    return [x, we, be, r(chid, k, k, scale=1.0 / k), r(chid, scale=0.3), *sev, r(cout, chid, scale=chid ** -0.5),
            r(cout, scale=0.3), stride, residual, acts[0], acts[1], padding, se_fns[0], se_fns[1], acts[2], st[0],
            st[1], stride_start if start else 1]


def _check_ex_accuracy(got, args, what=""):
    from mnv2_kernels.reference import inverted_residual_ex_reference
    x = args[0]
    dt = x.dtype
    ref = inverted_residual_ex_reference(*[a.to("cpu", torch.float64) if isinstance(a, torch.Tensor) else a
                                          for a in args])
    eager = inverted_residual_ex_reference(*args).to("cpu", torch.float64)
    assert got.shape == ref.shape and got.dtype == dt and got.device == x.device, (got.shape, ref.shape)
    g = got.to("cpu", torch.float64)
    assert torch.isfinite(g).all(), f"{what}: non-finite outputs at {torch.nonzero(~torch.isfinite(g))[:5].tolist()}"
    err = (g - ref).abs().max().item()
    err_eager = (eager - ref).abs().max().item()
    atol = 4 * ULP[dt] * max(1.0, ref.abs().max().item())
    assert err <= 2 * err_eager + atol, f"{what}: max error {err:.3g} > 2 x eager {err_eager:.3g} + atol {atol:.3g}"
    return err, err_eager


EX_GPU_CONFIGS = [
    # (id, kwargs): each activation, K, padding, SE, leading depthwise, project activation
    ("relu-k3", dict(cin=16, chid=64, cout=16, k=3, residual=True, acts=("relu", "relu", "none"))),
    ("hardswish-k5-se-mnv3", dict(cin=40, chid=120, cout=40, k=5, residual=True, se=32, acts=("hardswish",) * 2 + ("none",),
                                  se_fns=("relu", "hardsigmoid"), h=28, w=28)),
    ("silu-k3-se-effnet-b0", dict(cin=24, chid=144, cout=24, k=3, residual=True, se=6, acts=("silu", "silu", "none"),
                                  se_fns=("silu", "sigmoid"), h=56, w=56)),
    ("relu-k5-s2-mnasnet", dict(cin=24, chid=72, cout=40, k=5, stride=2, acts=("relu", "relu", "none"), h=56, w=56)),
    ("gelu-k7", dict(cin=16, chid=48, cout=16, k=7, acts=("gelu", "gelu", "none"), h=15, w=13)),
    ("gelu_tanh-k9", dict(cin=16, chid=32, cout=24, k=9, acts=("gelu_tanh", "gelu_tanh", "none"), h=17, w=19)),
    ("k1-s2", dict(cin=16, chid=64, cout=24, k=1, stride=2, acts=("relu", "none", "none"), h=20, w=18)),
    ("tf_same-k3-s2-even", dict(cin=16, chid=96, cout=24, k=3, stride=2, padding="tf_same", h=28, w=28)),
    ("tf_same-k5-s2-even-se", dict(cin=24, chid=144, cout=40, k=5, stride=2, padding="tf_same", se=6,
                                   acts=("silu", "silu", "none"), se_fns=("silu", "sigmoid"), h=28, w=28)),
    ("chunk-k5-se", dict(cin=112, chid=672, cout=112, k=5, residual=True, se=168,
                         acts=("hardswish", "hardswish", "none"), se_fns=("relu", "hardsigmoid"), h=14, w=14)),
    ("no-expand-k3-se", dict(cin=16, chid=16, cout=16, k=3, expand=False, se=8, acts=("relu", "relu", "none"),
                             se_fns=("relu", "hardsigmoid"), h=56, w=56)),
    ("odd-channels", dict(cin=7, chid=21, cout=5, k=5, stride=2, se=5, padding="tf_same",
                          acts=("hardswish", "hardswish", "none"), h=9, w=12)),
    ("project-act-lcnet", dict(cin=16, chid=16, cout=32, k=3, expand=False, acts=("hardswish",) * 3)),
    ("uib-extradw", dict(cin=32, chid=128, cout=32, k=5, start=3, residual=True, acts=("relu", "relu", "none"))),
    ("uib-extradw-s2", dict(cin=32, chid=128, cout=48, k=3, start=5, stride_start=2, acts=("relu", "relu", "none"),
                            padding="tf_same", h=28, w=28)),
    ("uib-convnext", dict(cin=32, chid=128, cout=32, k=1, start=7, residual=True, acts=("relu", "none", "none"))),
]


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", EX_GPU_CONFIGS, ids=[c[0] for c in EX_GPU_CONFIGS])
def test_ex_matches_float64(cfg, dtype):
    if not torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual_ex", "CUDA"):
        pytest.skip("the built mnv2_kernels._C_cuda predates the generalised kernel")
    name, kw = cfg
    args = _ex_args_gpu(dtype=dtype, seed=len(name), **kw)
    x = args[0]
    ho = (x.shape[2] - 1) // args[-1] // args[11] + 1
    _poison_allocator(x.shape[0] * kw["cout"] * ho * ho * 2 * 4)
    got = ops.inverted_residual_ex(*args, backend="cuda")
    torch.cuda.synchronize()
    _check_ex_accuracy(got, args, name)
    cl = [a.contiguous(memory_format=torch.channels_last) if i == 0 else a for i, a in enumerate(args)]
    got_cl = ops.inverted_residual_ex(*cl, backend="cuda")
    assert got_cl.is_contiguous(memory_format=torch.channels_last)
    if kw.get("se"):  # float32 atomics in the pool: order may differ, values within the accuracy rule
        _check_ex_accuracy(got_cl, cl, name + " channels_last")
    else:
        assert torch.equal(got_cl, got)


@needs_cuda_kernel
def test_ex_nan_propagates_like_pytorch():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual_ex", "CUDA"):
        pytest.skip("the built mnv2_kernels._C_cuda predates the generalised kernel")
    for acts in (("hardswish", "silu", "none"), ("gelu", "relu", "none"), ("relu6", "gelu_tanh", "none")):
        args = _ex_args_gpu(16, 48, 16, k=5, residual=True, acts=acts, padding="tf_same", n=1, h=9, w=9, seed=3)
        x = args[0].clone()
        x[0, 3, 4, 4] = float("nan")
        args[0] = x
        got = ops.inverted_residual_ex(*args, backend="cuda").cpu()
        ref = ops.inverted_residual_ex(*args, backend="reference").cpu()
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), acts


@needs_cuda_kernel
def test_ex_errors_and_empty_batch():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual_ex", "CUDA"):
        pytest.skip("the built mnv2_kernels._C_cuda predates the generalised kernel")
    args = _ex_args_gpu(8, 16, 8, k=5, se=4)
    bad = list(args)
    bad[14] = "swish"
    with pytest.raises(ValueError, match="act_dw must be one of"):
        torch.ops.mnv2.inverted_residual_ex(*bad)
    bad = list(args)
    bad[3] = bad[3][:, :4, :4]
    with pytest.raises(ValueError, match="w_dw must be"):
        torch.ops.mnv2.inverted_residual_ex(*bad)
    # what the kernel does not serve still computes (ATen ops as the reference): float32 CUDA tensors
    f32 = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
    torch.testing.assert_close(torch.ops.mnv2.inverted_residual_ex(*f32),
                               ops.inverted_residual_ex(*f32, backend="reference"), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run"):
        ops.inverted_residual_ex(*f32, backend="cuda")
    empty = list(args)
    empty[0] = args[0][:0]
    assert torch.ops.mnv2.inverted_residual_ex(*empty).shape == (0, 8, 14, 14)


# ---------------------------------------------------------------------------------------------------------
# script mode: a few launches for compute-sanitizer (memcheck / racecheck / synccheck / initcheck)

def _sanitize_main(tiny):
    configs = ODD_CONFIGS[:2] + [ODD_CONFIGS[3], ODD_CONFIGS[5], ODD_CONFIGS[6], ODD_CONFIGS[12], ODD_CONFIGS[14]]
    if not tiny:
        configs += [ODD_CONFIGS[10], ODD_CONFIGS[11]]
    worst = 0.0
    for dt in DTYPES:
        for cfg in configs:
            n, cin, chid, cout, h, w, s, res, exp = cfg
            if tiny:
                n, h, w = 1, min(h, 9), min(w, 9)
            args = random_block_args(cin, chid, cout, stride=s, residual=res, expand=exp, n=n, h=h, w=w,
                                     dtype=dt, device="cuda", seed=1)
            got = _run(args)
            torch.cuda.synchronize()
            err, eager = _check_accuracy(got, args, _cfg_id(cfg))
            worst = max(worst, err / max(eager, 1e-12))
            print(f"{str(dt):15s} {_cfg_id(cfg):40s} err {err:.3g} eager {eager:.3g}")
    if torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual_ex", "CUDA"):
        # the generalised kernel: K 1-9, tf_same, SE (pool atomics, excite MLP, pass 2), leading depthwise
        for dt in DTYPES:
            for name, kw in EX_GPU_CONFIGS:
                kw = dict(kw)
                if tiny:
                    kw.update(n=1, h=min(kw.get("h", 14), 9), w=min(kw.get("w", 14), 9))
                args = _ex_args_gpu(dtype=dt, seed=1, **kw)
                got = ops.inverted_residual_ex(*args, backend="cuda")
                torch.cuda.synchronize()
                err, eager = _check_ex_accuracy(got, args, name)
                worst = max(worst, err / max(eager, 1e-12))
                print(f"{str(dt):15s} ex {name:37s} err {err:.3g} eager {eager:.3g}")
    print(f"OK, worst err/eager ratio {worst:.2f}")


if __name__ == "__main__":
    if not _HAS_CUDA or _ext.CUDA_EXT is None:
        sys.exit(f"needs a CUDA GPU and the built extension ({_ext.CUDA_EXT_ERROR})")
    _sanitize_main("--tiny" in sys.argv)
