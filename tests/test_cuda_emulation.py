"""CPU checks of the CUDA kernel's logic (csrc/cuda/inverted_residual_cuda.cu) without a GPU.

* the constants of mnv2_kernels/cuda_plan.py equal the .cu's, and (when the CUDA extension is built) the
  Python plan equals the C++ plan (binding's ``_plan``) over many shapes;
* the FastDiv (multiply-high) division the kernel uses in place of runtime division is exact;
* the mma.sync m16n8k16 fragment mapping with the kernel's K and N permutations computes A @ B^T, and each
  thread's accumulators hold 8 consecutive channels of a pixel (the 16-byte stores);
* a float64 emulation of the kernel's whole schedule (work items, bands, steps, chunks, the ring of expanded
  rows with its wrap-around, the border selects, the zero padding of channels and pixels, the project and the
  residual) with NaN-poisoned shared memory matches the float64 reference on odd shapes, in ring mode and chunk
  mode, with several bands and steps; a NaN input propagates exactly where the reference puts it.
The emulation follows the kernel phase by phase with the same index arithmetic; it does not execute CUDA.
"""
import math
import os
import re

import numpy as np
import pytest
import torch

from mnv2_kernels import cuda_plan as cp
from mnv2_kernels import _ext
from mnv2_kernels.reference import inverted_residual_reference
from mnv2_kernels.testing import random_block_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU = os.path.join(ROOT, "csrc", "cuda", "inverted_residual_cuda.cu")


# ---------------------------------------------------------------------------------------------------------
# constants and plans

def test_constants_match_source():
    src = open(CU).read()

    def const(name):
        m = re.search(rf"constexpr\s+(?:int|int64_t)\s+{name}\s*=\s*([^;]+);", src)
        assert m, f"{name} not found in {CU}"
        return int(eval(m.group(1).replace("int64_t", "int")))  # e.g. "113 * 1024", "1 << 16"

    assert const("kWarps") == cp.WARPS
    assert const("kPX") == cp.PX
    assert const("kMaxStepPixels") == cp.MAX_STEP_PIXELS
    assert const("kChunk") == cp.CHUNK
    assert const("kBudget2") == cp.BUDGET2
    assert const("kMinRingPixels") == cp.MIN_RING_PIXELS
    assert const("kMaxChannels") == cp.MAX_CHANNELS


def _plan_shapes():
    shapes = []
    for cin, chid, cout in [(32, 32, 16), (16, 96, 24), (24, 144, 24), (24, 144, 32), (32, 192, 64), (64, 384, 96),
                            (96, 576, 160), (160, 960, 320), (8, 8, 8), (200, 1200, 64), (1024, 4096, 1024)]:
        for h, w in [(1, 1), (7, 7), (14, 14), (15, 17), (56, 56), (112, 112), (3, 300)]:
            for s in (1, 2):
                for n in (0, 1, 3, 256):
                    shapes.append((n, cin, chid, cout, h, w, s))
    return shapes


def test_python_plan_matches_cpp_plan():
    if _ext.CUDA_EXT is None or not hasattr(_ext.CUDA_EXT, "_plan"):
        pytest.skip(f"the CUDA extension is not built here ({_ext.CUDA_EXT_ERROR}); the plan is C++ only there")
    for n, cin, chid, cout, h, w, s in _plan_shapes():
        for limit, sms in [(cp.H200_SMEM_OPTIN, 132), (166912, 108), (101376, 30)]:
            c = _ext.CUDA_EXT._plan(n, cin, chid, cout, h, w, s, 1, limit, sms)
            py = cp.plan(n, cin, chid, cout, h, w, s, True, limit, sms)
            assert c == py, ((n, cin, chid, cout, h, w, s, limit, sms), c, py)


