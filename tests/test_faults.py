"""Never silently wrong (issue 8): the fused modules give the original's answer or run the original.

Special values (NaN/inf where the original has them, on every backend this machine runs), stale folded
weights after each kind of weight or layer change, torch.inference_mode(), threads, hooks and overriding
subclasses, layers in training mode, drop-in attributes, exports and TorchScript, and the warnings that say
when something runs unfused. Rules under test: docs/CONTRACT.md, "Modules".
"""
import copy
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from torch import nn

import mnv2_kernels as mk
from mnv2_kernels.models import InvertedResidual
from mnv2_kernels.testing import (BACKEND_DEVICES, assert_matches, backend_skip_reason, kernel_dtype,
                                  randomize_bn_)

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float64: 1e-10}


def _block(cin=16, cout=16, stride=1, t=6, seed=0):
    torch.manual_seed(seed)
    return randomize_bn_(InvertedResidual(cin, cout, stride, t), seed=seed).eval()


def _x(c=16, n=2, hw=9, seed=1, dtype=torch.float32):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _pair(block, backend="auto"):
    """(original, fused) with separate weights (the fused one is built from a deep copy)."""
    return block, mk.FusedInvertedResidual.from_module(copy.deepcopy(block), backend=backend).eval()


def _same(fused, original, x, tol=1e-4, what=""):
    with torch.no_grad():
        return assert_matches(fused(x), original(x), tol, what)


def _backend_params():
    return [pytest.param(b, d, id=f"{b}-{d}") for b, d in BACKEND_DEVICES]


# ----------------------------------------------------------------------------------------------------------
# 1. NaN and inf: exactly where the original block has them
# ----------------------------------------------------------------------------------------------------------
def _poison(block, x, kind):
    """Puts a NaN / inf into the input, an expand or depthwise weight, or a BN running_var."""
    nan, inf = float("nan"), float("inf")
    layers = list(block.conv)
    expand = layers[0][0] if len(layers) == 4 else None
    dw = layers[-3][0]
    with torch.no_grad():
        if kind == "nan_pixel":
            x[0, :, 3, 4] = nan
        elif kind == "inf_pixel":
            x[0, 0, 2, 2], x[0, 1, 2, 2] = inf, -inf
        elif kind == "inf_one_channel":
            x[-1, 2, 5, 5] = inf
        elif kind == "nan_expand_weight":
            expand.weight[2, 1] = nan
        elif kind == "nan_depthwise_corner_tap":   # falls on the zero padding at the border pixels
            dw.weight[3, 0, 0, 0] = nan
        elif kind == "nan_depthwise_centre_tap":
            dw.weight[1, 0, 1, 1] = nan
        elif kind == "nan_running_var":
            layers[-1].running_var[1] = nan
        elif kind == "inf_depthwise_bias_bn":
            layers[-3][1].bias[0] = inf
    return x


SPECIAL = ["nan_pixel", "inf_pixel", "inf_one_channel", "nan_expand_weight", "nan_depthwise_corner_tap",
           "nan_depthwise_centre_tap", "nan_running_var", "inf_depthwise_bias_bn"]
CONFIGS = {"s1_residual": (16, 16, 1, 6), "s2": (16, 24, 2, 6), "t1_no_expand": (16, 16, 1, 1)}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("backend,device", _backend_params())
def test_special_values_where_the_original_has_them(backend, device, kind, config):
    reason = backend_skip_reason(backend, device)
    if reason:
        pytest.skip(reason)
    cin, cout, stride, t = CONFIGS[config]
    if kind == "nan_expand_weight" and t == 1:
        pytest.skip("no expand conv at t = 1")
    dtype = kernel_dtype(backend)
    block = _block(cin, cout, stride, t)
    x = _x(cin, n=2, hw=7)
    x = _poison(block, x, kind).to(device, dtype)
    original, fused = _pair(block.to(device, dtype), backend)
    with torch.no_grad():
        ref, got = original(x), fused(x)
    if kind.startswith("nan"):  # (an inf can be clipped by ReLU6: then the output is finite in both)
        assert not torch.isfinite(ref).all(), "the NaN must reach the output"
    assert_matches(got, ref, TOL[dtype], f"{backend} on {device}, {kind}, {config}")


