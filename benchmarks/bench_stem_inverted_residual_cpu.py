"""CPU benchmark of MobileNetV2's stem + block 1 (pytest-benchmark): the fused op vs the two ops vs eager.

    .venv/bin/python -m pytest benchmarks/bench_stem_inverted_residual_cpu.py --benchmark-columns=median,iqr,rounds

Stem 3 -> 32 (3x3, stride 2, ReLU6) then block 1 (depthwise 32 + project 32 -> 16), 224x224 input, float32,
channels_last, at batch 1 and 32, on the current thread count. Variants share one group per batch:

  stem_op   torch.ops.mnv2.stem_inverted_residual: the stem's rows go straight into block 1's ring
  two_ops   torch.ops.mnv2.conv3x3_bias_act then torch.ops.mnv2.inverted_residual (the stem map is written:
            51 MB at batch 32, a fresh mmap and ~13,000 page faults per call on glibc)
  eager_cl  the two layers as BN-folded ATen convolutions (mnv2_kernels.reference.stem_inverted_residual_reference)

Compare ratios within one run (docs/cpu_runtime.md, "Session 4").
"""
import pytest
import torch

from mnv2_kernels.reference import stem_inverted_residual_reference

try:
    from mnv2_kernels import _ext, stem_head  # noqa: F401  (registers the ops)
    _HAVE, _WHY = _ext.CPU_EXT is not None, _ext.CPU_EXT_ERROR
except Exception as exc:  # pragma: no cover
    _HAVE, _WHY = False, f"{type(exc).__name__}: {exc}"

pytestmark = pytest.mark.skipif(not _HAVE, reason=f"CPU extension not built: {_WHY}")

VARIANTS = ("stem_op", "two_ops", "eager_cl")


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_stem_block1_cpu(benchmark, variant, batch):
    from test_stem_inverted_residual_cpu import make_args, two_ops
    benchmark.group = f"mobilenet_v2 stem + block 1, cpu fp32, batch {batch}"
    args = make_args(batch, 3, 32, 224, 224, 2, 16, 1, False)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    fn = {"stem_op": torch.ops.mnv2.stem_inverted_residual, "two_ops": two_ops, "eager_cl": stem_inverted_residual_reference}[variant]
    with torch.inference_mode():
        y = fn(*args)
        ref = two_ops(*args)
        torch.testing.assert_close(y, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
        benchmark.pedantic(fn, args=tuple(args), rounds=20 if batch == 1 else 5, warmup_rounds=2)
    macs = batch * 112 * 112 * (32 * 27 + 32 * 9 + 32 * 16)
    benchmark.extra_info.update(batch=batch, flops=2 * macs, variant=variant)
