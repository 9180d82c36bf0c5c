"""Per-block GPU benchmark: the fused kernels against eager cuDNN, for every MobileNetV2 block shape.

Batch 256, 224x224 network input, float16, channels_last. Variants per block:
  triton            fused Triton kernel as registered (torch.ops.mnv2.inverted_residual_triton, depthwise="auto")
  triton_gather     fused Triton kernel, depthwise taps by tl.gather on the expanded halo tile
  triton_recompute  fused Triton kernel, depthwise by re-expanding the input at each tap
  cuda              fused CUDA kernel (when torch.ops.mnv2.inverted_residual has a CUDA kernel)
  eager             the original block: Conv2d + BatchNorm2d + ReLU6 modules, eval, cuDNN
  eager_folded      the same with BatchNorm folded into the convs (F.conv2d chain with bias)

Times are medians of triton.testing.do_bench (CUDA events, L2 flushed between runs) and go into
``benchmark.extra_info`` with the achieved GB/s and TFLOP/s and the roofline floor (H200 figures below);
pytest-benchmark's own statistics time the call with a CUDA synchronize inside. With MNV2_RESULTS set,
a markdown table row per benchmark is appended to that file.

    python -m pytest benchmarks/bench_inverted_residual_gpu.py --benchmark-columns=median,rounds
"""
import os
from typing import Callable, Tuple

import pytest
import torch
from torch import nn

import mnv2_kernels  # noqa: F401  (defines torch.ops.mnv2.*)
from mnv2_kernels.folding import fold_block
from mnv2_kernels.reference import inverted_residual_reference
from mnv2_kernels.testing import randomize_bn_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Roofline figures (H200): measured copy bandwidth (shared/NOTES.md section 6) and a dense fp16 GEMM rate.
PEAK_BYTES_PER_S = 4.3e12
PEAK_FLOPS_PER_S = 800e12

BATCH = 256
DTYPE = torch.float16
# (blocks, cin, t, cout, stride, input size); blocks 5-6, 8-10, 12-13, 15-16 repeat a shape (shared/NOTES.md).
MBV2_BLOCKS = [("1", 32, 1, 16, 1, 112), ("2", 16, 6, 24, 2, 112), ("3", 24, 6, 24, 1, 56),
               ("4", 24, 6, 32, 2, 56), ("5-6", 32, 6, 32, 1, 28), ("7", 32, 6, 64, 2, 28),
               ("8-10", 64, 6, 64, 1, 14), ("11", 64, 6, 96, 1, 14), ("12-13", 96, 6, 96, 1, 14),
               ("14", 96, 6, 160, 2, 14), ("15-16", 160, 6, 160, 1, 7), ("17", 160, 6, 320, 1, 7)]


