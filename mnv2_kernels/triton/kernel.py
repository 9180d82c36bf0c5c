"""Triton kernels of the fused MobileNetV2 inverted-residual block (docs/CONTRACT.md).

Two variants (the launcher, mnv2_kernels/triton/launcher.py, picks one per shape):
  inverted_residual_ring_kernel   any shape: bands of output rows, a ring of expanded input rows (below)
  inverted_residual_chunk_kernel  output images of <= 64 pixels (7x7 blocks): one image per item, the ring
                                  holds one chunk of expanded channels of the whole image at a time

The "ring" design:

Persistent grid: program ``pid`` owns a contiguous range of work items, item = (image n, band of R output
rows); consecutive items of a program are, mostly, consecutive bands of one image. Each program keeps two
private scratch buffers in global memory, small enough that the whole grid's scratch stays in L2:

    ring[pid]  [RING, W + 2, CHS] in x's dtype (eager rounds h so too): the expanded, activated input rows
               of the current band (row iy in slot iy % RING, column ix at ix + 1; columns 0 and W + 1 and
               the rows -1 and H outside the image hold zeros); each input row is expanded once per image
               and program (a program's first band of an image also expands the band's halo rows)
    dbuf[pid]  [BLOCK_PB, CHS] in x's dtype: the depthwise output of the current tile (the project's operand)

Per item:
    phase A (expand): for the input rows the band needs and the ring does not hold yet, in tiles of BLOCK_PA
        pixels and chunks of CHUNK expanded channels (rows outside the image: 0):
            ring[row % RING, col + 1, chunk] = relu6(x[pixels] @ w_expand[chunk].T + b_expand[chunk])  # tl.dot
    barrier (the rows were written by other threads of the program)
    phase B: for each tile of BLOCK_PB output pixels of the band:
        depthwise: for each chunk:
            dbuf[:, chunk] = relu6(sum over 9 taps ring[tap pixel, chunk] * w_dw[tap, chunk] + b_dw[chunk])
        barrier
        project: for each tile of output channels:
            y = sum over chunks dbuf[:, chunk] @ w_project[co, chunk].T + b_project (+ x)           # tl.dot
        barrier (before dbuf or ring slots are overwritten)

No tl.gather and no recompute: the 9 depthwise taps are plain shifted loads from the ring (L1/L2 hits, no
masks; float32 accumulation), and both 1x1 convolutions are tl.dot on operands loaded from memory (wgmma
on sm_90 for tiles of >= 64 pixels). Out-of-image taps read the ring's zero border, written as 0 (a select,
never a product): the zero padding applies to the activated expanded tensor (relu6(b_expand) never leaks in)
and a NaN/Inf in x reaches exactly the outputs PyTorch's block reaches. ReLU6 propagates NaN like
torch.nn.functional.relu6; padded channels are selected to 0, never multiplied by 0. Without an expand conv
the taps read x directly. Offsets that can pass 2^31 elements (N * H * W * C) are int64.

The generalised block (issue 13, docs/CONTRACT.md "The generalised block", launcher_ex.py) runs on the same two
kernels through constexpr options whose defaults are the MobileNetV2 block (K=3, PAD_T=PAD_L=1, relu6 / relu6 /
none, no squeeze-excite), which compile to the same code as before:
    K, PAD_T, PAD_L    depthwise kernel (1, 3, 5, 7, 9) and its top/left zero padding (k // 2, or TensorFlow
                       "same"'s smaller "before" pad); the bottom/right padding is implied (rows and columns
                       outside the image read the ring's zero border), the output size is the launcher's
    ACT_EXPAND, ACT_DW, ACT_PROJECT   activations (_act: relu6, relu, hardswish, silu, gelu, gelu_tanh, none;
                       NaN propagates as in PyTorch)
    HAS_SE             multiply the depthwise output by a per-(image, channel) gate (gate_ptr, float32)
    POOL               squeeze-excite pass 1: expand + depthwise only, accumulate per-item channel sums of the
                       depthwise output (pool_ptr), no dbuf, no project, no output
    SEPARATE_RES       the residual comes from res_ptr (the block's input when a leading depthwise, run by
                       depthwise_kernel below, produced x_ptr)
    SE_FUSED, SE_ACT, SE_GATE, CRDP, SE_BLOCK_C (chunk kernel only): squeeze-excite in the one launch (_se_fused:
                       the image's depthwise output is all in dbuf); PROJ_PB, DW_STATIC_K: tiles of 128 / 256
                       pixels (project in sub-tiles, depthwise rows in a loop)
The ring keeps HALO = K // 2 zero columns on each side (width W + 2 * HALO) and RING >= (R - 1) * STRIDE + K rows.
"""
import triton
import triton.language as tl


