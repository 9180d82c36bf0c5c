"""Coverage of mnv2_kernels.fuse() over the mobile models of timm and torchvision (issue 13).

    nice .venv/bin/python tools/zoo_coverage.py                     # all models, 64x64, table to stdout
    nice .venv/bin/python tools/zoo_coverage.py --out docs/ZOO_COVERAGE.md
    .venv/bin/python tools/zoo_coverage.py --models 'mobilenetv3|mnasnet' --size 96

Per model (pretrained=False, BN statistics randomised with mnv2_kernels.testing.randomize_bn_, eval mode,
one float32 batch of 2 images): the inverted-residual blocks fuse() found, how many run a fused kernel
(torch.ops.mnv2.inverted_residual), how many are folded onto the reference path (generalised blocks:
torch.ops.mnv2.inverted_residual_ex, BN folded, no fused kernel yet), how many are skipped and why, and the
largest |fused - original| of the logits (absolute, and relative to max |original|).

The model list (MODELS below): timm.list_models() over the mobile families whose blocks are inverted
residuals or depthwise-separable blocks with BatchNorm -- mobilenetv2*, mobilenetv3*, tf_mobilenetv3*,
mobilenetv4*, efficientnet_b0, tf_efficientnet_b0, efficientnet_lite*, tf_efficientnet_lite*, mnasnet*,
semnasnet*, fbnet*, spnasnet*, tinynet*, mixnet*, tf_mixnet*, lcnet* (incl. lcnetv2*) -- without the
GroupNorm / EvoNorm variants of efficientnet_b0 (_gn, _g8_gn, _g16_evos: no BatchNorm to fold) and MobileNetV1
(no inverted residual); plus torchvision's mobilenet_v2, mobilenet_v3_small/large, mnasnet0_5/0_75/1_0/1_3
and efficientnet_b0. Issue 13 counted 75 models without writing the list down; this list is the one the
README table is computed over.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mnv2_kernels as mk  # noqa: E402
from mnv2_kernels.testing import randomize_bn_  # noqa: E402

TIMM_PATTERNS = ("mobilenetv2*", "mobilenetv3*", "tf_mobilenetv3*", "mobilenetv4*", "efficientnet_b0",
                 "tf_efficientnet_b0", "efficientnet_lite*", "tf_efficientnet_lite*", "mnasnet*", "semnasnet*",
                 "fbnet*", "spnasnet*", "tinynet*", "mixnet*", "tf_mixnet*", "lcnet*")
TORCHVISION = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet0_5", "mnasnet0_75",
               "mnasnet1_0", "mnasnet1_3", "efficientnet_b0")

# family of a model name (the README's summary rows)
FAMILIES = [("tv:mobilenet_v2", "MobileNetV2 (torchvision)"), ("tv:mobilenet_v3", "MobileNetV3 (torchvision)"),
            ("tv:mnasnet", "MNASNet (torchvision)"), ("tv:efficientnet", "EfficientNet-B0 (torchvision)"),
            ("mobilenetv2", "MobileNetV2 (timm)"), ("mobilenetv3", "MobileNetV3 (timm)"),
            ("tf_mobilenetv3", "MobileNetV3 TF ports (timm)"), ("mobilenetv4_hybrid", "MobileNetV4 hybrid (timm)"),
            ("mobilenetv4", "MobileNetV4 conv (timm)"), ("efficientnet_lite", "EfficientNet-Lite (timm)"),
            ("tf_efficientnet_lite", "EfficientNet-Lite TF ports (timm)"),
            ("efficientnet_b0", "EfficientNet-B0 (timm)"), ("tf_efficientnet_b0", "EfficientNet-B0 TF port (timm)"),
            ("mnasnet", "MNASNet (timm)"), ("semnasnet", "MNASNet-SE (timm)"), ("fbnetv3", "FBNetV3 (timm)"),
            ("fbnet", "FBNet-C (timm)"), ("spnasnet", "SPNASNet (timm)"), ("tinynet", "TinyNet (timm)"),
            ("tf_mixnet", "MixNet TF ports (timm)"), ("mixnet", "MixNet (timm)"), ("lcnetv2", "LCNetV2 (timm)"),
            ("lcnet", "LCNet (timm)")]


def family(name: str) -> str:
    return next(label for prefix, label in FAMILIES if name.startswith(prefix))


def model_names():
    import timm
    names = []
    for p in TIMM_PATTERNS:
        names += [n for n in timm.list_models(p) if n not in names]
    return names + ["tv:" + n for n in TORCHVISION]


def build(name: str) -> torch.nn.Module:
    if name.startswith("tv:"):
        import torchvision
        return getattr(torchvision.models, name[3:])(weights=None)
    import timm
    return timm.create_model(name, pretrained=False)


def skip_category(detail: str) -> str:
    """A short category for a skip reason (the README's reason table)."""
    for key, label in (("up to 9x9", "MixConv with a group larger than 9x9 (MixNet-S's 3/5/7/9/11 block): the "
                                      "contract's depthwise kernels go up to 9x9"),
                       ("anti-aliasing", "anti-aliasing pool after the depthwise's activation (MobileNetV4 conv_aa / "
                                         "conv_blur): no pool inside the block contract"),
                       ("MixConv", "MixConv (mixed depthwise kernel sizes in one layer)"),
                       ("ModuleList", "re-parameterisable depthwise branches (ModuleList, summed)"),
                       ("backend=", "backend cannot run it")):
        if key in detail:
            return label
    return detail[:90]


def measure(name: str, size: int):
    torch.manual_seed(0)
    model = randomize_bn_(build(name)).eval()
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused, report = mk.fuse(model, return_report=True)
        with torch.no_grad():
            ref, out = model(x), fused(x)
    err = (out - ref).abs().max().item()
    rel = err / max(ref.abs().max().item(), 1e-30)
    rel64 = orig32_vs_64 = None
    if rel > 1e-4:   # badly conditioned in float32 (random BN statistics)? compare both with float64
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            x64 = x.double()
            ref64 = model.double()(x64)
            scale = ref64.abs().max().item()
            rel64 = (fused.double()(x64) - ref64).abs().max().item() / scale
            orig32_vs_64 = (ref.double() - ref64).abs().max().item() / scale
    return dict(rel64=rel64, orig32_vs_64=orig32_vs_64, name=name, family=family(name), fused=len(report.fused), reference=len(report.reference),
                skipped=len(report.skipped), conv_bn=len(report.folded), err=err,
                stems=sum("+" in r.path for r in report.folded),
                rel=rel,
                reasons=collections.Counter(skip_category(r.detail) for r in report.skipped),
                gaps=collections.Counter(r.detail.rpartition("; ")[2] for r in report.reference))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    ap.add_argument("--models", default=None, help="regular expression selecting model names")
    ap.add_argument("--out", default=None, help="also write the markdown to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    names = [n for n in model_names() if args.models is None or re.search(args.models, n)]
    rows, failed = [], []
    t0 = time.time()
    for n in names:
        try:
            rows.append(measure(n, args.size))
        except Exception as exc:  # a model that cannot run at this size, etc.: listed, not hidden
            failed.append((n, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
        print(f"[{time.time() - t0:6.0f}s] {n}", file=sys.stderr, flush=True)
    lines = [f"Input {args.size}x{args.size}, batch 2, float32, CPU; torch {torch.__version__}.", ""]
    tot = collections.Counter()
    fam = collections.OrderedDict()
    for r in rows:
        f = fam.setdefault(r["family"], collections.Counter(models=0, err=0.0))
        f["models"] += 1
        for k in ("fused", "reference", "skipped"):
            f[k] += r[k]
            tot[k] += r[k]
        f["rel"] = max(f["rel"], r["rel"])
    blocks = tot["fused"] + tot["reference"] + tot["skipped"]
    conv_bn = sum(r["conv_bn"] for r in rows)
    stems = sum(r["stems"] for r in rows)
    lines += [f"{len(rows)} models, {blocks} inverted-residual blocks: {tot['fused']} fused by a kernel "
              f"({100 * tot['fused'] / max(blocks, 1):.1f}%), {tot['reference']} folded on the reference path "
              f"({100 * tot['reference'] / max(blocks, 1):.1f}%), {tot['skipped']} skipped "
              f"({100 * tot['skipped'] / max(blocks, 1):.1f}%); models with a block fused by a kernel: "
              f"{sum(r['fused'] > 0 for r in rows)}, with every block fused or folded: "
              f"{sum(r['skipped'] == 0 for r in rows)}; fused or folded: "
              f"{100 * (tot['fused'] + tot['reference']) / max(blocks, 1):.1f}%. Outside the blocks, {conv_bn} "
              f"conv -> BN [-> act] layers folded (stems, heads, MobileNetV4's plain conv blocks), {stems} of them "
              "timm stem / head pairs (conv_stem + bn1, conv_head + bn2).", "",
              "| family | models | blocks | fused (kernel) | folded (reference path) | skipped | max rel. error |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, f in fam.items():
        b = f["fused"] + f["reference"] + f["skipped"]
        lines.append(f"| {label} | {f['models']} | {b} | {f['fused']} | {f['reference']} | {f['skipped']} | "
                     f"{f['rel']:.1e} |")
    reasons = collections.Counter()
    gaps = collections.Counter()
    for r in rows:
        reasons.update(r["reasons"])
        gaps.update(r["gaps"])
    lines += ["", "Skip reasons (blocks):", ""] + [f"- {n} x {k}" for k, n in reasons.most_common()]
    lines += ["", "What the reference-path blocks need from a kernel (blocks):", ""]
    lines += [f"- {n} x {k}" for k, n in gaps.most_common()] or ["- none: a fused kernel serves every folded block"]
    lines += ["", "| model | blocks | fused | reference path | skipped | max abs error | rel. error |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['fused'] + r['reference'] + r['skipped']} | {r['fused']} | "
                     f"{r['reference']} | {r['skipped']} | {r['err']:.1e} | {r['rel']:.1e} |")
    bad = [r for r in rows if r["rel64"] is not None]
    if bad:
        lines += ["", "Models whose float32 error passes 1e-4 of max |logit| (deep stacks of random BN statistics are "
                  "badly conditioned): the same comparison in float64, and the original's own float32 error:", ""]
        lines += [f"- {r['name']}: fused vs original in float64 {r['rel64']:.1e}; original float32 vs float64 "
                  f"{r['orig32_vs_64']:.1e}; fused float32 vs original float32 {r['rel']:.1e}" for r in bad]
    if failed:
        lines += ["", "Models that did not run:", ""] + [f"- {n}: {why}" for n, why in failed]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("# Model zoo coverage of fuse() (tools/zoo_coverage.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