# ----------------------------------------------------------------------------------------------------------
# 2. Stale folded weights: every kind of change is seen (or needs refresh(), as documented)
# ----------------------------------------------------------------------------------------------------------
def _twins(seed=0, **kw):
    """Two identical originals: one stays plain, the other is fused (they share nothing)."""
    a = _block(seed=seed, **kw)
    return a, mk.FusedInvertedResidual.from_module(copy.deepcopy(a)).eval()


def _edit_both(original, fused, fn):
    with torch.no_grad():
        fn(original)
        fn(fused)


@pytest.mark.parametrize("change", ["mul_", "copy_", "optimizer", "load_state_dict", "assign_parameter",
                                    "assign_buffer", "load_state_dict_assign"])
def test_recorded_weight_changes_refold(change):
    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    other = _block(seed=5)
    if change == "mul_":
        _edit_both(original, fused, lambda m: m.conv[1][0].weight.mul_(2))
    elif change == "copy_":
        _edit_both(original, fused, lambda m: m.conv[-1].running_var.copy_(other.conv[-1].running_var))
    elif change == "optimizer":
        for m in (original, fused):
            opt = torch.optim.SGD(m.parameters(), lr=0.5)
            for p in m.parameters():
                p.grad = torch.ones_like(p)
            opt.step()
    elif change == "load_state_dict":
        for m in (original, fused):
            m.load_state_dict(other.state_dict())
    elif change == "assign_parameter":
        for m in (original, fused):
            m.conv[0][0].weight = nn.Parameter(other.conv[0][0].weight.clone())
    elif change == "assign_buffer":
        for m in (original, fused):
            m.conv[-1].running_mean = other.conv[-1].running_mean.clone()
    elif change == "load_state_dict_assign":
        for m in (original, fused):
            m.load_state_dict(copy.deepcopy(other.state_dict()), assign=True)
    _same(fused, original, x, what=change)


@pytest.mark.parametrize("change", ["data_mul_", "numpy_write"])
@pytest.mark.parametrize("how", ["refresh", "train_then_eval", "mk_refresh"])
def test_unrecorded_weight_changes_need_refresh_or_eval(change, how):
    """.data and numpy writes bypass the version counter: refresh() or a switch to eval mode picks them up."""
    original, fused = _twins()
    x = _x()
    _same(fused, original, x)

    def edit(m):
        w = m.conv[1][0].weight
        if change == "data_mul_":
            w.data.mul_(2)
        else:
            w.detach().numpy()[0] *= -3.0

    edit(original)
    edit(fused)
    if how == "refresh":
        assert fused.refresh() is fused
    elif how == "train_then_eval":
        fused.train()
        fused.eval()
    else:
        mk.refresh(nn.Sequential(fused))
    _same(fused, original, x, what=f"{change} + {how}")


@pytest.mark.parametrize("layer", ["classifier", "head_conv", "stem_conv"])
@pytest.mark.parametrize("how", ["train_then_eval", "mk_refresh"])
def test_unrecorded_writes_to_a_whole_fused_model_need_refresh_or_eval(layer, how):
    """The same for the layers around the blocks, whose weights the CPU kernel packs and caches (the
    classifier passes its own weight): mk.refresh() and a training/eval switch drop that cache too."""
    from mnv2_kernels.models import mobilenet_v2

    torch.manual_seed(0)
    original = randomize_bn_(mobilenet_v2(num_classes=10), seed=2).eval()
    fused = mk.fuse(copy.deepcopy(original))
    x = torch.randn(1, 3, 64, 64)
    _same(fused, original, x, tol=1e-3)
    for m in (original, fused):
        w = {"classifier": m.classifier[1].weight, "head_conv": m.features[-1][0].weight,
             "stem_conv": m.features[0][0].weight}[layer]
        w.data.mul_(-2)
    if how == "mk_refresh":
        assert mk.refresh(fused) is fused
    else:
        fused.train()
        fused.eval()
    _same(fused, original, x, tol=1e-3, what=f"{layer} .data write + {how}")


