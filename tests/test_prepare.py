"""fuse(..., prepare=True) and mnv2_kernels.prepare(model) (issue 14): the fused layers' weights are folded and
packed for the CPU kernel at setup, not on the first call, without firing hooks, touching BatchNorm statistics,
warning or changing any result (mnv2_kernels/fuse.py, prepare)."""
import warnings

import pytest
import torch
from torch import nn

import mnv2_kernels
from mnv2_kernels import _ext, stem_head
from mnv2_kernels.modules import FoldedInvertedResidual, FusedInvertedResidual, FusedPathWarning, _FoldedModule
from mnv2_kernels.stem_head import CPUFoldedConvBNAct
from mnv2_kernels.testing import mobilenet_v2_models, randomize_bn_

pytestmark = pytest.mark.skipif(_ext.CPU_EXT is None or not stem_head._HAVE_OPS,
                                reason=f"CPU extension not built: {_ext.CPU_EXT_ERROR}")


def _models():
    return mobilenet_v2_models()


def _mnv2():
    torch.manual_seed(0)
    return dict(_models())["mnv2_kernels"]()


def _layers(m: nn.Module):
    """The layers that record a fast path: fused blocks, the stem and head convolutions."""
    return [q for q in m.modules() if type(q) in (FusedInvertedResidual, CPUFoldedConvBNAct)]


def _recorded(m: nn.Module):
    return [q.__dict__["_fastpath"] is not None for q in _layers(m)]


def _state(m: nn.Module):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same_state(m: nn.Module, state) -> bool:
    now = m.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


@pytest.fixture
def counted(monkeypatch):
    """Calls of the stem + block op and of the pooled head's op (what the first real forward takes)."""
    calls = {"stem": 0, "head": 0}

    def wrap(name, key):
        real = getattr(stem_head, name)

        def f(*a):
            calls[key] += 1
            return real(*a)
        monkeypatch.setattr(stem_head, name, f)
    wrap("_STEM_BLOCK_RUN", "stem")
    wrap("_DENSE_MEAN_RUN", "head")
    return calls


