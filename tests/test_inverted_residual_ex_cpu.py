"""The fused CPU kernel of the generalised block (issue 13; csrc/cpu/kernel_ex_impl.h via mnv2_kernels/cpu_ex.py)
against the float64 reference (reference.inverted_residual_ex_reference): every activation (NaN propagation
included), kernel size, padding mode at odd and even sizes, stride, squeeze-excite in both paths (in scratch,
two passes), leading depthwise, residual, project activation, bfloat16, memory formats, N = 0 / 1 and batch 1
split across threads. docs/CONTRACT.md, "The generalised block".
"""
import pytest
import torch

from mnv2_kernels import backends, cpu_ex, ops
from mnv2_kernels.reference import ACTIVATIONS, inverted_residual_ex_reference

pytestmark = pytest.mark.skipif(cpu_ex.kernel_unavailable_reason() is not None,
                                reason=f"fused CPU kernel unavailable: {cpu_ex.kernel_unavailable_reason()}")

C = None if cpu_ex.kernel_unavailable_reason() else cpu_ex._ext.CPU_EXT
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.bfloat16: dict(rtol=4e-2, atol=8e-2)}


def make_args(N=2, Cin=6, H=9, W=8, Chid=12, Cout=10, k=3, stride=1, expand=True, se=False, k0=0, s0=1,
              residual=False, ae="relu6", ad="relu6", pad="symmetric", sa="relu", sg="sigmoid", ap="none",
              dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    if not expand:
        Chid = Cin
    if residual:
        Cout = Cin
    return [r(N, Cin, H, W), r(Chid, Cin) * 0.5 if expand else None, r(Chid) if expand else None,
            r(Chid, k, k) * 0.3, r(Chid), *((r(3, Chid), r(3), r(Chid, 3), r(Chid)) if se else (None,) * 4),
            r(Cout, Chid) * 0.3, r(Cout), stride, residual, ae, ad, pad, sa, sg, ap,
            r(Cin, k0, k0) * 0.4 if k0 else None, r(Cin) if k0 else None, s0]


def ref64(args):
    return inverted_residual_ex_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])


def kernel(args):
    """The kernel itself (the launcher), not the op's routing: None would mean it declined."""
    codes = cpu_ex._ACT_CODES
    y = C.inverted_residual_ex_cpu(*args[:13], codes[args[13]], codes[args[14]], args[15] == "tf_same",
                                   codes[args[16]], codes[args[17]], codes[args[18]], *args[19:])
    assert y is not None
    return y


def check(args, dtype=torch.float32):
    y = torch.ops.mnv2.inverted_residual_ex(*args)
    assert y.dtype == args[0].dtype
    torch.testing.assert_close(kernel(args), y, rtol=0, atol=0)  # the op on CPU tensors is the kernel
    torch.testing.assert_close(y.double(), ref64(args), **TOL[dtype])
    return y


@pytest.fixture(autouse=True)
def _restore():
    threads, budget = torch.get_num_threads(), C.set_se_scratch_bytes(1 << 20) if C else None
    yield
    torch.set_num_threads(threads)
    if C:
        C.set_se_scratch_bytes(budget)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_each_activation_everywhere(act):
    # act_expand, act_dw, se_act and act_project all `act`; both gates
    for sg, stride in (("sigmoid", 1), ("hardsigmoid", 2)):
        check(make_args(ae=act, ad=act, sa=act, sg=sg, ap=act, se=True, stride=stride, k=5))