@pytest.mark.parametrize("where", ["inner_bn", "inner_conv", "outer_child", "through_original"])
def test_layer_replaced_after_fusing(where):
    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    new_bn = randomize_bn_(nn.BatchNorm2d(96), seed=9).eval()
    if where == "inner_bn":
        for m in (original, fused):
            m.conv[1][1] = copy.deepcopy(new_bn)
    elif where == "inner_conv":
        conv = nn.Conv2d(96, 96, 3, 1, 1, groups=96, bias=True)
        for m in (original, fused):
            m.conv[1][0] = copy.deepcopy(conv)
    elif where == "outer_child":
        seq = copy.deepcopy(_block(seed=4).conv)
        original.conv = seq
        fused.conv = copy.deepcopy(seq)
    else:  # a layer replaced on the original object the fused module was built from
        seq = copy.deepcopy(_block(seed=4).conv)
        original.conv = seq
        fused._original.conv = copy.deepcopy(seq)
        assert fused.conv is fused._original.conv
    _same(fused, original, x, what=where)


def test_replaced_by_something_not_fusable_runs_the_original_and_says_so():
    original, fused = _twins()
    x = _x()
    for m in (original, fused):
        m.conv[1][2] = nn.Hardswish().eval()
    with pytest.warns(mk.FusedPathWarning, match="no longer fusable.*only ReLU6"):
        _same(fused, original, x)
    with pytest.raises(ValueError, match="no longer fusable"):
        fused.folded(torch.float32)


def test_running_statistics_removed_after_fusing():
    original, fused = _twins()
    x = _x()
    for m in (original, fused):
        m.conv[-1].running_mean = None
        m.conv[-1].running_var = None
    with pytest.warns(mk.FusedPathWarning, match="no running statistics"):
        _same(fused, original, x)


@pytest.mark.parametrize("attr", ["eps", "dw_stride"])
def test_attribute_changes_refold_or_rerecognise(attr):
    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    for m in (original, fused):
        if attr == "eps":
            m.conv[-1].eps = 0.5
            m.conv[0][1].eps = 1e-1
        else:
            m.conv[1][0].stride = (2, 2)
            m.use_res_connect = False
    _same(fused, original, x, what=attr)


def test_backend_changed_after_fusing():
    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    fused.backend = "reference"
    _same(fused, original, x)
    with pytest.raises(ValueError, match="unknown backend"):
        fused.backend = "gpu"
    assert {slot[2] for slot in fused._cache} == {"auto", "reference"}


def test_use_res_connect_written_through_the_fused_module():
    original, fused = _twins()
    x = _x()
    original.use_res_connect = False
    fused.use_res_connect = False
    assert fused._original.use_res_connect is False and "use_res_connect" not in fused.__dict__
    _same(fused, original, x)


def test_parametrized_weight_norm_is_refolded_when_fine_tuned():
    from torch.nn.utils.parametrizations import weight_norm

    original, fused = _twins()
    for m in (original, fused):
        weight_norm(m.conv[-2])          # project conv: weight = g * v / |v|
    x = _x()
    _same(fused, original, x)
    for m in (original, fused):
        opt = torch.optim.SGD(m.parameters(), lr=0.3)
        for name, p in m.named_parameters():
            p.grad = torch.full_like(p, 0.5 if "original0" in name else -0.25)
        opt.step()
    _same(fused, original, x, what="after an optimiser step on weight_norm's g and v")


def test_parametrization_registered_after_fusing():
    import torch.nn.utils.parametrize as P

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    for m in (original, fused):
        P.register_parametrization(m.conv[0][0], "weight", Double())
    _same(fused, original, x)


def test_old_style_weight_norm_hook_is_refused_and_noticed_after_fusing():
    original = _block()
    hooked = copy.deepcopy(original)
    torch.nn.utils.weight_norm(hooked.conv[-2])  # a forward pre-hook recomputes the weight
    with pytest.raises(ValueError, match="hooks"):
        mk.FusedInvertedResidual.from_module(hooked)
    fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(original)).eval()
    torch.nn.utils.weight_norm(fused.conv[-2])
    torch.nn.utils.weight_norm(original.conv[-2])
    with pytest.warns(mk.FusedPathWarning, match="hooks"):
        _same(fused, original, _x())


