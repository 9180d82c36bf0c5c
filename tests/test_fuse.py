"""fuse() on torchvision, timm and hand-written models: same outputs, same state dict, honest report."""
import warnings

import pytest
import torch
from torch import nn

import mnv2_kernels as mk
from mnv2_kernels.models import mobilenet_v2
from mnv2_kernels.testing import randomize_bn_
from seed_model import MobileNetV2 as SeedMobileNetV2

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _dw_kernel(block: nn.Module):
    return [m.kernel_size for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def _assert_same_function(original, fused, size=64, batch=2, seed=0):
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, got = original(x), fused(x)
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * scale)


def _assert_same_state_dict(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("build", [
    lambda: torchvision.models.mobilenet_v2(),
    lambda: timm.create_model("mobilenetv2_100", pretrained=False),
    lambda: mobilenet_v2(),
    lambda: SeedMobileNetV2(),
], ids=["torchvision", "timm_mobilenetv2_100", "mnv2_kernels", "seed"])
def test_mobilenet_v2_all_17_blocks_fused(build):
    model = randomize_bn_(build().eval())
    fused, report = mk.fuse(model, return_report=True)
    assert len(report.fused) == 17 and not report.skipped, str(report)
    assert sum(isinstance(m, mk.FusedInvertedResidual) for m in fused.modules()) == 17
    assert not any(isinstance(m, mk.FusedInvertedResidual) for m in model.modules()), "inplace=False copies"
    _assert_same_function(model, fused)
    _assert_same_state_dict(model, fused)


def test_residual_read_from_forward_not_shapes():
    """torchvision adds x in the outer block, so the outer block is chosen and owns the shortcut."""
    model = randomize_bn_(torchvision.models.mobilenet_v2().eval())
    _, report = mk.fuse(model, return_report=True)
    by_path = {r.path: r for r in report}
    assert "residual" in by_path["features.3"].detail           # 24 -> 24, stride 1: x + conv(x)
    assert "residual" not in by_path["features.2.conv"].detail  # stride 2: no shortcut


class _Block(nn.Module):
    """Hand-written block with other attribute names and a switchable shortcut in its forward."""

    def __init__(self, c, hidden, add_input, add_style="plus"):
        super().__init__()
        self.widen = nn.Conv2d(c, hidden, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(hidden)
        self.act_a = nn.ReLU6()
        self.spatial = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=True)
        self.norm_b = nn.BatchNorm2d(hidden, eps=1e-3)
        self.narrow = nn.Conv2d(hidden, c, 1, bias=False)
        self.norm_c = nn.BatchNorm2d(c)
        self.add_input, self.add_style = add_input, add_style

    def forward(self, inp):
        y = self.act_a(self.norm_a(self.widen(inp)))
        y = torch.nn.functional.relu6(self.norm_b(self.spatial(y)))
        y = self.norm_c(self.narrow(y))
        if self.add_style == "scaled":
            return inp + 0.5 * y
        if self.add_input:
            return torch.add(y, inp)
        return y


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.body = nn.ModuleDict({"a": _Block(16, 40, True), "b": _Block(16, 24, False), "c": _Block(16, 32, True, "scaled")})

    def forward(self, x):
        x = self.stem(x)
        for blk in self.body.values():
            x = blk(x)
        return x


def test_hand_written_model_with_other_names():
    model = randomize_bn_(_Net().eval())
    fused, report = mk.fuse(model, return_report=True)
    by_path = {r.path: r for r in report}
    assert by_path["body.a"].fused and "residual" in by_path["body.a"].detail
    assert by_path["body.b"].fused and "residual" not in by_path["body.b"].detail  # same shapes, no add
    assert not by_path["body.c"].fused and "mul" in by_path["body.c"].detail
    assert isinstance(fused.body["c"], _Block)
    _assert_same_function(model, fused, size=33, batch=3)
    _assert_same_state_dict(model, fused)


def _generalised(fused, report, path):
    """A generalised block (issue 13): a FoldedInvertedResidual, reported as fused when a kernel computes it
    (the kernels' EX_SUPPORT rows) or as folded on the reference path, saying what no kernel has."""
    r = next(r for r in report.fused + report.reference if r.path == path)
    assert isinstance(fused.get_submodule(path), mk.modules.FoldedInvertedResidual)
    assert r.kind == "reference" and "no fused kernel for" in r.detail if not r.fused else r.kind == "block"
    return r


def test_efficientnet_lite0_fuses_3x3_blocks_and_folds_5x5_blocks():
    # issue 13: the 5x5 blocks are generalised blocks (FoldedInvertedResidual: a fused kernel when one computes
    # 5x5, the reference on folded weights otherwise); the 3x3 ReLU6 blocks are MobileNetV2 blocks
    model = randomize_bn_(timm.create_model("efficientnet_lite0", pretrained=False).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    assert len(report.fused) + len(report.reference) == 16 and not report.skipped
    fives = [p for p, m in model.named_modules() if _dw_kernel(m) == [(5, 5)] and p.count(".") == 2]
    assert fives
    for p in fives:
        r = _generalised(fused, report, p)
        assert "5x5 depthwise" in r.detail
    for r in report.fused:
        if r.path not in fives:
            assert _dw_kernel(model.get_submodule(r.path)) == [(3, 3)]
    _assert_same_function(model, fused)
    _assert_same_state_dict(model, fused)


def test_tf_efficientnet_lite0_tf_same_padding():
    model = randomize_bn_(timm.create_model("tf_efficientnet_lite0", pretrained=False).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    same_pad = [r for r in report.fused + report.reference if "TF 'same' padding" in r.detail]
    assert same_pad and all("stride 2" in r.detail for r in same_pad) and not report.skipped
    for r in same_pad:
        _generalised(fused, report, r.path)
    _assert_same_function(model, fused, size=65)
    _assert_same_function(model, fused, size=64)


def test_mobilenetv3_squeeze_excite_and_hardswish_folded():
    model = randomize_bn_(timm.create_model("mobilenetv3_large_100", pretrained=False).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        fused, report = mk.fuse(model, return_report=True)
    blocks = report.fused + report.reference
    assert not report.skipped and len(blocks) == 15
    assert any("hardswish" in r.detail for r in blocks)
    assert any("squeeze-excite (relu, hardsigmoid)" in r.detail for r in blocks)
    for r in blocks:
        _generalised(fused, report, r.path)
    if report.reference:   # the warning counts them and says what is missing
        with pytest.warns(mk.FusedPathWarning, match=f"{len(report.reference)} of 15 blocks are folded but run on "
                                                     "the reference path"):
            mk.fuse(model)
    _assert_same_function(model, fused)


def test_state_dict_loads_into_either():
    a = randomize_bn_(mobilenet_v2().eval(), seed=1)
    b = randomize_bn_(mobilenet_v2().eval(), seed=2)
    fused_b = mk.fuse(b)
    fused_b.load_state_dict(a.state_dict())
    _assert_same_function(a, fused_b)
    c = mobilenet_v2().eval()
    c.load_state_dict(mk.fuse(a).state_dict())
    _assert_same_function(a, c)


def test_inplace_replaces_in_the_given_model():
    model = mobilenet_v2().eval()
    out = mk.fuse(model, inplace=True)
    assert out is model and isinstance(model.features[3], mk.FusedInvertedResidual)


def test_backend_errors_name_what_is_missing():
    model = mobilenet_v2().eval()
    with pytest.raises(ValueError, match="unknown backend"):
        mk.fuse(model, backend="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend='cuda' is unavailable.*CUDA tensors only"):
            mk.fuse(model, backend="cuda")


def test_fused_path_is_really_taken(monkeypatch):
    """Guards against a silently unfused model: every block must call the fused op in eval + no_grad."""
    from mnv2_kernels import backends

    calls = []
    real = backends.Backend.run

    def counting(row, *args):
        calls.append(row.name)
        return real(row, *args)

    monkeypatch.setattr(backends.Backend, "run", counting)
    # issue 14: after a block's first fused call, its next calls on the CPU take the modules' fast path,
    # which calls the CPU op's kernel directly (mnv2_kernels._C.inverted_residual_cpu): count those too
    from mnv2_kernels import _ext
    direct = getattr(_ext.CPU_EXT, "inverted_residual_cpu", None)
    if direct is not None:
        monkeypatch.setattr(_ext.CPU_EXT, "inverted_residual_cpu",
                            lambda *args: (calls.append("cpu"), direct(*args))[1])
    model = randomize_bn_(mobilenet_v2().eval())
    fused, report = mk.fuse(model, return_report=True, prepare=False)  # (prepare: tests/test_prepare.py)
    assert [r.path for r in report.folded] == ["features.0", "features.18"]
    assert not fused.training and all(not m.training for m in fused.modules())
    with torch.inference_mode():
        fused(torch.randn(1, 3, 32, 32))
        assert len(calls) == 17 and len(set(calls)) == 1
        fused(torch.randn(1, 3, 32, 32))
    # the second call calls the op again, or repeats the first call's checked decisions (issue 14's fast path,
    # which calls the same kernel without the dispatcher)
    blocks = [m for m in fused.modules() if isinstance(m, mk.FusedInvertedResidual)]
    assert len(blocks) == 17
    assert len(calls) == 34 or all(b.__dict__.get("_fastpath") is not None for b in blocks)


def test_fusing_twice_changes_nothing():
    model = randomize_bn_(mobilenet_v2().eval())
    once = mk.fuse(model)
    twice, report = mk.fuse(once, return_report=True)
    assert not report, str(report)
    assert [type(m) for m in twice.modules()] == [type(m) for m in once.modules()]
    _assert_same_function(model, twice)
