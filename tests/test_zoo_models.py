"""Issue 13, the zoo's remaining block kinds as generalised blocks (docs/CONTRACT.md, "The generalised block"):
MobileNetV4's UIB 'ConvNeXt' variant (identity middle depthwise), MixNet's MixConv (one kxk depthwise, groups
zero-padded and centred) and grouped 1x1 convs (block-diagonal), PP-LCNetV2's re-parameterisable depthwise
branches (summed into one kxk) and split_pw blocks, each against its original (float64), the non-finite
fallback of embedded blocks, the skip reasons and warning, and one small model per family.
"""
import warnings

import pytest
import torch
from torch import nn

import mnv2_kernels as mk
from mnv2_kernels.modules import FoldedInvertedResidual
from mnv2_kernels.recognize import NotFusable, recognize_block_ex
from mnv2_kernels.testing import randomize_bn_

timm = pytest.importorskip("timm")
from timm.layers import MixedConv2d  # noqa: E402
from timm.models._efficientnet_blocks import InvertedResidual, UniversalInvertedResidual  # noqa: E402
from timm.models.lcnetv2 import RepDepthwiseSeparable  # noqa: E402


def _rand(m: nn.Module, seed: int = 0) -> nn.Module:
    randomize_bn_(m, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for mod in m.modules():
            if type(mod).__name__ == "LayerScale2d":
                mod.gamma.copy_(torch.rand(mod.gamma.shape, generator=g) + 0.5)
    return m.eval()


def _check(block: nn.Module, x: torch.Tensor, **plan_expect) -> FoldedInvertedResidual:
    block = _rand(block).double()
    fused = FoldedInvertedResidual.from_module(block)
    for k, v in plan_expect.items():
        assert getattr(fused.plan, k) == v, (k, getattr(fused.plan, k), fused.plan)
    with torch.no_grad():
        ref, got = block(x.double()), fused(x.double())
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    assert set(fused.state_dict()) == set(block.state_dict())
    return fused


# --- MobileNetV4 UIB 'ConvNeXt' variant ----------------------------------------------------------------------
@pytest.mark.parametrize("k0,stride,cin,cout,ls", [(3, 1, 8, 8, 1e-1), (5, 2, 8, 12, None), (5, 1, 6, 10, None)])
def test_uib_convnext_variant_is_a_generalised_block(k0, stride, cin, cout, ls):
    block = UniversalInvertedResidual(cin, cout, dw_kernel_size_start=k0, dw_kernel_size_mid=0, stride=stride,
                                      exp_ratio=3.0, act_layer=nn.ReLU, layer_scale_init_value=ls)
    fused = _check(block, torch.randn(2, cin, 9, 8), kernel=1, act_dw="none", stride=1, stride_start=stride,
                   dw_start_kernel=k0, residual=(stride == 1 and cin == cout))
    w_dw = fused.folded(torch.float64).w_dw
    assert w_dw.shape == (fused.plan.hidden_channels, 1, 1) and bool((w_dw == 1).all())   # identity middle dw
    assert "ConvNeXt" in fused.plan.describe()


# --- MixNet MixConv and grouped 1x1 ----------------------------------------------------------------------------
class _MixConv(nn.Module):
    """A hand-written MixConv: split channels, one depthwise conv per group, concatenate."""

    def __init__(self, splits, kernels, stride):
        super().__init__()
        self.splits = splits
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
                                   for c, k in zip(splits, kernels))

    def forward(self, x):
        chunks = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(chunks[i]) for i, conv in enumerate(self.convs)], dim=1)


