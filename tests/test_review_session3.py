"""Review of session 3's additions (fast path, generalised CPU kernel, embedded blocks, timm stem/head
folding): cases where a fused model gave different results from its original without saying so.

Each test holds the fused model to the original on the case that exposed the difference
(docs/CONTRACT.md, "Modules": a fused module is never silently different): 1. an infinite BatchNorm scale
folded into a conv (NaN where the original gives +-inf or a clipped 0 / 6), 2. torch.autocast (float32
where the original computes and returns bfloat16), 3. forward-mode AD under no_grad (the tangent dropped),
4. torch.jit.trace of a block with embedded zeros (no per-call NaN/Inf check in the graph: now a warning).
"""
import copy
import warnings

import pytest
import torch
from torch import nn

import mnv2_kernels as mk
from mnv2_kernels.models import InvertedResidual
from mnv2_kernels.modules import FoldedInvertedResidual
from mnv2_kernels.testing import randomize_bn_


def _same_or_both_nonfinite(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Same NaN / Inf positions, and the finite values within float32 rounding of a folded chain."""
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), (
        f"{what}: NaN at {int(torch.isnan(got).sum())} outputs fused, {int(torch.isnan(ref).sum())} in the original")
    assert torch.equal(torch.isinf(got), torch.isinf(ref)), f"{what}: Inf positions differ"
    ok = torch.isfinite(ref)
    torch.testing.assert_close(got[ok], ref[ok], rtol=1e-4, atol=1e-4, msg=what)


def _run_both(original: nn.Module, fused: nn.Module, x: torch.Tensor):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        return original(x), fused(x)


# -- 1. An infinite BatchNorm scale (gamma = inf, or running_var + eps = 0) folded into a conv ----------------
# The original computes conv (finite) -> BN (+-inf, or NaN) -> ReLU6 (0 or 6 where +-inf). Folded, the conv's weights
# carry the inf and the sum of +inf and -inf products is NaN before the activation: a NaN where the original
# gives finite numbers. Such folded weights must run the original (as a NaN/Inf folded depthwise already does).

@pytest.mark.parametrize("layer", ["expand_bn", "project_bn"])
def test_inverted_residual_with_an_infinite_bn_scale_matches_the_original(layer):
    torch.manual_seed(0)
    block = randomize_bn_(InvertedResidual(16, 16, 1, 6), seed=0).eval()
    bn = block.conv[0][1] if layer == "expand_bn" else block.conv[-1]
    with torch.no_grad():
        bn.weight[0] = float("inf")
    fused = mk.FusedInvertedResidual.from_module(copy.deepcopy(block)).eval()
    x = torch.randn(2, 16, 9, 9, generator=torch.Generator().manual_seed(1))
    ref, got = _run_both(block, fused, x)
    _same_or_both_nonfinite(got, ref, f"MobileNetV2 block, {layer}.weight[0] = inf")
    ref, got = _run_both(block, fused, x)   # and the second call (the fast path)
    _same_or_both_nonfinite(got, ref, f"MobileNetV2 block, {layer}.weight[0] = inf, 2nd call")


@pytest.mark.parametrize("kind", ["ir_project_bn", "uib_expand_bn"])
def test_generalised_block_with_an_infinite_bn_scale_matches_the_original(kind):
    pytest.importorskip("timm")
    from timm.models._efficientnet_blocks import InvertedResidual as TimmIR, UniversalInvertedResidual
    torch.manual_seed(1)
    if kind == "ir_project_bn":   # original: +-inf after the project BN; folded: inf - inf = NaN
        block = TimmIR(16, 16, dw_kernel_size=5, exp_ratio=4.0, act_layer=nn.ReLU)
        bn = block.bn3
    else:                         # MobileNetV4 UIB: the expand BN, then ReLU
        block = UniversalInvertedResidual(16, 16, dw_kernel_size_start=3, dw_kernel_size_mid=3, exp_ratio=4.0)
        bn = block.pw_exp.bn
    block = randomize_bn_(block, seed=0).eval()
    with torch.no_grad():
        bn.weight[0] = float("inf")
    fused = FoldedInvertedResidual.from_module(copy.deepcopy(block)).eval()
    x = torch.randn(2, 16, 9, 9, generator=torch.Generator().manual_seed(1))
    for call in (1, 2):
        ref, got = _run_both(block, fused, x)
        _same_or_both_nonfinite(got, ref, f"{kind}, BN weight[0] = inf, call {call}")


@pytest.mark.parametrize("how", ["gamma_inf", "zero_var_and_eps"])
def test_folded_conv_bn_act_with_an_infinite_bn_scale_matches_the_original(how):
    from torchvision.ops.misc import Conv2dNormActivation
    torch.manual_seed(0)
    layer = randomize_bn_(Conv2dNormActivation(32, 64, kernel_size=1, activation_layer=nn.ReLU6), seed=0).eval()
    with torch.no_grad():
        if how == "gamma_inf":
            layer[1].weight[0] = float("inf")
        else:
            layer[1].running_var[0] = 0.0
            layer[1].eps = 0.0
    model = nn.Sequential(copy.deepcopy(layer))
    fused = mk.fuse(model)
    assert not isinstance(fused[0], Conv2dNormActivation), "expected the conv -> BN -> ReLU6 to be folded"
    x = torch.randn(2, 32, 7, 7, generator=torch.Generator().manual_seed(1))
    for call in (1, 2):
        ref, got = _run_both(layer, fused, x)
        _same_or_both_nonfinite(got, ref, f"conv1x1 -> BN ({how}) -> ReLU6, call {call}")


def test_timm_head_with_an_infinite_bn_scale_matches_the_original():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_bn_(timm.create_model("efficientnet_b0", pretrained=False), seed=0).eval()
    with torch.no_grad():
        model.bn2.weight[0] = float("inf")   # head conv_head -> bn2 (SiLU), folded by timm_stem
    fused = mk.fuse(copy.deepcopy(model))
    assert type(fused).__name__ == "FoldedStemEfficientNet"
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        ref, got = model.forward_features(x), fused.forward_features(x)
    _same_or_both_nonfinite(got, ref, "efficientnet_b0 head, bn2.weight[0] = inf")


# -- 2. torch.autocast: the original's convolutions and linear layers run in bfloat16 ------------------------
# The fused CPU ops have no autocast rule and the per-call fast path and CPULinear call the kernels without
# the dispatcher, so under autocast the fused model ran in float32 and returned float32 where the original
# returns bfloat16 (a different dtype and different numbers, silently). Under autocast the fused modules run
# the original's forward.

def _autocast_pair(prepare=True):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomize_bn_(torchvision.models.mobilenet_v2(num_classes=10), seed=0).eval()
    fused = mk.fuse(copy.deepcopy(model), prepare=prepare)  # (prepare=False: no fast-path record yet)
    return model, fused


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "after_fused_calls"])
def test_autocast_gives_the_originals_dtype_and_numbers(warm):
    model, fused = _autocast_pair(prepare=warm)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        if warm:   # the fast path has a record of the last fused (float32) call
            fused(x), fused(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = model(x)
            got = fused(x)
            layers = [(model.features[0], fused.features[0], x), (model.features[5], fused.features[5], None),
                      (model.classifier, fused.classifier, torch.randn(2, 1280))]
            h = model.features[:5](x)
            per_layer = [(a(i if i is not None else h), b(i if i is not None else h)) for a, b, i in layers]
    assert got.dtype == ref.dtype == torch.bfloat16, (got.dtype, ref.dtype)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for (a, b), name in zip(per_layer, ["stem", "block 5", "classifier"]):
        assert a.dtype == b.dtype, f"{name}: {b.dtype} fused, {a.dtype} original"
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


# -- 3. Forward-mode AD (torch.autograd.forward_ad) under torch.no_grad() ------------------------------------
# no_grad does not stop forward-mode AD: the original propagates a dual input's tangent, while the fused ops
# have no forward-AD formula and returned the primal with the tangent silently dropped (None). While a dual
# level is active the fused modules run the original's forward.

@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "after_fused_calls"])
def test_forward_ad_tangent_under_no_grad_is_the_originals(warm):
    import torch.autograd.forward_ad as fwAD
    model, fused = _autocast_pair(prepare=warm)   # torchvision MobileNetV2: blocks, folded stem / head, CPULinear
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    outs = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", mk.FusedPathWarning)
        if warm:
            fused(x), fused(x)
        for m in (model, fused):
            with fwAD.dual_level():
                p, tan = fwAD.unpack_dual(m(fwAD.make_dual(x, t)))
                outs.append((p.clone(), None if tan is None else tan.clone()))
    (p_ref, t_ref), (p_got, t_got) = outs
    assert t_ref is not None, "the original propagates the tangent under no_grad"
    assert t_got is not None, "the fused model dropped the tangent of a dual input"
    torch.testing.assert_close(p_got, p_ref, rtol=0, atol=0)
    torch.testing.assert_close(t_got, t_ref, rtol=0, atol=0)


# -- 4. torch.jit.trace of a block with embedded zeros (MixConv / block-diagonal 1x1 / summed branches) ------
# The per-call NaN/Inf check (run the original when the input or output is not finite) is Python control flow:
# a trace records the branch taken on the example input, so the traced graph spreads an Inf as the embedded
# kernel does (NaN far from it, where the original gives finite values). Tracing such a block says so.

def test_tracing_an_embedded_block_warns_that_the_graph_has_no_non_finite_check():
    pytest.importorskip("timm")
    from timm.models._efficientnet_blocks import InvertedResidual as TimmIR
    torch.manual_seed(0)
    block = randomize_bn_(TimmIR(12, 12, dw_kernel_size=[3, 5, 7, 9], exp_kernel_size=[1, 1], exp_ratio=4.0),
                          seed=0).eval()
    fused = FoldedInvertedResidual.from_module(copy.deepcopy(block)).eval()
    assert fused.plan.embedded
    x = torch.randn(1, 12, 14, 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(fused, x, check_trace=False)
    assert any(issubclass(w.category, mk.FusedPathWarning) and "NaN" in str(w.message) and "trace" in str(w.message)
               for w in caught), [str(w.message)[:120] for w in caught]
    x[0, 0, 7, 7] = float("inf")
    with torch.no_grad():   # what the warning is about (documented in docs/CONTRACT.md)
        assert traced(x).isnan().sum() > block(x).isnan().sum()
