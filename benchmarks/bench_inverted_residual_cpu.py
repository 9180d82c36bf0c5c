"""CPU benchmark of one MobileNetV2 inverted-residual block, side by side (pytest-benchmark).

Block: 24 -> 144 -> 24 channels (t = 6), stride 1, residual, 56x56, batch 32, float32, channels_last, eval.
Variants (same group, so pytest-benchmark prints them together; compare ratios, not absolute times, on a
shared machine):
  fused           torch.ops.mnv2.inverted_residual (the C++ kernel) on BN-folded weights
  eager_cl        the original block as nn modules (conv + BN + ReLU6), eval, channels_last
  eager_folded    F.conv2d with BN-folded weights (channels_last), ReLU6 in place
  compile_freeze  torch.compile of the original block with torch._inductor.config.freezing = True

Run:  pytest benchmarks/bench_inverted_residual_cpu.py --benchmark-columns=min,median,mean,rounds
(about a minute, most of it torch.compile).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import mnv2_kernels  # noqa: F401  (defines the schema and loads the C++ kernel)
    from mnv2_kernels import _ext
    _HAVE_CPU_EXT = _ext.CPU_EXT is not None
    _WHY = _ext.CPU_EXT_ERROR
except Exception as exc:  # the package may be mid-edit; the baselines still run
    _HAVE_CPU_EXT, _WHY = False, f"{type(exc).__name__}: {exc}"

N, CIN, T, COUT, H, W, STRIDE = 32, 24, 6, 24, 56, 56, 1
CHID = CIN * T
RESIDUAL = STRIDE == 1 and CIN == COUT
GROUP = f"inverted_residual {CIN}->{CHID}->{COUT} s{STRIDE} {H}x{W} batch {N} fp32 channels_last"


class Block(nn.Module):
    """The original eval-mode block: conv1x1+BN+ReLU6, dw3x3+BN+ReLU6, conv1x1+BN (+ x)."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(CIN, CHID, 1, bias=False), nn.BatchNorm2d(CHID), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(CHID, CHID, 3, STRIDE, 1, groups=CHID, bias=False), nn.BatchNorm2d(CHID),
                                nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(CHID, COUT, 1, bias=False), nn.BatchNorm2d(COUT))

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if RESIDUAL else y


def _randomize_bn(bn, g):
    with torch.no_grad():
        c = bn.num_features
        bn.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)


def _fold(conv, bn):
    """(w', b') in float64, then float32: w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var + eps)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * s.view(-1, *([1] * (conv.weight.dim() - 1)))
    b = bn.bias.double() - bn.running_mean.double() * s
    return w.float(), b.float()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    block = Block().eval()
    for bn in (block.expand[1], block.dw[1], block.project[1]):
        _randomize_bn(bn, g)
    block = block.to(memory_format=torch.channels_last)
    x = torch.randn(N, CIN, H, W).contiguous(memory_format=torch.channels_last)
    we, be = _fold(block.expand[0], block.expand[1])   # [CHID, CIN, 1, 1], [CHID]
    wd, bd = _fold(block.dw[0], block.dw[1])           # [CHID, 1, 3, 3], [CHID]
    wp, bp = _fold(block.project[0], block.project[1])  # [COUT, CHID, 1, 1], [COUT]
    conv_w = [w.contiguous(memory_format=torch.channels_last) for w in (we, wd, wp)]
    op_args = (we.flatten(1).contiguous(), be, wd.view(CHID, 3, 3).contiguous(), bd, wp.flatten(1).contiguous(), bp)
    with torch.no_grad():
        ref = block(x)
    return dict(block=block, x=x, conv_w=conv_w, biases=(be, bd, bp), op_args=op_args, ref=ref)


def _eager_folded(x, conv_w, biases):
    (we, wd, wp), (be, bd, bp) = conv_w, biases
    h = F.conv2d(x, we, be).clamp_(0.0, 6.0)
    h = F.conv2d(h, wd, bd, stride=STRIDE, padding=1, groups=CHID).clamp_(0.0, 6.0)
    y = F.conv2d(h, wp, bp)
    return y.add_(x) if RESIDUAL else y


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.skipif(not _HAVE_CPU_EXT, reason=f"CPU extension not available: {_WHY}")
def test_fused(benchmark, setup):
    x, args = setup["x"], setup["op_args"]
    out = torch.ops.mnv2.inverted_residual(x, *args, STRIDE, RESIDUAL)
    torch.testing.assert_close(out, setup["ref"], atol=1e-3, rtol=1e-3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        benchmark.pedantic(torch.ops.mnv2.inverted_residual, args=(x, *args, STRIDE, RESIDUAL), rounds=10,
                           warmup_rounds=1)
    benchmark.extra_info["cpu_isa"] = torch.ops.mnv2.cpu_isa()  # the kernel variant chosen at run time
    print(f"\nmnv2 CPU kernel ISA: {benchmark.extra_info['cpu_isa']}")


@pytest.mark.benchmark(group=GROUP)
def test_eager_cl(benchmark, setup):
    block, x = setup["block"], setup["x"]
    with torch.no_grad():
        benchmark.pedantic(block, args=(x,), rounds=4, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_eager_folded(benchmark, setup):
    x = setup["x"]
    with torch.no_grad():
        torch.testing.assert_close(_eager_folded(x, setup["conv_w"], setup["biases"]), setup["ref"], atol=1e-3,
                                   rtol=1e-3)
        benchmark.pedantic(_eager_folded, args=(x, setup["conv_w"], setup["biases"]), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_compile_freeze(benchmark, setup):
    import torch._inductor.config as inductor_config

    block, x = setup["block"], setup["x"]
    torch._dynamo.reset()
    with inductor_config.patch(freezing=True), torch.no_grad():
        compiled = torch.compile(block)
        torch.testing.assert_close(compiled(x), setup["ref"], atol=1e-3, rtol=1e-3)  # compiles
        benchmark.pedantic(compiled, args=(x,), rounds=5, warmup_rounds=1)
