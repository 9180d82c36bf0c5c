import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def pytest_terminal_summary(terminalreporter):
    """After pytest-benchmark's tables: throughput per benchmark (img/s, GFLOP/s and % of the roofline
    floor where the benchmark recorded them in extra_info), which its own columns cannot show."""
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) if session else None
    if not benches:
        return
    rows = []
    for b in benches:
        info, stats = getattr(b, "extra_info", {}) or {}, getattr(b, "stats", None)
        if stats is None or not getattr(stats, "median", None):
            continue
        med = stats.median
        batch = info.get("batch")
        ips = f"{batch / med:.1f}" if batch else ""
        gflops = f"{info['flops'] / med / 1e9:.1f}" if "flops" in info else ""
        floor = ""
        if {"flops", "bytes", "peak_gflops", "peak_gbs"} <= set(info):
            fl = max(info["flops"] / (info["peak_gflops"] * 1e9), info["bytes"] / (info["peak_gbs"] * 1e9))
            floor = f"{100 * fl / med:.0f}%"
        rows.append((b.group or "", b.name, f"{med * 1e3:.3f}", ips, gflops, floor))
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("-", "throughput (median): img/s, GFLOP/s, % of the roofline floor")
    widths = [max(len(r[i]) for r in rows + [("group", "name", "ms", "img/s", "GFLOP/s", "floor")]) for i in range(6)]
    for r in [("group", "name", "ms", "img/s", "GFLOP/s", "floor")] + rows:
        tr.write_line("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def _measure_cpu_peaks():
    """This machine's fp32 matmul rate (GFLOP/s) and copy bandwidth (GB/s, read + write), best of a few
    tries with the benchmark's thread count: the roofline the block benchmarks are compared with."""
    import time

    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    src, dst = torch.randn(32 * 1024 * 1024), torch.empty(32 * 1024 * 1024)
    best_mm = best_cp = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best_mm = min(best_mm, time.perf_counter() - t)
        t = time.perf_counter()
        dst.copy_(src)
        best_cp = min(best_cp, time.perf_counter() - t)
    return 2 * 1536 ** 3 / best_mm / 1e9, 2 * src.numel() * 4 / best_cp / 1e9


@pytest.fixture(scope="session")
def cpu_peaks():
    """(peak_gflops, peak_gbs) of this CPU, measured once per benchmark session."""
    return _measure_cpu_peaks()
