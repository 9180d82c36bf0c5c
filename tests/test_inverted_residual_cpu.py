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


# ------------------------------------------------------------------------------------------------------------
# issue 14: run-time ISA choice, packed-weight cache, the kernel's own thread pool, stem/head ops
# ------------------------------------------------------------------------------------------------------------
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _available_isas():
    flags = _cpu_flags()
    if flags is None:
        return [_ext.CPU_EXT.cpu_isa()]
    isas = []
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        isas.append("avx512")
    return isas


@pytest.fixture
def restore_isa():
    yield
    _ext.CPU_EXT.set_cpu_isa("auto")


def test_isa_is_the_widest_the_cpu_has():
    """cpu_isa() names the variant that runs; unless MNV2_CPU_ISA overrides it, the widest the CPU supports."""
    import os
    isa = _ext.CPU_EXT.cpu_isa()
    assert torch.ops.mnv2.cpu_isa() == isa
    if os.environ.get("MNV2_CPU_ISA", "auto") == "auto" and _cpu_flags() is not None:
        assert isa == _available_isas()[-1]


@pytest.mark.parametrize("block", [(24, 6, 24, 1, True), (16, 6, 24, 2, False), (32, None, 16, 1, False),
                                   (20, 6, 36, 2, False), (160, 6, 320, 1, False)],
                         ids=lambda b: "cin{}_t{}_cout{}_s{}".format(*b[:4]))
def test_every_isa_matches_the_reference(block, restore_isa):
    """Each compiled variant (AVX2, AVX-512 where the CPU has it) computes the contract; channel counts that
    are not multiples of 16 exercise the AVX-512 masked tails."""
    cin, t, cout, stride, residual = block
    ws = make_weights(cin, t, cout, seed=11)
    x = make_input(3, cin, 13, 10, "cl", torch.float32)
    ref = reference64(x, *ws, stride, residual)
    for isa in _available_isas():
        _ext.CPU_EXT.set_cpu_isa(isa)
        assert _ext.CPU_EXT.cpu_isa() == isa
        check_close(op(x, *ws, stride, residual), ref, torch.float32)
        xb = x.bfloat16()
        wb = [None if w is None else w.bfloat16() for w in ws]
        check_close(op(xb, *wb, stride, residual), reference64(xb, *wb, stride, residual), torch.bfloat16)


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="expected 'auto', 'avx2' or 'avx512', got 'sse'"):
        _ext.CPU_EXT.set_cpu_isa("sse")


def test_packed_weights_follow_in_place_changes():
    """The packed-weight cache must never serve stale weights: in-place writes PyTorch records (normal
    tensors), inference tensors (never cached) and, after clear_pack_cache(), writes through .data."""
    ws = make_weights(24, 6, 24, seed=4)
    x = make_input(2, 24, 9, 9, "cl", torch.float32)
    y0 = op(x, *ws, 1, True)
    ws[4].mul_(2.0)  # version counter bump
    y1 = op(x, *ws, 1, True)
    check_close(y1, reference64(x, *ws, 1, True), torch.float32)
    assert not torch.allclose(y0, y1)
    ws[0].data.mul_(0.5)  # not recorded: visible after clear_pack_cache()
    _ext.CPU_EXT.clear_pack_cache()
    check_close(op(x, *ws, 1, True), reference64(x, *ws, 1, True), torch.float32)
    with torch.inference_mode():
        wi = [w.clone() for w in ws]
        op(x, *wi, 1, True)
        wi[2].mul_(-1.0)  # an inference tensor changed in place: no version counter, so never cached
        check_close(op(x, *wi, 1, True), reference64(x, *wi, 1, True), torch.float32)


