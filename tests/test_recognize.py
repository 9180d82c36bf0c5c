"""The block recogniser (mnv2_kernels.recognize): reads what a forward computes, fuses only the exact pattern.

Accepted: [conv1x1 -> BN -> ReLU6] -> depthwise 3x3 (stride 1|2, padding 1) -> BN -> ReLU6 -> conv1x1 -> BN,
with ``+ x`` written any way, identities anywhere, functional relu6 and timm's BatchNormAct2d. Everything
else is refused with a reason that names the layer and what is wrong.
"""
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnv2_kernels.recognize import NotFusable, recognize_block, recognize_conv_bn


def _layers(cin=8, hidden=24, cout=8, stride=1, *, expand=True, k=3, pad=1, dil=1, groups=None, act=nn.ReLU6,
            proj_act=None, dw_bias=False):
    layers = []
    if expand:
        layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
    layers += [nn.Conv2d(hidden, hidden, k, stride, pad, dilation=dil, groups=groups or hidden, bias=dw_bias),
               nn.BatchNorm2d(hidden), act(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    if proj_act is not None:
        layers.append(proj_act())
    return nn.Sequential(*layers)


class _Res(nn.Module):
    """body(x) combined with x in one of the ways code writes a shortcut."""

    def __init__(self, body, how="plus"):
        super().__init__()
        self.body, self.how = body, how

    def forward(self, x):
        y = self.body(x)
        if self.how == "plus":
            return x + y
        if self.how == "plus_reversed":
            return y + x
        if self.how == "torch_add":
            return torch.add(x, y)
        if self.how == "method":
            return y.add(x)
        if self.how == "iadd":
            return operator.iadd(y, x)
        if self.how == "scaled":
            return x + 0.5 * y
        if self.how == "twice":
            return y + y
        raise AssertionError(self.how)


def test_plain_chain_plan():
    plan = recognize_block(_layers(8, 48, 16, 2))
    assert (plan.expand, plan.depthwise, plan.project) == (("0", "1"), ("3", "4"), ("6", "7"))
    assert (plan.stride, plan.residual, plan.in_channels, plan.hidden_channels, plan.out_channels) == \
        (2, False, 8, 48, 16)
    assert plan.describe() == "8->48->16, stride 2, expand"


def test_no_expand_conv():
    plan = recognize_block(_layers(16, 16, 24, 1, expand=False))
    assert plan.expand is None and plan.hidden_channels == 16 and plan.describe().endswith("no expand")


@pytest.mark.parametrize("how", ["plus", "plus_reversed", "torch_add", "method", "iadd"])
def test_residual_written_any_way(how):
    plan = recognize_block(_Res(_layers(8, 24, 8), how))
    assert plan.residual and plan.depthwise == ("body.3", "body.4")


def test_identities_dropout_and_functional_relu6_are_transparent():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 16, 1, bias=False)
            self.bn_a = nn.BatchNorm2d(16)
            self.drop = nn.Dropout(0.2)
            self.b = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
            self.bn_b = nn.BatchNorm2d(16)
            self.skip = nn.Identity()
            self.c = nn.Conv2d(16, 8, 1, bias=False)
            self.bn_c = nn.BatchNorm2d(8)

        def forward(self, x):
            h = self.drop(F.relu6(self.bn_a(self.a(x))))
            h = self.skip(F.relu6(self.bn_b(self.b(h))))
            return x + self.bn_c(self.c(h))

    plan = recognize_block(Block())
    assert plan.residual and plan.expand == ("a", "bn_a") and plan.project == ("c", "bn_c")


def test_timm_batchnormact_is_a_bn_and_its_activation():
    timm = pytest.importorskip("timm")
    block = timm.create_model("mobilenetv2_100", pretrained=False).blocks[2][1]
    plan = recognize_block(block)
    assert plan.residual and plan.expand == ("conv_pw", "bn1") and plan.depthwise == ("conv_dw", "bn2")


@pytest.mark.parametrize("make,reason", [
    (lambda: _layers(act=nn.Hardswish), "only ReLU6 is fused"),
    (lambda: _layers(act=nn.ReLU), "only ReLU6 is fused"),
    (lambda: _layers(k=5, pad=2), "kernel size (5, 5)"),
    (lambda: _layers(pad=2), "padding (2, 2)"),
    (lambda: _layers(dil=2, pad=2), "dilation (2, 2)"),
    (lambda: _layers(stride=3), "stride (3, 3)"),
    (lambda: _layers(groups=4), "not depthwise"),
    (lambda: _layers(proj_act=nn.ReLU6), "expected [conv1x1"),
    (lambda: _Res(_layers(8, 24, 8), "scaled"), "mul"),
    (lambda: _Res(_layers(8, 24, 8), "twice"), "adds two computed tensors"),
    (lambda: _Res(_layers(8, 24, 16)), "adds its input but changes shape"),
    (lambda: _Res(_layers(8, 24, 8, stride=2)), "adds its input but changes shape"),
    (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                           nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, track_running_stats=False)), "no running statistics"),
])
def test_refusals_name_the_reason(make, reason):
    with pytest.raises(NotFusable) as info:
        recognize_block(make())
    assert reason in str(info.value), str(info.value)