class _MixBlock(nn.Module):
    def __init__(self, cin=8, chid=16, cout=8, stride=1):
        super().__init__()
        self.pw = nn.Sequential(nn.Conv2d(cin, chid, 1, bias=False), nn.BatchNorm2d(chid), nn.SiLU())
        self.dw = _MixConv([4, 4, 4, 4], [3, 5, 7, 9], stride)
        self.bn = nn.BatchNorm2d(chid)
        self.act = nn.SiLU()
        self.pwl = nn.Sequential(nn.Conv2d(chid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.pwl(self.act(self.bn(self.dw(self.pw(x)))))
        return y + x if self.residual else y


@pytest.mark.parametrize("pad_type,stride,h,w", [("", 1, 9, 8), ("", 2, 10, 9), ("same", 2, 10, 8),
                                                 ("same", 2, 9, 11), ("same", 1, 7, 7)])
def test_mixconv_embedded_as_one_kxk_depthwise(pad_type, stride, h, w):
    # timm's MixNet block: grouped 1x1 expand / project (MixedConv2d of 1x1s) and a mixed 3/5/7/9 depthwise;
    # pad_type 'same' is TF 'same' padding (Conv2dSame groups, asymmetric at stride 2 on even sizes)
    block = InvertedResidual(12, 12 if stride == 1 else 16, dw_kernel_size=[3, 5, 7, 9], exp_kernel_size=[1, 1],
                             pw_kernel_size=[1, 1], stride=stride, pad_type=pad_type, exp_ratio=4.0,
                             act_layer=nn.SiLU)
    assert isinstance(block.conv_dw, MixedConv2d)
    fused = _check(block, torch.randn(2, 12, h, w), kernel=9, stride=stride,
                   padding="tf_same" if pad_type == "same" and stride == 2 else "symmetric")   # static at stride 1
    assert fused.plan.embedded and "MixConv 3/5/7/9 as one 9x9 depthwise" in fused.plan.describe()
    assert "block-diagonal" in fused.plan.describe()
    f = fused.folded(torch.float64)
    assert f.w_dw.shape == (48, 9, 9) and bool((f.w_dw[:12, 0] == 0).all())   # the 3x3 group, zero-padded
    assert bool((f.w_expand[:24, 6:] == 0).all()) and bool((f.w_expand[24:, :6] == 0).all())   # block diagonal


def test_hand_written_mixconv_and_inline_split_reason():
    _check(_MixBlock(), torch.randn(2, 8, 11, 10), kernel=9, residual=True)
    _check(_MixBlock(stride=2, cout=6), torch.randn(2, 8, 10, 10), kernel=9, stride=2)

    class Inline(_MixBlock):   # the split / concatenation written in the block's own forward
        def forward(self, x):
            h = self.pw(x)
            parts = torch.split(h, self.dw.splits, dim=1)
            h = torch.cat([c(parts[i]) for i, c in enumerate(self.dw.convs)], dim=1)
            return self.pwl(self.act(self.bn(h))) + x

    with pytest.raises(NotFusable, match="in its own module"):
        recognize_block_ex(Inline())


def test_mixconv_outside_the_contract_says_why():
    block = InvertedResidual(10, 10, dw_kernel_size=[3, 11], exp_ratio=2.0)
    with pytest.raises(NotFusable, match=r"kernel size \(11, 11\); odd square kernels up to 9x9"):
        recognize_block_ex(block)


def test_embedded_block_runs_the_original_on_non_finite_values():
    # grouped 1x1 expand (block-diagonal) and mixed 3/5/7/9 depthwise: an Inf in input channel 0 reaches only
    # the hidden channels of the 3x3 and 5x5 groups in the original, every hidden channel (0 * Inf) once embedded
    block = _rand(InvertedResidual(12, 12, dw_kernel_size=[3, 5, 7, 9], exp_kernel_size=[1, 1], exp_ratio=4.0))
    fused = FoldedInvertedResidual.from_module(block)
    x = torch.randn(1, 12, 14, 14)
    x[0, 0, 7, 7] = float("inf")
    with torch.no_grad():
        ref = block(x)
        # what the embedded weights alone give: the 9x9 kernel's zero taps turn the Inf into NaN far away
        f = fused.folded(torch.float32)
        p = fused.plan
        emb = torch.ops.mnv2.inverted_residual_ex(x, *f[:10], p.stride, p.residual, p.act_expand, p.act_dw,
                                                  p.padding, p.se_act, p.se_gate, p.act_project, None, None, 1)
        assert emb.isnan().sum() > ref.isnan().sum()
        with pytest.warns(mk.FusedPathWarning, match="NaN or Inf"):
            got = fused(x)
    torch.testing.assert_close(got, ref, equal_nan=True)
    with torch.no_grad():   # finite inputs take the folded path again
        x2 = torch.randn(1, 12, 14, 14)
        torch.testing.assert_close(fused(x2), block(x2), rtol=1e-4, atol=1e-4)


# --- PP-LCNetV2 re-parameterisable depthwise ------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(stride=1, use_shortcut=True), dict(stride=2),
                                dict(stride=1, use_se=True, split_pw=True),
                                dict(stride=2, use_se=True, split_pw=True)])
def test_lcnetv2_rep_branches_fold_into_one_depthwise(kw):
    cin = 16
    cout = 16 if kw.get("use_shortcut") else 24
    block = RepDepthwiseSeparable(cin, cout, dw_kernel_size=5, use_rep=True, **kw)
    fused = _check(block, torch.randn(2, cin, 10, 9), kernel=5, stride=kw["stride"], act_dw="relu",
                   act_project="relu", residual=block.use_shortcut)
    assert fused.plan.embedded and ("summed as one 5x5" in fused.plan.describe())
    assert (fused.plan.tail is not None) == kw.get("split_pw", False)
    # the same as timm's own re-parameterisation (reparameterize(): one depthwise conv with a bias)
    rep = _rand(RepDepthwiseSeparable(cin, cout, dw_kernel_size=5, use_rep=True, **kw)).double()
    rep.load_state_dict(block.state_dict())
    rep.reparameterize()
    x = torch.randn(2, cin, 10, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), rep(x), rtol=1e-10, atol=1e-10)


