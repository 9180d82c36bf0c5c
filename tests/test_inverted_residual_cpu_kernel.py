"""Focused tests of the fused C++ CPU kernel (csrc/cpu/inverted_residual_cpu.cpp) against a float64
plain-PyTorch computation of docs/CONTRACT.md.

Tolerances: the kernel accumulates in float32 over K <= 960 terms of magnitude <= ~6 * |w|; its error is a
few float32 ulps of the output scale (measured ~1e-7 .. 1e-6 relative), so float32 uses
atol = rtol = 1e-4 * max|ref| (>= 100x margin, still far below any indexing/halo bug, which is O(scale)).
bfloat16: inputs and weights are bf16, arithmetic fp32, one rounding at the store, so the error is about
half a bf16 ulp of the output (2^-9 relative) plus fp32 noise: we use 1e-2 * max|ref| (+ rtol 1e-2).
"""
import pytest
import torch
import torch.nn.functional as F

import mnv2_kernels  # noqa: F401  (defines the schema and loads mnv2_kernels._C)
from mnv2_kernels import _ext
from mnv2_kernels.reference import inverted_residual_reference
from mnv2_kernels.testing import to_float64

pytestmark = pytest.mark.skipif(_ext.CPU_EXT is None, reason=f"CPU extension not built: {_ext.CPU_EXT_ERROR}")

op = torch.ops.mnv2.inverted_residual


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def make_weights(cin, t, cout, dtype=torch.float32, seed=0, b_expand_shift=0.5):
    """Folded weights of realistic scale. t=None: no expand conv (Chid = Cin); else Chid = t * cin
    (t = 1 keeps a cin -> cin expand conv). Pre-activations land roughly in [-4, 9], so both ReLU6 clips
    (at 0 and at 6) are exercised."""
    g = torch.Generator().manual_seed(seed)
    chid = cin if t is None else t * cin
    if t is None:
        we = be = None
    else:
        we = torch.randn(chid, cin, generator=g) * (2.5 / cin ** 0.5)
        be = torch.randn(chid, generator=g) * 1.0 + b_expand_shift
    wd = torch.randn(chid, 3, 3, generator=g) * 0.5
    bd = torch.randn(chid, generator=g) * 1.0 + 0.5
    wp = torch.randn(cout, chid, generator=g) * (1.0 / chid ** 0.5)
    bp = torch.randn(cout, generator=g) * 0.1
    ws = [we, be, wd, bd, wp, bp]
    return [None if w is None else w.to(dtype) for w in ws]


def reference64(x, we, be, wd, bd, wp, bp, stride, residual):
    """The contract in float64: the package's plain-PyTorch reference on upcast copies."""
    return inverted_residual_reference(*to_float64((x, we, be, wd, bd, wp, bp, stride, residual)))


def expected_channels_last(x):
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def check_close(y, ref, dtype):
    scale = max(ref.abs().max().item(), 1e-3)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.double(), ref, atol=tol * scale, rtol=tol)