def test_concurrent_callers_get_their_own_results():
    """Two Python threads calling at once: one uses the pool, the other runs inline; both correct."""
    import threading
    cases = [(make_weights(24, 6, 24, seed=s), make_input(2, 24, 20, 17, "cl", torch.float32, seed=s))
             for s in range(2)]
    refs = [op(x, *ws, 1, True) for ws, x in cases]
    errors = []

    def worker(i):
        ws, x = cases[i]
        for _ in range(20):
            if not torch.equal(op(x, *ws, 1, True), refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("cfg", [(1, 3, 32, 224, 224, 2), (2, 3, 32, 9, 7, 2), (1, 5, 17, 6, 5, 1),
                                 (1, 3, 32, 1, 1, 2), (1, 64, 64, 5, 6, 2)],
                         ids=lambda c: "n{}_cin{}_cout{}_{}x{}_s{}".format(*c))
def test_stem_conv3x3_matches_aten(cfg, restore_isa):
    n, cin, cout, h, w, s = cfg
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, cin, h, w, generator=g)
    wt = torch.randn(cout, cin, 3, 3, generator=g)
    b = torch.randn(cout, generator=g)
    for isa in _available_isas():
        _ext.CPU_EXT.set_cpu_isa(isa)
        for relu6 in (True, False):
            ref = F.conv2d(x.double(), wt.double(), b.double(), s, 1)
            ref = ref.clamp(0, 6) if relu6 else ref
            y = torch.ops.mnv2.conv3x3_bias_act(x, wt, b, s, relu6)
            assert y.is_contiguous()
            check_close(y, ref, torch.float32)
            ycl = torch.ops.mnv2.conv3x3_bias_act(x.contiguous(memory_format=torch.channels_last), wt, b, s, relu6)
            assert expected_channels_last(ycl) or ycl.shape[2] * ycl.shape[3] == 1
            assert torch.equal(y, ycl)


