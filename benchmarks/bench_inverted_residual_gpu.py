"""Per-block GPU benchmark: the fused kernels against eager cuDNN, for every MobileNetV2 block shape.

Batch 256, 224x224 network input, float16 (MNV2_BENCH_DTYPES="fp16 bf16" adds more), channels_last. Variants:
  triton            every variant the Triton launcher's static_plans lists for the shape ("triton-ring", ...);
                    the chosen one through torch.ops.mnv2.inverted_residual_triton, the others forced by name
  cuda              the fused CUDA kernel (torch.ops.mnv2.inverted_residual), recorded under the variant name
                    mnv2_kernels/cuda_plan.py's static_plans marks as chosen
  eager             the original block: Conv2d + BatchNorm2d + ReLU6 modules, eval, cuDNN
  eager_folded      the same with BatchNorm folded into the convs (F.conv2d chain with bias)
With MNV2_GPU_RUN_RECORDS set, every measurement is appended to that file as one JSON line in the format of
the static report's recorded runs (tools/gpu_static/runs.py; benchmarks/gpu_check.sh assembles them into
benchmarks/gpu_runs/<date>-h200-<what>.json with tools/gpu_static/record.py).

Times are medians of triton.testing.do_bench (CUDA events, L2 flushed between runs) and go into
``benchmark.extra_info`` with the achieved GB/s and TFLOP/s and the roofline floor (H200 figures below);
pytest-benchmark's own statistics time the call with a CUDA synchronize inside. With MNV2_RESULTS set,
a markdown table row per benchmark is appended to that file.

    python -m pytest benchmarks/bench_inverted_residual_gpu.py --benchmark-columns=median,rounds
"""
import json
import os
from typing import Callable, Tuple

import pytest
import torch
from torch import nn

import mnv2_kernels  # noqa: F401  (defines torch.ops.mnv2.*)
from mnv2_kernels.folding import fold_block
from mnv2_kernels.models.block_table import mobilenet_v2_blocks
from mnv2_kernels.reference import inverted_residual_reference
from mnv2_kernels.testing import randomize_bn_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Roofline figures (H200): copy bandwidth and a dense fp16 GEMM rate (RESULTS.md, static model section).
PEAK_BYTES_PER_S = 4.3e12
PEAK_FLOPS_PER_S = 800e12

BATCH = 256
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPES = [d for d in os.environ.get("MNV2_BENCH_DTYPES", "fp16").split() if d in _DTYPES] or ["fp16"]
# (blocks, cin, t, cout, stride, input size) of the 12 distinct shapes, from the package's one block table.
MBV2_BLOCKS = [(b.name, b.cin, b.chid // b.cin, b.cout, b.stride, b.h) for b in mobilenet_v2_blocks()]


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


def _plans(backend: str, n, cin, chid, cout, h, stride, expand, residual, dtype):
    """static_plans of a backend's launcher for this shape ([] when it has none)."""
    try:
        if backend == "triton":
            from mnv2_kernels.triton import static_plans
        else:
            from mnv2_kernels.cuda_plan import static_plans
    except ImportError:
        return []
    return static_plans(n, cin, chid, cout, h, h, stride, expand, residual, dtype)


def _config(plan: dict) -> dict:
    """The JSON-able part of a plan that identifies its configuration."""
    keep = {}
    for k in ("programs", "num_warps", "num_stages", "constexprs", "config", "plan", "smem_bytes", "symbol"):
        if k in plan:
            keep[k] = plan[k]
    return json.loads(json.dumps(keep, default=str))


def record(label: str, shape: dict, dtype_name: str, variant: str, backend: str, info: dict, **extra) -> None:
    """Appends one measurement line to $MNV2_GPU_RUN_RECORDS (the static report's run format)."""
    path = os.environ.get("MNV2_GPU_RUN_RECORDS")
    if not path:
        return
    m = dict(block=label, shape=shape, batch=BATCH, dtype=dtype_name, layout="channels_last", variant=variant,
             backend=backend, median_us=round(info["median_us"], 2), floor_us=round(info["floor_us"], 2), **extra)
    with open(path, "a") as f:
        f.write(json.dumps(m) + "\n")


VARIANTS = ["triton", "cuda", "eager", "eager_folded"]


@pytest.fixture(scope="module", autouse=True)
def _cudnn_benchmark():
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("block", MBV2_BLOCKS, ids=lambda b: f"block{b[0]}")
def test_block_gpu(benchmark, block, variant, dtype_name):
    label, cin, t, cout, stride, h = block
    dtype = _DTYPES[dtype_name]
    if variant == "cuda" and not _has_cuda_kernel():
        pytest.skip("the fused CUDA kernel is not built")
    model = randomize_bn_(OriginalBlock(cin, t, cout, stride), seed=1).eval()
    model = model.to("cuda", dtype).to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, cin, h, h, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    args = (x, *model.folded(dtype), stride, model.residual)
    shape = dict(cin=cin, chid=cin * t, cout=cout, h=h, w=h, stride=stride, has_expand=t != 1,
                 residual=model.residual)
    plans = _plans(variant, BATCH, cin, cin * t, cout, h, stride, t != 1, model.residual, dtype) \
        if variant in ("triton", "cuda") else []
    if variant == "cuda" and not plans:
        pytest.skip(f"the CUDA launcher has no plan for {dtype_name}")
    chosen = next((p for p in plans if p.get("chosen")), None)
    if variant == "eager":
        fn = lambda: model(x)  # noqa: E731
    elif variant == "eager_folded":
        fn = lambda: inverted_residual_reference(*args)  # noqa: E731
    elif variant == "cuda":
        fn = lambda: torch.ops.mnv2.inverted_residual(*args)  # noqa: E731
    else:
        fn = lambda: torch.ops.mnv2.inverted_residual_triton(*args)  # noqa: E731

    def synced():
        fn()
        torch.cuda.synchronize()

    nbytes_flops = block_cost(cin, cin * t, cout, stride, h, h, BATCH, t != 1, x.element_size())
    with torch.inference_mode():
        ms = time_ms(fn)
        benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=2)
        info = roofline_info(ms, *nbytes_flops)
        name = chosen["name"] if chosen else variant.replace("_", "-")
        record(label, shape, dtype_name, name, variant if variant in ("triton", "cuda") else "torch", info,
               **({"chosen": True, "config": _config(chosen)} if chosen else {}))
        # The launcher's other variants, forced by name (Triton's `variant=` argument).
        if variant == "triton":
            from mnv2_kernels.triton import inverted_residual_triton
            for p in plans:
                if p is chosen:
                    continue
                short = p["name"].split("-", 1)[1]
                try:
                    other = time_ms(lambda: inverted_residual_triton(*args, variant=short))  # noqa: B023
                except (ValueError, TypeError) as exc:
                    print(f"block {label}: variant {p['name']} cannot be forced: {exc}")
                    continue
                record(label, shape, dtype_name, p["name"], "triton", roofline_info(other, *nbytes_flops),
                       chosen=False, config=_config(p))
    benchmark.extra_info.update(info, block=label, variant=variant, batch=BATCH, dtype=str(dtype))
    results = os.environ.get("MNV2_RESULTS")
    if results:
        append_result_row(results, f"{label} ({cin}-{cin * t}-{cout}, s{stride}, {h}x{h}) {dtype_name}", variant, info)