def make_input(n, cin, h, w, layout, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    if layout == "nchw":
        return torch.randn(n, cin, h, w, generator=g).to(dtype)
    if layout == "cl":
        return torch.randn(n, cin, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "slice":  # non-contiguous view: every other column of a wider channels_last tensor
        big = torch.randn(n, cin, h, 2 * w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        return big[:, :, :, ::2]
    if layout == "transposed":  # H/W-transposed view of an NCHW tensor
        return torch.randn(n, cin, w, h, generator=g).to(dtype).transpose(2, 3)
    raise ValueError(layout)


# (cin, t, cout, stride, residual); t=None: no expand conv
BLOCKS = [
    (24, 6, 24, 1, True),     # the classic residual block
    (24, 6, 32, 2, False),
    (20, None, 20, 1, True),  # no expand conv (t = 1 in the paper)
    (20, 1, 20, 1, True),     # expand conv with t = 1 (the seed's variant)
    (20, 2, 36, 1, False),    # channel counts not multiples of 8
    (16, 4, 24, 2, False),
    (20, 6, 36, 2, False),    # hidden 120
    (32, None, 16, 2, False),
    (12, 2, 12, 1, True),     # hidden 24 (< one 8-wide tile on some paths)
]
SIZES = [(7, 7), (15, 17), (17, 15), (1, 1), (2, 3)]
LAYOUTS = ["nchw", "cl", "slice", "transposed"]


# ------------------------------------------------------------------------------------------------------------
# correctness
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: "cin{}_t{}_cout{}_s{}_{}".format(*b[:4], "res" if b[4] else "nores"))
def test_matches_float64_reference(block, hw, n, layout):
    cin, t, cout, stride, residual = block
    ws = make_weights(cin, t, cout)
    x = make_input(n, cin, *hw, layout, torch.float32)
    y = op(x, *ws, stride, residual)
    ref = reference64(x, *ws, stride, residual)
    assert y.shape == ref.shape and y.dtype == torch.float32
    if expected_channels_last(x):
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()
    check_close(y, ref, torch.float32)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cfg", [(24, 6, 24, 56, 56), (160, 6, 160, 17, 15), (96, 6, 96, 14, 14), (16, 6, 24, 33, 40)],
                         ids=lambda c: f"cin{c[0]}_t{c[1]}_cout{c[2]}_{c[3]}x{c[4]}")
def test_larger_shapes_chunks_and_bands(cfg, stride, n):
    """Shapes big enough for several row chunks per image (ring-buffer halo reuse) and, at n = 1 and 3,
    row bands across threads (halo recomputation at band edges)."""
    cin, t, cout, h, w = cfg
    residual = stride == 1 and cin == cout
    ws = make_weights(cin, t, cout, seed=3)
    x = make_input(n, cin, h, w, "cl", torch.float32)
    y = op(x, *ws, stride, residual)
    check_close(y, reference64(x, *ws, stride, residual), torch.float32)


def test_same_result_with_one_and_two_threads():
    """Bands (n < threads) and whole images must give bitwise equal results: each output pixel is computed
    the same way whatever the split."""
    ws = make_weights(24, 6, 24, seed=5)
    x = make_input(3, 24, 40, 29, "cl", torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = op(x, *ws, 1, True)
        torch.set_num_threads(max(2, old))
        y2 = op(x, *ws, 1, True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)


def test_relu6_clips_at_both_ends():
    """The weights of these tests drive pre-activations below 0 and above 6 in both ReLU6s."""
    ws = make_weights(24, 6, 24)
    x = make_input(2, 24, 15, 17, "cl", torch.float32)
    we, be, wd, bd = (w.double() for w in ws[:4])
    expand_pre = F.conv2d(x.double(), we[:, :, None, None], be)
    dw_pre = F.conv2d(expand_pre.clamp(0, 6), wd[:, None], bd, padding=1, groups=wd.shape[0])
    for key, pre in (("expand_pre", expand_pre), ("dw_pre", dw_pre)):
        assert (pre < 0).float().mean() > 0.05, key
        assert (pre > 6).float().mean() > 0.005, key
    check_close(op(x, *ws, 1, True), reference64(x, *ws, 1, True), torch.float32)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(7, 7), (8, 9), (1, 1), (56, 56)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_halo_is_zero_in_activated_expanded_space(stride, hw):
    """With a big positive b_expand, expanding a padded pixel would give relu6(b_expand) = 6 != 0. The
    contract pads the *activated expanded* tensor with zeros; check the kernel does, and that this test
    would notice the wrong rule (the wrong-padding result differs from the right one by O(output scale))."""
    cin, t, cout = 16, 6, 16
    residual = stride == 1
    ws = make_weights(cin, t, cout, seed=7, b_expand_shift=8.0)
    x = make_input(2, cin, *hw, "cl", torch.float32)
    y = op(x, *ws, stride, residual)
    ref = reference64(x, *ws, stride, residual)
    check_close(y, ref, torch.float32)
    # the wrong rule: pad x (not the expanded tensor) with zeros, then expand => relu6(b_expand) at the border
    we, be, wd, bd, wp, bp = [w.double() for w in ws]
    h = F.conv2d(F.pad(x.double(), (1, 1, 1, 1)), we[:, :, None, None], be).clamp(0, 6)
    h = F.conv2d(h, wd[:, None], bd, stride=stride, groups=wd.shape[0]).clamp(0, 6)
    wrong = F.conv2d(h, wp[:, :, None, None], bp) + (x.double() if residual else 0)
    assert (wrong - ref).abs().max() > 1e-2 * ref.abs().max()


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("t", [None, 6])
def test_empty_batch(layout, t):
    ws = make_weights(24, t, 32)
    x = make_input(0, 24, 9, 9, layout, torch.float32)
    y = op(x, *ws, 2, False)
    assert y.shape == (0, 32, 5, 5) and y.dtype == torch.float32
    # an empty tensor is contiguous in every memory format, so the contract's rule gives NCHW here
    assert y.is_contiguous()


@pytest.mark.parametrize("layout", ["nchw", "cl", "slice"])
@pytest.mark.parametrize("block", [(24, 6, 24, 1, True), (20, 6, 36, 2, False), (20, None, 20, 1, True),
                                   (160, 6, 160, 1, True)], ids=lambda b: "cin{}_t{}_cout{}_s{}".format(*b[:4]))
def test_bfloat16(block, layout):
    cin, t, cout, stride, residual = block
    ws = make_weights(cin, t, cout, dtype=torch.bfloat16)
    x = make_input(3, cin, 15, 17, layout, torch.bfloat16)
    y = op(x, *ws, stride, residual)
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last) if expected_channels_last(x) else y.is_contiguous()
    check_close(y, reference64(x, *ws, stride, residual), torch.bfloat16)


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------
def test_error_3d_input():
    ws = make_weights(24, 6, 24)
    with pytest.raises(ValueError, match=r"x must be a 4-D \(N, C, H, W\) tensor, got 3-D"):
        op(torch.randn(24, 8, 8), *ws, 1, True)


def test_error_wrong_channel_count():
    ws = make_weights(24, 6, 24)
    with pytest.raises(ValueError, match="block expects 24 input channels, got 15"):
        op(torch.randn(2, 15, 8, 8), *ws, 1, False)
    ws = make_weights(24, None, 24)
    with pytest.raises(ValueError, match="block expects 24 input channels, got 15"):
        op(torch.randn(2, 15, 8, 8), *ws, 1, False)


def test_error_weight_dtype_mismatch():
    ws = make_weights(24, 6, 24)
    ws[4] = ws[4].double()
    with pytest.raises(TypeError, match="w_project is .* but x is .*; call .to"):
        op(torch.randn(2, 24, 8, 8), *ws, 1, True)


def test_error_float16_and_float64_inputs():
    ws = make_weights(24, 6, 24, dtype=torch.float16)
    with pytest.raises(TypeError, match="the CPU kernel supports torch.float32 and torch.bfloat16, got torch.float16"):
        op(torch.randn(2, 24, 8, 8).half(), *ws, 1, True)
    ws = make_weights(24, 6, 24, dtype=torch.float64)
    with pytest.raises(TypeError, match="the CPU kernel supports torch.float32 and torch.bfloat16, got torch.float64"):
        op(torch.randn(2, 24, 8, 8).double(), *ws, 1, True)


def test_error_bad_stride_and_residual():
    ws = make_weights(24, 6, 24)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        op(torch.randn(1, 24, 8, 8), *ws, 3, False)
    with pytest.raises(ValueError, match="residual needs stride 1"):
        op(torch.randn(1, 24, 8, 8), *ws, 2, True)