def block_cost(cin: int, chid: int, cout: int, stride: int, h: int, w: int, n: int, has_expand: bool,
               itemsize: int) -> Tuple[int, int]:
    """(bytes, flops) of one fused block: read the input once, write the output once, read the weights once;
    multiply-adds of the expand (at input resolution), depthwise (9 taps) and project (output resolution)."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    weights = (chid * cin + chid if has_expand else 0) + chid * 10 + cout * chid + cout
    nbytes = itemsize * (n * (h * w * cin + ho * wo * cout) + weights)
    macs = n * ((h * w * cin * chid if has_expand else 0) + ho * wo * chid * 9 + ho * wo * chid * cout)
    return nbytes, 2 * macs


def time_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of fn() on the current CUDA device (triton.testing.do_bench, L2 flushed)."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def roofline_info(ms: float, nbytes: int, flops: int) -> dict:
    """Achieved rates and the roofline floor for a measured time."""
    floor_us = max(nbytes / PEAK_BYTES_PER_S, flops / PEAK_FLOPS_PER_S) * 1e6
    return {"median_us": ms * 1e3, "GB_per_s": nbytes / ms / 1e6, "TFLOP_per_s": flops / ms / 1e9,
            "floor_us": floor_us, "floor_fraction": floor_us / (ms * 1e3), "MB": nbytes / 1e6, "GFLOP": flops / 1e9}


_header_written = False


def append_result_row(path: str, label: str, variant: str, info: dict) -> None:
    """Appends one markdown row (header first, once per process) to the results file ``path``."""
    global _header_written
    with open(path, "a") as f:
        if not _header_written:
            f.write("\n| block | variant | median µs | GB/s | TFLOP/s | floor µs | floor / time |\n"
                    "|---|---|---|---|---|---|---|\n")
            _header_written = True
        f.write(f"| {label} | {variant} | {info['median_us']:.1f} | {info['GB_per_s']:.0f} | "
                f"{info['TFLOP_per_s']:.1f} | {info['floor_us']:.1f} | {info['floor_fraction']:.2f} |\n")


class OriginalBlock(nn.Module):
    """torchvision-style inverted residual: [1x1 conv, BN, ReLU6] (t != 1), 3x3 dw conv, BN, ReLU6, 1x1, BN."""

    def __init__(self, cin: int, t: int, cout: int, stride: int):
        super().__init__()
        chid = cin * t
        layers = [nn.Conv2d(cin, chid, 1, bias=False), nn.BatchNorm2d(chid), nn.ReLU6()] if t != 1 else []
        layers += [nn.Conv2d(chid, chid, 3, stride, 1, groups=chid, bias=False), nn.BatchNorm2d(chid), nn.ReLU6(),
                   nn.Conv2d(chid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y

    def folded(self, dtype: torch.dtype):
        c = list(self.conv)
        expand = (c[0], c[1]) if len(c) == 8 else None
        return fold_block(expand, (c[-5], c[-4]), (c[-2], c[-1]), dtype)


def _has_cuda_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual", "CUDA")


VARIANTS = ["triton", "triton_gather", "triton_recompute", "cuda", "eager", "eager_folded"]


@pytest.fixture(scope="module", autouse=True)
def _cudnn_benchmark():
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("block", MBV2_BLOCKS, ids=lambda b: f"block{b[0]}")
def test_block_gpu(benchmark, block, variant):
    label, cin, t, cout, stride, h = block
    if variant == "cuda" and not _has_cuda_kernel():
        pytest.skip("the fused CUDA kernel is not built")
    model = randomize_bn_(OriginalBlock(cin, t, cout, stride), seed=1).eval()
    model = model.to("cuda", DTYPE).to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, cin, h, h, device="cuda", dtype=DTYPE).contiguous(memory_format=torch.channels_last)
    args = (x, *model.folded(DTYPE), stride, model.residual)
    if variant == "eager":
        fn = lambda: model(x)  # noqa: E731
    elif variant == "eager_folded":
        fn = lambda: inverted_residual_reference(*args)  # noqa: E731
    elif variant == "cuda":
        fn = lambda: torch.ops.mnv2.inverted_residual(*args)  # noqa: E731
    elif variant == "triton":
        fn = lambda: torch.ops.mnv2.inverted_residual_triton(*args)  # noqa: E731
    else:
        from mnv2_kernels.triton import inverted_residual_triton
        mode = variant.split("_")[1]
        fn = lambda: inverted_residual_triton(*args, depthwise=mode)  # noqa: E731

    def synced():
        fn()
        torch.cuda.synchronize()

    with torch.inference_mode():
        ms = time_ms(fn)
        benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=2)
    info = roofline_info(ms, *block_cost(cin, cin * t, cout, stride, h, h, BATCH, t != 1, x.element_size()))
    benchmark.extra_info.update(info, block=label, variant=variant, batch=BATCH, dtype=str(DTYPE))
    results = os.environ.get("MNV2_RESULTS")
    if results:
        append_result_row(results, f"{label} ({cin}-{cin * t}-{cout}, s{stride}, {h}x{h})", variant, info)