@pytest.mark.parametrize("act", ACTIVATIONS + ("sigmoid", "hardsigmoid"))
def test_activations_propagate_nan_and_inf_as_pytorch(act):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -3.0, 3.0, -2.5, 2.5,
                      -10.0, 10.0, -20.0, 20.0, -87.5, 88.5, -100.0, 100.0, 0.3, -0.7])
    # a 1-pixel block: expand = identity, dw 1x1 = 1, project = identity; act on the expand only
    c = x.numel()
    eye = torch.eye(c)
    if act in ("sigmoid", "hardsigmoid"):  # gate: through the SE (mean of one pixel = the pixel)
        args = [torch.ones(1, c, 1, 1), None, None, torch.ones(c, 1, 1), torch.zeros(c), torch.zeros(1, c),
                torch.zeros(1), torch.zeros(c, 1), x.clone(), eye, torch.zeros(c), 1, False, "relu6", "none",
                "symmetric", "relu", act, "none", None, None, 1]
    else:
        args = [x.view(1, c, 1, 1), eye, torch.zeros(c), torch.ones(c, 1, 1), torch.zeros(c), None, None, None, None,
                eye, torch.zeros(c), 1, False, act, "none", "symmetric", "relu", "sigmoid", "none", None, None, 1]
    y = kernel(args).flatten()
    ref = inverted_residual_ex_reference(*args).flatten()  # float32 PyTorch
    assert torch.equal(torch.isnan(y), torch.isnan(ref)), (act, y, ref)
    fin = torch.isfinite(ref)
    assert torch.equal(y[~fin & ~torch.isnan(ref)], ref[~fin & ~torch.isnan(ref)]), (act, y, ref)
    torch.testing.assert_close(y[fin], ref[fin], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_nan_pixel_spreads_as_in_the_reference(act):
    for se in (False, True):
        args = make_args(N=1, H=6, W=7, ae=act, ad=act, sa=act, se=se)
        args[0][0, :, 2, 3] = float("nan")
        y, ref = kernel(args), ref64(args)
        assert torch.equal(torch.isnan(y), torch.isnan(ref)), (act, se)


@pytest.mark.parametrize("k", (1, 3, 5, 7, 9))
@pytest.mark.parametrize("pad", ("symmetric", "tf_same"))
def test_kernel_sizes_paddings_strides_odd_and_even_sizes(k, pad):
    for stride in (1, 2):
        for H, W in ((9, 8), (10, 7), (4, 5)):
            check(make_args(k=k, pad=pad, stride=stride, H=H, W=W, ae="silu", ad="hardswish", seed=k + H))


@pytest.mark.parametrize("k0", (1, 3, 5))
def test_leading_depthwise(k0):
    for s0, stride, pad, res in ((1, 1, "symmetric", True), (2, 1, "tf_same", False), (1, 2, "tf_same", False),
                                 (2, 2, "symmetric", False)):
        check(make_args(k0=k0, s0=s0, stride=stride, pad=pad, residual=res, ae="relu", ad="none", H=10, W=9))
    check(make_args(k0=k0, residual=True, dtype=torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("budget", (1 << 20, 0), ids=("se_in_scratch", "se_two_pass"))
@pytest.mark.parametrize("threads", (1, 2))
def test_squeeze_excite_both_paths_and_threads(budget, threads):
    C.set_se_scratch_bytes(budget)
    torch.set_num_threads(threads)
    for N in (1, 2, 3):  # batch 1 on 2 threads: bands (shared buffer; two-pass at budget 0), sums reduced
        for stride, pad in ((1, "symmetric"), (2, "tf_same")):
            check(make_args(N=N, se=True, stride=stride, pad=pad, ae="hardswish", ad="hardswish", sg="hardsigmoid",
                            residual=stride == 1, H=13, W=12, k=5))
    # the same result either way (the sums are the same numbers, summed in another order)
    args = make_args(N=1, se=True, H=15, W=14, ae="silu", ad="silu")
    C.set_se_scratch_bytes(1 << 20)
    a = kernel(args)
    C.set_se_scratch_bytes(0)
    torch.testing.assert_close(kernel(args), a, rtol=1e-6, atol=1e-6)


def test_batch_1_uses_bands_on_two_threads():
    torch.set_num_threads(2)
    for se in (False, True):
        check(make_args(N=1, H=20, W=9, se=se, residual=True, ae="gelu", ad="gelu_tanh"))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("channels_last", (False, True))
def test_dtypes_memory_formats_residual_no_expand(dtype, channels_last):
    for expand, res, se, ap in ((True, True, True, "none"), (False, True, False, "hardswish"),
                                (True, False, True, "relu"), (False, False, True, "none")):
        args = make_args(expand=expand, residual=res, se=se, ap=ap, ae="silu", ad="silu", dtype=dtype)
        if channels_last:
            args[0] = args[0].contiguous(memory_format=torch.channels_last)
        y = check(args, dtype)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_empty_batch_and_other_dtypes_route_to_the_reference():
    args = make_args(N=0, se=True)
    y = torch.ops.mnv2.inverted_residual_ex(*args)
    assert y.shape == (0, 10, 9, 8)
    args = make_args(se=True, dtype=torch.float64, ae="gelu")
    torch.testing.assert_close(torch.ops.mnv2.inverted_residual_ex(*args), ref64(args), rtol=1e-12, atol=1e-12)


def test_non_finite_depthwise_weight_runs_the_reference():
    for pad in ("symmetric", "tf_same"):
        args = make_args(N=1, pad=pad, stride=2, H=8, W=8)
        args[3][2, 0, 0] = float("inf")
        codes = cpu_ex._ACT_CODES
        assert C.inverted_residual_ex_cpu(*args[:13], codes["relu6"], codes["relu6"], pad == "tf_same", 2, 7, 0,
                                          *args[19:]) is None
        y = torch.ops.mnv2.inverted_residual_ex(*args)
        ref = ops._ex_reference_impl(*args)
        assert torch.equal(torch.isnan(y), torch.isnan(ref))


def test_errors_are_the_ops_own():
    args = make_args(se=True)
    args[14] = "swish"
    with pytest.raises(ValueError, match="act_dw must be one of"):
        torch.ops.mnv2.inverted_residual_ex(*args)
    args = make_args()
    args[1] = args[1].double()
    with pytest.raises(TypeError, match="w_expand is torch.float64 but x is torch.float32"):
        torch.ops.mnv2.inverted_residual_ex(*args)


def test_weights_pack_once_and_in_place_changes_are_seen():
    args = make_args(se=True, ae="silu")
    y0 = kernel(args)
    args[9].mul_(2.0)  # w_project, in place: version bump -> repacked
    y1 = kernel(args)
    torch.testing.assert_close(y1.double(), ref64(args), **TOL[torch.float32])
    assert not torch.allclose(y0, y1)


def test_backend_rows():
    cfg = backends.BlockConfig(kernel=5, act_expand="hardswish", act_dw="hardswish", padding="tf_same", se=True,
                               se_act="relu", se_gate="hardsigmoid", dw_start=3, act_project="silu")
    assert backends.ex_refusals(cfg, "cpu", torch.float32)["cpu"] == []
    assert backends.select_ex("auto", "cpu", torch.float32, cfg) is backends.EX_SUPPORT["cpu"].op
    assert backends.select_ex("auto", "cpu", torch.float64, cfg) is backends.EX_SUPPORT["reference"].op
    # the reference row computes the reference, not the kernel registered for CPU tensors
    args = make_args(se=True, ae="gelu", ad="silu")
    ref = backends.EX_SUPPORT["reference"].op(*args)
    torch.testing.assert_close(ref, inverted_residual_ex_reference(*args), rtol=0, atol=0)
    y = ops.inverted_residual_ex(*args, backend="cpu")
    torch.testing.assert_close(y, kernel(args), rtol=0, atol=0)


@pytest.mark.parametrize("isa", ("avx2", "avx512"))
def test_each_instruction_set(isa):
    try:
        prev = C.set_cpu_isa(isa)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        assert C.cpu_isa() == isa
        for act in ("gelu", "silu", "hardswish"):
            for args in (make_args(k=7, pad="tf_same", stride=2, se=True, ae=act, ad=act, sa=act, Chid=20, Cout=9,
                                   H=10, W=11),
                         make_args(k0=3, residual=True, se=True, ae=act, ad=act, ap=act, Chid=36, Cin=13),
                         make_args(k0=5, s0=2, residual=False, Chid=17, dtype=torch.bfloat16)):
                check(args, args[0].dtype)
    finally:
        C.set_cpu_isa(prev)
