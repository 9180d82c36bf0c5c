"""The generalised Triton block (mnv2::inverted_residual_ex_triton, mnv2_kernels/triton/launcher_ex.py; issue 13)
against the float64 reference of docs/CONTRACT.md, "The generalised block".

Without a GPU the kernels run in Triton's interpreter on CPU tensors (small shapes, a persistent grid of 3
programs). Both kernel variants ("ring", and "chunk" where the output image fits one tile) on every case:
each activation (after expand, depthwise, project; SE activation and both gates), each depthwise kernel size
(1, 3, 5, 7, 9), symmetric and TensorFlow "same" padding at odd and even sizes and strides 1 and 2,
squeeze-excite (ring: pass 1 pooling, pass 2 gating, also across several bands and programs; chunk: in one
launch), a leading depthwise
(MobileNetV4 UIB ExtraDW, stride 1 with the residual of the original x, stride 2), no expand conv, float32
and float16. bfloat16 is refused on the interpreter (Triton 3.8's interpreter computes bfloat16 tl.dot
wrongly), so it is left to a GPU.

Error measure: max |y - ref| / max |ref| (NaN or inf fails).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import mnv2_kernels  # noqa: E402,F401  (defines torch.ops.mnv2.*)
from mnv2_kernels import backends  # noqa: E402
from mnv2_kernels.reference import inverted_residual_ex_reference, tf_same_pads  # noqa: E402
from mnv2_kernels.testing import random_block_args  # noqa: E402
from mnv2_kernels.triton import inverted_residual_triton  # noqa: E402
from mnv2_kernels.triton.launcher_ex import inverted_residual_ex_triton, static_plans_ex  # noqa: E402

interpreter_only = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason="interpreter tests run on machines without a GPU")
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),  # numpy sigmoid
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

TOL = {torch.float32: 1e-5, torch.float16: 5e-3}


class Case(dict):
    """One block: shapes and options (keys below); ``id`` for pytest."""
    @property
    def id(self):
        c = self
        parts = [f"{c['cin']}-{c['chid']}-{c['cout']}", f"k{c['k']}s{c['stride']}", c["padding"],
                 f"{c['n']}x{c['h']}x{c['w']}", "-".join((c["act_e"], c["act_d"], c["act_p"]))]
        if c["se"]:
            parts.append("se_" + "-".join(c["se"]))
        if c["start"]:
            parts.append(f"start{c['start'][0]}s{c['start'][1]}")
        if c["residual"]:
            parts.append("res")
        if not c["expand"]:
            parts.append("noexp")
        return "_".join(parts)


def case(cin, chid, cout, k, stride, residual, expand, n, h, w, padding, act_e, act_d, act_p, se=None, start=None):
    return Case(cin=cin, chid=chid, cout=cout, k=k, stride=stride, residual=residual, expand=expand, n=n, h=h, w=w,
                padding=padding, act_e=act_e, act_d=act_d, act_p=act_p, se=se, start=start)


# Output images of <= 64 pixels (both variants apply), then ring-only shapes with several bands per image.
CASES = [
    case(8, 24, 8, 3, 1, True, True, 2, 7, 8, "symmetric", "relu", "relu", "none"),                  # MNASNet-like
    case(8, 32, 12, 5, 2, False, True, 2, 8, 8, "tf_same", "hardswish", "hardswish", "none",
         se=("relu", "hardsigmoid")),                                                                # MobileNetV3
    case(12, 36, 12, 5, 1, True, True, 1, 7, 9, "symmetric", "silu", "silu", "none", se=("silu", "sigmoid")),  # EffNet
    case(8, 24, 16, 7, 2, False, True, 1, 9, 7, "tf_same", "gelu", "gelu_tanh", "none"),             # odd, stride 2
    case(8, 8, 12, 9, 2, False, False, 1, 7, 8, "symmetric", "relu6", "relu6", "none",
         se=("gelu_tanh", "sigmoid")),                                                               # MixNet k=9
    case(8, 24, 8, 1, 1, True, True, 2, 6, 7, "symmetric", "none", "none", "hardswish", start=(3, 1)),  # UIB
    case(8, 24, 12, 3, 1, False, True, 1, 8, 8, "tf_same", "relu6", "relu6", "relu", start=(5, 2)),  # ExtraDW s2
    case(8, 16, 8, 3, 2, False, True, 1, 8, 6, "tf_same", "relu", "silu", "gelu",
         se=("hardswish", "hardsigmoid")),                                                           # pads (0, 1)
]
RING_CASES = [
    case(8, 16, 8, 5, 1, True, True, 2, 7, 17, "tf_same", "hardswish", "relu6", "none",
         se=("relu", "hardsigmoid")),                        # 3 bands (3, 3, 1 rows) x 2 images, SE partials
    case(8, 16, 16, 7, 2, False, True, 1, 10, 40, "tf_same", "silu", "silu", "none", start=(3, 1)),  # 2 bands
]


def make_args(c, dtype=torch.float32, seed=0):
    """The op's positional arguments (schema order) for case ``c``, drawn in float64 and cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    cin, chid, cout, k = c["cin"], c["chid"], c["cout"], c["k"]
    x = rnd(c["n"], cin, c["h"], c["w"]) * 2.0
    w_e, b_e = (rnd(chid, cin, scale=2.0 / cin ** 0.5), rnd(chid) + 1.0) if c["expand"] else (None, None)
    w_d, b_d = rnd(chid, k, k, scale=1.8 / k), rnd(chid) + 0.5
    se = [None] * 4
    if c["se"]:
        crd = max(2, chid // 4)
        se = [rnd(crd, chid, scale=2.0 / chid ** 0.5), rnd(crd), rnd(chid, crd, scale=2.0 / crd ** 0.5), rnd(chid)]
    w_p, b_p = rnd(cout, chid, scale=1.0 / chid ** 0.5), rnd(cout)
    w_s = b_s = None
    s_start = 1
    if c["start"]:
        k0, s_start = c["start"]
        w_s, b_s = rnd(cin, k0, k0, scale=1.5 / k0), rnd(cin)
    se_act, se_gate = c["se"] or ("relu", "sigmoid")
    args = [x, w_e, b_e, w_d, b_d, *se, w_p, b_p, c["stride"], c["residual"], c["act_e"], c["act_d"], c["padding"],
            se_act, se_gate, c["act_p"], w_s, b_s, s_start]
    return [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args]


def reference(args):
    return inverted_residual_ex_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])