def test_fuse_then_change_the_whole_model():
    """fuse() on a model, then a BN's eps and a conv's weight changed through the fused model's paths."""
    model = randomize_bn_(mk.models.mobilenet_v2(num_classes=10, width_mult=0.5).eval())
    fused = mk.fuse(model)
    x = torch.randn(2, 3, 40, 40)
    for m in (model, fused):
        m.features[5].conv[1][1].eps = 0.3
        with torch.no_grad():
            m.features[5].conv[0][0].weight.mul_(0.5)
    _same(fused, model, x)


# ----------------------------------------------------------------------------------------------------------
# 3. torch.inference_mode(): built, fused or converted inside it
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["from_module", "fuse", "to_double", "load_state_dict"])
def test_built_inside_inference_mode(how):
    x = _x()
    with torch.inference_mode():
        original = _block()
        if how == "from_module":
            fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(original)).eval()
        elif how == "fuse":
            fused = mk.fuse(nn.Sequential(original))[0]
        elif how == "to_double":
            fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(original), backend="reference").eval()
            fused.to(torch.float64)
            original = copy.deepcopy(original).to(torch.float64)
            x = x.double()
        else:
            fused = mk.FusedInvertedResidual.from_module(_block(seed=3)).eval()
            fused.load_state_dict(original.state_dict())
        y = fused(x)  # first fused forward inside inference_mode
        assert_matches(y, original(x), TOL[x.dtype])
    with torch.no_grad():  # and outside it
        assert_matches(fused(x), original(x), TOL[x.dtype])


# ----------------------------------------------------------------------------------------------------------
# 4. Threads: one fused block, several threads, several dtypes; no stale or mixed weights
# ----------------------------------------------------------------------------------------------------------
def test_threads_with_different_dtypes():
    original, fused = _twins()
    dtypes = [torch.float32, torch.bfloat16] if not backend_skip_reason("cpu", "cpu") else [torch.float32]
    xs = {dt: _x(seed=3, dtype=dt) for dt in dtypes}
    with torch.no_grad():
        expected = {dt: copy.deepcopy(original).to(dt)(xs[dt]) for dt in dtypes}
    errors = []
    start = threading.Barrier(4)

    def work(i):
        try:
            start.wait()
            for k in range(30):
                dt = dtypes[(i + k) % len(dtypes)]
                if k % 10 == 0:
                    fused.__dict__["_cache"] = {}  # as a switch to eval mode does: refolds while others read
                with torch.no_grad():
                    y = fused(xs[dt])
                assert y.dtype == dt
                assert_matches(y, expected[dt], TOL[dt], f"thread {i} call {k} {dt}")
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert {slot[1] for slot in fused._cache} == set(dtypes)


def test_eval_on_an_eval_model_keeps_the_folded_weights():
    _, fused = _twins()
    with torch.no_grad():
        fused(_x())
        entries = dict(fused._cache)
        fused.eval()
        fused(_x())
    assert entries and all(fused._cache[k] is e for k, e in entries.items())


def test_weight_changes_seen_by_other_threads():
    original, fused = _twins()
    x = _x()
    with torch.no_grad():
        fused(x)
    done = []

    def edit():
        with torch.no_grad():
            fused.conv[-1].running_var.mul_(4)
            original.conv[-1].running_var.mul_(4)
        done.append(True)

    t = threading.Thread(target=edit)
    t.start()
    t.join()
    assert done
    _same(fused, original, x)


# ----------------------------------------------------------------------------------------------------------
# 5. Hooks and subclasses: not the pattern (skipped with the reason), or noticed after fusing
# ----------------------------------------------------------------------------------------------------------
class _MyReLU6(nn.ReLU6):
    def forward(self, x):
        return super().forward(x) * 0.5


class _MyConv(nn.Conv2d):
    def _conv_forward(self, x, w, b):
        return super()._conv_forward(x, w * 2, b)


class _MyIdentity(nn.Identity):
    def forward(self, x):
        return x + 1


def _double(module, args, output):
    return output * 2


def _plus_one(module, args):
    return (args[0] + 1,)


@pytest.mark.parametrize("variant", ["block_hook", "block_pre_hook", "bn_hook", "relu_pre_hook", "relu6_subclass",
                                     "conv_forward_subclass", "identity_subclass", "instance_forward"])
