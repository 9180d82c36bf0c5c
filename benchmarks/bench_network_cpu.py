"""Full MobileNetV2 on the CPU, side by side in one run: fused vs eager channels_last vs torch.compile(freezing).

    .venv/bin/python -m pytest benchmarks/bench_network_cpu.py --benchmark-columns=median,iqr,rounds
Real-like BN statistics (the ImageNet checkpoint when installed), fp32, 224x224, batch 1 and 32.
Peak memory: benchmarks/peak_memory_cpu.py. Against ONNX Runtime and OpenVINO (each in its own process):
benchmarks/engines_cpu.py. The fused kernel's instruction set (AVX2 or AVX-512, chosen at run time; the
environment variable MNV2_CPU_ISA=avx2 forces the narrower one) is printed and stored in extra_info.
"""
import pytest
import torch

from mnv2_kernels.testing import imagenet_or_random_mobilenet_v2
from mnv2_kernels.demo.variants import build_variants, wants_channels_last

VARIANTS = ("eager_cl", "eager_folded_cl", "compile_freezing", "fused")




@pytest.fixture(scope="module")
def variants():
    import mnv2_kernels  # noqa: F401
    print(f"\nmnv2 CPU kernel ISA: {torch.ops.mnv2.cpu_isa()}")
    return build_variants(imagenet_or_random_mobilenet_v2(), torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_mobilenet_v2_cpu(benchmark, variants, variant, batch):
    benchmark.group = f"mobilenet_v2 cpu fp32 batch {batch}"
    x = torch.randn(batch, 3, 224, 224)
    if wants_channels_last(variant):
        x = x.contiguous(memory_format=torch.channels_last)
    fn = variants[variant]
    with torch.inference_mode():
        rounds = 20 if batch == 1 else 5
        benchmark.pedantic(fn, args=(x,), rounds=rounds, warmup_rounds=2)
    benchmark.extra_info["img_per_s"] = batch / benchmark.stats.stats.median
    if variant.startswith("fused"):
        benchmark.extra_info["cpu_isa"] = torch.ops.mnv2.cpu_isa()  # which compiled kernel variant ran
