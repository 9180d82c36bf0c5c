"""The stem convolution fused into the first block (issue 14): torch.ops.mnv2.stem_inverted_residual
(csrc/cpu/kernel_impl.h, run_stem) and the pooled-head MobileNetV2 classes that call it
(mnv2_kernels/stem_head.py, _stem_block_fast).

The op computes the stem's rows into the block's ring with the same code as conv3x3_bias_act and then the same
block kernel as inverted_residual, so it must equal the two ops run one after the other bit for bit; against
the float64 ATen reference it is within the CPU kernel's float32 tolerance (tests/test_inverted_residual_cpu.py).
"""
import pytest
import torch

import mnv2_kernels  # noqa: F401  (registers the ops)
from mnv2_kernels import _ext, stem_head  # noqa: F401  (stem_head registers the stem / head ops' fakes)
from mnv2_kernels.reference import stem_inverted_residual_reference
from mnv2_kernels.testing import mobilenet_v2_models, to_float64

pytestmark = pytest.mark.skipif(_ext.CPU_EXT is None, reason=f"CPU extension not built: {_ext.CPU_EXT_ERROR}")

from test_inverted_residual_cpu import (_available_isas, check_close, expected_channels_last,  # noqa: E402,F401
                                        restore_isa)

op = torch.ops.mnv2.stem_inverted_residual


def make_args(n, cin, c1, h, w, stem_stride, cout, stride, residual, seed=0):
    """x, then the stem's and the block's folded weights at realistic scales (both ReLU6 clips are hit)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g) * 1.5
    w_s = torch.randn(c1, cin, 3, 3, generator=g) * (2.0 / (9 * cin) ** 0.5)
    b_s = torch.randn(c1, generator=g) + 0.5
    w_dw = torch.randn(c1, 3, 3, generator=g) * 0.5
    b_dw = torch.randn(c1, generator=g) + 0.5
    w_p = torch.randn(cout, c1, generator=g) / c1 ** 0.5
    b_p = torch.randn(cout, generator=g) * 0.1
    return [x, w_s, b_s, stem_stride, True, w_dw, b_dw, w_p, b_p, stride, residual]


def two_ops(x, w_s, b_s, s_s, relu6, w_dw, b_dw, w_p, b_p, stride, residual):
    h = torch.ops.mnv2.conv3x3_bias_act(x, w_s, b_s, s_s, relu6)
    return torch.ops.mnv2.inverted_residual(h, None, None, w_dw, b_dw, w_p, b_p, stride, residual)


CONFIGS = [  # n, cin, c1, h, w, stem stride, cout, stride, residual
    (1, 3, 32, 224, 224, 2, 16, 1, False),   # MobileNetV2's stem + block 1
    (3, 3, 32, 37, 29, 2, 16, 1, False),     # odd sizes, 3 images on 2 threads (bands)
    (2, 3, 24, 33, 31, 2, 40, 2, False),     # stride-2 block
    (2, 4, 16, 20, 18, 1, 16, 1, True),      # stride-1 stem, residual read from the ring
    (1, 5, 17, 3, 2, 2, 9, 1, False),        # tiny image, channels that fill no vector
    (2, 3, 16, 1, 1, 2, 16, 1, True),        # 1x1 image
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "n{}_cin{}_c{}_{}x{}_s{}_cout{}_s{}_res{}".format(*c))
def test_matches_reference_and_the_two_ops_bit_for_bit(cfg, restore_isa):
    args = make_args(*cfg)
    for isa in _available_isas():
        _ext.CPU_EXT.set_cpu_isa(isa)
        for relu6 in (True, False):
            args[4] = relu6
            ref = stem_inverted_residual_reference(*to_float64(args))
            y = op(*args)
            assert y.is_contiguous() and y.shape == ref.shape
            check_close(y, ref, torch.float32)
            assert torch.equal(y, two_ops(*args)), f"{isa}: differs from conv3x3_bias_act + inverted_residual"
            xcl = args[0].contiguous(memory_format=torch.channels_last)
            ycl = op(xcl, *args[1:])
            assert expected_channels_last(ycl) or ycl.shape[2] * ycl.shape[3] == 1
            assert torch.equal(ycl, y)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_result(threads):
    args = make_args(5, 3, 32, 30, 26, 2, 16, 1, False, seed=3)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = op(*args)
        torch.set_num_threads(threads)
        assert torch.equal(op(*args), y1)
    finally:
        torch.set_num_threads(old)


def test_nan_and_inf_as_the_two_ops():
    """NaN/Inf in the image propagate as through the two layers; a non-finite stem weight lets ATen compute
    the stem (as conv3x3_bias_act does) and a non-finite depthwise weight is the block's own case."""
    args = make_args(2, 3, 32, 16, 14, 2, 16, 1, False, seed=4)
    args[0][0, 1, 3, 4] = float("nan")
    args[0][1, 2, 0, 0] = float("inf")
    y, ref = op(*args), two_ops(*args)
    assert torch.isnan(y).any() and torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))
    for which, idx in ((1, (2, 0, 0, 0)), (5, (3, 1, 1))):
        a = [t.clone() if isinstance(t, torch.Tensor) else t for t in args]
        a[which][idx] = float("inf")
        y = op(*a)
        ref = stem_inverted_residual_reference(*a)
        assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
        fin = torch.isfinite(ref)
        torch.testing.assert_close(y[fin], ref[fin], atol=1e-3 * ref[fin].abs().max().item(), rtol=1e-3)