class _RepVGGDW(nn.Module):
    """Hand-written re-parameterisable depthwise with an identity (BN-only) branch, then a 1x1 project."""

    def __init__(self, c=8, cout=8):
        super().__init__()
        self.b3 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c))
        self.b1 = nn.Sequential(nn.Conv2d(c, c, 1, groups=c, bias=True), nn.BatchNorm2d(c))
        self.bid = nn.BatchNorm2d(c)
        self.act = nn.Hardswish()
        self.pw = nn.Sequential(nn.Conv2d(c, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.pw(self.act(self.b3(x) + self.b1(x) + self.bid(x))) + x


def test_hand_written_branches_with_identity_bn():
    fused = _check(_RepVGGDW(), torch.randn(2, 8, 7, 9), kernel=3, act_dw="hardswish", residual=True)
    assert "3 depthwise branches 3/1/BN summed as one 3x3" in fused.plan.describe()


# --- fuse(): skip reasons and warning -------------------------------------------------------------------------
def test_fuse_warns_with_every_skip_reason():
    aa = UniversalInvertedResidual(8, 8, dw_kernel_size_start=3, dw_kernel_size_mid=3, stride=2, exp_ratio=2.0,
                                   aa_layer="avg")
    big = InvertedResidual(8, 8, dw_kernel_size=[3, 11], exp_ratio=2.0)
    ok = _MixBlock()
    model = _rand(nn.Sequential(ok, aa, big))
    with pytest.warns(mk.FusedPathWarning) as rec:
        fused, report = mk.fuse(model, return_report=True)
    text = " ".join(str(w.message) for w in rec)
    assert "2 of 3 blocks left unfused" in text
    assert "anti-aliasing AvgPool2d" in text and "odd square kernels up to 9x9" in text
    assert [r.path for r in report.skipped] == ["1", "2"] and isinstance(fused[0], FoldedInvertedResidual)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


# --- one small model per family -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,skipped", [("mixnet_s", 1), ("tf_mixnet_s", 1), ("lcnetv2_small", 0),
                                          ("mobilenetv4_conv_small_035", 0)])
def test_zoo_model_blocks_fold_and_match(name, skipped):
    torch.manual_seed(0)
    model = _rand(timm.create_model(name, pretrained=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    assert len(report.skipped) == skipped, str(report)
    for r in report.skipped:   # MixNet-S's last stage has an 11x11 group
        assert "11" in r.detail and "up to 9x9" in r.detail
    assert len(report.fused) + len(report.reference) > 8
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-4, f"{name}: relative error {err:.2e}"
    assert set(fused.state_dict()) == set(model.state_dict())


# --- timm stem / head conv -> BN(+act) ------------------------------------------------------------------------
def test_timm_stem_and_head_fold(monkeypatch):
    from timm.layers import BatchNormAct2d
    from mnv2_kernels.timm_stem import folded_pairs

    model = _rand(timm.create_model("tinynet_e", pretrained=False))   # timm EfficientNet: stem and head pairs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    pairs = {r.path: r.detail for r in report.folded if "+" in r.path}
    assert pairs == {"conv_stem+bn1": "conv+bn+silu", "conv_head+bn2": "conv+bn+silu"}, str(report)
    assert type(fused).__name__ == "FoldedStemEfficientNet" and len(folded_pairs(fused)) == 2
    assert set(fused.state_dict()) == set(model.state_dict()) and type(model).__name__ == "EfficientNet"
    calls = []
    orig = BatchNormAct2d.forward

    def counting(self, x):
        calls.append(self)
        return orig(self, x)

    monkeypatch.setattr(BatchNormAct2d, "forward", counting)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
        calls.clear()
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-4)
        assert fused.bn1 not in calls and fused.bn2 not in calls   # folded: the BNs did not run
        assert fused.conv_stem(x).shape[1] == fused.bn1.num_features   # the conv alone is still the conv
        fused.bn1.running_var.data.mul_(4.0)   # a write PyTorch does not record: seen after refresh()
        model.bn1.running_var.data.mul_(4.0)
        mk.refresh(fused)
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
        fused.conv_stem = model.conv_stem   # a replaced layer: timm's own forward_features path
        calls.clear()
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
        assert fused.bn1 in calls
    fused.train()
    calls.clear()
    fused(x)
    assert fused.bn1 in calls   # training mode: the original layers (BN statistics update)


def test_timm_mobilenetv3_stem_fold_survives_save_and_load(tmp_path):
    model = _rand(timm.create_model("mobilenetv3_small_050", pretrained=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    assert [r.detail for r in report.folded if r.path == "conv_stem+bn1"] == ["conv+bn+hardswish"]
    torch.save(fused, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-4)


def test_traced_path_computes_the_same(monkeypatch):
    # what torch.compile / torch.export capture (the op on folded weights, then the split_pw tail), without
    # paying for a compile: the modules' "compiling" branch, taken directly
    block = _rand(RepDepthwiseSeparable(16, 24, stride=2, dw_kernel_size=5, use_rep=True, use_se=True,
                                        split_pw=True))
    fused = FoldedInvertedResidual.from_module(block)
    x = torch.randn(2, 16, 10, 9)
    with torch.no_grad():
        ref = block(x)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        got = fused(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
