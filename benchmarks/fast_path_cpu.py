"""The fused modules' per-call fast path on vs off, interleaved in one process (issue 14, docs/cpu_runtime.md).

    .venv/bin/python benchmarks/fast_path_cpu.py --batch 1 --threads 1 --rounds 30

Off = every call takes the full per-call checks (``_FoldedModule._fast`` returns None and no record is made),
as before the fast path. Rounds alternate on/off (5 forwards each, the minimum kept); prints the median of the
per-round minima. With one thread it times the thread's CPU time (less sensitive to other jobs on a shared
machine), with more the wall time.
"""
import argparse
import statistics
import time

import torch

import mnv2_kernels.modules as M
from mnv2_kernels import fuse
from mnv2_kernels.testing import imagenet_or_random_mobilenet_v2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = imagenet_or_random_mobilenet_v2()
    m = fuse(model.eval().to(memory_format=torch.channels_last))
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    fast, set_fast = M._FoldedModule._fast, M._FoldedModule._set_fast
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    res = {"on": [], "off": []}
    try:
        with torch.inference_mode():
            for _ in range(3):
                m(x)
            for _ in range(args.rounds):
                for mode in ("on", "off"):
                    M._FoldedModule._fast = fast if mode == "on" else (lambda self, x: None)
                    M._FoldedModule._set_fast = set_fast if mode == "on" else (lambda *a: None)
                    m(x)  # (re)records the fast path when on
                    ts = []
                    for _ in range(5):
                        t = clock()
                        m(x)
                        ts.append((clock() - t) * 1e3)
                    res[mode].append(min(ts))
    finally:
        M._FoldedModule._fast, M._FoldedModule._set_fast = fast, set_fast
    on, off = statistics.median(res["on"]), statistics.median(res["off"])
    print(f"batch {args.batch}, {args.threads} thread(s), {'thread CPU' if args.threads == 1 else 'wall'} ms "
          f"(median of per-round minima, {args.rounds} rounds): fast path on {on:.3f}, off {off:.3f}, saved "
          f"{off - on:.3f} ms ({(off - on) / off * 100:.1f}%)")


if __name__ == "__main__":
    main()
