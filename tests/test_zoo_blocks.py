"""The generalised block (issue 13): every activation, kernel size, padding mode, squeeze-excite, layer
scale, leading depthwise and project activation against the original module, the op's contract, the
backend rows, the recogniser's reasons, and each mobile model family of timm / torchvision fused and
matched against the original. docs/CONTRACT.md, "The generalised block".
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mnv2_kernels as mk
from mnv2_kernels import backends
from mnv2_kernels.modules import FoldedInvertedResidual
from mnv2_kernels.recognize import NotFusable, recognize_block_ex, recognize_se
from mnv2_kernels.reference import tf_same_pads
from mnv2_kernels.testing import randomize_bn_

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.layers import Conv2dSame, LayerScale2d  # noqa: E402

ACTS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU,
        "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "none": nn.Identity}


class _SE(nn.Module):
    """timm's SqueezeExcite, written out (mean -> reduce -> act -> expand -> gate; x * gate)."""

    def __init__(self, c, rd, act, gate, pool="mean"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "module" else None
        self.conv_reduce = nn.Conv2d(c, rd, 1)
        self.act1 = ACTS[act]()
        self.conv_expand = nn.Conv2d(rd, c, 1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x):
        s = self.pool(x) if self.pool is not None else x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(s))))


class _Block(nn.Module):
    """A hand-written generalised inverted residual (the layout of timm's InvertedResidual / UIB)."""

    def __init__(self, cin, chid, cout, k=3, stride=1, act_e="relu6", act_d="relu6", tf_same=False, se=None,
                 residual=False, expand=True, k0=0, layer_scale=False, act_p="none"):
        super().__init__()
        conv = (lambda *a, **kw: Conv2dSame(*a, **kw)) if tf_same else (
            lambda ci, co, kk, s, groups, bias: nn.Conv2d(ci, co, kk, s, kk // 2, groups=groups, bias=bias))
        self.dw0 = nn.Sequential(conv(cin, cin, k0, 1, groups=cin, bias=False), nn.BatchNorm2d(cin)) if k0 else nn.Identity()
        if not expand:
            chid = cin
        self.pw = nn.Sequential(nn.Conv2d(cin, chid, 1, bias=False), nn.BatchNorm2d(chid), ACTS[act_e]()) \
            if expand else nn.Identity()
        self.dw = nn.Sequential(conv(chid, chid, k, stride, groups=chid, bias=False), nn.BatchNorm2d(chid),
                                ACTS[act_d]())
        self.se = _SE(chid, max(1, chid // 4), *se) if se else nn.Identity()
        self.pwl = nn.Sequential(nn.Conv2d(chid, cout, 1, bias=False), nn.BatchNorm2d(cout), ACTS[act_p]())
        self.ls = LayerScale2d(cout, 1.0) if layer_scale else nn.Identity()
        self.residual = residual

    def forward(self, x):
        y = self.ls(self.pwl(self.se(self.dw(self.pw(self.dw0(x))))))
        return y + x if self.residual else y


def _randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    randomize_bn_(m, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, LayerScale2d):
            with torch.no_grad():
                mod.gamma.copy_(torch.rand(mod.gamma.shape, generator=g) + 0.5)
    return m.eval()


# (cin, chid, cout, H, W, kwargs): odd channel counts, odd and even sizes (TF 'same' is asymmetric on even
# sizes at stride 2), every activation, kernel size, padding mode, SE act / gate, and the UIB / LCNet parts.
CONFIGS = [
    (5, 13, 7, 9, 7, dict(act_e="relu", act_d="relu")),
    (6, 18, 6, 8, 8, dict(act_e="hardswish", act_d="hardswish", residual=True)),
    (7, 21, 11, 11, 9, dict(act_e="silu", act_d="silu", k=5, stride=2)),
    (4, 12, 4, 7, 10, dict(act_e="gelu", act_d="gelu_tanh", k=7, residual=True)),
    (5, 15, 9, 8, 8, dict(act_e="relu6", act_d="none", k=3, stride=2)),
    (6, 12, 8, 8, 10, dict(tf_same=True, k=3, stride=2)),                      # asymmetric (0, 1)
    (6, 12, 8, 9, 8, dict(tf_same=True, k=5, stride=2, act_e="relu")),         # (2, 2) rows, (1, 2) cols
    (6, 12, 6, 7, 7, dict(tf_same=True, k=5, stride=1, residual=True)),
    (8, 24, 8, 6, 5, dict(se=("relu", "hardsigmoid"), act_e="hardswish", act_d="hardswish", residual=True)),
    (8, 24, 12, 9, 9, dict(se=("silu", "sigmoid"), act_e="silu", act_d="silu", k=5, stride=2)),
    (8, 8, 12, 7, 6, dict(se=("relu", "sigmoid", "module"), expand=False, act_d="relu")),
    (6, 6, 6, 8, 8, dict(expand=False, act_d="relu6", tf_same=True, residual=True)),
    (6, 18, 10, 10, 10, dict(k0=3, k=5, stride=2, act_e="relu", act_d="relu", layer_scale=True)),   # UIB
    (8, 16, 8, 7, 7, dict(k0=5, k=3, act_e="relu", act_d="relu", layer_scale=True, residual=True)),
    (6, 6, 10, 9, 9, dict(expand=False, act_d="hardswish", act_p="hardswish", se=("relu", "hardsigmoid"))),  # LCNet
]


@pytest.mark.parametrize("cin,chid,cout,h,w,kw", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_generalised_block_matches_the_original(cin, chid, cout, h, w, kw):
    block = _randomize(_Block(cin, chid, cout, **kw)).double()
    fused = FoldedInvertedResidual.from_module(block, backend="auto")
    plan = fused.plan
    assert plan.residual == kw.get("residual", False) and plan.kernel == kw.get("k", 3)
    assert plan.padding == ("tf_same" if kw.get("tf_same") else "symmetric")
    assert (plan.se is not None) == bool(kw.get("se")) and plan.dw_start_kernel == kw.get("k0", 0)
    x = torch.randn(3, cin, h, w, dtype=torch.float64)
    with torch.no_grad():
        ref, got = block(x), fused(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # float32 too, through the same module (its own cache slot)
    block32 = block.float()
    with torch.no_grad():
        torch.testing.assert_close(fused(x.float()), block32(x.float()), rtol=1e-4, atol=1e-4)


def test_tf_same_pads_match_timm():
    from timm.layers.padding import get_same_padding
    for size in range(3, 20):
        for k in (1, 3, 5, 7, 9):
            for s in (1, 2):
                total = get_same_padding(size, k, s, 1)
                assert sum(tf_same_pads(size, k, s)) == total and tf_same_pads(size, k, s)[0] == total // 2


def _ex_args(dtype=torch.float32, se=True, k=5, k0=3):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = r(2, 6, 9, 8)
    return [x, r(12, 6), r(12), r(12, k, k), r(12), *((r(3, 12), r(3), r(12, 3), r(12)) if se else (None,) * 4),
            r(10, 12), r(10), 2, False, "hardswish", "silu", "tf_same", "relu", "hardsigmoid", "none",
            r(6, k0, k0) if k0 else None, r(6) if k0 else None, 1]


def test_op_schema_fake_and_opcheck():
    args = _ex_args()
    y = torch.ops.mnv2.inverted_residual_ex(*args)
    assert y.shape == (2, 10, 5, 4)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    assert torch.ops.mnv2.inverted_residual_ex(*meta).shape == (2, 10, 5, 4)
    torch.library.opcheck(torch.ops.mnv2.inverted_residual_ex.default, tuple(args),
                          test_utils=("test_schema", "test_faketensor"))
    cl = args[0].contiguous(memory_format=torch.channels_last)
    assert torch.ops.mnv2.inverted_residual_ex(cl, *args[1:]).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("change,exc,words", [
    (lambda a: a.__setitem__(14, "swish"), ValueError, "act_dw must be one of"),
    (lambda a: a.__setitem__(17, "tanh"), ValueError, "se_gate must be one of"),
    (lambda a: a.__setitem__(15, "reflect"), ValueError, "padding must be one of"),
    (lambda a: a.__setitem__(3, torch.randn(12, 4, 4)), ValueError, "w_dw must be [Chid, k, k]"),
    (lambda a: a.__setitem__(5, None), ValueError, "squeeze-excite tensors"),
    (lambda a: a.__setitem__(9, torch.randn(10, 11)), ValueError, "w_project must have shape [10, 12]"),
    (lambda a: a.__setitem__(11, 3), ValueError, "stride must be 1 or 2"),
    (lambda a: a.__setitem__(12, True), ValueError, "residual needs stride 1"),
    (lambda a: a.__setitem__(1, a[1].double()), TypeError, "w_expand is torch.float64 but x is torch.float32"),
    (lambda a: a.__setitem__(0, a[0].long()), TypeError, "x must be a floating-point tensor"),
])
def test_op_errors(change, exc, words):
    args = _ex_args()
    change(args)
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.mnv2.inverted_residual_ex(*args)


def test_backend_rows_say_why_each_kernel_cannot_serve_a_generalised_block():
    cfg = backends.BlockConfig(kernel=5, act_expand="hardswish", act_dw="hardswish", padding="tf_same", se=True,
                               se_act="relu", se_gate="hardsigmoid")
    why = backends.ex_refusals(cfg, "cpu", torch.float32)
    assert why["reference"] == []
    # a row that computes only the MobileNetV2 block names every missing option (the kernels' rows widen as
    # they gain options: each either serves the configuration or says why not)
    text = "; ".join(backends.ExSupport().refusals(cfg))
    for need in ("hardswish", "5x5 depthwise", "tf_same padding", "squeeze-excite (relu, hardsigmoid)"):
        assert need in text, text
    for name in ("cpu", "cuda", "triton"):
        assert why[name] or not backends.EX_SUPPORT[name].refusals(cfg)
    auto = next(n for n in backends.auto_priority("cpu") if not why[n])
    assert backends.select_ex("auto", "cpu", torch.float32, cfg) is backends.EX_SUPPORT[auto].op
    if why["cpu"]:
        with pytest.raises(RuntimeError, match="backend='cpu' cannot run a block with hardswish"):
            backends.select_ex("cpu", "cpu", torch.float32, cfg)
    assert backends.BlockConfig().is_mobilenet_v2 and not cfg.is_mobilenet_v2
    # a kernel that declares an option stops refusing for that reason (how the next session plugs one in)
    wider = backends.ExSupport(kernels=(3, 5), acts=("relu6", "hardswish"), paddings=("symmetric", "tf_same"),
                               se_acts=("relu",), se_gates=("hardsigmoid",), op=lambda *a: None)
    assert wider.refusals(cfg) == []


def test_recogniser_lists_every_reason():
    block = _Block(6, 12, 6, k=3, act_e="relu", act_d="relu")
    block.dw[0] = nn.Conv2d(12, 12, 3, 1, padding=2, dilation=2, groups=12, bias=False)
    block.pwl[1] = nn.BatchNorm2d(6, track_running_stats=False)
    with pytest.raises(NotFusable) as info:
        recognize_block_ex(block)
    text = str(info.value)
    assert "dilation" in text and "padding (2, 2)" in text and "no running statistics" in text


def test_inline_squeeze_excite_and_other_gates_are_refused_with_reasons():
    class Inline(_Block):
        def forward(self, x):
            h = self.dw(self.pw(x))
            return self.pwl(h * torch.sigmoid(h.mean((2, 3), keepdim=True)))

    with pytest.raises(NotFusable, match="squeeze-excite in its own module"):
        recognize_block_ex(Inline(4, 8, 4))
    se = _SE(8, 2, "relu", "sigmoid")
    se.gate = nn.Tanh()
    with pytest.raises(NotFusable, match="Tanh"):
        recognize_se(se)
    assert recognize_se(torchvision.ops.SqueezeExcitation(8, 2)).gate == "sigmoid"


def test_folded_block_keeps_the_never_silently_wrong_rules():
    block = _randomize(_Block(8, 24, 8, act_e="hardswish", act_d="hardswish", se=("relu", "hardsigmoid"),
                              residual=True))
    fused = FoldedInvertedResidual.from_module(block)
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x))
        calls = []
        h = block.se.conv_reduce.register_forward_hook(lambda *a: calls.append(1))
        with pytest.warns(mk.FusedPathWarning, match="forward hooks"):
            torch.testing.assert_close(fused(x), block(x))
        assert calls  # the original (with its hook) ran
        h.remove()
        block.se.gate = nn.Sigmoid()   # a replaced layer: recognised again, never the stale gate
        torch.testing.assert_close(fused(x), block(x))
        assert fused.plan.se_gate == "sigmoid"
        block.se.conv_expand.weight.mul_(2.0)   # in place through PyTorch: refolded
        torch.testing.assert_close(fused(x), block(x))
    assert set(fused.state_dict()) == set(block.state_dict())


def test_fuse_report_and_warning_are_honest_about_the_reference_path(monkeypatch):
    # as on a machine whose CPU kernel computes only the MobileNetV2 block (the kernel rows widen over time)
    monkeypatch.setitem(backends.EX_SUPPORT, "cpu", backends.ExSupport(op=backends.EX_SUPPORT["cpu"].op))
    backends._select_ex.cache_clear()
    model = nn.Sequential(_Block(8, 16, 8, residual=True),                       # MobileNetV2 block: fused op
                          _Block(8, 16, 8, act_e="relu", act_d="relu", k=5))     # generalised: reference
    model = _randomize(model)
    with pytest.warns(mk.FusedPathWarning, match=r"1 of 2 blocks are folded but run on the reference path.*"
                                                 r"1 x no fused kernel for relu, 5x5 depthwise yet"):
        fused, report = mk.fuse(model, return_report=True)
    assert [r.path for r in report.fused] == ["0"] and [r.path for r in report.reference] == ["1"]
    assert str(report.reference[0]).startswith("1: folded (reference path) (") and not report.skipped
    assert isinstance(fused[1], FoldedInvertedResidual) and type(fused[0]) is mk.FusedInvertedResidual
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    # an explicit kernel backend cannot run it: skipped, saying so (the MobileNetV2 block still fuses)
    if backends.ROWS["cpu"].not_supported_reasons("cpu", torch.float32) == []:
        _, report = mk.fuse(model, backend="cpu", return_report=True)
        assert len(report.fused) == 1 and "backend='cpu' cannot run it" in report.skipped[0].detail
    monkeypatch.undo()
    backends._select_ex.cache_clear()


# Each listed family, small variants, 64x64 (MobileNetV4 hybrid: attention needs nothing bigger).
FAMILY_MODELS = [
    ("timm", "mobilenetv3_small_050"), ("timm", "tf_mobilenetv3_small_minimal_100"), ("timm", "tinynet_e"),
    ("timm", "tf_efficientnet_lite0"), ("timm", "mnasnet_small"), ("timm", "semnasnet_050"),
    ("timm", "fbnetc_100"), ("timm", "spnasnet_100"), ("timm", "mixnet_s"), ("timm", "lcnet_035"),
    ("timm", "mobilenetv4_conv_small"), ("timm", "mobilenetv4_hybrid_medium"), ("timm", "efficientnet_b0"),
    ("tv", "mobilenet_v3_small"), ("tv", "mnasnet0_5"), ("tv", "efficientnet_b0"),
]


@pytest.mark.parametrize("src,name", FAMILY_MODELS, ids=[n for _, n in FAMILY_MODELS])
def test_model_family_fused_matches_the_original(src, name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False) if src == "timm" else getattr(torchvision.models, name)()
    model = _randomize(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    blocks = report.fused + report.reference + report.skipped
    if "mixnet" in name:   # MixConv blocks fold (one kxk depthwise), except MixNet-S's 3/5/7/9/11 block
        assert len(report.skipped) == 1 and "up to 9x9" in report.skipped[0].detail, str(report)
    else:
        assert blocks and not report.skipped, str(report)
    for r in report.skipped:   # every skip says what it is and why
        assert any(w in r.detail for w in ("MixConv", "anti-aliasing", "not in the block contract",
                                             "not an inverted residual")), str(r)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    err = (got - ref).abs().max() / ref.abs().max()
    assert err < 1e-4, f"{name}: relative error {err:.2e}"
    assert set(fused.state_dict()) == set(model.state_dict())