@pytest.mark.parametrize("which", [m[0] for m in _models()])
def test_fuse_prepares_every_layer_and_changes_no_result(which, counted):
    torch.manual_seed(0)
    m0 = dict(_models())[which]().eval()
    state = _state(m0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # preparing warns about nothing
        mp = mnv2_kernels.fuse(m0)
    mu = mnv2_kernels.fuse(m0, prepare=False)
    assert len(_layers(mp)) == 19 and all(_recorded(mp))     # 17 blocks, stem, head
    assert not any(_recorded(mu))
    assert _same_state(mp, state) and _same_state(m0, state)  # BN statistics (and everything else) unchanged
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        yp = mp(x)   # the first call already runs the stem + block op and the pooled head
        assert counted == {"stem": 1, "head": 1}
        yu = mu(x)
        assert counted["stem"] == 1   # the unprepared model's first call: each layer on its own
    assert torch.equal(yp, yu)
    mp2 = mnv2_kernels.fuse(m0)
    with torch.inference_mode():     # as the engines benchmark calls it
        y2 = mp2(x)
    assert counted["stem"] == 2 and torch.equal(y2, yp)
    assert _same_state(mp, state)


def test_hooks_are_neither_fired_nor_prepared():
    m0 = _mnv2().eval()
    fired = []
    # hooks on the original model, carried over by fuse (recognition leaves hooked layers outside fused ones)
    m0.register_forward_hook(lambda mod, a, out: fired.append("model"))
    m0.features[0].register_forward_pre_hook(lambda mod, a: fired.append("stem"))    # (the stem stays unfolded)
    m0.features[2].register_forward_hook(lambda mod, a, out: fired.append("block 2"))  # around its fused .conv
    m0.features[3].register_forward_hook(lambda mod, a, out: fired.append("block 3"))
    m0.classifier[-1].register_forward_hook(lambda mod, a, out: fired.append("classifier"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mnv2_kernels.fuse(m0)
        m5 = mnv2_kernels.fuse(m0, prepare=False)
    # hooks after fuse(): on a fused layer itself, on a layer inside one
    m5.features[4].conv.register_forward_pre_hook(lambda mod, a: fired.append("block 4"))
    inner = [c for c in m5.features[5].modules() if isinstance(c, nn.Conv2d)][1]
    inner.register_forward_hook(lambda mod, a, out: fired.append("conv in block 5"))
    mnv2_kernels.prepare(m5)
    assert fired == []
    assert len(_layers(m)) == 18 and all(_recorded(m))   # hooks around fused layers do not stop preparing
    assert [i for i, q in enumerate(m5.features) if _layers(q) and not any(_recorded(q))] == [4, 5]
    assert sum(_recorded(m5)) == 16
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        y, ref = m(x), m0(x)
        with pytest.warns(FusedPathWarning, match="forward hooks"):   # (still warned once: on the real call)
            m5(x)
    assert sorted(fired) == sorted(3 * ["model", "stem", "block 2", "block 3", "classifier"]
                                   + ["block 4", "conv in block 5"])
    torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)


def test_global_hooks_leave_the_model_unprepared():
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
    m0 = _mnv2().eval()
    m = mnv2_kernels.fuse(m0, prepare=False)
    fired = []
    handles = [register_module_forward_hook(lambda mod, a, out: fired.append(type(mod).__name__)),
               register_module_forward_pre_hook(lambda mod, a: fired.append(type(mod).__name__))]
    try:
        mnv2_kernels.prepare(m)
        assert fired == [] and not any(_recorded(m))
        m2 = mnv2_kernels.fuse(m0)   # (recognising the blocks calls them; preparing adds nothing)
        assert not any(_recorded(m2))
    finally:
        for h in handles:
            h.remove()
    mnv2_kernels.prepare(m)   # hooks gone: prepared now
    assert all(_recorded(m))


def test_training_mode_is_never_prepared():
    m0 = _mnv2().train()
    state = _state(m0)
    with pytest.warns(FusedPathWarning, match="training mode"):
        m = mnv2_kernels.fuse(m0)
    mnv2_kernels.prepare(m)
    folded = [q for q in m.modules() if isinstance(q, _FoldedModule)]
    assert len(folded) == 19 and all(q.__dict__["_cache"] == {} for q in folded) and not any(_recorded(m))
    assert _same_state(m, state)   # no BatchNorm update (running stats, num_batches_tracked)
    # one layer in training mode: fuse() leaves the whole model to its first call, prepare() all other layers
    m0.eval()
    m0.features[5].train()
    m = mnv2_kernels.fuse(m0)
    assert not any(_recorded(m))
    mnv2_kernels.prepare(m)
    assert not any(q.__dict__["_fastpath"] is not None for q in _layers(m.features[5]))
    assert sum(_recorded(m)) == 18
    assert _same_state(m, state)


def test_prepare_after_eval_and_to():
    m0 = _mnv2()
    with pytest.warns(FusedPathWarning, match="training mode"):
        m = mnv2_kernels.fuse(m0.train())
    m.eval()
    assert not any(_recorded(m))
    assert mnv2_kernels.prepare(m) is m and all(_recorded(m))
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(m(x), mnv2_kernels.fuse(m0.eval(), prepare=False)(x))
    m.double()   # not float32: left to the first call (the CPU kernel serves float32 and bfloat16 inputs)
    mnv2_kernels.prepare(m)
    assert all(not any(slot[1] == torch.float64 for slot in q.__dict__["_cache"]) for q in _layers(m))
    with torch.no_grad():
        assert not any(q._fast(x.double()) is not None for q in _layers(m))
    m.float()
    mnv2_kernels.prepare(m)
    with torch.no_grad():   # (_fast answers without gradients only)
        assert all(q._fast(x) is not None for q in _layers(m))   # records valid for the new float32 tensors
    with torch.no_grad():
        assert torch.equal(m(x), mnv2_kernels.fuse(m0, prepare=False)(x))
    mnv2_kernels.refresh(m)   # recognised and folded again: by the next call, or by prepare()
    with torch.no_grad():
        assert not any(q._fast(x) is not None for q in _layers(m))
    mnv2_kernels.prepare(m)
    with torch.no_grad():
        assert all(q._fast(x) is not None for q in _layers(m))


def test_prepare_never_warns_and_leaves_warnings_to_real_calls():
    m0 = _mnv2().eval()
    dw = [c for c in m0.features[4].modules() if isinstance(c, nn.Conv2d) and c.groups > 1][0]
    with torch.no_grad():
        dw.weight[0, 0, 0, 0] = float("inf")   # non-finite folded weights: the block runs its original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mnv2_kernels.fuse(m0)
        with torch.autocast("cpu"):            # under autocast the fused modules run the originals: no-op
            mnv2_kernels.prepare(mnv2_kernels.fuse(m0, prepare=False))
    assert not any(q.__dict__["_fastpath"] is not None for q in _layers(m.features[4]))
    assert sum(_recorded(m)) == 18
    with pytest.warns(FusedPathWarning, match="NaN or Inf"), torch.no_grad():
        m(torch.randn(1, 3, 32, 32))


def test_generalised_blocks_and_other_backends():
    class Block(nn.Module):
        def __init__(self, c=8, h=16):
            super().__init__()
            self.pw = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(h, h, 5, 1, 2, groups=h, bias=False), nn.BatchNorm2d(h), nn.Hardswish())
            self.pwl = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.pwl(self.dw(self.pw(x)))

    torch.manual_seed(0)
    model = randomize_bn_(nn.Sequential(Block(), Block())).eval()
    state = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedPathWarning)   # (a reference-path report where no kernel serves it)
        mp, mu = mnv2_kernels.fuse(model), mnv2_kernels.fuse(model, prepare=False)
        mr = mnv2_kernels.fuse(model, backend="reference")
    assert all(isinstance(b, FoldedInvertedResidual) for b in (*mp, *mu, *mr))
    assert all(len(b.__dict__["_cache"]) == 1 for b in mp)      # folded at setup
    assert all(b.__dict__["_cache"] == {} for b in (*mu, *mr))  # the reference backend: left to the first call
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(mp(x), mu(x))
    assert _same_state(mp, state)


def test_prepare_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        mnv2_kernels.prepare("model")
    assert mnv2_kernels.prepare(nn.Linear(2, 2)) is not None   # nothing fused: nothing to do


def test_fusing_a_model_of_this_package_does_not_import_torchvision():
    """fuse() registers torchvision's MobileNetV2 classes only when torchvision is already imported: importing it
    pulls in torch.onnx, torch._dynamo, sympy and triton, ~150 MiB of resident memory (issue 14, peak memory)."""
    pytest.importorskip("torchvision")
    import subprocess
    import sys
    code = ("import sys, torch, mnv2_kernels\n"
            "m = mnv2_kernels.fuse(mnv2_kernels.models.mobilenet_v2().eval())\n"
            "assert 'torchvision' not in sys.modules, 'fuse imported torchvision'\n"
            "import torchvision\n"
            "t = mnv2_kernels.fuse(torchvision.models.mobilenet_v2().eval())\n"
            "print(type(m).__name__, type(t).__name__, all(q.__dict__['_fastpath'] is not None\n"
            "      for q in t.modules() if type(q) is mnv2_kernels.FusedInvertedResidual))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["PooledHeadMobileNetV2", "PooledHeadTorchvisionMobileNetV2", "True"]
