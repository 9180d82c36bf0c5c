"""CPU benchmark of the generalised blocks (issue 13) beside the MobileNetV2 ones (pytest-benchmark).

One representative block of each new kind, float32, channels_last, eval, randomised BN statistics, batch
``MNV2_BENCH_BATCH`` (default 1), as timm / torchvision write them (conv -> BN -> act modules, an SE module):

  mnv3_hs_se_k5        MobileNetV3-Large 7x7 stage: 160 -> 960 -> 160, 5x5, hardswish, SE (relu, hardsigmoid), residual
  mnv3_relu_se_k5      MobileNetV3-Large 28x28 stage: 40 -> 120 -> 40, 5x5, ReLU, SE (relu, hardsigmoid), residual
  effnet_b0_silu_se_k3 EfficientNet-B0 56x56 stage: 24 -> 144 -> 24, 3x3, SiLU, SE (silu, sigmoid, rd 6), residual
  effnet_b0_silu_se_k5 EfficientNet-B0 28x28 stage: 40 -> 240 -> 40, 5x5, SiLU, SE (silu, sigmoid, rd 10), residual
  mnasnet_relu_k5      MNASNet 28x28 stage: 40 -> 120 -> 40, 5x5, ReLU, residual
  mnv4_uib_extradw     MobileNetV4 UIB ExtraDW 14x14: 96 -(dw 3x3)-> 384 -(dw 5x5)-> 96, ReLU, residual
  tf_same_s2_se        tf_efficientnet_b0 stride-2 block: 112x112 16 -> 96 -> 24, 3x3 s2 TF 'same', SiLU, SE (two passes)

Variants of one block share a pytest-benchmark group:

  fused            FoldedInvertedResidual.from_module(block, backend="cpu") (csrc/cpu/kernel_ex_impl.h)
  eager_cl         the original block (conv + BN + activation modules), channels_last
  eager_folded_cl  the block with each BN folded into its conv, in place (timm's Conv2dSame kept)

    .venv/bin/python -m pytest benchmarks/bench_inverted_residual_ex_cpu.py

``python benchmarks/bench_inverted_residual_ex_cpu.py [--reps 30]`` instead times the three variants interleaved
(one call of each in turn, median per variant) and prints the ratios eager / fused (the numbers in
docs/cpu_runtime.md, "Generalised blocks (issue 13)"): on a shared, noisy machine interleaving keeps the
comparison fair.
"""
import copy
import os
import statistics
import sys
import time

import pytest
import torch
from torch import nn

from mnv2_kernels.modules import FoldedInvertedResidual
from mnv2_kernels.testing import randomize_bn_

try:
    from mnv2_kernels import cpu_ex
    _WHY = cpu_ex.kernel_unavailable_reason()
except Exception as exc:  # pragma: no cover - the package may be mid-edit; the baselines still run
    _WHY = f"{type(exc).__name__}: {exc}"

BATCH = int(os.environ.get("MNV2_BENCH_BATCH", "1"))
ACTS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU, "relu6": nn.ReLU6}


