"""FusedInvertedResidual: exact training behaviour, never-stale folded weights, safe fallbacks."""
import copy

import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels.models import InvertedResidual
from mnv2_kernels.testing import randomize_bn_


def _block(cin=24, cout=24, stride=1, t=6, seed=0):
    torch.manual_seed(seed)
    return randomize_bn_(InvertedResidual(cin, cout, stride, t), seed=seed)


def _x(c=24, seed=1, n=2, hw=11):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_training_mode_is_exactly_the_original():
    original = _block()
    twin = copy.deepcopy(original)
    fused = mk.FusedInvertedResidual.from_module(twin).train()
    original.train()
    xa, xb = _x().requires_grad_(), _x().requires_grad_()
    ya, yb = original(xa), fused(xb)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    for (na, pa), (nb, pb) in zip(original.named_parameters(), fused.named_parameters()):
        assert na == nb and torch.equal(pa.grad, pb.grad)
    for (na, ba), (nb, bb) in zip(original.named_buffers(), fused.named_buffers()):
        assert na == nb and torch.equal(ba, bb)   # BN running statistics and num_batches_tracked


def test_optimizer_step_reaches_the_fused_eval_path():
    original = _block()
    fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(original)).eval()
    with torch.no_grad():
        before = fused(_x())
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    fused.train()
    fused(_x(seed=5)).square().mean().backward()
    opt.step()
    fused.eval()
    with torch.no_grad():
        after = fused(_x())
        ref = fused._original(_x())
    assert not torch.allclose(before, after)
    _close(after, ref)


def test_load_state_dict_and_dtype_changes_refold():
    fused = mk.FusedInvertedResidual.from_module(_block(seed=0)).eval()
    other = _block(seed=7).eval()
    with torch.no_grad():
        fused(_x())
        fused.load_state_dict(other.state_dict())
        _close(fused(_x()), other(_x()))
    ref64 = mk.FusedInvertedResidual.from_module(_block(seed=3), backend="reference").eval().double()
    with torch.no_grad():
        y = ref64(_x().double())
    assert y.dtype == torch.float64
    _close(y, ref64._original(_x().double()))


def test_eval_with_gradients_runs_the_original_and_backpropagates():
    fused = mk.FusedInvertedResidual.from_module(_block()).eval()
    x = _x().requires_grad_()
    y = fused(x)
    assert y.requires_grad
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_from_module_refuses_with_reason():
    with pytest.raises(ValueError, match="cannot fuse Conv2d"):
        mk.FusedInvertedResidual.from_module(torch.nn.Conv2d(3, 3, 1))
    se_block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8),
                                   torch.nn.Hardswish(), torch.nn.Conv2d(8, 8, 1), torch.nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match="only ReLU6 is fused"):
        mk.FusedInvertedResidual.from_module(se_block)


@pytest.mark.parametrize("cin,cout,stride,t", [(24, 24, 1, 6), (16, 24, 2, 6), (32, 16, 1, 1), (20, 36, 2, 4)])
def test_fused_eval_matches_original(cin, cout, stride, t):
    original = _block(cin, cout, stride, t).eval()
    fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(original)).eval()
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = _x(cin, hw=13).contiguous(memory_format=fmt)
        with torch.inference_mode():
            y, ref = fused(x), original(x)
        _close(y, ref)
        assert y.is_contiguous(memory_format=fmt)


def test_to_device_refolds_on_the_new_device():
    """After .to(device) the folded weights follow (checked with the meta device, which needs no GPU)."""
    fused = mk.FusedInvertedResidual.from_module(_block()).eval()
    with torch.no_grad():
        fused(_x())
        fused.to("meta")
        y = fused(_x().to("meta"))
    assert y.device.type == "meta" and y.shape == (2, 24, 11, 11)
    assert all(w is None or w.device.type == "meta" for w in fused.folded(torch.float32))
