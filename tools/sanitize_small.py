"""A small fused block on every GPU backend, for compute-sanitizer (memcheck / racecheck) runs.

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
    for backend in ("cuda", "triton"):
        if ops.backend_unavailable_reason(backend, torch.device("cuda")) is not None:
            print(f"{backend}: unavailable: {ops.backend_unavailable_reason(backend, torch.device('cuda'))}")
            continue
        for cin, chid, cout, stride, residual, expand, h, w in configs:
            args = random_block_args(cin, chid, cout, stride=stride, residual=residual, expand=expand, n=2, h=h,
                                     w=w, dtype=torch.float16, device="cuda")
            y = ops.inverted_residual(*args, backend=backend)
            torch.cuda.synchronize()
            ref = inverted_residual_reference(*to_float64(args))
            err = ((y.double().cpu() - ref).abs().max() / ref.abs().max()).item()
            ok = err < 2e-2
            bad += not ok
            print(f"{backend} {cin}->{chid}->{cout} s{stride} res={residual} exp={expand}: rel err {err:.2e} "
                  f"{'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