def test_stem_conv3x3_nan_and_inf_as_aten():
    """NaN/Inf in the input propagate; a non-finite weight gives NaN where ATen's convolution gives it (ATen
    multiplies the padding by the weights there, so the op lets ATen compute that case)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 8, 8, generator=g)
    x[0, 1, 3, 4] = float("nan")
    x[0, 2, 0, 0] = float("inf")
    wt = torch.randn(32, 3, 3, 3, generator=g)
    b = torch.randn(32, generator=g)
    ref = F.conv2d(x, wt, b, 2, 1).clamp(0, 6)
    y = torch.ops.mnv2.conv3x3_bias_act(x, wt, b, 2, True)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    wt[2, 0, 0, 0] = float("inf")
    ref = F.conv2d(x, wt, b, 2, 1).clamp(0, 6)
    y = torch.ops.mnv2.conv3x3_bias_act(x, wt, b, 2, True)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


@pytest.mark.parametrize("mkn", [(1, 1280, 1000), (32, 1280, 1000), (49, 320, 1280), (5, 7, 3), (100, 33, 70)],
                         ids=lambda c: "m{}_k{}_n{}".format(*c))
def test_dense_matches_linear_and_1x1_conv(mkn, restore_isa):
    m, k, n = mkn
    g = torch.Generator().manual_seed(3)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    b = torch.randn(n, generator=g)
    x4 = torch.randn(2, k, 3, 4, generator=g).contiguous(memory_format=torch.channels_last)
    for isa in _available_isas():
        _ext.CPU_EXT.set_cpu_isa(isa)
        check_close(torch.ops.mnv2.dense_bias_act(x, w, b, False), F.linear(x.double(), w.double(), b.double()),
                    torch.float32)
        y4 = torch.ops.mnv2.dense_bias_act(x4, w, b, True)
        assert expected_channels_last(y4)
        check_close(y4, F.conv2d(x4.double(), w.double()[:, :, None, None], b.double()).clamp(0, 6), torch.float32)


def test_stem_head_op_errors():
    with pytest.raises(TypeError, match="x must be torch.float32, got torch.float64"):
        torch.ops.mnv2.dense_bias_act(torch.randn(2, 4).double(), torch.randn(3, 4), torch.randn(3), False)
    with pytest.raises(ValueError, match=r"w must be \[Ncols, 4\]"):
        torch.ops.mnv2.dense_bias_act(torch.randn(2, 4), torch.randn(3, 5), torch.randn(3), False)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        torch.ops.mnv2.conv3x3_bias_act(torch.randn(1, 3, 8, 8), torch.randn(8, 3, 3, 3), torch.randn(8), 3, True)
    with pytest.raises(ValueError, match="supports Cin <= 64"):
        torch.ops.mnv2.conv3x3_bias_act(torch.randn(1, 3, 8, 8), torch.randn(200, 3, 3, 3), torch.randn(200), 1,
                                        True)


def test_fused_mobilenet_v2_runs_stem_head_and_classifier_on_the_kernel():
    """fuse() on the CPU turns the stem/head convs and the classifier into the kernel-backed modules; the
    state dict keeps its keys; the output matches the original model."""
    from mnv2_kernels import fuse
    from mnv2_kernels.models import mobilenet_v2
    from mnv2_kernels.stem_head import CPUFoldedConvBNAct, CPULinear, PooledHeadMobileNetV2
    from mnv2_kernels.testing import randomize_bn_
    torch.manual_seed(0)
    m0 = randomize_bn_(mobilenet_v2()).eval()
    m = fuse(m0)
    assert isinstance(m.features[0], CPUFoldedConvBNAct) and isinstance(m.features[18], CPUFoldedConvBNAct)
    assert isinstance(m.classifier[1], CPULinear) and isinstance(m, PooledHeadMobileNetV2)
    assert list(m.state_dict()) == list(m0.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = m0(x)
        y = m(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        # a hook on the head: the pooled head steps aside, the hook sees the 1280-channel map
        seen = []
        h = m.features[18].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
        try:
            y2 = m(x)
        finally:
            h.remove()
        assert seen == [torch.Size([2, 1280, 2, 2])]
        torch.testing.assert_close(y2, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)


def test_dense_relu6_mean_matches_conv_relu6_pool():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 7, 5, generator=g)
    w = torch.randn(100, 40, generator=g) / 40 ** 0.5
    b = torch.randn(100, generator=g)
    ref = F.conv2d(x.double(), w.double()[:, :, None, None], b.double()).clamp(0, 6).mean((2, 3))
    for layout in (torch.contiguous_format, torch.channels_last):
        check_close(torch.ops.mnv2.dense_relu6_mean(x.contiguous(memory_format=layout), w, b), ref, torch.float32)
    x[1, 3, 2, 2] = float("nan")
    y = torch.ops.mnv2.dense_relu6_mean(x, w, b)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_runs_the_kernel():
    """The pool's helper threads do not survive fork(): a child (a DataLoader worker, say) makes its own."""
    import os
    ws = make_weights(24, 6, 24, seed=6)
    x = make_input(3, 24, 20, 20, "cl", torch.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y = op(x, *ws, 1, True)  # starts the parent's helpers
        pid = os.fork()
        if pid == 0:  # child: exit code 0 only if every call is right
            ok = all(torch.equal(op(x, *ws, 1, True), y) for _ in range(5))
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(old)
    assert status == 0


@pytest.fixture
def restore_split():
    prev = _ext.CPU_EXT.set_split_max_pixels(49)
    _ext.CPU_EXT.set_split_max_pixels(prev)
    yield
    _ext.CPU_EXT.set_split_max_pixels(prev)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("cfg", [(1, 160, 6, 160, 7, 7, 1, True), (1, 96, 6, 160, 14, 14, 2, False),
                                 (1, 64, 6, 64, 14, 14, 1, True), (1, 32, 6, 64, 28, 28, 2, False),
                                 (1, 20, 3, 17, 5, 7, 1, False), (2, 24, 4, 24, 9, 9, 1, True),
                                 (1, 8, 2, 8, 1, 1, 2, False)],
                         ids=lambda c: "n{}_cin{}_t{}_cout{}_{}x{}_s{}_res{}".format(*c))
def test_channel_split_equals_row_bands(cfg, threads, restore_split, restore_isa):
    """Small images with fewer images than threads run split by channels in two phases (kernel_impl.h,
    run_block_split); each output element sums the same terms in the same order as the row-band path, so
    the two agree bit for bit, NaN/Inf included, and both match the float64 reference."""
    n, cin, t, cout, h, w, stride, residual = cfg
    ws = make_weights(cin, t, cout, seed=11)
    x = make_input(n, cin, h, w, "cl", torch.float32, seed=12)
    x[0, 1, 0, 0] = float("nan")
    x[-1, 2, h // 2, w // 2] = float("inf")
    ref = reference64(x, *ws, stride, residual)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for isa in _available_isas():
            _ext.CPU_EXT.set_cpu_isa(isa)
            _ext.CPU_EXT.set_split_max_pixels(10 ** 6)
            ys = op(x, *ws, stride, residual)
            _ext.CPU_EXT.set_split_max_pixels(0)
            yb = op(x, *ws, stride, residual)
            assert torch.equal(torch.isnan(ys), torch.isnan(ref)) and torch.equal(torch.isnan(yb), torch.isnan(ref))
            assert torch.equal(ys.nan_to_num(), yb.nan_to_num()), f"{isa}: split and bands differ"
            fin = torch.isfinite(ref)
            if fin.any():
                check_close(ys[fin], ref[fin], torch.float32)
    finally:
        torch.set_num_threads(old)


def test_split_max_pixels_setter_returns_the_previous_value(restore_split):
    prev = _ext.CPU_EXT.set_split_max_pixels(123)
    assert _ext.CPU_EXT.set_split_max_pixels(prev) == 123
    assert _ext.CPU_EXT.set_split_max_pixels(-5) == prev and _ext.CPU_EXT.set_split_max_pixels(prev) == 0