def rel_err(got, ref):
    got = got.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check(c, variant, dtype=torch.float32, channels_last=False):
    args = make_args(c, dtype)
    if channels_last:
        args[0] = args[0].contiguous(memory_format=torch.channels_last)
    y = inverted_residual_ex_triton(*args, variant=variant)
    ref = reference(args)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last) if channels_last else y.is_contiguous()
    err = rel_err(y, ref)
    assert err < TOL[dtype], (c.id, variant, err)


@interpreter_only
@pytest.mark.parametrize("variant", ["ring", "chunk"])
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_matches_reference_fp32(c, variant):
    check(c, variant)


@interpreter_only
@pytest.mark.parametrize("c", RING_CASES, ids=lambda c: c.id)
def test_several_bands_and_programs(c):
    """Rings carried across bands and images by 3 persistent programs; SE partial sums of several bands."""
    check(c, "ring", channels_last=True)


@interpreter_only
def test_chunk_squeeze_excite_in_one_launch_over_several_images_per_program():
    """The chunk kernel's one-launch SE (SE_FUSED: pool, MLP and gate on the image in dbuf) with 3 programs
    doing 5 images: each image's sums and gate are its own."""
    c = case(8, 24, 8, 5, 1, True, True, 5, 6, 7, "tf_same", "silu", "hardswish", "none", se=("relu6", "sigmoid"))
    check(c, "chunk")


@interpreter_only
def test_chunk_squeeze_excite_on_a_larger_image():
    """Squeeze-excite blocks of up to 256 output pixels take the chunk kernel (one launch): a 128-pixel tile,
    projected in 64-pixel sub-tiles, 2 images over 3 programs."""
    from mnv2_kernels.triton import launcher_ex
    c = RING_CASES[0]
    assert launcher_ex._chosen(8, 16, 8, 7, 17, 1, True, True, torch.float32, True) == "chunk"
    check(c, "chunk")


