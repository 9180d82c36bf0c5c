"""The main job: a pretrained MobileNetV2 classifies real photos through fused blocks, then is timed.

    python -m mnv2_kernels [--device cpu|cuda] [--batches 1 32] [--no-compile] [--iters N]

1. Loads torchvision's ImageNet MobileNetV2 (offline checkpoint), fuses its blocks, classifies the photos
   that scikit-image ships with the original and the fused model, prints the top-5 labels side by side and
   the largest logit difference.
2. Times original eager (NCHW), eager channels_last, torch.compile with freezing, and fused, at each batch
   size, and prints milliseconds, images per second and speed-up over the original.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def classify(model, fused, device, dtype) -> float:
    from .models import imagenet_categories
    from .photos import PHOTO_NAMES, photo_batch, topk_labels

    cats = imagenet_categories()
    x = photo_batch().to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model(x).float()
        got = fused(x).float()
    print("\nTop-5 ImageNet classes, original | fused")
    for name, a, b in zip(PHOTO_NAMES, topk_labels(ref), topk_labels(got)):
        same = "same" if a == b else "DIFFERENT"
        print(f"  {name:10s} {', '.join(cats[i] for i in a[:3])} ... | "
              f"{', '.join(cats[i] for i in b[:3])} ...  [{same} top-5: {a}]")
    diff = (ref - got).abs().max().item()
    print(f"  largest logit difference: {diff:.3g} (logits up to {ref.abs().max().item():.3g})")
    return diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnv2_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (CUDA default)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--backends", nargs="+", default=["auto"],
                   help="fused variants to time: auto, cpu, cuda, triton, reference")
    p.add_argument("--cuda-graphs", action="store_true", help="also time CUDA-graph captured variants at batch 1")
    p.add_argument("--markdown", default=None, help="append the results table to this markdown file")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to build)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode of the compiled variant (e.g. max-autotune; slower to build)")
    args = p.parse_args(argv)

    from . import fuse
    from .models import mobilenet_v2
    from .variants import build_variants, median_ms, time_callable, wants_channels_last

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    if device.type == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    _progress(f"loading pretrained MobileNetV2 on {device} ({dtype}), {torch.get_num_threads()} CPU threads")
    model = mobilenet_v2(weights="imagenet").eval().to(device=device, dtype=dtype)
    model = model.to(memory_format=torch.channels_last)
    fused, report = fuse(model, backend=args.backends[0], return_report=True)
    print(f"fused {len(report.fused)} blocks, skipped {len(report.skipped)}")
    for r in report.skipped:
        print(f"  skipped {r}")
    _progress("classifying the photos with the original and the fused model")
    classify(model, fused, device, dtype)

    _progress("building the timed variants" + ("" if args.no_compile else " (torch.compile takes a while)"))
    variants = build_variants(mobilenet_v2(weights="imagenet"), device, dtype, with_compile=not args.no_compile,
                              compile_mode=args.compile_mode, backends=args.backends)
    order = sorted(variants, key=lambda n: n == "compile_freezing")  # compile last: slowest to build
    graphed = args.cuda_graphs and device.type == "cuda"
    rows = []
    steps = len(order) * len(args.batches) + (len(order) if graphed else 0)
    step = 0
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        base_ms = None
        runs = [(name, variants[name]) for name in order]
        if graphed and batch == min(args.batches):
            from .variants import cuda_graphed
            runs += [(f"{name}+graph", None) for name in order if name != "compile_freezing"]
        for name, fn in runs:
            step += 1
            _progress(f"[{step}/{steps}] timing {name} at batch {batch}")
            xin = x.contiguous(memory_format=torch.channels_last) if wants_channels_last(name) else x
            if fn is None:
                fn = cuda_graphed(variants[name[:-len("+graph")]], xin)
            ms = median_ms(time_callable(fn, xin, iters=args.iters))
            base_ms = ms if base_ms is None else base_ms
            rows.append((batch, name, ms, batch / ms * 1e3, base_ms / ms))
            _progress(f"    {name} at batch {batch}: {ms:.2f} ms")
    title = (f"MobileNetV2 on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
             f"torch {torch.__version__}), {dtype}, 224x224, median of up to {args.iters} runs; "
             "speed-up over the original eager model (NCHW)")
    lines = [title, "", "| batch | variant | ms | img/s | speed-up |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {b} | {n} | {ms:.2f} | {ips:.1f} | {sp:.2f}x |" for b, n, ms, ips, sp in rows]
    print("\n" + "\n".join(lines))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
