"""CPU benchmark of every MobileNetV2 inverted-residual block shape, side by side (pytest-benchmark).

The 12 distinct block shapes of MobileNetV2 at 224x224 (``mnv2_kernels.models.mobilenet_v2_blocks()``,
derived from the model), float32, channels_last, eval, real-like BN statistics, batch ``MNV2_BENCH_BATCH``
(default 8). Variants of one block share a pytest-benchmark group, so they print together:

  fused             FusedInvertedResidual.from_module(block) under inference_mode (the CPU kernel)
  eager_cl          the original block (conv + BN + ReLU6 modules), channels_last
  eager_folded_cl   the block with BN folded into the convs (mnv2_kernels.demo.variants.fold_all_bn)
  compile_freezing  torch.compile with inductor freezing (skip with MNV2_BENCH_COMPILE=0: ~20 s a block)

Each benchmark records block, variant, batch, flops, bytes (the fused floor) and the machine's measured
peaks in extra_info; the summary after the tables prints img/s, GFLOP/s and % of the roofline floor, and

    .venv/bin/python -m pytest benchmarks/bench_inverted_residual_cpu.py --benchmark-json=bench_cpu.json
    .venv/bin/python tools/plot_benchmarks.py bench_cpu.json --out docs/figures/cpu_blocks.png --markdown

draws the results figure. Compare ratios within one run: the machine is shared and noisy.
"""
import copy
import os

import pytest
import torch

from mnv2_kernels import FusedInvertedResidual
from mnv2_kernels.demo.variants import compile_frozen, fold_all_bn
from mnv2_kernels.models import mobilenet_v2_blocks
from mnv2_kernels.models.mobilenet_v2 import InvertedResidual
from mnv2_kernels.testing import randomize_bn_

try:
    from mnv2_kernels import _ext
    _HAVE_CPU_EXT, _WHY = _ext.CPU_EXT is not None, _ext.CPU_EXT_ERROR
except Exception as exc:  # pragma: no cover - the package may be mid-edit; the baselines still run
    _HAVE_CPU_EXT, _WHY = False, f"{type(exc).__name__}: {exc}"

BATCH = int(os.environ.get("MNV2_BENCH_BATCH", "8"))
COMPILE = os.environ.get("MNV2_BENCH_COMPILE", "1") != "0"
BLOCKS = {b.name: b for b in mobilenet_v2_blocks()}
VARIANTS = ("eager_cl", "eager_folded_cl", "compile_freezing", "fused")
_CACHE: dict = {}


def _setup(name):
    """The block (channels_last, eval, randomised BN), its input and the eager reference output."""
    if name not in _CACHE:
        b = BLOCKS[name]
        torch.manual_seed(0)
        block = randomize_bn_(InvertedResidual(b.cin, b.cout, b.stride, b.chid // b.cin), seed=1).eval()
        block = block.to(memory_format=torch.channels_last)
        x = torch.randn(BATCH, b.cin, b.h, b.h).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = block(x)
        _CACHE.clear()   # one block's compiled variants at a time
        _CACHE[name] = dict(block=block, x=x, ref=ref)
    return _CACHE[name]


def _variant(block, variant):
    if variant == "eager_cl":
        return block
    if variant == "eager_folded_cl":
        return fold_all_bn(block)
    if variant == "compile_freezing":
        torch._dynamo.reset()
        return compile_frozen(copy.deepcopy(block))
    return FusedInvertedResidual.from_module(copy.deepcopy(block), backend="cpu")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_cpu(benchmark, cpu_peaks, name, variant):
    if variant == "fused" and not _HAVE_CPU_EXT:
        pytest.skip(f"CPU extension not available: {_WHY}")
    if variant == "compile_freezing" and not COMPILE:
        pytest.skip("MNV2_BENCH_COMPILE=0")
    b, s = BLOCKS[name], _setup(name)
    benchmark.group = (f"block {name}: {b.cin}->{b.chid}->{b.cout} s{b.stride} {b.h}x{b.h} batch {BATCH} fp32 "
                       "channels_last")
    with torch.inference_mode():
        fn = _variant(s["block"], variant)
        torch.testing.assert_close(fn(s["x"]), s["ref"], atol=2e-3, rtol=2e-3)   # also warms up / compiles
        rounds = 20 if b.flops(BATCH) < 2e9 else 6
        benchmark.pedantic(fn, args=(s["x"],), rounds=rounds, warmup_rounds=1)
    benchmark.extra_info.update(block=name, variant=variant, batch=BATCH, flops=b.flops(BATCH),
                                bytes=b.fused_bytes(BATCH, 4), peak_gflops=cpu_peaks[0], peak_gbs=cpu_peaks[1])
    if variant == "fused":
        benchmark.extra_info["cpu_isa"] = torch.ops.mnv2.cpu_isa()
