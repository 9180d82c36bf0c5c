"""Full MobileNetV2 on a GPU, fp16 channels_last, batch 1 and 256, side by side in one run: fused (CUDA and
Triton kernels) vs eager cuDNN (original and BN folded) vs torch.compile with freezing.

    python -m pytest benchmarks/bench_network_gpu.py --benchmark-columns=median,iqr,rounds
Synchronised inside the timed call. With MNV2_GPU_RUN_RECORDS set, each median is appended there as a JSON
line (block "network") for benchmarks/gpu_check.sh's run record. The main job (`python -m mnv2_kernels --device cuda --cuda-graphs`)
prints the same comparison as a table, with CUDA-graph variants at batch 1.
"""
import json
import os

import pytest
import torch

from mnv2_kernels import ops
from mnv2_kernels.models import mobilenet_v2
from mnv2_kernels.testing import randomize_bn_
from mnv2_kernels.demo.variants import build_variants

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VARIANTS = ("eager_cl", "eager_folded_cl", "fused_cuda", "fused_triton", "compile_freezing")


@pytest.fixture(scope="module")
def variants():
    backends = [b for b in ("cuda", "triton") if ops.backend_unavailable_reason(b, torch.device("cuda")) is None]
    return build_variants(randomize_bn_(mobilenet_v2()), torch.device("cuda"), torch.float16, backends=backends)


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("variant", VARIANTS)
def test_mobilenet_v2_gpu(benchmark, variants, variant, batch):
    if variant not in variants:
        pytest.skip(f"{variant} is unavailable here")
    benchmark.group = f"mobilenet_v2 cuda fp16 channels_last batch {batch}"
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    fn = variants[variant]

    def step():
        fn(x)
        torch.cuda.synchronize()

    with torch.inference_mode():
        benchmark.pedantic(step, rounds=20, warmup_rounds=3)
    benchmark.extra_info["img_per_s"] = batch / benchmark.stats.stats.median
    records = os.environ.get("MNV2_GPU_RUN_RECORDS")
    if records:  # the static report's run format (tools/gpu_static/runs.py); block "network" is not fitted
        with open(records, "a") as f:
            f.write(json.dumps(dict(block="network", shape=dict(input=[batch, 3, 224, 224]), batch=batch, dtype="fp16",
                                    layout="channels_last", variant=f"network-{variant}", backend="network",
                                    median_us=round(benchmark.stats.stats.median * 1e6, 1),
                                    timing="pytest-benchmark median, synchronised")) + "\n")