def test_errors_name_the_argument():
    x, w_s, b_s, s_s, r, w_dw, b_dw, w_p, b_p, s, res = make_args(1, 3, 32, 8, 8, 2, 16, 1, False)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2, got 3"):
        op(x, w_s, b_s, 3, r, w_dw, b_dw, w_p, b_p, s, res)
    with pytest.raises(ValueError, match=r"w_stem must be \[Cout, 3, 3, 3\]"):
        op(x, w_s[:, :2], b_s, s_s, r, w_dw, b_dw, w_p, b_p, s, res)
    with pytest.raises(ValueError, match=r"w_dw must be \[32, 3, 3\] \(one depthwise filter per stem output channel"):
        op(x, w_s, b_s, s_s, r, w_dw[:16], b_dw[:16], w_p[:, :16], b_p, s, res)
    with pytest.raises(TypeError, match="x must be torch.float32, got torch.float64"):
        op(x.double(), w_s, b_s, s_s, r, w_dw, b_dw, w_p, b_p, s, res)
    with pytest.raises(ValueError, match="residual"):
        op(x, w_s, b_s, s_s, r, w_dw, b_dw, w_p, b_p, s, True)  # 32 -> 16 channels: no shortcut possible


def test_opcheck():
    torch.library.opcheck(op.default, make_args(2, 3, 16, 9, 7, 2, 8, 1, False),
                          test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------------------------------
# The model: the pooled-head MobileNetV2 classes run the stem + block 1 as this op once both layers ran fused.
# ------------------------------------------------------------------------------------------------------------
def _models():
    return mobilenet_v2_models()


@pytest.fixture
def count_stem_op(monkeypatch):
    from mnv2_kernels import stem_head
    calls = []
    real = stem_head._STEM_BLOCK_RUN

    def counted(*a):
        calls.append(a[0].shape)
        return real(*a)
    monkeypatch.setattr(stem_head, "_STEM_BLOCK_RUN", counted)
    return calls


@pytest.mark.parametrize("which", [m[0] for m in _models()])
def test_fused_model_runs_stem_and_block_as_one_op(which, count_stem_op, monkeypatch):
    from mnv2_kernels import fuse, stem_head
    torch.manual_seed(0)
    m0 = dict(_models())[which]().eval()
    m = fuse(m0, prepare=False)  # (prepared, the first call already takes the op: tests/test_prepare.py)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = m0(x)
    with torch.no_grad():  # (inference tensors keep the full per-call checks: no fast path, no stem op)
        y1 = m(x)          # first call: each layer decides on its own (and records its decisions)
        assert count_stem_op == []
        y2 = m(x)
        assert len(count_stem_op) == 1
        monkeypatch.setattr(stem_head, "STEM_INTO_BLOCK", False)
        y3 = m(x)
        assert len(count_stem_op) == 1
    assert torch.equal(y1, y2) and torch.equal(y2, y3)
    torch.testing.assert_close(y2, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)


def test_fused_model_steps_aside_for_hooks_and_weight_changes(count_stem_op):
    """A hook on the stem or on block 1 runs the layers one by one (the hook sees the stem's output); an
    in-place change of the stem's weights is seen at the next call (the op is called with the new folding)."""
    from mnv2_kernels import fuse
    from mnv2_kernels.models import mobilenet_v2
    from mnv2_kernels.testing import randomize_bn_
    torch.manual_seed(1)
    m0 = randomize_bn_(mobilenet_v2()).eval()
    m = fuse(m0, prepare=False)  # (counts below assume an unprepared first call)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        m(x)
        m(x)
        assert len(count_stem_op) == 1
        for layer in (m.features[0], m.features[1], m.features[1].conv):
            seen = []
            h = layer.register_forward_hook(lambda mod, a, out: seen.append(out.shape))
            try:
                m(x)
                m(x)
            finally:
                h.remove()
            assert len(seen) == 2 and len(count_stem_op) == 1
        # a recorded in-place change (version counter) of the stem's weight: refolded at the next call, and
        # from the call after that the op runs again, with the new folding
        m.features[0][0].weight.mul_(1.5)
        m0.features[0][0].weight.mul_(1.5)
        ref = m0(x)
        y = m(x)
        assert len(count_stem_op) == 1
        torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        y = m(x)
        assert len(count_stem_op) == 2
        torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        m.train()  # training mode: the layers' own forwards (batch statistics), never the op
        m(x)
        assert len(count_stem_op) == 2


# ------------------------------------------------------------------------------------------------------------
# The recorded chain (stem_head._chain_run): after a forward in which every layer took its fast path, the next
# forwards check all the records at once and run the recorded kernel calls back to back.
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def chain_uses(monkeypatch):
    from mnv2_kernels import stem_head
    uses = []
    real = stem_head._chain_run

    def recorded(*a):
        y = real(*a)
        uses.append(y is not None)
        return y
    monkeypatch.setattr(stem_head, "_chain_run", recorded)
    return uses


def _chain_model(seed=3):
    from mnv2_kernels import fuse
    from mnv2_kernels.models import mobilenet_v2
    from mnv2_kernels.testing import randomize_bn_
    torch.manual_seed(seed)
    m0 = randomize_bn_(mobilenet_v2()).eval()
    return m0, fuse(m0)


def test_chain_runs_the_same_calls_bit_for_bit(chain_uses, monkeypatch):
    from mnv2_kernels import stem_head
    m0, m = _chain_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y1 = m(x)  # prepared by fuse(): every layer takes its fast path, and the chain is recorded
        y2 = m(x)
        monkeypatch.setattr(stem_head, "CHAIN", False)
        y3 = m(x)
        ref = m0(x)
    assert chain_uses == [False, True, False]
    assert torch.equal(y1, y2) and torch.equal(y2, y3)
    torch.testing.assert_close(y2, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)


def test_chain_steps_aside_for_hooks_changes_and_replaced_layers(chain_uses):
    """Anything a layer's own call would notice stops the chain: a hook on a middle block (it fires), a recorded
    in-place weight change there (refolded: the output follows it), a replaced layer, training mode."""
    import copy
    m0, m = _chain_model(4)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        m(x)
        m(x)
        assert chain_uses == [False, True]
        seen = []
        h = m.features[6].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
        m(x)
        h.remove()
        assert chain_uses[-1] is False and len(seen) == 1
        m(x)
        m(x)
        assert chain_uses[-1] is True
        for mm in (m, m0):
            mm.features[12].conv[0][0].weight.mul_(0.5)
        y = m(x)
        assert chain_uses[-1] is False
        ref = m0(x)
        torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        assert torch.equal(m(x), y) and chain_uses[-1] is True  # re-recorded with the new folding
        m.features[9] = copy.deepcopy(m.features[9])
        y = m(x)
        assert chain_uses[-1] is False
        torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        m(x)
        assert chain_uses[-1] is True
        # a hook on a layer inside a fused block: that block runs its original (so the hook fires), every call
        inner_seen = []
        h = m.features[8].conv[0][0].register_forward_hook(lambda mod, a, out: inner_seen.append(out.shape))
        from mnv2_kernels.modules import FusedPathWarning
        with pytest.warns(FusedPathWarning, match="forward hooks"):
            for _ in range(2):
                y = m(x)
                assert chain_uses[-1] is False
                torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        h.remove()
        assert len(inner_seen) == 2
        m.train()
        m(x)
        assert chain_uses[-1] is not True


def test_chain_after_refresh_and_non_finite_weights_matches_the_original(chain_uses):
    """Edits the chain must not hide: a .data write (not recorded) followed by mnv2_kernels.refresh(model), as
    docs/CONTRACT.md says to do, and a recorded write of an Inf weight into a middle block (that block then
    runs its original, so Inf/NaN come out where the original gives them)."""
    import mnv2_kernels
    m0, m = _chain_model(5)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        m(x)
        m(x)
        assert chain_uses[-1] is True
        for mm in (m, m0):
            mm.features[10].conv[2].weight.data.mul_(-2.0)   # through .data: no version bump
        mnv2_kernels.refresh(m)
        ref = m0(x)
        y = m(x)
        assert chain_uses[-1] is False
        torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        for _ in range(2):  # refresh() reset the stem too: its record, then the stem op, then the chain return
            y = m(x)
            torch.testing.assert_close(y, ref, atol=1e-3 * ref.abs().max().item(), rtol=1e-3)
        assert chain_uses[-1] is True
        for mm in (m, m0):
            mm.features[15].conv[1][0].weight[3, 0, 1, 1] = float("inf")   # recorded (version bump)
        ref = m0(x)
        from mnv2_kernels.modules import FusedPathWarning
        for i in range(2):
            if i == 0:
                with pytest.warns(FusedPathWarning, match="NaN or Inf"):
                    y = m(x)
            else:
                y = m(x)
            assert chain_uses[-1] is False
            assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
            fin = torch.isfinite(ref)
            if fin.any():
                torch.testing.assert_close(y[fin], ref[fin], atol=1e-3 * ref[fin].abs().max().item(), rtol=1e-3)