@triton.jit
def _relu6(v):
    """min(max(v, 0), 6) with NaN propagated (as torch's ReLU6 does); v is float32."""
    return tl.clamp(v, 0.0, 6.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _act(v, ACT: tl.constexpr):
    """Activation ``ACT`` (mnv2_kernels.reference.ACTIVATIONS, or an SE gate: sigmoid, hardsigmoid) of float32
    ``v``, NaN propagated as PyTorch's: relu6 / relu as NaN-propagating clamps (a max with 0 would turn NaN into
    0), hardswish = v * relu6(v + 3) / 6, silu = v * sigmoid(v), gelu = v / 2 * (1 + erf(v / sqrt 2)),
    gelu_tanh = v / 2 * (1 + tanh(u)) = v * sigmoid(2 u), u = sqrt(2 / pi) * (v + 0.044715 v^3)."""
    if ACT == "relu6":
        v = _relu6(v)
    elif ACT == "relu":
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == "hardswish":
        v = v * (_relu6(v + 3.0) * (1.0 / 6.0))
    elif ACT == "silu":
        v = v * tl.sigmoid(v)
    elif ACT == "gelu":
        v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    elif ACT == "gelu_tanh":
        v = v * tl.sigmoid(1.5957691216057308 * (v + 0.044715 * v * v * v))
    elif ACT == "sigmoid":
        v = tl.sigmoid(v)
    elif ACT == "hardsigmoid":
        v = _relu6(v + 3.0) * (1.0 / 6.0)
    else:
        tl.static_assert(ACT == "none", "unknown activation")
    return v


@triton.jit
def _dw_ring_row(d, row_ptr, wdw_ptr, c, ky, CHS: tl.constexpr, K: tl.constexpr):
    """d += sum over kx of ring row tap (ky, kx) * w_dw[ky * K + kx]: row_ptr [BLOCK_PB, CHUNK] points at tap
    (ky, 0) of each pixel; tap kx is kx * CHS further (an immediate offset)."""
    for kx in tl.static_range(K):
        hv = tl.load(row_ptr + kx * CHS).to(tl.float32)                                   # [BLOCK_PB, CHUNK]
        wv = tl.load(wdw_ptr + (ky * K + kx) * CHS + c)                                   # [CHUNK]
        d += hv * wv[None, :]
    return d


@triton.jit
def _dw_x_row(d, x_img, wdw_ptr, c, ry, ix, H, W, CIN: tl.constexpr, CHS: tl.constexpr, ky, K: tl.constexpr):
    """d += sum over kx of x[ry, ix + kx, c] * w_dw[ky * K + kx] (no expand conv: taps read x, masked to the
    image; masked-off taps load 0, never 0 * a NaN)."""
    for kx in tl.static_range(K):
        rx = ix + kx
        ok = (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)                                  # [BLOCK_PB]
        off = (ry * W + rx).to(tl.int64) * CIN
        hv = tl.load(x_img + off[:, None] + c[None, :],
                     mask=ok[:, None] & (c < CIN)[None, :], other=0.0).to(tl.float32)   # [BLOCK_PB, CHUNK]
        wv = tl.load(wdw_ptr + (ky * K + kx) * CHS + c)                                   # [CHUNK]
        d += hv * wv[None, :]
    return d


@triton.jit
def _dw_chunk_row(d, ring, tap0, x_img, wdw_ptr, c, c_ar, oy, ox, ky, WS, H, W, CIN: tl.constexpr,
                  CHS: tl.constexpr, CHUNK: tl.constexpr, STRIDE: tl.constexpr, PAD_T: tl.constexpr,
                  PAD_L: tl.constexpr, K: tl.constexpr, HAS_EXPAND: tl.constexpr):
    """The chunk kernel's depthwise row ky: d += sum over kx of h[oy * STRIDE - PAD_T + ky, ox * STRIDE - PAD_L
    + kx] * w_dw[ky * K + kx], h from the ring (tap0: ring offset of tap (0, 0)) or, without expand, from x
    (masked to the image)."""
    for kx in tl.static_range(K):
        if HAS_EXPAND:
            hv = tl.load(ring + (tap0 + (ky * WS + kx) * CHUNK)[:, None] + c_ar[None, :]).to(tl.float32)
        else:
            ry = oy * STRIDE - PAD_T + ky
            rx = ox * STRIDE - PAD_L + kx
            ok = (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
            hv = tl.load(x_img + (ry * W + rx).to(tl.int64)[:, None] * CIN + c[None, :],
                         mask=ok[:, None] & (c < CIN)[None, :], other=0.0).to(tl.float32)
        wv = tl.load(wdw_ptr + (ky * K + kx) * CHS + c)                                   # [CHUNK]
        d += hv * wv[None, :]
    return d


@triton.jit
def _se_fused(dbuf, pool, se_ptr, npb, BLOCK_PB: tl.constexpr, CHS: tl.constexpr, CRDP: tl.constexpr,
              SE_BLOCK_C: tl.constexpr, SE_ACT: tl.constexpr, SE_GATE: tl.constexpr):
    """Squeeze-excite of one image whose depthwise output is all in dbuf [BLOCK_PB, CHS] (chunk kernel):
    pool [CHS] float32 holds its channel sums over npb pixels; se_ptr the packed float32 weights
    w_r [CRDP, CHS] | b_r [CRDP] | w_e^T [CRDP, CHS] | b_e [CHS] (zero-padded). Then
        t = SE_ACT(w_r @ (pool / npb) + b_r); dbuf[:, c] *= SE_GATE(w_e[c] @ t + b_e[c])
    Ends with a barrier (dbuf rewritten)."""
    j = tl.arange(0, CRDP)
    cc = tl.arange(0, SE_BLOCK_C)
    t = tl.zeros((CRDP,), dtype=tl.float32)
    for c0 in range(0, CHS, SE_BLOCK_C):
        s = tl.load(pool + c0 + cc) / npb                                                       # [SE_BLOCK_C]
        w = tl.load(se_ptr + j[:, None] * CHS + (c0 + cc)[None, :])                             # [CRDP, SE_BLOCK_C]
        t += tl.sum(w * s[None, :], axis=1)
    t = _act(t + tl.load(se_ptr + CRDP * CHS + j), SE_ACT)      # padded rows: act(0) = 0, and w_e^T rows are 0
    we = se_ptr + CRDP * CHS + CRDP
    q = tl.arange(0, BLOCK_PB)
    for c0 in range(0, CHS, SE_BLOCK_C):
        c = c0 + cc
        g = tl.sum(tl.load(we + j[:, None] * CHS + c[None, :]) * t[:, None], axis=0)            # [SE_BLOCK_C]
        g = _act(g + tl.load(we + CRDP * CHS + c), SE_GATE)
        ptrs = dbuf + q[:, None] * CHS + c[None, :]
        h = tl.load(ptrs).to(tl.float32) * g[None, :]
        tl.store(ptrs, h.to(dbuf.dtype.element_ty))
    tl.debug_barrier()                                          # the gated dbuf is visible to the project


@triton.jit
def _project_tile(dbuf, wp_ptr, bp_ptr, x_img, y_img, oy, ox, p_ok, W, WO,
                  CO0: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_PB: tl.constexpr, CHUNK: tl.constexpr,
                  CHS: tl.constexpr, CIN: tl.constexpr, CHID: tl.constexpr, COUT: tl.constexpr,
                  RESIDUAL: tl.constexpr, DOT_PRECISION: tl.constexpr, ACT_PROJECT: tl.constexpr):
    """y[oy, ox, CO0:CO0 + BLOCK_CO] = act_project(dbuf [BLOCK_PB, CHS] @ w_project[CO0:CO0 + BLOCK_CO].T
    + b_project) (+ x[oy, ox]: x_img is the residual's image) for the valid pixels (p_ok) and channels
    (< COUT)."""
    q = tl.arange(0, BLOCK_PB)
    c_ar = tl.arange(0, CHUNK)
    co = CO0 + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT
    acc = tl.zeros((BLOCK_PB, BLOCK_CO), dtype=tl.float32)
    for k0 in range(0, CHS, CHUNK):
        k = k0 + c_ar
        a = tl.load(dbuf + q[:, None] * CHS + k[None, :])                                     # [BLOCK_PB, CHUNK]
        b = tl.load(wp_ptr + co[None, :] * CHID + k[:, None], mask=(k < CHID)[:, None] & co_ok[None, :],
                    other=0.0)                                                                # [CHUNK, BLOCK_CO]
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    acc += tl.load(bp_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    acc = _act(acc, ACT_PROJECT)
    mask = p_ok[:, None] & co_ok[None, :]
    if RESIDUAL:
        tl.debug_barrier()   # keeps the residual load after the K loop (hoisted, it holds ~100 registers)
        r_off = (oy.to(tl.int64) * W + ox) * CIN
        acc += tl.load(x_img + r_off[:, None] + co[None, :], mask=mask, other=0.0).to(tl.float32)
    y_off = (oy.to(tl.int64) * WO + ox) * COUT
    tl.store(y_img + y_off[:, None] + co[None, :], acc.to(y_img.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["H", "W", "HO", "WO", "BANDS", "ITEMS", "ITEMS_PER_PROG"])
def inverted_residual_ring_kernel(
    x_ptr,          # [N, H, W, CIN] NHWC contiguous (x in channels_last), dtype T in {fp16, bf16, fp32}
    we_ptr,         # [CHID, CIN] contiguous, dtype T; any valid pointer when HAS_EXPAND is False (unread)
    be_ptr,         # [CHID], dtype T; any valid pointer when HAS_EXPAND is False (unread)
    wdw_ptr,        # [K * K, CHS] float32 contiguous: w_dw transposed (tap ky * K + kx), zero-padded to CHS
    bdw_ptr,        # [CHS] float32: b_dw zero-padded to CHS
    wp_ptr,         # [COUT, CHID] contiguous, dtype T
    bp_ptr,         # [COUT], dtype T
    y_ptr,          # [N, HO, WO, COUT] NHWC contiguous (output in channels_last), dtype T (unwritten when POOL)
    ring_ptr,       # [programs, RING, W + 2 * (K // 2), CHS] scratch in x's dtype, < 2^31 elements a program
                    #   (unused when HAS_EXPAND is False)
    dbuf_ptr,       # [programs, BLOCK_PB, CHS] scratch, dtype T (unused when POOL)
    res_ptr,        # [N, H, W, CIN] NHWC, dtype T: the residual, read when RESIDUAL and SEPARATE_RES (else any
                    #   valid pointer, unread; the residual is then x_ptr's)
    gate_ptr,       # [N, CHS] float32: squeeze-excite gate per image and channel (HAS_SE; else unread)
    pool_ptr,       # [ITEMS, CHS] float32, zero-initialised: per-item channel sums of the depthwise output
                    #   (POOL; else unwritten)
    H, W,           # int: input height, width (>= 1)
    HO, WO,         # int: output height, width: (H - 1) // STRIDE + 1, (W - 1) // STRIDE + 1
    BANDS,          # int: cdiv(HO, R), bands per image
    ITEMS,          # int: N * BANDS work items
    ITEMS_PER_PROG,  # int: cdiv(ITEMS, programs); program pid does items [pid, pid + 1) * ITEMS_PER_PROG
    CIN: tl.constexpr, CHID: tl.constexpr, COUT: tl.constexpr,   # input, expanded, output channels
    CHS: tl.constexpr,          # scratch channels: CHID rounded up to a multiple of CHUNK
    STRIDE: tl.constexpr,       # 1 or 2 (depthwise stride)
    R: tl.constexpr,            # output rows per band (work item)
    RING: tl.constexpr,         # ring rows per program, >= (R - 1) * STRIDE + K
    BLOCK_PA: tl.constexpr,     # input pixels per expand tile (power of two; >= 64 lowers dots to wgmma)
    BLOCK_PB: tl.constexpr,     # output pixels per depthwise/project tile (power of two; >= 64 for wgmma)
    CHUNK: tl.constexpr,        # expanded channels per loop step (power of two >= 16)
    BORDER: tl.constexpr,       # next power of two >= 2 * (K // 2) * RING (ring border entries to zero)
    BLOCK_K: tl.constexpr,      # input channels per expand dot step (power of two >= 16)
    K_STEPS: tl.constexpr,      # cdiv(CIN, BLOCK_K)
    BLOCK_CO: tl.constexpr,     # output channels per project tile (power of two >= 16)
    CO_TILES: tl.constexpr,     # project tiles of BLOCK_CO channels
    CO_REST: tl.constexpr,      # channels of one more, last project tile (0: none; power of two >= 16)
    HAS_EXPAND: tl.constexpr,   # the block has an expand conv (w_expand, b_expand)
    RESIDUAL: tl.constexpr,     # add the residual to the output (STRIDE == 1 and CIN == COUT)
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs: "ieee" (exact) or "tf32"
    K: tl.constexpr,            # depthwise kernel size (odd, 1..9); MobileNetV2: 3
    PAD_T: tl.constexpr,        # top zero padding (0 ..  K // 2); MobileNetV2: 1
    PAD_L: tl.constexpr,        # left zero padding (0 .. K // 2); MobileNetV2: 1
    ACT_EXPAND: tl.constexpr,   # activation after the expand conv (_act); MobileNetV2: "relu6"
    ACT_DW: tl.constexpr,       # activation after the depthwise conv; MobileNetV2: "relu6"
    ACT_PROJECT: tl.constexpr,  # activation after the project conv (before the residual); MobileNetV2: "none"
    HAS_SE: tl.constexpr,       # multiply the depthwise output by gate_ptr's gate
    POOL: tl.constexpr,         # squeeze-excite pass 1 (channel sums into pool_ptr, no output)
    SEPARATE_RES: tl.constexpr,  # the residual is res_ptr's (a leading depthwise made x_ptr), not x_ptr's
):
    pid = tl.program_id(0)
    RING_T: tl.constexpr = ring_ptr.dtype.element_ty
    HALO: tl.constexpr = K // 2                                  # zero columns left and right of each ring row
    WS = W + 2 * HALO                                            # ring row width
    ring = ring_ptr + pid.to(tl.int64) * RING * WS * CHS         # this program's ring (int32 offsets inside)
    dbuf = dbuf_ptr + pid.to(tl.int64) * (BLOCK_PB * CHS)        # this program's depthwise tile
    item0 = pid * ITEMS_PER_PROG
    item1 = tl.minimum(item0 + ITEMS_PER_PROG, ITEMS)
    qa_ar = tl.arange(0, BLOCK_PA)
    qb_ar = tl.arange(0, BLOCK_PB)
    c_ar = tl.arange(0, CHUNK)
    k_ar = tl.arange(0, BLOCK_K)

    if HAS_EXPAND:
        if HALO > 0:
            # Zero the ring's border columns [0, HALO) and [W + HALO, W + 2 HALO) of every slot once; the
            # expand never writes them.
            zb = tl.arange(0, BORDER)
            if HALO == 1:
                zb_off = ((zb // 2) * WS + (zb % 2) * (W + 1)) * CHS
            else:
                zj = zb % (2 * HALO)
                zb_off = ((zb // (2 * HALO)) * WS + tl.where(zj < HALO, zj, W + zj)) * CHS
            for c0 in range(0, CHS, CHUNK):
                tl.store(ring + zb_off[:, None] + (c0 + c_ar)[None, :], tl.zeros((BORDER, CHUNK), dtype=RING_T),
                         mask=(zb < 2 * HALO * RING)[:, None])

    prev_n = -1     # image of the previous item
    hi = 0          # the ring holds expanded rows [.., hi) of image prev_n
    for item in range(item0, item1):
        n = item // BANDS
        oy0 = (item - n * BANDS) * R
        ny = tl.minimum(HO - oy0, R)                  # output rows of this band
        r1 = (oy0 + ny - 1) * STRIDE + (K - PAD_T)    # input rows the band reads: [oy0 * STRIDE - PAD_T, r1)
        n64 = n.to(tl.int64)
        x_img = x_ptr + n64 * H * W * CIN
        y_img = y_ptr + n64 * HO * WO * COUT
        if SEPARATE_RES:
            res_img = res_ptr + n64 * H * W * CIN
        else:
            res_img = x_img

        if HAS_EXPAND:
            # ---- phase A: expand the rows [e0, r1) the ring lacks; rows outside the image become 0. ----
            e0 = oy0 * STRIDE - PAD_T
            e0 = tl.where(n == prev_n, tl.maximum(e0, hi), e0)
            npa = (r1 - e0) * W
            for a0 in range(0, npa, BLOCK_PA):
                qa = a0 + qa_ar
                qa_ok = qa < npa
                row = e0 + qa // W
                col = qa % W
                in_ok = qa_ok & (row >= 0) & (row < H)                                # [BLOCK_PA]
                x_off = (row * W + col).to(tl.int64) * CIN                            # [BLOCK_PA]
                s_off = (((row + RING) % RING) * WS + col + HALO) * CHS               # [BLOCK_PA]
                if K_STEPS == 1:
                    xv0 = tl.load(x_img + x_off[:, None] + k_ar[None, :],
                                  mask=in_ok[:, None] & (k_ar < CIN)[None, :], other=0.0)  # [BLOCK_PA, BLOCK_K]
                for c0 in range(0, CHS, CHUNK):
                    c = c0 + c_ar
                    c_ok = c < CHID
                    h = tl.zeros((BLOCK_PA, CHUNK), dtype=tl.float32)
                    for ks in tl.static_range(K_STEPS):
                        k = ks * BLOCK_K + k_ar
                        k_ok = k < CIN
                        if K_STEPS == 1:
                            xv = xv0
                        else:
                            xv = tl.load(x_img + x_off[:, None] + k[None, :],
                                         mask=in_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_PA, BLOCK_K]
                        wv = tl.load(we_ptr + c[None, :] * CIN + k[:, None],
                                     mask=k_ok[:, None] & c_ok[None, :], other=0.0)       # [BLOCK_K, CHUNK]
                        h = tl.dot(xv, wv, h, input_precision=DOT_PRECISION)
                    b = tl.load(be_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
                    # Rows outside the image and padded channels are exactly 0 (a select: an inf in x times a
                    # 0 weight is NaN).
                    h = tl.where(in_ok[:, None] & c_ok[None, :], _act(h + b[None, :], ACT_EXPAND), 0.0)
                    tl.store(ring + s_off[:, None] + c[None, :], h.to(RING_T), mask=qa_ok[:, None])
            tl.debug_barrier()                        # the band's rows, written by all threads, are visible
        prev_n = n
        hi = r1

        # ---- phase B: depthwise KxK + act into dbuf (or the pool), then project, per tile of output pixels. ----
        npb = ny * WO
        for p0 in range(0, npb, BLOCK_PB):
            p = p0 + qb_ar
            p_ok = p < npb
            pc = tl.minimum(p, npb - 1)               # pixels past the band compute a copy, never stored
            oy = oy0 + pc // WO
            ox = pc % WO
            iy = oy * STRIDE - PAD_T
            ix = ox * STRIDE - PAD_L
            for c0 in range(0, CHS, CHUNK):
                c = c0 + c_ar
                d = tl.zeros((BLOCK_PB, CHUNK), dtype=tl.float32)
                if K <= 3:
                    for ky in tl.static_range(K):
                        ry = iy + ky
                        if HAS_EXPAND:
                            # Ring column of tap (ky, 0) is ix + HALO.
                            row_ptr = ring + ((((ry + RING) % RING) * WS + ix + HALO) * CHS)[:, None] + c[None, :]
                            d = _dw_ring_row(d, row_ptr, wdw_ptr, c, ky, CHS, K)
                        else:
                            d = _dw_x_row(d, x_img, wdw_ptr, c, ry, ix, H, W, CIN, CHS, ky, K)
                else:
                    for ky in range(K):                   # a loop of K unrolled rows (registers: one row live)
                        ry = iy + ky
                        if HAS_EXPAND:
                            row_ptr = ring + ((((ry + RING) % RING) * WS + ix + HALO) * CHS)[:, None] + c[None, :]
                            d = _dw_ring_row(d, row_ptr, wdw_ptr, c, ky, CHS, K)
                        else:
                            d = _dw_x_row(d, x_img, wdw_ptr, c, ry, ix, H, W, CIN, CHS, ky, K)
                d = _act(d + tl.load(bdw_ptr + c)[None, :], ACT_DW)   # padded channels: act(0 * 0 + 0) = 0
                if HAS_SE:
                    d = d * tl.load(gate_ptr + n64 * CHS + c)[None, :]
                if POOL:
                    # Channel sums of the band's valid pixels (a select: a NaN copy past the band stays out).
                    part = tl.sum(tl.where(p_ok[:, None], d, 0.0), axis=0)                      # [CHUNK]
                    tl.atomic_add(pool_ptr + tl.cast(item, tl.int64) * CHS + c, part, sem="relaxed")
                else:
                    tl.store(dbuf + qb_ar[:, None] * CHS + c[None, :], d.to(dbuf_ptr.dtype.element_ty))
            if not POOL:
                tl.debug_barrier()                    # dbuf, written by all threads, is visible
                for t in tl.static_range(CO_TILES):
                    _project_tile(dbuf, wp_ptr, bp_ptr, res_img, y_img, oy, ox, p_ok, W, WO, t * BLOCK_CO,
                                  BLOCK_CO, BLOCK_PB, CHUNK, CHS, CIN, CHID, COUT, RESIDUAL, DOT_PRECISION,
                                  ACT_PROJECT)
                if CO_REST > 0:
                    _project_tile(dbuf, wp_ptr, bp_ptr, res_img, y_img, oy, ox, p_ok, W, WO, CO_TILES * BLOCK_CO,
                                  CO_REST, BLOCK_PB, CHUNK, CHS, CIN, CHID, COUT, RESIDUAL, DOT_PRECISION,
                                  ACT_PROJECT)
            tl.debug_barrier()                        # dbuf and the ring were read before they are rewritten


@triton.jit(do_not_specialize=["H", "W", "HO", "WO", "ITEMS", "ITEMS_PER_PROG"])
def inverted_residual_chunk_kernel(
    x_ptr,          # [N, H, W, CIN] NHWC contiguous (x in channels_last), dtype T in {fp16, bf16, fp32}
    we_ptr,         # [CHID, CIN] contiguous, dtype T; any valid pointer when HAS_EXPAND is False (unread)
    be_ptr,         # [CHID], dtype T; any valid pointer when HAS_EXPAND is False (unread)
    wdw_ptr,        # [K * K, CHS] float32 contiguous: w_dw transposed (tap ky * K + kx), zero-padded to CHS
    bdw_ptr,        # [CHS] float32: b_dw zero-padded to CHS
    wp_ptr,         # [COUT, CHID] contiguous, dtype T
    bp_ptr,         # [COUT], dtype T
    y_ptr,          # [N, HO, WO, COUT] NHWC contiguous (output in channels_last), dtype T (unwritten when POOL)
    ring_ptr,       # [programs, RING, W + 2 * (K // 2), CHUNK] scratch in x's dtype (unused without expand)
    dbuf_ptr,       # [programs, BLOCK_PB, CHS] scratch, dtype T (unused when POOL)
    res_ptr,        # [N, H, W, CIN] NHWC, dtype T: the residual when RESIDUAL and SEPARATE_RES (else unread)
    gate_ptr,       # [N, CHS] float32: squeeze-excite gate per image and channel (HAS_SE; else unread)
    pool_ptr,       # [N, CHS] float32: per-image channel sums of the depthwise output (POOL; else unwritten)
    H, W,           # int: input height, width (>= 1)
    HO, WO,         # int: output height, width; HO * WO <= BLOCK_PB
    ITEMS,          # int: N (one image per work item)
    ITEMS_PER_PROG,  # int: cdiv(ITEMS, programs); program pid does items [pid, pid + 1) * ITEMS_PER_PROG
    CIN: tl.constexpr, CHID: tl.constexpr, COUT: tl.constexpr,   # input, expanded, output channels
    CHS: tl.constexpr,          # CHID rounded up to a multiple of CHUNK
    STRIDE: tl.constexpr,       # 1 or 2 (depthwise stride)
    RING: tl.constexpr,         # ring rows: max((HO - 1) * STRIDE + K, H + K // 2) (image rows and zero halo)
    BLOCK_PA: tl.constexpr,     # input pixels per expand tile (power of two)
    BLOCK_PB: tl.constexpr,     # output pixels of the image's one depthwise/project tile (power of two)
    CHUNK: tl.constexpr,        # expanded channels per loop step (power of two >= 16)
    BLOCK_K: tl.constexpr,      # input channels per expand dot step (power of two >= 16)
    K_STEPS: tl.constexpr,      # cdiv(CIN, BLOCK_K)
    BLOCK_CO: tl.constexpr,     # output channels per project tile (power of two >= 16)
    CO_TILES: tl.constexpr,     # project tiles of BLOCK_CO channels
    CO_REST: tl.constexpr,      # channels of one more, last project tile (0: none; power of two >= 16)
    HAS_EXPAND: tl.constexpr,   # the block has an expand conv (w_expand, b_expand)
    RESIDUAL: tl.constexpr,     # add the residual to the output (STRIDE == 1 and CIN == COUT)
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs: "ieee" (exact) or "tf32"
    K: tl.constexpr,            # depthwise kernel size (odd, 1..9); MobileNetV2: 3
    PAD_T: tl.constexpr,        # top zero padding (0 .. K // 2); MobileNetV2: 1
    PAD_L: tl.constexpr,        # left zero padding (0 .. K // 2); MobileNetV2: 1
    ACT_EXPAND: tl.constexpr,   # activation after the expand conv (_act); MobileNetV2: "relu6"
    ACT_DW: tl.constexpr,       # activation after the depthwise conv; MobileNetV2: "relu6"
    ACT_PROJECT: tl.constexpr,  # activation after the project conv (before the residual); MobileNetV2: "none"
    HAS_SE: tl.constexpr,       # multiply the depthwise output by gate_ptr's gate
    POOL: tl.constexpr,         # squeeze-excite pass 1 (channel sums into pool_ptr, no output)
    SEPARATE_RES: tl.constexpr,  # the residual is res_ptr's (a leading depthwise made x_ptr), not x_ptr's
    SE_FUSED: tl.constexpr = False,  # squeeze-excite in this one launch (the image's depthwise output is in dbuf):
                                #   gate_ptr holds the packed float32 SE weights (launcher_ex._pack_se), pool_ptr
                                #   [programs, CHS] float32 scratch for the channel sums
    SE_ACT: tl.constexpr = "none",      # SE activation (SE_FUSED)
    SE_GATE: tl.constexpr = "sigmoid",  # SE gate (SE_FUSED)
    CRDP: tl.constexpr = 16,            # SE reduced channels, padded to a power of two >= 16 (SE_FUSED)
    SE_BLOCK_C: tl.constexpr = 16,      # channels per SE MLP step (power of two dividing CHUNK)
    PROJ_PB: tl.constexpr = 0,  # 0: project the whole BLOCK_PB tile at once; else in sub-tiles of PROJ_PB pixels
                                #   (tiles of 128 / 256 pixels, for the one-launch SE of 14x14 images)
    DW_STATIC_K: tl.constexpr = 3,  # depthwise rows unrolled when K <= DW_STATIC_K, else a loop over rows
):
    """The "chunk" variant, for images whose whole output fits one tile (e.g. 7x7): an item is one image, and
    the ring holds one chunk of expanded channels of the whole image (with its zero border) at a time:

        for each chunk: ring = act_expand(x @ w_expand[chunk].T + b_expand[chunk]) on the image's pixels
                        dbuf[:, chunk] = act_dw(depthwise(ring) + b_dw[chunk]) (* gate[chunk])
                        (POOL: pool[n, chunk] = sum over pixels instead)
        y = act_project(dbuf @ w_project.T + b_project) (+ x)

    so the scratch per program is RING * (W + 2 * (K // 2)) * CHUNK floats plus dbuf, independent of CHID."""
    pid = tl.program_id(0)
    RING_T: tl.constexpr = ring_ptr.dtype.element_ty
    HALO: tl.constexpr = K // 2
    WS = W + 2 * HALO
    ring = ring_ptr + pid.to(tl.int64) * RING * WS * CHUNK
    dbuf = dbuf_ptr + pid.to(tl.int64) * (BLOCK_PB * CHS)
    item0 = pid * ITEMS_PER_PROG
    item1 = tl.minimum(item0 + ITEMS_PER_PROG, ITEMS)
    qa_ar = tl.arange(0, BLOCK_PA)
    qb_ar = tl.arange(0, BLOCK_PB)
    c_ar = tl.arange(0, CHUNK)
    k_ar = tl.arange(0, BLOCK_K)
    if HAS_EXPAND:
        # Zero the whole ring once: its border (halo rows and columns) is never written again.
        for z0 in range(0, RING * WS, BLOCK_PA):
            zq = z0 + qa_ar
            tl.store(ring + zq[:, None] * CHUNK + c_ar[None, :], tl.zeros((BLOCK_PA, CHUNK), dtype=RING_T),
                     mask=(zq < RING * WS)[:, None])
        tl.debug_barrier()

    npa = H * W
    npb = HO * WO
    p_ok = qb_ar < npb
    pc = tl.minimum(qb_ar, npb - 1)                   # pixels past the image compute a copy, never stored
    oy = pc // WO
    ox = pc % WO
    # Ring offset of tap (0, 0): ring row iy + HALO, column ix + HALO, with iy = oy * STRIDE - PAD_T.
    if HALO == PAD_T and HALO == PAD_L:
        tap0 = (oy * STRIDE * WS + ox * STRIDE) * CHUNK
    else:
        tap0 = ((oy * STRIDE + (HALO - PAD_T)) * WS + ox * STRIDE + (HALO - PAD_L)) * CHUNK
    for n in range(item0, item1):
        n64 = tl.cast(n, tl.int64)
        x_img = x_ptr + n64 * H * W * CIN
        y_img = y_ptr + n64 * HO * WO * COUT
        if SEPARATE_RES:
            res_img = res_ptr + n64 * H * W * CIN
        else:
            res_img = x_img
        for c0 in range(0, CHS, CHUNK):
            c = c0 + c_ar
            c_ok = c < CHID
            if HAS_EXPAND:
                for a0 in range(0, npa, BLOCK_PA):
                    qa = a0 + qa_ar
                    qa_ok = qa < npa
                    x_off = qa.to(tl.int64) * CIN                                          # [BLOCK_PA]
                    s_off = ((qa // W + HALO) * WS + qa % W + HALO) * CHUNK                # [BLOCK_PA]
                    h = tl.zeros((BLOCK_PA, CHUNK), dtype=tl.float32)
                    for ks in tl.static_range(K_STEPS):
                        k = ks * BLOCK_K + k_ar
                        k_ok = k < CIN
                        xv = tl.load(x_img + x_off[:, None] + k[None, :], mask=qa_ok[:, None] & k_ok[None, :],
                                     other=0.0)                                            # [BLOCK_PA, BLOCK_K]
                        wv = tl.load(we_ptr + c[None, :] * CIN + k[:, None], mask=k_ok[:, None] & c_ok[None, :],
                                     other=0.0)                                            # [BLOCK_K, CHUNK]
                        h = tl.dot(xv, wv, h, input_precision=DOT_PRECISION)
                    b = tl.load(be_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
                    # Padded channels are exactly 0 (a select: an inf in x times a 0 weight is NaN).
                    h = tl.where(c_ok[None, :], _act(h + b[None, :], ACT_EXPAND), 0.0)
                    tl.store(ring + s_off[:, None] + c_ar[None, :], h.to(RING_T), mask=qa_ok[:, None])
                tl.debug_barrier()                    # the chunk, written by all threads, is visible
            d = tl.zeros((BLOCK_PB, CHUNK), dtype=tl.float32)
            if K <= DW_STATIC_K:
                for ky in tl.static_range(K):
                    d = _dw_chunk_row(d, ring, tap0, x_img, wdw_ptr, c, c_ar, oy, ox, ky, WS, H, W, CIN, CHS, CHUNK,
                                      STRIDE, PAD_T, PAD_L, K, HAS_EXPAND)
            else:
                for ky in range(K):                       # a loop of K unrolled rows (registers: one row live)
                    d = _dw_chunk_row(d, ring, tap0, x_img, wdw_ptr, c, c_ar, oy, ox, ky, WS, H, W, CIN, CHS, CHUNK,
                                      STRIDE, PAD_T, PAD_L, K, HAS_EXPAND)
            d = _act(d + tl.load(bdw_ptr + c)[None, :], ACT_DW)   # padded channels: act(0 * 0 + 0) = 0
            if HAS_SE:
                d = d * tl.load(gate_ptr + n64 * CHS + c)[None, :]
            if POOL:
                tl.store(pool_ptr + n64 * CHS + c, tl.sum(tl.where(p_ok[:, None], d, 0.0), axis=0))
            else:
                tl.store(dbuf + qb_ar[:, None] * CHS + c[None, :], d.to(dbuf_ptr.dtype.element_ty))
                if SE_FUSED:
                    tl.store(pool_ptr + pid.to(tl.int64) * CHS + c, tl.sum(tl.where(p_ok[:, None], d, 0.0), axis=0))
            tl.debug_barrier()                        # the ring was read before the next chunk rewrites it
        if SE_FUSED:
            _se_fused(dbuf, pool_ptr + pid.to(tl.int64) * CHS, gate_ptr, npb, BLOCK_PB, CHS, CRDP, SE_BLOCK_C,
                      SE_ACT, SE_GATE)
        if not POOL:
            if PROJ_PB == 0:
                for t in tl.static_range(CO_TILES):
                    _project_tile(dbuf, wp_ptr, bp_ptr, res_img, y_img, oy, ox, p_ok, W, WO, t * BLOCK_CO, BLOCK_CO,
                                  BLOCK_PB, CHUNK, CHS, CIN, CHID, COUT, RESIDUAL, DOT_PRECISION, ACT_PROJECT)
                if CO_REST > 0:
                    _project_tile(dbuf, wp_ptr, bp_ptr, res_img, y_img, oy, ox, p_ok, W, WO, CO_TILES * BLOCK_CO,
                                  CO_REST, BLOCK_PB, CHUNK, CHS, CIN, CHID, COUT, RESIDUAL, DOT_PRECISION,
                                  ACT_PROJECT)
            else:
                for s0 in range(0, npb, PROJ_PB):     # sub-tiles of the image's dbuf rows
                    qs = s0 + tl.arange(0, PROJ_PB)
                    ps_ok = qs < npb
                    pcs = tl.minimum(qs, npb - 1)
                    for t in tl.static_range(CO_TILES):
                        _project_tile(dbuf + s0 * CHS, wp_ptr, bp_ptr, res_img, y_img, pcs // WO, pcs % WO, ps_ok,
                                      W, WO, t * BLOCK_CO, BLOCK_CO, PROJ_PB, CHUNK, CHS, CIN, CHID, COUT, RESIDUAL,
                                      DOT_PRECISION, ACT_PROJECT)
                    if CO_REST > 0:
                        _project_tile(dbuf + s0 * CHS, wp_ptr, bp_ptr, res_img, y_img, pcs // WO, pcs % WO, ps_ok,
                                      W, WO, CO_TILES * BLOCK_CO, CO_REST, PROJ_PB, CHUNK, CHS, CIN, CHID, COUT,
                                      RESIDUAL, DOT_PRECISION, ACT_PROJECT)
            tl.debug_barrier()                        # dbuf was read before the next image rewrites it


@triton.jit(do_not_specialize=["H", "W", "HO", "WO", "NPIX"])
def depthwise_kernel(
    x_ptr,          # [N, H, W, C] NHWC contiguous, dtype T
    w_ptr,          # [K * K, CP] float32 contiguous: the depthwise weights transposed (tap ky * K + kx), CP >= C
    b_ptr,          # [CP] float32
    y_ptr,          # [N, HO, WO, C] NHWC contiguous, dtype T
    H, W,           # int: input height, width
    HO, WO,         # int: output height, width ((H - 1) // STRIDE + 1, ...)
    NPIX,           # int: N * HO * WO
    C: tl.constexpr,            # channels
    CP: tl.constexpr,           # C rounded up to a multiple of BLOCK_C
    K: tl.constexpr,            # kernel size (odd, 1..9)
    STRIDE: tl.constexpr,       # 1 or 2
    PAD_T: tl.constexpr,        # top zero padding
    PAD_L: tl.constexpr,        # left zero padding
    BLOCK_P: tl.constexpr,      # output pixels per program (power of two)
    BLOCK_C: tl.constexpr,      # channels per program (power of two)
):
    """The leading depthwise conv of MobileNetV4's UIB "ExtraDW" block (no activation): grid
    (cdiv(NPIX, BLOCK_P), CP // BLOCK_C); y = depthwise(x, w) + b, float32 accumulation, out-of-image taps masked
    to 0 (never 0 * a NaN)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < NPIX
    c_ok = c < C
    pc = tl.minimum(p, NPIX - 1)
    n = pc // (HO * WO)
    oy = (pc // WO) % HO
    ox = pc % WO
    img = n.to(tl.int64) * H
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for ky in range(K):
        iy = oy * STRIDE - PAD_T + ky
        for kx in tl.static_range(K):
            ix = ox * STRIDE - PAD_L + kx
            ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            off = ((img + iy) * W + ix) * C
            v = tl.load(x_ptr + off[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + (ky * K + kx) * CP + c)
            acc += v.to(tl.float32) * wv[None, :]
    acc += tl.load(b_ptr + c)[None, :]
    y_off = pc.to(tl.int64) * C
    tl.store(y_ptr + y_off[:, None] + c[None, :], acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])
