"""A small fused block on every GPU backend, for compute-sanitizer (memcheck / racecheck) runs.

The CUDA kernel also gets the shapes that exercise its other paths: chunk mode (Chid 960, several hidden-channel
chunks per step), a tall narrow image (many steps, the ring of expanded rows wraps around), channel counts that
are not multiples of 8, bfloat16.

    compute-sanitizer --tool memcheck python3 tools/sanitize_small.py
Exits non-zero if any backend's output differs from the float64 reference.
"""
import sys

import torch

import mnv2_kernels  # noqa: F401
from mnv2_kernels import ops
from mnv2_kernels.reference import inverted_residual_reference
from mnv2_kernels.testing import random_block_args, to_float64


def main() -> int:
    bad = 0
    configs = [(24, 144, 24, 1, True, True, 13, 11), (16, 96, 24, 2, False, True, 9, 10),
               (20, 20, 36, 1, False, False, 7, 7)]
    cuda_only = [(160, 960, 320, 1, False, True, 7, 7, torch.float16), (16, 32, 16, 1, True, True, 30, 3, torch.bfloat16),
                 (7, 21, 5, 2, False, True, 5, 9, torch.float16), (96, 576, 160, 2, False, True, 9, 8, torch.bfloat16)]
    for backend in ("cuda", "triton"):
        if ops.backend_unavailable_reason(backend, torch.device("cuda")) is not None:
            print(f"{backend}: unavailable: {ops.backend_unavailable_reason(backend, torch.device('cuda'))}")
            continue
        cases = [c + (torch.float16,) for c in configs] + (cuda_only if backend == "cuda" else [])
        for cin, chid, cout, stride, residual, expand, h, w, dtype in cases:
            args = random_block_args(cin, chid, cout, stride=stride, residual=residual, expand=expand, n=2, h=h,
                                     w=w, dtype=dtype, device="cuda")
            y = ops.inverted_residual(*args, backend=backend)
            torch.cuda.synchronize()
            ref = inverted_residual_reference(*to_float64(args))
            err = ((y.double().cpu() - ref).abs().max() / ref.abs().max()).item()
            ok = err < (2e-2 if dtype == torch.float16 else 6e-2)
            bad += not ok
            print(f"{backend} {cin}->{chid}->{cout} {h}x{w} s{stride} res={residual} exp={expand} {dtype}: rel err {err:.2e} "
                  f"{'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