@interpreter_only
@pytest.mark.parametrize("variant", ["ring", "chunk"])
@pytest.mark.parametrize("c", [CASES[2], CASES[5]], ids=lambda c: c.id)
def test_float16(c, variant):
    check(c, variant, torch.float16, channels_last=True)


@interpreter_only
def test_every_option_is_covered():
    """The cases above exercise every activation, kernel size, padding, stride, gate and leading depthwise."""
    from mnv2_kernels.reference import ACTIVATIONS, KERNEL_SIZES, SE_GATES
    acts = {a for c in CASES for a in (c["act_e"], c["act_d"], c["act_p"])}
    assert acts == set(ACTIVATIONS)
    assert {c["k"] for c in CASES} == set(KERNEL_SIZES)
    assert {c["se"][1] for c in CASES if c["se"]} == set(SE_GATES)
    seen = {(c["padding"], c["stride"], c["h"] % 2, c["w"] % 2) for c in CASES + RING_CASES}
    for padding in ("symmetric", "tf_same"):
        assert {s for p, s, _, _ in seen if p == padding} == {1, 2}
    assert {(hp, wp) for p, s, hp, wp in seen if p == "tf_same" and s == 2} >= {(0, 0), (1, 1)}
    assert tf_same_pads(8, 5, 2) == (1, 2) and tf_same_pads(8, 3, 2) == (0, 1)   # asymmetric ones are tested
    assert {c["start"][1] for c in CASES if c["start"]} == {1, 2}