def test_hooks_and_subclasses_are_not_fused(variant):
    block = _block()
    if variant == "block_hook":
        block.register_forward_hook(_double)
    elif variant == "block_pre_hook":
        block.register_forward_pre_hook(_plus_one)
    elif variant == "bn_hook":
        block.conv[1][1].register_forward_hook(_double)
    elif variant == "relu_pre_hook":
        block.conv[0][2].register_forward_pre_hook(_plus_one)
    elif variant == "relu6_subclass":
        block.conv[1][2] = _MyReLU6()
    elif variant == "conv_forward_subclass":
        old = block.conv[-2]
        block.conv[-2] = _MyConv(old.in_channels, old.out_channels, 1, bias=False)
    elif variant == "identity_subclass":
        block.conv[1].insert(2, _MyIdentity())
    else:
        bn = block.conv[-1]
        bn.forward = lambda x: nn.BatchNorm2d.forward(bn, x) + 1
    with pytest.raises(ValueError, match="cannot fuse"):
        mk.FusedInvertedResidual.from_module(block)
    model = nn.Sequential(block).eval()
    if variant.startswith("block_"):
        # the hooked block stays; its inner conv chain (no hooks, no residual) is fused, and the block's own
        # forward (the shortcut) and hook still run around it
        fused, report = mk.fuse(model, return_report=True)
        assert [r.path for r in report.fused] == ["0.conv"] and type(fused[0]) is InvertedResidual, str(report)
        assert fused[0]._forward_hooks or fused[0]._forward_pre_hooks
    else:
        with pytest.warns(mk.FusedPathWarning, match="1 of 1 blocks left unfused"):
            fused, report = mk.fuse(model, return_report=True)
        assert not report.fused and len(report.skipped) == 1, str(report)
        reason = report.skipped[0].detail
        assert any(w in reason for w in ("hooks", "overrides", "ReLU6", "instance-level forward", "_MyIdentity",
                                         "call_function")), reason
    _same(fused, model, _x())


@pytest.mark.parametrize("where", ["inner_bn", "inner_relu_pre", "block_original", "global"])
def test_hooks_added_after_fusing_run_the_original(where):
    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    calls = []

    def hook(module, args, output):
        calls.append(type(module).__name__)
        return output * 2 if isinstance(module, nn.BatchNorm2d) else None

    handles = []
    if where == "inner_bn":
        handles = [m.conv[1][1].register_forward_hook(hook) for m in (original, fused)]
    elif where == "inner_relu_pre":
        handles = [m.conv[0][2].register_forward_pre_hook(_plus_one) for m in (original, fused)]
    elif where == "block_original":  # on the object the fused module was built from
        handles = [m.register_forward_hook(_double) for m in (original, fused._original)]
    else:
        handles = [nn.modules.module.register_module_forward_hook(hook)]
    try:
        with pytest.warns(mk.FusedPathWarning, match="hooks"):
            _same(fused, original, x, what=where)
        if where in ("inner_bn", "global"):
            assert calls
    finally:
        for h in handles:
            h.remove()
    _same(fused, original, x, what="after removing the hooks")


def test_hooks_on_the_fused_module_itself_are_fine():
    original, fused = _twins()
    fused.register_forward_hook(_double)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mk.FusedPathWarning)
        with torch.no_grad():
            assert_matches(fused(_x()), 2 * original(_x()), 1e-4)


# ----------------------------------------------------------------------------------------------------------
# 6. Layers in training mode (test-time adaptation): the original's forward, BN statistics updated
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["bn", "dropout"])
def test_a_layer_in_training_mode_runs_the_original(layer):
    original, fused = _twins()
    if layer == "dropout":
        for m in (original, fused):
            m.conv[1].append(nn.Dropout(0.5))
        original, fused = original.eval(), fused.eval()
        torch.manual_seed(3)
        _same(fused, original, _x())  # in eval mode Dropout is an identity: fused
    for m in (original, fused):
        (m.conv[1][1] if layer == "bn" else m.conv[1][3]).train()
    x = _x()
    with pytest.warns(mk.FusedPathWarning, match="training mode"):
        with torch.no_grad():
            torch.manual_seed(0)
            ref = original(x)
            torch.manual_seed(0)
            got = fused(x)
    assert torch.equal(got, ref)
    if layer == "bn":
        assert torch.equal(fused.conv[1][1].running_mean, original.conv[1][1].running_mean)
        assert fused.conv[1][1].num_batches_tracked.item() == 1
    for m in (original, fused):
        m.eval()
    _same(fused, original, x, what="back in eval mode")