class SE(nn.Module):
    """timm's SqueezeExcite: x * gate(conv_expand(act(conv_reduce(mean_hw(x)))))."""

    def __init__(self, c, rd, act, gate):
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, rd, 1)
        self.act1 = ACTS[act]()
        self.conv_expand = nn.Conv2d(rd, c, 1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class Block(nn.Module):
    """An inverted residual as timm writes it: [dw0 -> BN] -> pw -> BN -> act -> dw -> BN -> act -> [SE] -> pwl -> BN [+ x]."""

    def __init__(self, cin, chid, cout, k=3, stride=1, act="relu", se=None, residual=False, k0=0, tf_same=False):
        super().__init__()
        if tf_same:
            from timm.layers import Conv2dSame
            conv = lambda ci, co, kk, s: Conv2dSame(ci, co, kk, s, groups=ci, bias=False)  # noqa: E731
        else:
            conv = lambda ci, co, kk, s: nn.Conv2d(ci, co, kk, s, kk // 2, groups=ci, bias=False)  # noqa: E731
        self.dw0 = nn.Sequential(conv(cin, cin, k0, 1), nn.BatchNorm2d(cin)) if k0 else nn.Identity()
        self.pw = nn.Sequential(nn.Conv2d(cin, chid, 1, bias=False), nn.BatchNorm2d(chid), ACTS[act]())
        self.dw = nn.Sequential(conv(chid, chid, k, stride), nn.BatchNorm2d(chid), ACTS[act]())
        self.se = SE(chid, se[0], se[1], se[2]) if se else nn.Identity()
        self.pwl = nn.Sequential(nn.Conv2d(chid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x):
        y = self.pwl(self.se(self.dw(self.pw(self.dw0(x)))))
        return y + x if self.residual else y


# name: (cin, chid, cout, H, Block kwargs)
BLOCKS = {
    "mnv3_hs_se_k5": (160, 960, 160, 7, dict(k=5, act="hardswish", se=(240, "relu", "hardsigmoid"), residual=True)),
    "mnv3_relu_se_k5": (40, 120, 40, 28, dict(k=5, act="relu", se=(32, "relu", "hardsigmoid"), residual=True)),
    "effnet_b0_silu_se_k3": (24, 144, 24, 56, dict(k=3, act="silu", se=(6, "silu", "sigmoid"), residual=True)),
    "effnet_b0_silu_se_k5": (40, 240, 40, 28, dict(k=5, act="silu", se=(10, "silu", "sigmoid"), residual=True)),
    "mnasnet_relu_k5": (40, 120, 40, 28, dict(k=5, act="relu", residual=True)),
    "mnv4_uib_extradw": (96, 384, 96, 14, dict(k0=3, k=5, act="relu", residual=True)),
    "tf_same_s2_se": (16, 96, 24, 112, dict(k=3, stride=2, act="silu", se=(4, "silu", "sigmoid"), tf_same=True)),
}
VARIANTS = ("eager_cl", "eager_folded_cl", "fused")


def make(name, batch=BATCH):
    """The block (eval, randomised BN, channels_last) and an input; raises ImportError without timm (tf_same)."""
    cin, chid, cout, h, kw = BLOCKS[name]
    torch.manual_seed(0)
    block = randomize_bn_(Block(cin, chid, cout, **kw), seed=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, h, h).contiguous(memory_format=torch.channels_last)
    return block, x


def fold_bn_(block):
    """Each Sequential's conv -> BN pair folded into the conv (weights and a bias), the BN replaced by Identity."""
    for seq in block.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(1, len(seq)):
            conv, bn = seq[i - 1], seq[i]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                with torch.no_grad():
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
                seq[i] = nn.Identity()
    return block


def variant(block, name):
    if name == "eager_cl":
        return block
    if name == "eager_folded_cl":
        return fold_bn_(copy.deepcopy(block))
    fused = FoldedInvertedResidual.from_module(copy.deepcopy(block), backend="cpu")
    return fused


@pytest.mark.parametrize("var", VARIANTS)
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_ex_cpu(benchmark, name, var):
    if var == "fused" and _WHY is not None:
        pytest.skip(f"fused CPU kernel not available: {_WHY}")
    if BLOCKS[name][4].get("tf_same"):
        pytest.importorskip("timm")
    block, x = make(name)
    cin, chid, cout, h, kw = BLOCKS[name]
    benchmark.group = f"block {name}: {cin}->{chid}->{cout} {h}x{h} batch {BATCH} fp32 channels_last"
    benchmark.extra_info.update(block=name, variant=var, batch=BATCH)
    fn = variant(block, var)
    with torch.inference_mode():
        ref = block(x)
        torch.testing.assert_close(fn(x), ref, rtol=1e-4, atol=1e-4)
        benchmark(fn, x)


def interleaved(reps=30, names=None, batch=BATCH):
    """Median seconds per call of each variant, timed one call of each in turn; prints the ratios."""
    rows = []
    for name in names or BLOCKS:
        try:
            block, x = make(name, batch)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        fns = {v: variant(block, v) for v in VARIANTS}
        times = {v: [] for v in VARIANTS}
        with torch.inference_mode():
            ref = block(x)
            for v, fn in fns.items():
                torch.testing.assert_close(fn(x), ref, rtol=1e-4, atol=1e-4)
                fn(x)
            for _ in range(reps):
                for v, fn in fns.items():
                    t = time.perf_counter()
                    fn(x)
                    times[v].append(time.perf_counter() - t)
        med = {v: statistics.median(t) for v, t in times.items()}
        rows.append((name, med))
        print(f"{name:22s} fused {med['fused'] * 1e3:8.3f} ms  eager {med['eager_cl'] * 1e3:8.3f} ms  "
              f"folded {med['eager_folded_cl'] * 1e3:8.3f} ms  eager/fused {med['eager_cl'] / med['fused']:5.2f}x  "
              f"folded/fused {med['eager_folded_cl'] / med['fused']:5.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave it)")
    p.add_argument("names", nargs="*", help=f"blocks (default all): {', '.join(BLOCKS)}")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"batch {a.batch}, {torch.get_num_threads()} threads, {a.reps} interleaved reps, medians", file=sys.stderr)
    interleaved(a.reps, a.names or None, a.batch)
