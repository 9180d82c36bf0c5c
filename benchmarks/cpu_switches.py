"""Session-4 CPU changes on vs off, interleaved in one process (issue 14; docs/cpu_runtime.md).

    .venv/bin/python benchmarks/cpu_switches.py --batch 1 --threads 2 --rounds 9
    .venv/bin/python benchmarks/cpu_switches.py --batch 32 --threads 2 --rounds 5 --calls 3

Variants of the fused ImageNet MobileNetV2 forward (fp32, channels_last input, torch.no_grad so the fast path
and the stem+block op apply; the weights are prepared by fuse()):
  all           as shipped
  no_stem_op    stem and block 1 as two ops (stem_head.STEM_INTO_BLOCK = False): the stem's map is written
  no_split      7x7 blocks in row bands at batch < threads (mnv2_kernels._C.set_split_max_pixels(0))
  neither       both off
Rounds rotate the variants' order; each round times --calls forwards per variant (median). Prints, per
variant, the median over rounds and its ratio to "all", plus the minor page faults per forward.
"""
import argparse
import resource
import statistics
import time

import torch

from mnv2_kernels import _ext, fuse, stem_head
from mnv2_kernels.testing import imagenet_or_random_mobilenet_v2

VARIANTS = {"all": (True, None), "no_stem_op": (False, None), "no_split": (True, 0), "neither": (False, 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    if _ext.CPU_EXT is None:
        raise SystemExit(f"needs the CPU extension: {_ext.CPU_EXT_ERROR}")
    torch.set_num_threads(args.threads)
    model = imagenet_or_random_mobilenet_v2()
    m = fuse(model.eval().to(memory_format=torch.channels_last))
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    default_split = _ext.CPU_EXT.set_split_max_pixels(0)
    _ext.CPU_EXT.set_split_max_pixels(default_split)
    names = list(VARIANTS)
    res = {n: [] for n in names}
    faults = {n: [] for n in names}
    outs = {}
    try:
        with torch.no_grad():
            for r in range(args.rounds):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    stem_on, split = VARIANTS[n]
                    stem_head.STEM_INTO_BLOCK = stem_on
                    _ext.CPU_EXT.set_split_max_pixels(default_split if split is None else split)
                    outs[n] = m(x)  # warm-up (and the output, compared below)
                    ts = []
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        m(x)
                        ts.append(time.perf_counter() - t0)
                    faults[n].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.calls)
                    res[n].append(statistics.median(ts) * 1e3)
    finally:
        stem_head.STEM_INTO_BLOCK = True
        _ext.CPU_EXT.set_split_max_pixels(default_split)
    base = statistics.median(res["all"])
    print(f"batch {args.batch}, {args.threads} threads, {args.rounds} rounds x {args.calls} calls, "
          f"isa {torch.ops.mnv2.cpu_isa()}, split_max_pixels default {default_split}")
    for n in names:
        med = statistics.median(res[n])
        same = torch.equal(outs[n], outs["all"])
        print(f"{n:<11} {med:9.2f} ms  x{med / base:5.2f} of all  page faults/forward "
              f"{statistics.median(faults[n]):7.0f}"
              f"  same output as all: {same}  rounds {' '.join(f'{v:.1f}' for v in res[n])}")


if __name__ == "__main__":
    main()
