"""The fused modules' per-call fast path (issue 14; mnv2_kernels/modules.py, _FastPath; csrc/cpu/fast_path.cpp).

After a fused call, the next call checks the facts that call was decided on in one pass (in C++ when the CPU
extension is built) instead of the full checks. These tests hold it to the full checks: every change that
makes the full path decide differently also invalidates the record (the C++ and the Python validator agree),
a torch dispatch mode still sees the op, and a whole model gives bit-identical logits with and without it.
tests/test_faults.py covers the rules themselves (each of its cases runs a fused call before the change).
"""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mnv2_kernels as mk
from mnv2_kernels import modules as M
from mnv2_kernels.models import InvertedResidual
from mnv2_kernels.testing import randomize_bn_

pytestmark = pytest.mark.skipif(M._FAST_VALID is None, reason="the CPU extension (mnv2_kernels._C) is not built")


def _twins(seed=0):
    torch.manual_seed(seed)
    original = randomize_bn_(InvertedResidual(16, 16, 1, 6), seed=seed).eval()
    return original, mk.FusedInvertedResidual.from_module(copy.deepcopy(original)).eval()


def _x():
    return torch.randn(2, 16, 9, 9, generator=torch.Generator().manual_seed(1))


def _valid(fp):
    """(C++ validator, Python validator) on a record."""
    return (M._FAST_VALID(fp.nodes, fp.attrs, fp.dicts, fp.tensors),
            M._fast_valid_py(fp.nodes, fp.attrs, fp.dicts, fp.tensors))


CHANGES = {
    "bn_training": lambda m: m.conv[1][1].train(),
    "hook": lambda m: m.conv[0][1].register_forward_hook(lambda *a: None),
    "pre_hook": lambda m: m.conv[2].register_forward_pre_hook(lambda *a: None),
    "instance_forward": lambda m: setattr(m.conv[0][2], "forward", lambda t: t),
    "eps": lambda m: setattr(m.conv[-1], "eps", 1e-3),
    "padding_mode": lambda m: setattr(m.conv[1][0], "padding_mode", "reflect"),
    "weight_mul_": lambda m: m.conv[1][0].weight.mul_(2),
    "weight_replaced": lambda m: setattr(m.conv[0][0], "weight", nn.Parameter(m.conv[0][0].weight.clone())),
    "buffer_replaced": lambda m: setattr(m.conv[-1], "running_mean", m.conv[-1].running_mean.clone()),
    "bias_added": lambda m: setattr(m.conv[2], "bias", nn.Parameter(torch.zeros(16))),
    "layer_replaced": lambda m: m.conv.__setitem__(2, copy.deepcopy(m.conv[2])),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_invalidates_the_record_and_both_paths_agree(change):
    original, fused = _twins()
    x = _x()
    with torch.no_grad():
        fused(x)
        fp = fused._fast(x)
        assert fp is not None, "a fused call under no_grad records the fast path"
        assert _valid(fp) == (True, True)
        for m in (original, fused):
            with torch.no_grad():
                CHANGES[change](m)
        assert _valid(fp) == (False, False), change
        assert fused._fast(x) is None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some changes make the block run its original forward, saying so
            y, ref = fused(x), original(x)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_grad_mode_modes_and_dtype_take_the_full_path():
    original, fused = _twins()
    x = _x()
    with torch.no_grad():
        fused(x)
        assert fused._fast(x) is not None
        assert fused._fast(x.double()) is None       # another cache slot
    assert fused._fast(x) is None                    # gradients enabled

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        fused(x)
    assert any("mnv2.inverted_residual" in s for s in seen), seen


def test_whole_model_is_bit_identical_with_and_without_the_fast_path(monkeypatch):
    model = mk.fuse(randomize_bn_(mk.models.mobilenet_v2(num_classes=10), seed=3).eval())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        model(x)
        fast = model(x)
        fps = [m for m in model.modules() if isinstance(m, M._FoldedModule) and m.__dict__.get("_fastpath")]
        assert len(fps) == 19  # the 17 blocks, the stem and the head
        monkeypatch.setattr(M._FoldedModule, "_fast", lambda self, x: None)
        slow = model(x)
    assert torch.equal(fast, slow)
