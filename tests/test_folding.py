"""BN folding: the folded conv equals conv -> BN (eval), in float64, with each BN's eps and conv bias."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnv2_kernels.folding import fold_block, fold_conv_bn
from mnv2_kernels.testing import randomize_bn_


@pytest.mark.parametrize("groups,kernel,bias,eps", [(1, 1, False, 1e-5), (1, 1, True, 1e-3), (12, 3, False, 1e-3),
                                                    (12, 3, True, 0.1)])
def test_fold_conv_bn_matches_conv_then_bn(groups, kernel, bias, eps):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 12, kernel, padding=kernel // 2, groups=groups, bias=bias).double()
    bn = randomize_bn_(nn.BatchNorm2d(12, eps=eps).double().eval(), seed=3)
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    w, b = fold_conv_bn(conv, bn)
    assert w.dtype == b.dtype == torch.float64
    expected = bn(conv(x))
    got = F.conv2d(x, w, b, padding=kernel // 2, groups=groups)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fold_uses_each_bns_own_eps():
    conv = nn.Conv2d(4, 4, 1, bias=False)
    a, b = nn.BatchNorm2d(4, eps=1e-5).eval(), nn.BatchNorm2d(4, eps=1e-1).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.running_var.fill_(0.01)
        b.running_var.fill_(0.01)
    assert not torch.allclose(fold_conv_bn(conv, a)[0], fold_conv_bn(conv, b)[0])


def test_fold_block_layouts_and_dtype():
    exp = (nn.Conv2d(8, 48, 1, bias=False), randomize_bn_(nn.BatchNorm2d(48).eval()))
    dw = (nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), randomize_bn_(nn.BatchNorm2d(48).eval()))
    proj = (nn.Conv2d(48, 16, 1, bias=False), randomize_bn_(nn.BatchNorm2d(16).eval()))
    f = fold_block(exp, dw, proj, torch.bfloat16)
    assert [tuple(t.shape) for t in f] == [(48, 8), (48,), (48, 3, 3), (48,), (16, 48), (16,)]
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in f)
    assert fold_block(None, dw, proj, torch.float32).w_expand is None


def test_fold_refuses_bn_without_running_stats():
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
