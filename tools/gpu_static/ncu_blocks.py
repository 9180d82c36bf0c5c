"""Runs MobileNetV2 blocks 2, 3 and 17 (batch 256, fp16, channels_last) once per fused GPU backend, for
`ncu --clock-control none` in benchmarks/gpu_check.sh (warm-up calls happen under NVTX range "warmup", the
profiled ones under "profile": use ncu's --nvtx-include "profile/")."""
import sys

import torch

import mnv2_kernels  # noqa: F401
from mnv2_kernels import ops
from mnv2_kernels.models.block_table import mobilenet_v2_blocks
from mnv2_kernels.testing import random_block_args

BLOCKS = sys.argv[1:] or ["2", "3", "17"]


def main():
    shapes = {b.name: b for b in mobilenet_v2_blocks()}
    for backend in ("cuda", "triton"):
        why = ops.backend_unavailable_reason(backend, torch.device("cuda"))
        if why:
            print(f"{backend}: unavailable: {why}")
            continue
        for name in BLOCKS:
            b = shapes[name]
            args = random_block_args(b.cin, b.chid, b.cout, stride=b.stride, residual=b.residual, expand=b.expand,
                                     n=256, h=b.h, w=b.h, dtype=torch.float16, device="cuda")
            with torch.cuda.nvtx.range("warmup"):
                ops.inverted_residual(*args, backend=backend)
            torch.cuda.synchronize()
            with torch.cuda.nvtx.range("profile"):
                ops.inverted_residual(*args, backend=backend)
            torch.cuda.synchronize()
            print(f"{backend} block {name}: ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