def test_plan_fits_and_is_consistent():
    for n, cin, chid, cout, h, w, s in _plan_shapes():
        p = cp.plan(n, cin, chid, cout, h, w, s)
        if not p["ok"]:  # only when even one row per step does not fit, in ring mode and in chunk mode
            chid8 = cp.round_up(chid, 8)
            for hc in (cp.round_up(chid8, 32), min(cp.round_up(chid8, 32), cp.CHUNK)):
                assert cp.layout(cin, chid8, h, w, (w - 1) // s + 1, s, 1, hc)["total"] > cp.H200_SMEM_OPTIN
            continue
        ho = (h - 1) // s + 1
        assert 1 <= p["rows"] <= ho and p["smem"] <= cp.H200_SMEM_OPTIN
        assert p["chunk"] % 32 == 0 and p["nchunks"] * p["chunk"] >= chid
        assert p["nchunks"] == 1 or p["bands"] == p["steps"], "chunk mode must not carry rows between steps"
        assert 1 <= p["bands"] <= p["steps"] and p["items"] == n * p["bands"]
        assert p["ring_rows"] >= min(h, (p["rows"] - 1) * s + 3)


# ---------------------------------------------------------------------------------------------------------
# FastDiv

def _make_fastdiv(d):
    shift = 0
    while (1 << shift) < d:
        shift += 1
    mul = ((1 << 32) * ((1 << shift) - d)) // d + 1
    return mul & 0xFFFFFFFF, shift


def _fdiv(n, mul, shift):
    return (((n * mul) >> 32) + n) >> shift


def test_fastdiv_is_exact():
    rng = np.random.default_rng(0)
    ns = np.concatenate([np.arange(0, 5000), rng.integers(0, 2 ** 31, 20000), [2 ** 31 - 1, 2 ** 31 - 2]])
    for d in list(range(1, 300)) + [1000, 4095, 4096, 65535, 2 ** 20 + 7, 2 ** 30, 2 ** 31 - 1]:
        mul, shift = _make_fastdiv(d)
        for n in ns[:: max(1, d // 50)]:
            n = int(n)
            assert _fdiv(n, mul, shift) == n // d, (n, d)


# ---------------------------------------------------------------------------------------------------------
# mma fragments with the kernel's K and N permutations

def _mma_m16n8k16(a_regs, b_regs):
    """One warp's mma.sync m16n8k16 (row.col) from per-lane registers: a_regs[lane] = 4 pairs (a0..a3), b_regs[lane]
    = 2 pairs (b0, b1), each pair 2 values. PTX ISA fragment layouts. Returns c[lane] = 4 values."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))  # [k][n]
    for lane in range(32):
        g, q = lane >> 2, lane & 3
        for r, (row, col) in enumerate([(g, 2 * q), (g + 8, 2 * q), (g, 2 * q + 8), (g + 8, 2 * q + 8)]):
            A[row, col:col + 2] = a_regs[lane][r]
        for r, k in enumerate([2 * q, 2 * q + 8]):
            B[k:k + 2, g] = b_regs[lane][r]
    C = A @ B
    return [[C[lane >> 2, 2 * (lane & 3)], C[lane >> 2, 2 * (lane & 3) + 1],
             C[(lane >> 2) + 8, 2 * (lane & 3)], C[(lane >> 2) + 8, 2 * (lane & 3) + 1]] for lane in range(32)]


def _ldmatrix_x4_a(A, row0, k0):
    """ldmatrix.x4 of the 16 x 16 tile A[row0:row0+16, k0:k0+16] with the kernel's lane addresses (lane l gives row
    (l & 7) + 8 * ((l >> 3) & 1), column 8 * (l >> 4)): matrix m goes to register m; within a matrix, lane t gets
    row t / 4, columns 2 (t % 4), +1."""
    mats = []
    for m in range(4):
        rows = [row0 + (l & 7) + 8 * ((l >> 3) & 1) for l in range(8 * m, 8 * m + 8)]
        col = k0 + 8 * (m >> 1)
        mats.append(np.stack([A[r, col:col + 8] for r in rows]))  # 8 x 8
    return [[mats[m][t >> 2, 2 * (t & 3):2 * (t & 3) + 2] for m in range(4)] for t in range(32)]


def test_fragment_layout_with_packed_weights_computes_the_gemm():
    """A by ldmatrix from the natural [pixel][channel] layout, B by one 16-byte load per n-tile and 32-wide K block
    from the packed weights (pack_k32), the N permutation of the epilogue: each thread ends up with 8 consecutive
    output channels of its pixels, equal to A @ W^T."""
    rng = np.random.default_rng(1)
    M, K, N = 32, 64, 32  # one warp tile: 2 m-tiles x 4 n-tiles, two 32-wide K blocks
    A = rng.standard_normal((M, K))   # sX / sDW: [pixel][channel]
    W = rng.standard_normal((N, K))   # w_expand / w_project: [out channel][in channel]
    Wp = cp.pack_k32(W)
    acc = [[[[0.0] * 4 for _ in range(32)] for _ in range(4)] for _ in range(2)]  # [i][j][lane][4]
    for k in range(0, K, 32):
        a = {(st, i): _ldmatrix_x4_a(A, 16 * i, k + 16 * st) for st in range(2) for i in range(2)}
        for j in range(4):
            b = []
            for lane in range(32):
                g, q = lane >> 2, lane & 3
                row = ((g >> 1) << 3) + (g & 1) + 2 * j  # the kernel's brow0 + 2j
                v = Wp[row, k + 8 * q:k + 8 * q + 8]        # one 16-byte vector: .x .y .z .w = 4 pairs
                b.append([v[0:2], v[2:4], v[4:6], v[6:8]])
            for i in range(2):
                for st in range(2):
                    c = _mma_m16n8k16(a[(st, i)], [[b[l][2 * st], b[l][2 * st + 1]] for l in range(32)])
                    for lane in range(32):
                        acc[i][j][lane] = [u + w for u, w in zip(acc[i][j][lane], c[lane])]
    ref = A @ W.T
    for i in range(2):
        for lane in range(32):
            g, q = lane >> 2, lane & 3
            for h in range(2):
                pix = i * 16 + g + 8 * h
                got = [acc[i][j][lane][2 * h + e] for j in range(4) for e in range(2)]  # the epilogue's order
                np.testing.assert_allclose(got, ref[pix, q * 8:q * 8 + 8], rtol=1e-12, atol=1e-12)


def test_binding_packing_matches_python():
    if _ext.CUDA_EXT is None or not hasattr(_ext.CUDA_EXT, "_pack_k32"):
        pytest.skip(f"the CUDA extension is not built here ({_ext.CUDA_EXT_ERROR})")
    for rows, cols in [(8, 8), (24, 24), (144, 24), (96, 576), (5, 70)]:
        w = torch.randn(rows, cols, dtype=torch.float64)
        assert np.array_equal(_ext.CUDA_EXT._pack_k32(w).numpy(), cp.pack_k32(w.numpy()))


# ---------------------------------------------------------------------------------------------------------
# float64 emulation of the kernel's schedule

def _relu6(v):
    return np.where(v < 0, 0.0, np.where(v > 6, 6.0, v))  # NaN passes, as in the kernel


def emulate(args, p=None, num_sms=132, smem_limit=cp.H200_SMEM_OPTIN):
    """Runs the kernel's schedule in float64 NumPy. `args` as for mnv2::inverted_residual (float64 tensors).
    `p`: a plan dict (default: cuda_plan.plan). Returns y [N, Cout, Ho, Wo] (float64 tensor)."""
    x, we, be, wdw, bdw, wp, bp, S, residual = args
    N, Cin, H, W = x.shape
    has_expand = we is not None
    Chid, Cout = wdw.shape[0], wp.shape[0]
    Cin8, Chid8, Cout8 = cp.kernel_channels(Cin, Chid, Cout, has_expand)
    # the binding: NHWC, channels zero-padded to multiples of 8
    xh = np.zeros((N, H, W, Cin8))
    xh[..., :Cin] = x.permute(0, 2, 3, 1).numpy()
    xf = xh.reshape(-1)
    if has_expand:
        WE = np.zeros((Chid8, Cin8)); WE[:Chid, :Cin] = we.numpy()
        BE = np.zeros(Chid8); BE[:Chid] = be.numpy()
    WD = np.zeros((Chid8, 9)); WD[:Chid] = wdw.reshape(Chid, 9).numpy()
    BD = np.zeros(Chid8); BD[:Chid] = bdw.numpy()
    WP = np.zeros((Cout8, Chid8)); WP[:Cout, :Chid] = wp.numpy()
    BP = np.zeros(Cout8); BP[:Cout] = bp.numpy()
    Ho, Wo = (H - 1) // S + 1, (W - 1) // S + 1
    y = np.full((N, Ho, Wo, Cout8), np.nan)
    if p is None:
        p = cp.plan(N, Cin8, Chid8, Cout8, H, W, S, has_expand, smem_limit, num_sms)
    assert p["ok"]
    R, HC, nchunks, RR, steps, bands = p["rows"], p["chunk"], p["nchunks"], p["ring_rows"], p["steps"], p["bands"]
    L = cp.layout(Cin8, Chid8, H, W, Wo, S, R, HC)
    assert L["RR"] == RR and L["KP"] == nchunks * HC
    CinP, KP = cp.round_up(Cin8, 32), L["KP"]
    chid_real = Chid
    PXk = cp.PX
    ns = -(-Wo // PXk)

    for cta in range(p["grid"]):
        # shared memory, poisoned: any read of a value the kernel has not written shows up as NaN
        sX = np.full((L["MXP"], L["LX"]), np.nan)
        ring = np.full((cp.ring_pixels(RR, W), L["LH"]), np.nan)
        ring[np.arange(RR + 1) * (W + 1)] = 0.0  # the zero pixels (column -1 of each row, column W of the last)
        sDW = np.full((L["MOP"], L["LD2"]), np.nan)
        sWdw = np.full((9, HC), np.nan)
        sBdw = np.full(HC, np.nan)
        dw_staged = False

        def load_rows(n, e0, e1):
            npix = (e1 - e0) * W
            tot = cp.round_up(npix, 32)
            assert tot <= L["MXP"]
            sX[:tot, :CinP] = 0.0
            base = (n * H + e0) * W * Cin8
            sX[:npix, :Cin8] = xf[base:base + npix * Cin8].reshape(npix, Cin8)

        item = cta
        while item < p["items"]:
            n, b = item // bands, item % bands
            k0, k1 = b * steps // bands, (b + 1) * steps // bands
            oy0 = k0 * R
            e0 = max(0, oy0 * S - 1)
            origin = e0
            e1 = min(H, (min(Ho, oy0 + R) - 1) * S + 2)
            load_rows(n, e0, e1)
            for k in range(k0, k1):
                nrows = min(R, Ho - oy0)
                fr = oy0 * S - 1
                if fr - origin >= RR:
                    origin += RR
                npix_in = (e1 - e0) * W
                ring_row0 = e0 - origin
                if ring_row0 >= RR:
                    ring_row0 -= RR
                assert 0 <= ring_row0 < RR
                slot0 = fr - origin
                assert -1 <= slot0 < RR
                for ch in range(nchunks):
                    c0 = ch * HC
                    # ---- expand (or copy) -> ring, and the depthwise weights
                    if nchunks > 1 or not dw_staged:
                        cc = c0 + np.arange(HC)
                        okc = cc < Chid8
                        sWdw[:] = np.where(okc[None, :], WD[np.minimum(cc, Chid8 - 1)].T, 0.0)
                        sBdw[:] = np.where(okc, BD[np.minimum(cc, Chid8 - 1)], 0.0)
                    dw_staged = True
                    pix = np.arange(npix_in)
                    r = pix // W
                    slot_w = ring_row0 + r
                    slot_w = np.where(slot_w >= RR, slot_w - RR, slot_w)
                    assert (slot_w >= 0).all() and (slot_w < RR).all()
                    rp = slot_w * (W + 1) + 1 + (pix - r * W)
                    if not has_expand:
                        cc = c0 + np.arange(HC)
                        vals = np.where(cc[None, :] < Cin8, sX[:npix_in, np.minimum(cc, L["LX"] - 1)], 0.0)
                        ring[rp, :HC] = vals
                    else:
                        mt = (npix_in + 31) // 32
                        A = sX[:mt * 32, :CinP]
                        cc = c0 + np.arange(HC)
                        Bm = np.zeros((HC, CinP))
                        okr = cc < Chid8
                        Bm[:, :Cin8] = WE[np.where(okr, cc, 0)]  # rows past Chid8 read row 0 (then forced to 0)
                        acc = A @ Bm.T
                        bias = np.where(okr, BE[np.minimum(cc, Chid8 - 1)], 0.0)
                        v = np.where(cc[None, :] < chid_real, _relu6(acc + bias[None, :]), 0.0)
                        ring[rp, :HC] = v[:npix_in]
                    # (barrier) ---- depthwise -> sDW[:, c0:c0+HC]
                    ii, jj = np.meshgrid(np.arange(nrows), np.arange(ns), indexing="ij")
                    ox0 = jj * PXk
                    for px in range(PXk):
                        ox = ox0 + px
                        oy = oy0 + ii
                        acc = np.zeros(ii.shape + (HC,))
                        for ky in range(3):
                            iy = oy * S - 1 + ky
                            row_ok = (iy >= 0) & (iy < H)
                            slot = slot0 + ii * S + ky
                            slot = np.where(slot >= RR, slot - RR, slot)
                            assert (slot[row_ok] >= 0).all() and (slot < RR).all()
                            for kx in range(3):
                                ix = ox * S - 1 + kx
                                # no column check: columns -1 and W are the ring's zero pixels; reads past W
                                # (partial strips) only feed outputs ox >= Wo, which are not stored
                                src = (np.where(row_ok, slot, 0) * (W + 1) + 1) + ix
                                assert (src >= 0).all() and (src < ring.shape[0]).all()
                                v = np.where(row_ok[..., None], ring[src, :HC], 0.0)
                                acc += sWdw[ky * 3 + kx][None, None, :] * v
                        out = _relu6(acc + sBdw[None, None, :])
                        keep = ox < Wo
                        rows = (ii * Wo + ox)[keep]
                        sDW[rows, c0:c0 + HC] = out[keep]
                    # (barrier)
                # ---- project -> y
                npix_out = nrows * Wo
                mt = (npix_out + 31) // 32
                ChidP = cp.round_up(Chid8, 32)
                Am = sDW[:mt * 32, :ChidP]  # the kernel reads K up to ChidP (columns ChidP .. KP are zero)
                Bm = np.zeros((cp.round_up(Cout8, 32), ChidP))
                rows_b = np.arange(Bm.shape[0])
                Bm[:, :Chid8] = WP[np.where(rows_b < Cout8, rows_b, 0)]  # rows past Cout8 read row 0 (not stored)
                acc = Am @ Bm.T
                out = acc[:npix_out, :Cout8] + BP[None, :]
                gp = n * Ho * Wo + oy0 * Wo + np.arange(npix_out)
                if residual:
                    out = out + xf.reshape(-1, Cin8)[gp][:, :Cout8]
                yf = y.reshape(-1, Cout8)
                assert np.isnan(yf[gp]).all(), "an output pixel written twice"
                yf[gp] = out
                # next step's rows (the kernel prefetches them after the expand barrier)
                if k + 1 < k1:
                    ne1 = min(H, (min(Ho, oy0 + 2 * R) - 1) * S + 2)
                    load_rows(n, e1, ne1)
                    e0, e1 = e1, ne1
                oy0 += R
            item += p["grid"]
    return torch.from_numpy(np.ascontiguousarray(y[..., :Cout].transpose(0, 3, 1, 2)))


def _check(args, got, what):
    ref = inverted_residual_reference(*args)
    assert got.shape == ref.shape
    assert torch.isfinite(got).all(), f"{what}: non-finite outputs (a read of poisoned shared memory?)"
    err = (got - ref).abs().max().item()
    assert err <= 1e-9 * max(1.0, ref.abs().max().item()), f"{what}: max error {err:.3g}"


# (N, Cin, Chid, Cout, H, W, stride, residual, expand)
EMU_CONFIGS = [
    (2, 24, 144, 24, 9, 11, 1, True, True),
    (1, 16, 96, 24, 13, 15, 2, False, True),
    (1, 20, 120, 36, 7, 7, 1, False, True),      # odd channels: padded to 8 by the binding, Chid 120 -> 128
    (1, 7, 21, 5, 5, 9, 2, False, True),         # everything odd and tiny
    (2, 24, 24, 16, 15, 15, 1, False, False),    # no expand
    (1, 20, 20, 20, 7, 17, 1, True, False),      # no expand, residual, Cin % 8 != 0
    (1, 24, 24, 40, 17, 17, 2, False, False),    # no expand, stride 2
    (2, 8, 48, 8, 1, 1, 1, True, True),          # 1x1 image
    (1, 8, 48, 12, 1, 2, 2, False, True),        # 1x2 image, stride 2
    (1, 96, 576, 160, 8, 8, 2, False, True),     # chunk mode (Chid 576)
    (1, 160, 960, 320, 7, 7, 1, False, True),    # chunk mode, two bands
    (1, 16, 32, 16, 30, 3, 1, True, True),       # tall and narrow: many steps, ring wrap-around
    (1, 16, 32, 16, 31, 4, 2, False, True),
]


def _emu_id(c):
    n, cin, chid, cout, h, w, s, res, exp = c
    return f"n{n}-{cin}-{chid}-{cout}-{h}x{w}-s{s}{'-res' if res else ''}{'' if exp else '-noexp'}"


@pytest.mark.parametrize("cfg", EMU_CONFIGS, ids=_emu_id)
def test_emulated_schedule_matches_reference(cfg):
    n, cin, chid, cout, h, w, s, res, exp = cfg
    args = random_block_args(cin, chid, cout, stride=s, residual=res, expand=exp, n=n, h=h, w=w,
                             dtype=torch.float64, seed=cin + 3 * h, expand_bias_shift=4.0 if exp else 0.0)
    _check(args, emulate(args), _emu_id(cfg))


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("mode", ["ring-r1", "ring-r3-bands", "chunk-r2", "chunk-r5"])
def test_emulated_forced_plans(mode, S):
    """The same block under plans the default heuristics do not pick for it: every R, chunking and band split the
    kernel allows must give the same result."""
    n, cin, chid, cout, h, w = 2, 16, 64, 16, 13, 10
    args = random_block_args(cin, chid, cout, stride=S, residual=S == 1 and cin == cout, n=n, h=h, w=w,
                             dtype=torch.float64, seed=5, expand_bias_shift=3.0)
    ho = (h - 1) // S + 1
    R, HC = {"ring-r1": (1, 64), "ring-r3-bands": (3, 64), "chunk-r2": (2, 32), "chunk-r5": (5, 32)}[mode]
    steps = -(-ho // R)
    nchunks = 64 // HC
    bands = steps if nchunks > 1 else (2 if mode == "ring-r3-bands" else 1)
    L = cp.layout(16, 64, h, w, (w - 1) // S + 1, S, R, HC)
    grid = 3
    p = dict(ok=1, rows=R, chunk=HC, nchunks=nchunks, ring_rows=L["RR"], steps=steps, bands=bands, ctas_per_sm=1,
             items=n * bands, grid=grid, smem=L["total"])
    _check(args, emulate(args, p), mode)


def test_emulated_nan_propagates_like_the_reference():
    args = list(random_block_args(20, 120, 36, stride=1, n=1, h=9, w=9, dtype=torch.float64, seed=2))
    x = args[0].clone()
    x[0, 3, 4, 4] = float("nan")
    x[0, 5, 0, 8] = float("inf")
    args[0] = x
    got = emulate(args)
    ref = inverted_residual_reference(*args)
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), "NaN positions differ from the reference"
    fin = torch.isfinite(ref)
    assert fin.any() and (~fin).any()
    assert torch.allclose(got[fin], ref[fin], rtol=1e-9, atol=1e-9)


def test_load_rows_incremental_indices():
    """load_rows walks (pixel, channel vector, source offset) incrementally, THREADS vectors apart: every vector of
    every pixel is visited exactly once and the source offset always equals pixel * Cin8 + channel."""
    for cin8 in (8, 16, 24, 32, 40, 64, 96, 160, 200, 1024):
        cinp = cp.round_up(cin8, 32)
        vpp = cinp // 8
        pstep, cstep = cp.THREADS // vpp, (cp.THREADS % vpp) * 8
        step, wrap = pstep * cin8 + cstep, cin8 - cinp
        for npix in (1, 31, 32, 100, 337):
            tot_pix = cp.round_up(npix, 32)
            seen = set()
            for t in range(cp.THREADS):
                pix, c = t // vpp, (t - (t // vpp) * vpp) * 8
                src = pix * cin8 + c
                while pix < tot_pix:
                    assert (pix, c) not in seen
                    seen.add((pix, c))
                    if pix < npix and c < cin8:
                        assert src == pix * cin8 + c
                    pix += pstep
                    c += cstep
                    src += step
                    if c >= cinp:
                        c -= cinp
                        pix += 1
                        src += wrap
            assert seen == {(p, 8 * v) for p in range(tot_pix) for v in range(vpp)}


def test_build_check_block_table_is_the_packages():
    """tools/cuda_build_check.py keeps its own copy of the block shapes (plus eager times): it must agree with
    mnv2_kernels.models.mobilenet_v2_blocks(), the one table derived from the model."""
    import importlib.util

    from mnv2_kernels.models import mobilenet_v2_blocks

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "cuda_build_check.py")
    spec = importlib.util.spec_from_file_location("cuda_build_check", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ours = [(b.name, b.cin, b.chid, b.cout, b.h, b.stride, b.residual) for b in mobilenet_v2_blocks()]
    assert [tuple(row[:7]) for row in tool.BLOCKS] == ours
    assert sum(row[7] for row in tool.BLOCKS) == len(mobilenet_v2_blocks(distinct=False))