# ----------------------------------------------------------------------------------------------------------
# 9. One hidden channel; 10. drop-in attributes and indexing
# ----------------------------------------------------------------------------------------------------------
class _Narrow(nn.Module):
    def __init__(self, c=4, hidden=1):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                                  nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU6(), nn.Conv2d(hidden, c, 1, bias=False),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


def test_one_hidden_channel_is_fused_by_fuse_and_from_module():
    model = nn.Sequential(randomize_bn_(_Narrow())).eval()
    mk.FusedInvertedResidual.from_module(model[0])
    fused, report = mk.fuse(model, return_report=True)
    assert [r.path for r in report.fused] == ["0"], str(report)
    assert isinstance(fused[0], mk.FusedInvertedResidual)
    _same(fused, model, _x(4))


def _plain_attributes(block):
    return {k: v for k, v in vars(block).items() if not k.startswith("_") and k != "training"
            and not isinstance(v, (nn.Module, torch.Tensor))}


@pytest.mark.parametrize("source", ["mnv2_kernels", "torchvision", "timm"])
def test_drop_in_attributes_and_indexing(source):
    if source == "torchvision":
        tv = pytest.importorskip("torchvision")
        model = tv.models.mobilenet_v2()
    elif source == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model("mobilenetv2_100", pretrained=False)
    else:
        model = mk.models.mobilenet_v2()
    model = randomize_bn_(model.eval())
    fused, report = mk.fuse(model, return_report=True)
    assert len(report.fused) == 17
    checked = 0
    for r in report.fused:
        a, b = model.get_submodule(r.path), fused.get_submodule(r.path)
        assert isinstance(b, mk.FusedInvertedResidual)
        for k, v in _plain_attributes(a).items():
            assert getattr(b, k) == v, (r.path, k)
            checked += 1
        assert [n for n, _ in a.named_children()] == [n for n, _ in b.named_children()]
        for name, child in a.named_modules():
            if name:
                assert type(b.get_submodule(name)) is type(child)
    assert checked >= 10, "the blocks expose no plain attributes?"
    if source != "timm":
        blk = fused.features[3]
        assert blk.use_res_connect and blk.conv[0][1] is blk._original.conv[0][1]
        assert isinstance(blk.conv[0][1], nn.BatchNorm2d) and blk.conv[1][0].groups == 144
    with pytest.raises(AttributeError):
        fused.features[3].no_such_attribute


# ----------------------------------------------------------------------------------------------------------
# Issue 12: the unfused paths say so; exports and TorchScript
# ----------------------------------------------------------------------------------------------------------
def test_eval_with_gradients_warns_once_and_backpropagates():
    original, fused = _twins()
    x = _x().requires_grad_()
    with pytest.warns(mk.FusedPathWarning, match="gradients enabled") as record:
        y = fused(x)
        fused(x)
    assert sum("gradients enabled" in str(w.message) for w in record) == 1
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fuse_warns_when_the_model_is_in_training_mode():
    with pytest.warns(mk.FusedPathWarning, match=r"training mode.*\.eval\(\)"):
        mk.fuse(mk.models.mobilenet_v2(num_classes=10, width_mult=0.35))
    with warnings.catch_warnings():
        warnings.simplefilter("error", mk.FusedPathWarning)
        mk.fuse(mk.models.mobilenet_v2(num_classes=10, width_mult=0.35).eval())


def test_torch_export_warns_with_grad_and_captures_the_op_without():
    original, fused = _twins()
    x = _x()
    with pytest.warns(mk.FusedPathWarning, match="export under torch.no_grad"):
        ep = torch.export.export(fused, (x,))
    assert "mnv2" not in str(ep.graph)
    with torch.no_grad():
        ep = torch.export.export(fused, (x,))
        assert "mnv2.inverted_residual" in str(ep.graph)
        assert_matches(ep.module()(x), original(x), 1e-4)