def test_squeeze_excite_is_refused():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _layers(8, 24, 8)
            self.gate = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = self.body(x)
            return y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))

    with pytest.raises(NotFusable, match="squeeze-excite or another op"):
        recognize_block(SE())


def test_two_inputs_and_untraceable_forwards_are_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _layers()

        def forward(self, x, y):
            return self.body(x) + y

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _layers()

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else x

    with pytest.raises(NotFusable, match="takes 2 inputs"):
        recognize_block(Two())
    with pytest.raises(NotFusable, match="cannot be traced"):
        recognize_block(DataDependent())


def test_asymmetric_same_padding_conv_is_refused():
    class Conv2dSame(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0, self.dilation,
                            self.groups)

    seq = _layers(stride=2)
    seq[3] = Conv2dSame(24, 24, 3, 2, 1, groups=24, bias=False)
    with pytest.raises(NotFusable, match="overrides Conv2d.forward"):
        recognize_block(seq)


@pytest.mark.parametrize("variant", ["relu6_subclass", "identity_subclass", "bn_subclass", "conv_forward",
                                     "forward_hook", "pre_hook", "container_hook", "instance_forward"])
def test_layers_that_do_more_than_their_class_are_refused(variant):
    class MyReLU6(nn.ReLU6):
        def forward(self, x):
            return torch.clamp(x, 0, 5)

    class MyIdentity(nn.Identity):
        def forward(self, x):
            return -x

    class MyBN(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    class MyConv(nn.Conv2d):
        def _conv_forward(self, x, w, b):
            return super()._conv_forward(x, w.flip(-1), b)

    seq = _layers()
    if variant == "relu6_subclass":
        seq[2] = MyReLU6()
    elif variant == "identity_subclass":
        seq.insert(3, MyIdentity())
    elif variant == "bn_subclass":
        seq[4] = MyBN(24)
    elif variant == "conv_forward":
        seq[3] = MyConv(24, 24, 3, 1, 1, groups=24, bias=False)
    elif variant == "forward_hook":
        seq[4].register_forward_hook(lambda m, a, o: o)
    elif variant == "pre_hook":
        seq[0].register_forward_pre_hook(lambda m, a: None)
    elif variant == "container_hook":
        seq.register_forward_hook(lambda m, a, o: o)
    else:
        seq[5].forward = lambda x: x
    with pytest.raises(NotFusable):
        recognize_block(seq)


def test_conv_bn_act_recognition():
    assert recognize_conv_bn(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())).activation == \
        "relu6"
    assert recognize_conv_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())).activation == "relu"
    assert recognize_conv_bn(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))).activation is None
    assert recognize_conv_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU())).activation == "silu"
    for bad in (nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Tanh()),
                nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8)),
                nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(4)),
                nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 1))):
        with pytest.raises(NotFusable):
            recognize_conv_bn(bad)
