#!/usr/bin/env python3
"""Results figure from pytest-benchmark JSON: per block, fused vs eager vs torch.compile (vs other engines).

    .venv/bin/python -m pytest benchmarks/bench_inverted_residual_cpu.py --benchmark-json=bench_cpu.json
    .venv/bin/python tools/plot_benchmarks.py bench_cpu.json --out docs/figures/cpu_blocks.png [--markdown]

Reads every benchmark whose ``extra_info`` names ``block``, ``variant``, ``batch``, ``flops`` and ``bytes``
(the block benchmarks record them), plus, when the run recorded them, the machine's measured peaks
``peak_gflops`` and ``peak_gbs`` (for the roofline floor = max(bytes / bandwidth, flops / peak)). Also
accepts plain JSON lists of rows {"block", "variant", "batch", "median_s", "flops", "bytes"} (e.g. other
engines timed in their own processes). Draws two panels: time per block and variant (log scale, the floor
as a black tick), and achieved GFLOP/s with the fused kernel's share of the floor written above its bar.
Prints the same numbers as a markdown table (``--markdown``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from typing import Dict, List

PREFERRED_ORDER = ("eager_cl", "eager", "eager_folded", "eager_folded_cl", "compile_freezing", "compile",
                   "onnxruntime", "openvino", "fused", "fused_cpu", "fused_triton", "fused_cuda")


def load_rows(paths: List[str]) -> List[dict]:
    rows: List[dict] = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "benchmarks" in data:
            peaks = {}
            for b in data["benchmarks"]:
                info = b.get("extra_info", {})
                if not {"block", "variant", "flops", "bytes"} <= set(info):
                    continue
                row = dict(info)
                row["median_s"] = b["stats"]["median"]
                rows.append(row)
                peaks.update({k: info[k] for k in ("peak_gflops", "peak_gbs") if k in info})
            for r in rows:
                for k, v in peaks.items():
                    r.setdefault(k, v)
        elif isinstance(data, list):
            rows += [dict(r) for r in data]
        else:
            raise SystemExit(f"{path}: neither pytest-benchmark JSON nor a list of rows")
    if not rows:
        raise SystemExit("no benchmark with extra_info block/variant/flops/bytes found in " + ", ".join(paths))
    return rows


def organise(rows: List[dict]):
    blocks: "OrderedDict[str, Dict[str, dict]]" = OrderedDict()
    for r in rows:
        blocks.setdefault(str(r["block"]), {})[r["variant"]] = r
    names = {v for d in blocks.values() for v in d}
    variants = [v for v in PREFERRED_ORDER if v in names] + sorted(names - set(PREFERRED_ORDER))
    return blocks, variants


def floor_s(r: dict):
    if "peak_gflops" not in r or "peak_gbs" not in r:
        return None
    return max(r["flops"] / (r["peak_gflops"] * 1e9), r["bytes"] / (r["peak_gbs"] * 1e9))


def markdown(blocks, variants) -> str:
    fused = [v for v in variants if v.startswith("fused")]
    head = ["block", "batch"] + [f"{v} ms" for v in variants] + [f"{v} GFLOP/s" for v in fused]
    head += [f"{v} % of floor" for v in fused] + [f"{fused[0]} vs {v}" for v in variants if not v.startswith("fused")] if fused else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for name, d in blocks.items():
        any_row = next(iter(d.values()))
        cells = [name, str(any_row.get("batch", ""))]
        cells += [f"{d[v]['median_s'] * 1e3:.3f}" if v in d else "" for v in variants]
        cells += [f"{d[v]['flops'] / d[v]['median_s'] / 1e9:.1f}" if v in d else "" for v in fused]
        for v in fused:
            fl = floor_s(d[v]) if v in d else None
            cells.append(f"{100 * fl / d[v]['median_s']:.0f}%" if fl else "")
        if fused:
            f0 = d.get(fused[0])
            cells += [f"{d[v]['median_s'] / f0['median_s']:.2f}x" if (f0 and v in d) else ""
                      for v in variants if not v.startswith("fused")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(blocks, variants, out: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(blocks)
    n, k = len(names), len(variants)
    width = 0.8 / k
    fig, (ax_t, ax_g) = plt.subplots(2, 1, figsize=(max(8, 1.1 * n + 3), 8.5), sharex=True)
    colors = plt.get_cmap("tab10")
    for j, v in enumerate(variants):
        xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
        ts = [blocks[b][v]["median_s"] * 1e3 if v in blocks[b] else math.nan for b in names]
        gs = [blocks[b][v]["flops"] / blocks[b][v]["median_s"] / 1e9 if v in blocks[b] else math.nan for b in names]
        style = dict(width=width, color=colors(j % 10), label=v,
                     edgecolor="black" if v.startswith("fused") else None, linewidth=0.8)
        ax_t.bar(xs, ts, **style)
        ax_g.bar(xs, gs, **style)
        if v.startswith("fused"):
            for x, b, g in zip(xs, names, gs):
                fl = floor_s(blocks[b][v]) if v in blocks[b] else None
                if fl and not math.isnan(g):
                    ax_g.annotate(f"{100 * fl / blocks[b][v]['median_s']:.0f}%", (x, g), ha="center",
                                  va="bottom", fontsize=7)
    for i, b in enumerate(names):
        fl = next((floor_s(r) for r in blocks[b].values() if floor_s(r)), None)
        if fl:
            ax_t.hlines(fl * 1e3, i - 0.45, i + 0.45, colors="black", linewidth=2,
                        label="roofline floor" if i == 0 else None)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("median time per call (ms, log)")
    ax_t.set_title(title)
    ax_t.legend(fontsize=8, ncol=min(k + 1, 4))
    ax_t.grid(axis="y", which="both", alpha=0.3)
    ax_g.set_ylabel("achieved GFLOP/s (label: fused, % of floor)")
    ax_g.grid(axis="y", alpha=0.3)
    ax_g.set_xticks(range(n))
    ax_g.set_xticklabels([f"block {b}" for b in names], rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files, or lists of rows")
    p.add_argument("--out", default="docs/figures/blocks.png", help="PNG to write")
    p.add_argument("--title", default="Inverted-residual blocks, side by side in one run")
    p.add_argument("--markdown", action="store_true", help="print the numbers as a markdown table")
    args = p.parse_args(argv)
    blocks, variants = organise(load_rows(args.json))
    plot(blocks, variants, args.out, args.title)
    if args.markdown:
        print(markdown(blocks, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
