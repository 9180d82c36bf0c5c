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


def test_python_plan_matches_cpp_plan_for_generalised_blocks():
    """mnv2_ir_cuda_plan_ex (K x K depthwise, pad rows before) = cuda_plan.plan(kernel=, pad_t=)."""
    if _ext.CUDA_EXT is None or not hasattr(_ext.CUDA_EXT, "_plan"):
        pytest.skip(f"the CUDA extension is not built here ({_ext.CUDA_EXT_ERROR}); the plan is C++ only there")
    try:
        _ext.CUDA_EXT._plan(1, 8, 8, 8, 7, 7, 1, 1, cp.H200_SMEM_OPTIN, 132, kernel=5, pad_t=2)
    except TypeError:
        pytest.skip("the built mnv2_kernels._C_cuda predates the generalised kernel (rebuild the extension)")
    shapes = _plan_shapes()[::7]
    for n, cin, chid, cout, h, w, s in shapes:
        for K in (1, 3, 5, 7, 9):
            for pt in sorted({K // 2, max(K // 2 - 1, 0)}):
                for limit, sms in [(cp.H200_SMEM_OPTIN, 132), (101376, 30)]:
                    c = _ext.CUDA_EXT._plan(n, cin, chid, cout, h, w, s, 1, limit, sms, kernel=K, pad_t=pt)
                    py = cp.plan(n, cin, chid, cout, h, w, s, True, limit, sms, kernel=K, pad_t=pt)
                    assert c == py, ((n, cin, chid, cout, h, w, s, K, pt, limit, sms), c, py)


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
    for n, cin, chid, cout, h, w, s in _plan_shapes()[::5]:
        for K in (1, 5, 9):
            p = cp.plan(n, cin, chid, cout, h, w, s, kernel=K, pad_t=K // 2)
            if not p["ok"]:
                continue
            assert p["smem"] <= cp.H200_SMEM_OPTIN and (p["nchunks"] == 1 or p["bands"] == p["steps"])
            assert p["ring_rows"] == min(h, (p["rows"] - 1) * s + max(K, s))


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


def _act(name, v):
    """The kernel's activations (act_f2 / act_smooth / act_f in the .cu), in float64: the packed ReLU6 / ReLU / none,
    and the compact smooth forms v * m(v) (GELU tanh as v * sigmoid(2u)); NaN propagates."""
    v = np.asarray(v, dtype=np.float64)
    if name == "relu6":
        return _relu6(v)
    if name == "relu":
        return np.where(v < 0, 0.0, v)
    if name == "none":
        return v
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "hardswish":
            return v * (np.clip(v + 3.0, 0.0, 6.0) * (1.0 / 6.0))
        if name == "silu":
            return v * (1.0 / (1.0 + np.exp(-v)))
        if name == "gelu":
            return v * (0.5 * (1.0 + torch.special.erf(torch.from_numpy(v / math.sqrt(2.0))).numpy()))
        if name == "gelu_tanh":
            z = 1.5957691216057308 * (v + 0.044715 * v ** 3)
            return v * (1.0 / (1.0 + np.exp(-z)))
        if name == "sigmoid":
            return 1.0 / (1.0 + np.exp(-v))
        if name == "hardsigmoid":
            return np.where(np.isnan(v), v, np.clip(v + 3.0, 0.0, 6.0) / 6.0)
    raise AssertionError(name)


def _emulate_leading_dw(xh, w, b, S, pt, pl):
    """leading_dw_kernel: xh [N, H, W, C8] -> [N, H1, W1, C8] with the kernel's index arithmetic (taps outside the
    image skipped)."""
    N, H, W, C8 = xh.shape
    K = w.shape[-1]
    H1, W1 = (H - 1) // S + 1, (W - 1) // S + 1
    out = np.broadcast_to(b, (N, H1, W1, C8)).copy()
    oy, ox = np.arange(H1), np.arange(W1)
    for ky in range(K):
        iy = oy * S - pt + ky
        for kx in range(K):
            ix = ox * S - pl + kx
            okr, okc = (iy >= 0) & (iy < H), (ix >= 0) & (ix < W)
            v = xh[:, np.clip(iy, 0, H - 1)][:, :, np.clip(ix, 0, W - 1)]
            v = np.where(okr[None, :, None, None] & okc[None, None, :, None], v, 0.0)
            out += w[:, ky, kx][None, None, None, :] * v
    return out


def emulate(args, p=None, num_sms=132, smem_limit=cp.H200_SMEM_OPTIN):
    """Runs the kernel's schedule in float64 NumPy. `args` as for mnv2::inverted_residual (9 values, float64
    tensors) or mnv2::inverted_residual_ex (22 values). `p`: a plan dict (default: cuda_plan.plan). Returns
    y [N, Cout, Ho, Wo] (float64 tensor)."""
    if len(args) == 9:
        x, we, be, wdw, bdw, wp, bp, S, residual = args
        opts = dict(act_e="relu6", act_d="relu6", act_p="none", padding="symmetric", se=None, start=None)
    else:
        (x, we, be, wdw, bdw, wsr, bsr, wse, bse, wp, bp, S, residual, act_e, act_d, padding, se_act, se_gate,
         act_p, w0, b0, S0) = args
        opts = dict(act_e=act_e, act_d=act_d, act_p=act_p, padding=padding,
                    se=None if wsr is None else (wsr.numpy(), bsr.numpy(), wse.numpy(), bse.numpy(), se_act, se_gate),
                    start=None if w0 is None else (w0.numpy(), b0.numpy(), S0))
    N, Cin, H0, W0 = x.shape
    has_expand = we is not None
    Chid, Cout = wdw.shape[0], wp.shape[0]
    K = wdw.shape[-1]
    KK = K * K
    Z = cp.ring_gap(K)
    Cin8, Chid8, Cout8 = cp.kernel_channels(Cin, Chid, Cout, has_expand)
    # the binding: NHWC, channels zero-padded to multiples of 8
    xh = np.zeros((N, H0, W0, Cin8))
    xh[..., :Cin] = x.permute(0, 2, 3, 1).numpy()
    xres = xh.reshape(-1, Cin8)  # the residual's source: the block input
    if opts["start"] is not None:  # leading depthwise into the narrow buffer
        w0n, b0n, S0 = opts["start"]
        K0 = w0n.shape[-1]
        W0P = np.zeros((Cin8, K0, K0)); W0P[:Cin] = w0n
        B0P = np.zeros(Cin8); B0P[:Cin] = b0n
        pt0, pl0 = cp.pads(H0, K0, S0, opts["padding"])[0], cp.pads(W0, K0, S0, opts["padding"])[0]
        xh = _emulate_leading_dw(xh, W0P, B0P, S0, pt0, pl0)
    H, W = xh.shape[1], xh.shape[2]
    xf = xh.reshape(-1)
    if has_expand:
        WE = np.zeros((Chid8, Cin8)); WE[:Chid, :Cin] = we.numpy()
        BE = np.zeros(Chid8); BE[:Chid] = be.numpy()
    WD = np.zeros((Chid8, KK)); WD[:Chid] = wdw.reshape(Chid, KK).numpy()
    BD = np.zeros(Chid8); BD[:Chid] = bdw.numpy()
    WP = np.zeros((Cout8, Chid8)); WP[:Cout, :Chid] = wp.numpy()
    BP = np.zeros(Cout8); BP[:Cout] = bp.numpy()
    Ho, Wo = (H - 1) // S + 1, (W - 1) // S + 1
    pt, pb = cp.pads(H, K, S, opts["padding"])
    pl, pr = cp.pads(W, K, S, opts["padding"])
    assert max(pt, pb, pl, pr) <= Z, "a pad wider than the ring's zero gap"
    if p is None:
        p = cp.plan(N, Cin8, Chid8, Cout8, H, W, S, has_expand, smem_limit, num_sms, kernel=K, pad_t=pt)
    assert p["ok"]
    R, HC, nchunks, RR, steps, bands = p["rows"], p["chunk"], p["nchunks"], p["ring_rows"], p["steps"], p["bands"]
    L = cp.layout(Cin8, Chid8, H, W, Wo, S, R, HC, K)
    assert L["RR"] == RR and L["KP"] == nchunks * HC
    CinP, KP = cp.round_up(Cin8, 32), L["KP"]
    chid_real = Chid
    PXk = cp.PX
    ns = -(-Wo // PXk)

    def run_pass(se_mode, pool=None, gate=None):
        """One launch of the ring kernel: se_mode 0 (no squeeze-excite), 1 (pool into `pool`, no project), 2 (gate)."""
        y = np.full((N, Ho, Wo, Cout8), np.nan)
        pooled = np.zeros((N, Ho, Wo), dtype=int)  # how often each output pixel was added into the pool
        for cta in range(p["grid"]):
            # shared memory, poisoned: any read of a value the kernel has not written shows up as NaN
            sX = np.full((L["MXP"], L["LX"]), np.nan)
            ring = np.full((cp.ring_pixels(RR, W, Z), L["LH"]), np.nan)
            for zp in range((RR + 1) * Z):  # the zero pixels: Z before every row and after the last
                r = zp // Z
                ring[r * (W + Z) + zp - r * Z] = 0.0
            sDW = np.full((L["MOP"], L["LD2"]), np.nan)
            sWdw = np.full((KK, HC), np.nan)
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
                e0 = max(0, oy0 * S - pt)
                origin = e0
                e1 = min(H, (min(Ho, oy0 + R) - 1) * S - pt + K)
                load_rows(n, e0, e1)
                for k in range(k0, k1):
                    nrows = min(R, Ho - oy0)
                    fr = oy0 * S - pt
                    lo = e0 if (K < S and e0 < fr) else fr  # K < S: a row above fr is expanded, never read
                    if lo - origin >= RR:
                        origin += RR
                    npix_in = (e1 - e0) * W
                    ring_row0 = e0 - origin
                    if ring_row0 >= RR:
                        ring_row0 -= RR
                    assert 0 <= ring_row0 < RR
                    slot0 = fr - origin
                    assert -pt <= slot0 < RR + (K < S)
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
                        rp = slot_w * (W + Z) + Z + (pix - r * W)
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
                            v = np.where(cc[None, :] < chid_real, _act(opts["act_e"], acc + bias[None, :]), 0.0)
                            ring[rp, :HC] = v[:npix_in]
                        # (barrier) ---- depthwise -> sDW[:, c0:c0+HC] (or the pool)
                        ii, jj = np.meshgrid(np.arange(nrows), np.arange(ns), indexing="ij")
                        ox0 = jj * PXk
                        real = (c0 + np.arange(HC)) < Chid8
                        if se_mode == 2:
                            gt = np.where(real, gate[n, np.minimum(c0 + np.arange(HC), Chid8 - 1)], 0.0)
                        for px in range(PXk):
                            ox = ox0 + px
                            oy = oy0 + ii
                            acc = np.zeros(ii.shape + (HC,))
                            for ky in range(K):
                                iy = oy * S - pt + ky
                                row_ok = (iy >= 0) & (iy < H)
                                slot = slot0 + ii * S + ky
                                slot = np.where(slot >= RR, slot - RR, slot)
                                assert (slot[row_ok] >= 0).all() and (slot < RR).all()
                                for kx in range(K):
                                    ix = ox * S - pl + kx
                                    # no column check: columns -Z .. -1 and W .. W+Z-1 are the ring's zero pixels;
                                    # reads past them (partial strips) only feed outputs ox >= Wo, never stored
                                    src = (np.where(row_ok, slot, 0) * (W + Z) + Z) + ix
                                    assert (src >= 0).all() and (src < ring.shape[0]).all()
                                    v = np.where(row_ok[..., None], ring[src, :HC], 0.0)
                                    acc += sWdw[ky * K + kx][None, None, :] * v
                            out = _act(opts["act_d"], acc + sBdw[None, None, :])
                            keep = ox < Wo
                            if se_mode == 1:
                                oyk, oxk = oy[keep], ox[keep]
                                add = out[keep][:, real]
                                pool[n, (c0 + np.arange(HC))[real]] += add.sum(0)
                                if ch == 0:
                                    np.add.at(pooled, (n, oyk, oxk), 1)
                                continue
                            if se_mode == 2:
                                out = out * gt[None, None, :]
                            rows = (ii * Wo + ox)[keep]
                            sDW[rows, c0:c0 + HC] = out[keep]
                        # (barrier)
                    if se_mode != 1:
                        # ---- project -> y
                        npix_out = nrows * Wo
                        mt = (npix_out + 31) // 32
                        ChidP = cp.round_up(Chid8, 32)
                        Am = sDW[:mt * 32, :ChidP]  # the kernel reads K up to ChidP (columns ChidP .. KP are zero)
                        Bm = np.zeros((cp.round_up(Cout8, 32), ChidP))
                        rows_b = np.arange(Bm.shape[0])
                        Bm[:, :Chid8] = WP[np.where(rows_b < Cout8, rows_b, 0)]  # rows past Cout8 read row 0
                        acc = Am @ Bm.T
                        out = _act(opts["act_p"], acc[:npix_out, :Cout8] + BP[None, :])
                        gp = n * Ho * Wo + oy0 * Wo + np.arange(npix_out)
                        if residual:
                            out = out + xres[gp][:, :Cout8]
                        yf = y.reshape(-1, Cout8)
                        assert np.isnan(yf[gp]).all(), "an output pixel written twice"
                        yf[gp] = out
                    # next step's rows (the kernel prefetches them after the expand barrier)
                    if k + 1 < k1:
                        ne1 = min(H, (min(Ho, oy0 + 2 * R) - 1) * S - pt + K)
                        load_rows(n, e1, ne1)
                        e0, e1 = e1, ne1
                    oy0 += R
                item += p["grid"]
        if se_mode == 1:
            assert (pooled == 1).all(), "every output pixel pooled exactly once"
        return y

    if opts["se"] is None:
        y = run_pass(0)
    else:
        wsr, bsr, wse, bse, se_act, se_gate = opts["se"]
        pool = np.zeros((N, Chid8))
        run_pass(1, pool=pool)
        # se_excite_kernel: s = pool / (Ho * Wo), r = se_act(Wr s + br), gate = se_gate(We r + be) (padded rows 0)
        WR = np.zeros((wsr.shape[0], Chid8)); WR[:, :Chid] = wsr
        WX = np.zeros((Chid8, wsr.shape[0])); WX[:Chid] = wse
        BX = np.zeros(Chid8); BX[:Chid] = bse
        s_ = pool * (1.0 / (Ho * Wo))
        r_ = _act(se_act, s_ @ WR.T + bsr[None, :])
        gate = _act(se_gate, r_ @ WX.T + BX[None, :])
        y = run_pass(2, gate=gate)
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
    _check(args, emulate(args, _forced_plan(mode, n, h, w, S)), mode)


def _forced_plan(mode, n, h, w, S, K=3):
    """A plan dict (as cuda_plan.plan's) for a block of n images [16 -> 64 hidden channels, h x w], stride S, K x K
    depthwise, with the rows R, channel chunk HC and band split of ``mode`` ("ring-r1", "ring-r3-bands",
    "chunk-r2", "chunk-r5") and a grid of 3 CTAs."""
    ho, wo = (h - 1) // S + 1, (w - 1) // S + 1
    R, HC = {"ring-r1": (1, 64), "ring-r3-bands": (3, 64), "chunk-r2": (2, 32), "chunk-r5": (5, 32)}[mode]
    steps = -(-ho // R)
    nchunks = 64 // HC
    bands = steps if nchunks > 1 else (2 if mode == "ring-r3-bands" else 1)
    L = cp.layout(16, 64, h, w, wo, S, R, HC, K)
    return dict(ok=1, rows=R, chunk=HC, nchunks=nchunks, ring_rows=L["RR"], steps=steps, bands=bands, ctas_per_sm=1,
                items=n * bands, grid=3, smem=L["total"])


def _check_nan_inf_propagate(args, reference):
    """Plants a NaN and an inf in x (args[0], [N >= 1, C >= 6, >= 5, >= 9]): the emulated kernel's NaN positions
    equal ``reference``'s, and its finite outputs agree (there are some of each)."""
    args = list(args)
    x = args[0].clone()
    x[0, 3, 4, 4] = float("nan")
    x[0, 5, 0, 8] = float("inf")
    args[0] = x
    got = emulate(args)
    ref = reference(*args)
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), "NaN positions differ from the reference"
    fin = torch.isfinite(ref)
    assert fin.any() and (~fin).any()
    assert torch.allclose(got[fin], ref[fin], rtol=1e-9, atol=1e-9)


def test_emulated_nan_propagates_like_the_reference():
    _check_nan_inf_propagate(random_block_args(20, 120, 36, stride=1, n=1, h=9, w=9, dtype=torch.float64, seed=2),
                             inverted_residual_reference)


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


# ---------------------------------------------------------------------------------------------------------
# the generalised block (mnv2::inverted_residual_ex, issue 13): the same schedule with K x K depthwise, TF "same"
# padding, activations, squeeze-excite in two passes and the leading depthwise

def _ex_args(cin, chid, cout, *, k=3, stride=1, residual=False, expand=True, se=0, start=0, stride_start=1,
             acts=("relu6", "relu6", "none"), padding="symmetric", se_fns=("relu", "sigmoid"), n=1, h=9, w=9,
             seed=0):
    """float64 arguments of mnv2::inverted_residual_ex (22 values); se: reduced channels (0: none); start: leading
    depthwise kernel (0: none)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    if not expand:
        chid = cin
    x = r(n, cin, h, w)
    we, be = (r(chid, cin, scale=cin ** -0.5), r(chid) + 1.0) if expand else (None, None)
    wdw, bdw = r(chid, k, k, scale=1.0 / k), r(chid)
    sev = (r(se, chid, scale=chid ** -0.5), r(se), r(chid, se, scale=se ** -0.5), r(chid)) if se else (None,) * 4
    st = (r(cin, start, start, scale=1.0 / start), r(cin)) if start else (None, None)
    return [x, we, be, wdw, bdw, *sev, r(cout, chid, scale=chid ** -0.5), r(cout), stride, residual, acts[0],
            acts[1], padding, se_fns[0], se_fns[1], acts[2], st[0], st[1], stride_start if start else 1]


def _check_ex(args, got, what):
    from mnv2_kernels.reference import inverted_residual_ex_reference
    ref = inverted_residual_ex_reference(*args)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert torch.isfinite(got).all(), f"{what}: non-finite outputs (a read of poisoned shared memory?)"
    err = (got - ref).abs().max().item()
    assert err <= 1e-9 * max(1.0, ref.abs().max().item()), f"{what}: max error {err:.3g}"


# (id, kwargs of _ex_args)
EX_CONFIGS = [
    ("k1-s1", dict(cin=8, chid=24, cout=8, k=1, residual=True, acts=("relu", "none", "none"))),
    ("k1-s2-ring-2R", dict(cin=8, chid=24, cout=16, k=1, stride=2, h=13, w=10, acts=("gelu", "none", "none"))),
    ("k5-s1-hardswish", dict(cin=16, chid=40, cout=16, k=5, residual=True, acts=("hardswish", "hardswish", "none"))),
    ("k5-s2-tf-even", dict(cin=16, chid=48, cout=24, k=5, stride=2, h=10, w=12, padding="tf_same",
                           acts=("silu", "silu", "none"))),
    ("k3-s2-tf-even", dict(cin=8, chid=32, cout=8, k=3, stride=2, h=8, w=14, padding="tf_same",
                           acts=("relu6", "relu6", "none"))),
    ("k3-s2-tf-odd", dict(cin=8, chid=32, cout=8, k=3, stride=2, h=9, w=7, padding="tf_same",
                          acts=("gelu_tanh", "gelu", "none"))),
    ("k7-s1-tf", dict(cin=8, chid=16, cout=8, k=7, h=11, w=9, padding="tf_same", acts=("relu", "relu", "none"))),
    ("k7-s2-tall", dict(cin=8, chid=16, cout=8, k=7, stride=2, h=30, w=4, padding="tf_same",
                        acts=("relu", "relu", "none"))),
    ("k9-s1", dict(cin=8, chid=16, cout=12, k=9, h=12, w=11, acts=("silu", "silu", "none"))),
    ("k9-s2-tf-even", dict(cin=8, chid=16, cout=12, k=9, stride=2, h=12, w=10, padding="tf_same",
                           acts=("hardswish", "none", "none"))),
    ("k5-noexp", dict(cin=20, chid=20, cout=20, k=5, expand=False, residual=True, acts=("relu6", "relu", "none"))),
    ("k5-chunk", dict(cin=40, chid=200, cout=48, k=5, stride=2, h=14, w=14, padding="tf_same",
                      acts=("hardswish", "hardswish", "none"))),
    ("act-project", dict(cin=16, chid=32, cout=24, k=3, acts=("hardswish", "hardswish", "hardswish"))),
    ("se-mnv3", dict(cin=16, chid=72, cout=24, k=5, stride=2, se=24, acts=("relu", "relu", "none"),
                     se_fns=("relu", "hardsigmoid"), padding="symmetric", h=11, w=10, n=2)),
    ("se-effnet", dict(cin=16, chid=96, cout=24, k=3, se=4, acts=("silu", "silu", "none"), se_fns=("silu", "sigmoid"),
                       h=9, w=9, n=2)),
    ("se-chunk-tf", dict(cin=40, chid=240, cout=40, k=5, se=10, residual=True, padding="tf_same",
                         acts=("hardswish", "hardswish", "none"), se_fns=("relu", "hardsigmoid"), h=7, w=7)),
    ("se-odd-channels", dict(cin=7, chid=21, cout=5, k=3, stride=2, se=5, acts=("gelu", "gelu", "none"),
                             se_fns=("gelu_tanh", "sigmoid"), h=6, w=9)),
    ("start-uib-extradw", dict(cin=16, chid=64, cout=16, k=5, start=3, residual=True, acts=("relu", "relu", "none"),
                               h=10, w=9)),
    ("start-s2-tf", dict(cin=16, chid=64, cout=24, k=3, start=5, stride_start=2, padding="tf_same",
                         acts=("relu", "none", "none"), h=12, w=10)),
    ("start-k1-middle", dict(cin=8, chid=32, cout=8, k=1, start=3, residual=True, acts=("relu", "none", "none"))),
]


@pytest.mark.parametrize("cfg", EX_CONFIGS, ids=[c[0] for c in EX_CONFIGS])
def test_emulated_ex_schedule_matches_reference(cfg):
    name, kw = cfg
    args = _ex_args(seed=len(name), **kw)
    _check_ex(args, emulate(args), name)


@pytest.mark.parametrize("K,S,mode", [(5, 1, "ring-r1"), (5, 2, "ring-r3-bands"), (7, 1, "chunk-r2"),
                                      (1, 2, "ring-r3-bands"), (9, 2, "chunk-r5"), (3, 2, "ring-r3-bands")])
def test_emulated_ex_forced_plans(K, S, mode):
    """Forced rows / chunks / bands with K x K depthwise and TF padding: every plan the kernel allows agrees."""
    n, cin, chid, cout, h, w = 2, 16, 64, 16, 13, 10
    args = _ex_args(cin, chid, cout, k=K, stride=S, residual=S == 1, n=n, h=h, w=w, padding="tf_same", se=8,
                    acts=("hardswish", "silu", "none"), se_fns=("relu", "hardsigmoid"), seed=K)
    _check_ex(args, emulate(args, _forced_plan(mode, n, h, w, S, K)), f"K{K}-S{S}-{mode}")


def test_emulated_ex_nan_propagates_like_the_reference():
    from mnv2_kernels.reference import inverted_residual_ex_reference
    _check_nan_inf_propagate(_ex_args(16, 48, 16, k=5, residual=True, acts=("hardswish", "silu", "none"),
                                      padding="tf_same", h=9, w=9, seed=3), inverted_residual_ex_reference)


def test_kernel_activations_equal_pytorchs():
    """The kernel's compact activation forms (act_smooth, hardsigmoid via act_f) equal PyTorch's, NaN included."""
    from mnv2_kernels.reference import ACTIVATIONS, SE_GATES, activation
    v = np.concatenate([np.linspace(-12, 12, 2001), [0.0, -0.0, np.nan, 1e30, -1e30]])
    for name in ACTIVATIONS + SE_GATES:
        want = activation(torch.from_numpy(v.copy()), name).numpy()
        got = _act(name, v)
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-12, err_msg=name)


def test_ex_pads_and_plan_geometry():
    """cuda_plan.pads equals reference.tf_same_pads; every pad fits the ring's zero gap; the ring holds a step's rows
    and advances by at most RR rows per step, for every K, stride and size."""
    from mnv2_kernels.reference import tf_same_pads
    for K in (1, 3, 5, 7, 9):
        for S in (1, 2):
            for size in range(1, 40):
                tb = cp.pads(size, K, S, "tf_same")
                assert tb == tf_same_pads(size, K, S)
                for before, after in (tb, cp.pads(size, K, S, "symmetric")):
                    assert max(before, after) <= cp.ring_gap(K)
                    out = (size + before + after - K) // S + 1
                    assert out == (size - 1) // S + 1, (K, S, size, before, after)
            for R in range(1, 12):
                RR = cp.ring_rows_for(R, S, K, 10 ** 6)
                assert RR >= (R - 1) * S + K and RR >= R * S