@interpreter_only
def test_registered_op_and_backend_row():
    """torch.ops.mnv2.inverted_residual_ex_triton (fake + CPU impl) is what the "triton" EX_SUPPORT row runs."""
    c = CASES[1]
    args = make_args(c)
    cfg = backends.BlockConfig(c["k"], c["act_e"], c["act_d"], c["padding"], True, *c["se"], c["act_p"])
    assert backends.ex_refusals(cfg, "cpu", torch.float32)["triton"] == []
    assert backends.select_ex("triton", "cpu", torch.float32, cfg) is backends.EX_SUPPORT["triton"].op
    y = backends.EX_SUPPORT["triton"].op(*args)             # torch.ops.mnv2.inverted_residual_ex_triton
    assert rel_err(y, reference(args)) < TOL[torch.float32]
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.mnv2.inverted_residual_ex_triton(
            *[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    assert fake.shape == y.shape and fake.dtype == y.dtype
    # bfloat16 on the interpreter: the row and the launcher refuse it
    assert backends.ex_refusals(cfg, "cpu", torch.bfloat16)["triton"]
    with pytest.raises(TypeError, match="bfloat16"):
        inverted_residual_ex_triton(*make_args(c, torch.bfloat16))


@interpreter_only
@pytest.mark.parametrize("variant", ["ring", "chunk"])
def test_mobilenet_v2_options_are_the_mobilenet_v2_kernel(variant):
    """With the MobileNetV2 options the generalised launch is the MobileNetV2 kernel: bitwise equal."""
    args = random_block_args(8, 24, 8, stride=1, residual=True, n=2, h=7, w=8)
    y = inverted_residual_triton(*args, variant=variant)
    x, w_e, b_e, w_d, b_d, w_p, b_p, stride, residual = args
    y_ex = inverted_residual_ex_triton(x, w_e, b_e, w_d, b_d, None, None, None, None, w_p, b_p, stride, residual,
                                       variant=variant)
    assert torch.equal(y, y_ex)


@interpreter_only
@pytest.mark.parametrize("variant", ["ring", "chunk"])
def test_nan_propagates_like_pytorch(variant):
    """NaN in x reaches exactly the outputs PyTorch's block reaches: through relu / hardswish / silu without SE
    (zero padding never multiplies it into other pixels, tf_same's asymmetric pad included), and through SE's
    pool to the whole of its image only (the other image stays finite)."""
    tf_odd = case(8, 16, 8, 5, 2, False, True, 2, 8, 6, "tf_same", "hardswish", "silu", "none")
    for c in (CASES[0], tf_odd, CASES[1]):
        args = make_args(c)
        x = args[0].clone()
        x[0, 1, 2, 3] = float("nan")
        args[0] = x
        y = inverted_residual_ex_triton(*args, variant=variant).double()
        ref = reference(args)
        assert torch.equal(y.isnan(), ref.isnan()), c.id
        assert ref.isnan().any() and not ref.isnan().all()
        fin = torch.isfinite(ref)
        assert ((y[fin] - ref[fin]).abs().max() / ref[fin].abs().max()).item() < TOL[torch.float32]
        if c["se"]:
            assert ref[0].isnan().all() and not ref[1].isnan().any()


@interpreter_only
def test_errors():
    c = CASES[0]
    args = make_args(c)
    with pytest.raises(ValueError, match="variant must be one of"):
        inverted_residual_ex_triton(*args, variant="gather")
    big = make_args(RING_CASES[1])
    with pytest.raises(ValueError, match=r"variant 'chunk' needs an output image of at most 64 pixels \(256 with "
                                         r"squeeze-excite\), got 5x20"):
        inverted_residual_ex_triton(*big, variant="chunk")
    bad = list(args)
    bad[14] = "swish"
    with pytest.raises(ValueError, match="act_dw must be one of"):
        torch.ops.mnv2.inverted_residual_ex_triton(*bad)
    bad = list(args)
    bad[1] = bad[1].double()
    with pytest.raises(TypeError, match="w_expand is torch.float64 but x is torch.float32"):
        torch.ops.mnv2.inverted_residual_ex_triton(*bad)


def test_static_plans_cover_both_passes():
    """The static report's plans: per variant a block launch, plus a pool launch with squeeze-excite."""
    plans = static_plans_ex(256, 40, 240, 40, 14, 14, 1, True, True, torch.float16, k=5, padding="symmetric",
                            act_expand="silu", act_dw="silu", se=True)
    names = {p["name"] for p in plans}
    assert names == {"triton-ex-ring", "triton-ex-ring-pool", "triton-ex-chunk"}
    for p in plans:
        assert p["constexprs"]["K"] == 5 and p["constexprs"]["POOL"] == p["name"].endswith("-pool")
        if p["variant"] == "ring":
            assert p["constexprs"]["HAS_SE"] == (not p["name"].endswith("-pool")) and not p["chosen"]
        else:   # 14x14: one 256-pixel tile, SE in the one launch, the project in 64-pixel sub-tiles
            assert p["chosen"] and p["constexprs"]["SE_FUSED"] and not p["constexprs"]["HAS_SE"]
            assert p["constexprs"]["BLOCK_PB"] == 256 and p["constexprs"]["PROJ_PB"] == 64
    # 7x7 output: the chunk kernel does squeeze-excite in its one launch
    plans = static_plans_ex(256, 160, 960, 160, 7, 7, 1, True, True, torch.float16, k=5, se=True, crd=240)
    chunk = [p for p in plans if p["variant"] == "chunk"]
    assert [p["name"] for p in chunk] == ["triton-ex-chunk"] and chunk[0]["chosen"]
    assert chunk[0]["constexprs"]["SE_FUSED"] and chunk[0]["constexprs"]["CRDP"] == 256
    assert not chunk[0]["constexprs"]["HAS_SE"] and not chunk[0]["constexprs"]["POOL"]


# ---------------------------------------------------------------------------------------------------------
# GPU: the compiled kernels (skipped without CUDA). Error within twice PyTorch eager's error on the same inputs
# plus a small floor (fp32 dots are "ieee").
GPU_FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("variant", ["ring", "chunk"])
@pytest.mark.parametrize("c", CASES + RING_CASES, ids=lambda c: c.id)
def test_matches_reference_gpu(c, variant, dtype):
    if variant == "chunk" and c in RING_CASES:
        pytest.skip("the chunk kernel needs an output image of at most 64 pixels")
    big = Case(c, n=8)
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in make_args(big, dtype)]
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    y = inverted_residual_ex_triton(*args, variant=variant)
    ref = reference([a.cpu() if isinstance(a, torch.Tensor) else a for a in args])
    eager = inverted_residual_ex_reference(*args).cpu()
    assert rel_err(y.cpu(), ref) <= 2 * rel_err(eager, ref) + GPU_FLOOR[dtype]