def test_onnx_export_runs_the_original_layers_and_says_so(tmp_path):
    pytest.importorskip("onnx")
    original, fused = _twins()
    x = _x()
    path = tmp_path / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.warns(mk.FusedPathWarning, match="export.*original model"):
            with torch.no_grad():
                torch.onnx.export(fused, (x,), str(path), dynamo=False)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_matches(torch.from_numpy(y), original(x), 1e-4)


def test_jit_trace_records_the_fused_op_with_constant_weights():
    original, fused = _twins()
    x = _x()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit.trace is deprecated upstream
        traced = torch.jit.trace(fused, x)               # check_trace=True: the graphs must agree
        kinds = [n.kind() for n in traced.graph.nodes()]
        assert "mnv2::inverted_residual" in kinds and not any("batch_norm" in k for k in kinds), kinds
        assert_matches(traced(x), original(x), 1e-4)
        assert_matches(traced(_x(seed=7)), original(_x(seed=7)), 1e-4)


def test_jit_script_is_refused_with_what_to_do():
    _, fused = _twins()
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile FusedInvertedResidual.*jit.trace"):
        torch.jit.script(fused)


# ----------------------------------------------------------------------------------------------------------
# Module- and fuse-level misuse (the op's own argument errors are tested with the op)
# ----------------------------------------------------------------------------------------------------------
def test_module_level_misuse_has_clear_errors():
    block = _block()
    with pytest.raises(ValueError, match="unknown backend"):
        mk.FusedInvertedResidual.from_module(block, backend="tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        mk.fuse(nn.Sequential(block), backend="gpu")
    fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(block)).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="expects 16 input channels, got 15"):
        fused(_x(15))
    with torch.no_grad(), pytest.raises(ValueError, match="4-D"):
        fused(_x()[0])
    with torch.no_grad(), pytest.raises((TypeError, ValueError, RuntimeError), match="float"):
        fused(_x().to(torch.int32))
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        mk.fuse(block.state_dict())
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        mk.FusedInvertedResidual.from_module("features.3")
    with pytest.raises(ValueError, match="cannot fuse Sequential"):
        mk.FusedInvertedResidual.from_module(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU6()))


def test_deepcopy_and_pickle_keep_working():
    import io
    import pickle

    original, fused = _twins()
    x = _x()
    _same(fused, original, x)
    twin = copy.deepcopy(fused)
    assert twin.conv is twin._original.conv and twin.conv is not fused.conv and not twin._cache
    _same(twin, original, x)
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    _same(loaded, original, x)
    assert pickle.loads(pickle.dumps(fused)).conv is not None


def test_models_attribute_without_importing_models_first():
    """`import mnv2_kernels as mk; mk.models.mobilenet_v2()` in a fresh interpreter (was a RecursionError)."""
    code = "import mnv2_kernels as mk; m = mk.models.mobilenet_v2(num_classes=3); print(type(m).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("MobileNetV2")


def test_non_finite_depthwise_weights_run_the_original_and_say_so():
    """A NaN/Inf depthwise weight meets the zero padding, where kernels (0 * NaN = NaN) and PyTorch's
    convolutions (ATen's CPU depthwise skips padding taps; cuDNN by algorithm) differ: the fused module runs
    the original's forward, decided once per fold, and warns; a finite refresh goes back to the fused path."""
    block = _block(16, 16, 1, 6)
    original, fused = _pair(block)
    x = _x(16, n=2, hw=7)
    dws = [next(m for m in mod.modules() if isinstance(m, nn.Conv2d) and m.groups > 1) for mod in (original, fused)]
    with torch.no_grad():
        for dw in dws:
            dw.weight[3, 0, 0, 0] = float("nan")
        ref = original(x)
        with pytest.warns(mk.FusedPathWarning, match="depthwise weights hold NaN or Inf"):
            got = fused(x)
    assert torch.equal(torch.isnan(got), torch.isnan(ref)) and not torch.isnan(ref).all()
    with torch.no_grad():
        for dw in dws:
            dw.weight[3, 0, 0, 0] = 0.25
        ref = original(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error", mk.FusedPathWarning)
            got = fused(x)
    assert_matches(got, ref, 1e-4, "after the weight became finite again")
