"""The per-block figure: predicted and measured time of each kernel variant beside eager cuDNN and the
roofline floor (log scale), from tools/gpu_static_report.py's records."""
from __future__ import annotations

import os


def plot(path, shapes, current, fitted, eager, folded, batch, log_sd, dtype="fp16"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["name"] for s in shapes]
    x = range(len(names))
    cur = [p for p in current if p["dtype"] == dtype and "error" not in p]
    cur_variants = sorted({p["name"] for p in cur})
    meas = [r for r in fitted if r["dtype"] == dtype and r["batch"] == batch]
    meas_variants = sorted({r["variant"] for r in meas})
    fig, ax = plt.subplots(figsize=(12, 5.2), dpi=110)
    slots = len(cur_variants) + len(meas_variants) + 1
    width = 0.8 / slots
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    slot = 0

    def bars(vals, label, color, hatch=None, alpha=1.0):
        nonlocal slot
        xs = [i - 0.4 + width * (slot + 0.5) for i in x]
        ax.bar(xs, [v if v else 0 for v in vals], width, label=label, color=color, hatch=hatch, alpha=alpha,
               edgecolor="black", linewidth=0.3)
        slot += 1
        return xs

    for j, v in enumerate(meas_variants):
        by = {r["block"]: r for r in meas if r["variant"] == v}
        xs = bars([by[n]["measured_us"] if n in by else None for n in names], f"{v} measured (H200)", colors[j % 10],
                  alpha=0.55)
        ax.scatter([xx for xx, n in zip(xs, names) if n in by], [by[n]["predicted_us"] for n in names if n in by],
                   marker="_", s=90, color="black", zorder=3,
                   label="model fit to the measurement" if j == 0 else None)
    for j, v in enumerate(cur_variants):
        by = {p["block"]: p for p in cur if p["name"] == v}
        bars([by[n]["predicted_us"] if n in by else None for n in names], f"{v} predicted (current source)",
             colors[(j + len(meas_variants)) % 10], hatch="//")
    bars([eager.get((n, dtype, batch)) for n in names], "eager cuDNN measured (H200)", "0.35")
    floors = {}
    for p in cur:
        floors[p["block"]] = p["floor_us"]
    ax.scatter(list(x), [floors.get(n) or float("nan") for n in names], marker="v", color="red", zorder=4,
               label="roofline floor (4.3 TB/s, 800 TFLOP/s)")
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"block {n}" for n in names], rotation=30, ha="right")
    ax.set_ylabel(f"µs per block, batch {batch}, {dtype}, channels_last")
    ax.set_title(f"MobileNetV2 blocks on an H200: measured vs static sm_90a prediction (fit log-sd {log_sd:.2f})")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7.5, ncol=2, loc="upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
