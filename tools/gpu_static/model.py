"""H200 time model of a fused-block kernel from its sm_90a compile (docs/GPU_STATIC.md).

Per kernel variant and block shape the features are times in µs, each the duration of one bottleneck
if it were the only one (per SM; programs spread over the SMs in waves of the occupancy):

  issue    warp-instructions / (4 schedulers x clock)                 (every instruction issues once)
  latency  issue / (resident warps per scheduler)                     (too few warps to hide latency)
  smem     shared-memory bytes / (128 B/clk x clock)
  l2       global + local bytes the SASS moves / 8 TB/s (whole GPU)
  tc       tensor-core flops / (4096 flop/clk for wgmma, 2048 for mma.sync, per SM)
  dram     the fused floor's bytes / 4.3 TB/s (input once, output once, weights)

predicted = sum_k c_k x feature_k, c_k >= 0, fitted in log space to every recorded GPU measurement with a
weak pull of log c_k toward its prior (1, latency 4), so a feature the data cannot see keeps a sane
coefficient. The fit's log-sd is the report's honesty figure.
"""
from __future__ import annotations

import math

import numpy as np

H200 = dict(sms=132, clk_ghz=1.98, regs_per_sm=65536, smem_per_sm=233472, smem_reserved=1024, max_warps=64,
            max_ctas=32, dram_Bps=4.3e12, l2_Bps=8e12, peak_flops=800e12, smem_B_per_clk=128,
            hgmma_flop_per_clk=4096, hmma_flop_per_clk=2048)
FEATURES = ["issue", "latency", "smem", "l2", "tc", "dram"]
PRIOR = dict(issue=1.0, latency=4.0, smem=1.0, l2=1.0, tc=1.0, dram=1.0)
PRIOR_WEIGHT = 0.05


def block_cost(s, batch, itemsize):
    """(bytes, flops) of one fused block (read input once, write output once, weights once; multiply-adds of
    expand at input resolution, 9-tap depthwise and project at output resolution). Same formula as
    benchmarks/bench_inverted_residual_gpu.py's block_cost."""
    ho, wo = (s["h"] - 1) // s["stride"] + 1, (s["w"] - 1) // s["stride"] + 1
    cin, chid, cout = s["cin"], s["chid"], s["cout"]
    weights = (chid * cin + chid if s["has_expand"] else 0) + chid * 10 + cout * chid + cout
    nbytes = itemsize * (batch * (s["h"] * s["w"] * cin + ho * wo * cout) + weights)
    macs = batch * ((s["h"] * s["w"] * cin * chid if s["has_expand"] else 0) + ho * wo * chid * 9 + ho * wo * chid * cout)
    return nbytes, 2 * macs


def floor_us(s, batch, itemsize, hw=H200):
    b, f = block_cost(s, batch, itemsize)
    return max(b / hw["dram_Bps"], f / hw["peak_flops"]) * 1e6


def occupancy(regs, smem_bytes, num_warps, hw=H200):
    """CTAs per SM from registers (allocated in 8s per thread), shared memory (+1 KB reserved) and warps."""
    regs_alloc = -(-max(int(regs or 1), 1) // 8) * 8
    by_regs = hw["regs_per_sm"] // (regs_alloc * 32 * num_warps)
    by_smem = hw["smem_per_sm"] // (int(smem_bytes) + hw["smem_reserved"])
    return max(0, min(by_regs, by_smem, hw["max_warps"] // num_warps, hw["max_ctas"]))


def features(rec, shape, batch, itemsize, hw=H200):
    """Feature times (µs) of one compiled plan record (see gpu_static_report.analyse)."""
    mix, w = rec["mix"], rec["num_warps"]
    ctas = max(1, rec["ctas_per_sm"])
    progs = rec["programs"]
    waves = -(-progs // (hw["sms"] * ctas))
    per_sm = min(waves * ctas, -(-progs // hw["sms"]))           # programs one SM runs (last wave counted full)
    resident = min(ctas, -(-progs // hw["sms"])) * w / 4.0         # warps per scheduler
    clk = hw["clk_ghz"] * 1e3                                      # clocks per µs
    issue = per_sm * mix.get("TOTAL", 0) * w / 4.0 / clk
    smem = per_sm * mix.get("smem_B", 0) * w / hw["smem_B_per_clk"] / clk
    l2 = progs * (mix.get("gld_B", 0) + mix.get("gst_B", 0) + mix.get("local_B", 0)) * w / hw["l2_Bps"] * 1e6
    tc = per_sm * w * (mix.get("hgmma_flops", 0) / hw["hgmma_flop_per_clk"]
                       + mix.get("hmma_flops", 0) / hw["hmma_flop_per_clk"]) / clk
    dram = block_cost(shape, batch, itemsize)[0] / hw["dram_Bps"] * 1e6
    return dict(issue=issue, latency=issue / max(resident, 0.25), smem=smem, l2=l2, tc=tc, dram=dram)


def predict(feat, coef):
    return sum(coef[k] * feat[k] for k in FEATURES)


def fit(rows):
    """rows: [(features dict, measured µs)]. Returns (coef dict, log residuals array)."""
    from scipy.optimize import least_squares
    F = np.array([[r[0][k] for k in FEATURES] for r in rows])
    y = np.log(np.array([r[1] for r in rows]))
    th0 = np.log(np.array([PRIOR[k] for k in FEATURES]))

    def res(th):
        pred = F @ np.exp(th)
        return np.concatenate([np.log(np.maximum(pred, 1e-9)) - y, math.sqrt(PRIOR_WEIGHT) * (th - th0)])

    best = None
    for scale in (0.0, 1.0, -1.0):
        r = least_squares(res, th0 + scale, method="trf")
        if best is None or r.cost < best.cost:
            best = r
    coef = {k: float(v) for k, v in zip(FEATURES, np.exp(best.x))}
    resid = np.log(F @ np.exp(best.x)) - y
    return coef, resid


def log_sd(resid):
    """Root-mean-square of the log residuals (bias included)."""
    resid = np.asarray(resid)
    return float(np.sqrt(np.mean(resid ** 2))) if len(resid) else float("nan")
