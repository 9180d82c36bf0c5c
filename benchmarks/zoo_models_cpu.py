"""Whole zoo models on the CPU, fused vs eager, side by side in one process (issue 13's speed check beyond
single blocks).

    .venv/bin/python benchmarks/zoo_models_cpu.py                       # default models, batch 1 and 8
    .venv/bin/python benchmarks/zoo_models_cpu.py --models efficientnet_b0 --batch 1 --rounds 5

timm models built offline (no pretrained weights: random BN statistics, mnv2_kernels.testing.randomize_bn_),
eval, float32, 224x224, channels_last input for both variants: the original (eager) and `mnv2_kernels.fuse()`.
(No BN-folded eager column: torch.fx's conv-BN fusion folds only plain nn.BatchNorm2d, not timm's BatchNormAct2d.)
Rounds alternate the variants (a round: `--calls` calls of each, median kept); the table shows the median of
the round medians and the ratios, plus the largest output difference and how many blocks ran a kernel.
Timings are this machine's at the time: compare the ratios, not the milliseconds.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

DEFAULT_MODELS = ("mobilenetv3_large_100", "efficientnet_b0", "tf_efficientnet_lite0", "mnasnet_100",
                  "tinynet_a", "mixnet_s", "lcnet_100", "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium")


def _time(fn, x, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm model names")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--calls", type=int, default=10, help="calls per variant per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and kernel threads")
    args = ap.parse_args(argv)

    import timm
    import mnv2_kernels as mk
    from mnv2_kernels.testing import randomize_bn_
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, "
          f"CPU kernel ISA {torch.ops.mnv2.cpu_isa()}, float32, 224x224, channels_last")
    print("| model | batch | eager ms | fused ms | eager / fused | blocks on a kernel | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        model = randomize_bn_(timm.create_model(name, pretrained=False)).eval()
        model = model.to(memory_format=torch.channels_last)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused, report = mk.fuse(model, return_report=True)
        variants = {"eager": model, "fused": fused}
        n_blocks = len(report.fused) + len(report.reference) + len(report.skipped)
        for batch in args.batch:
            x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                y0 = model(x)
                err = ((fused(x) - y0).abs().max() / y0.abs().max().clamp_min(1e-12)).item()
                for fn in variants.values():  # warm-up (packing, first-call checks)
                    fn(x)
                meds = {k: [] for k in variants}
                for _ in range(args.rounds):
                    for k, fn in variants.items():
                        meds[k].append(_time(fn, x, args.calls))
            ms = {k: statistics.median(v) * 1e3 for k, v in meds.items()}
            print(f"| {name} | {batch} | {ms['eager']:.2f} | {ms['fused']:.2f} | {ms['eager'] / ms['fused']:.2f}x | "
                  f"{len(report.fused)}/{n_blocks} | {err:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
