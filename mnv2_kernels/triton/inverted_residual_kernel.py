"""Triton kernel of the fused MobileNetV2 inverted-residual block (see docs/CONTRACT.md).

One program computes a TILE_H x TILE_W tile of output pixels of one image for BLOCK_CO output channels:

    for each chunk of CHUNK expanded channels:
        h   = relu6(x[halo] @ w_expand[chunk].T + b_expand)    # [HALO_P, CHUNK] fp32, 0 outside the image
        d   = relu6(sum_taps h[tap pixels] * w_dw[chunk, tap] + b_dw)   # [TILE_H*TILE_W, CHUNK] fp32
        acc += d.to(x dtype) @ w_project[co block, chunk].T   # [TILE_H*TILE_W, BLOCK_CO] fp32
    y = acc + b_project (+ x)                                  # stored in x's dtype

The expanded tensor never leaves the program.  The depthwise taps either come from `tl.gather` on the
expanded halo tile (DW_GATHER=True) or from recomputing the expansion at each tap's shifted pixels
(DW_GATHER=False, 9x the expand work, no gather).  Every tensor is NHWC; all index arithmetic that can
pass 2^31 (image offsets, pixel * channel offsets) is int64.
"""
import triton
import triton.language as tl


@triton.jit
def _expanded_activation(
    x_img,          # pointer to image n of x: [H, W, CIN] NHWC contiguous, dtype T
    pix_off,        # [NPIX] int64: element offset (iy * W + ix) * CIN of each pixel inside x_img
    pix_ok,         # [NPIX] bool: pixel lies inside the image (others read as 0 and come out as 0)
    c,              # [CHUNK] int32: expanded-channel indices of this chunk
    c_ok,           # [CHUNK] bool: c < CHID
    we_ptr,         # [CHID, CIN] contiguous, dtype T (ignored when HAS_EXPAND is False)
    be_ptr,         # [CHID], dtype T (ignored when HAS_EXPAND is False)
    CIN,            # int: input channels
    NPIX: tl.constexpr,           # number of pixels (power of two >= 16)
    CHUNK: tl.constexpr,          # expanded channels per chunk (power of two >= 16)
    BLOCK_K: tl.constexpr,        # input channels per expand dot step (power of two >= 16)
    HAS_EXPAND: tl.constexpr,     # False: the block has no expand conv, h = x (CHID == CIN)
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision ("ieee" or "tf32"; only matters for fp32)
):
    """Returns the activated expanded tensor h at the given pixels: [NPIX, CHUNK] float32, exactly 0 at
    pixels outside the image (the depthwise conv zero-pads h, not x) and at channels >= CHID."""
    if HAS_EXPAND:
        h = tl.zeros((NPIX, CHUNK), dtype=tl.float32)
        for k0 in range(0, CIN, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < CIN
            xv = tl.load(x_img + pix_off[:, None] + k[None, :],
                         mask=pix_ok[:, None] & k_ok[None, :], other=0.0)          # [NPIX, BLOCK_K]
            wv = tl.load(we_ptr + c[None, :].to(tl.int64) * CIN + k[:, None],
                         mask=k_ok[:, None] & c_ok[None, :], other=0.0)            # [BLOCK_K, CHUNK]
            h = tl.dot(xv, wv, h, input_precision=DOT_PRECISION)
        b = tl.load(be_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        h = tl.minimum(tl.maximum(h + b[None, :], 0.0), 6.0)
        h = tl.where(pix_ok[:, None], h, 0.0)
    else:
        h = tl.load(x_img + pix_off[:, None] + c[None, :],
                    mask=pix_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    return h


@triton.jit(do_not_specialize=["H", "W", "HO", "WO", "TILES_W", "TILES_PER_IMG"])
def inverted_residual_kernel(
    x_ptr,          # [N, H, W, CIN] NHWC contiguous (x in channels_last), dtype T in {fp16, bf16, fp32}
    we_ptr,         # [CHID, CIN] contiguous, dtype T; any valid pointer when HAS_EXPAND is False (unread)
    be_ptr,         # [CHID], dtype T; any valid pointer when HAS_EXPAND is False (unread)
    wdw_ptr,        # [CHID, 9] contiguous (w_dw [CHID, 3, 3]; tap ky * 3 + kx), dtype T
    bdw_ptr,        # [CHID], dtype T
    wp_ptr,         # [COUT, CHID] contiguous, dtype T
    bp_ptr,         # [COUT], dtype T
    y_ptr,          # [N, HO, WO, COUT] NHWC contiguous (output in channels_last), dtype T
    H, W,           # int: input height, width (>= 1)
    HO, WO,         # int: output height, width: (H - 1) // STRIDE + 1, (W - 1) // STRIDE + 1
    CIN, CHID, COUT,  # int: input, expanded, output channels
    TILES_W,        # int: cdiv(WO, TILE_W), output tiles per tile row
    TILES_PER_IMG,  # int: cdiv(HO, TILE_H) * TILES_W; grid axis 0 is N * TILES_PER_IMG
    STRIDE: tl.constexpr,       # 1 or 2 (depthwise stride; padding is 1)
    TILE_H: tl.constexpr,       # output tile rows (power of two)
    TILE_W: tl.constexpr,       # output tile columns (power of two); TILE_H * TILE_W >= 16
    HALO_W: tl.constexpr,       # (TILE_W - 1) * STRIDE + 3: input columns the tile reads
    HALO_P: tl.constexpr,       # next power of two >= HALO_H * HALO_W, HALO_H = (TILE_H - 1) * STRIDE + 3
    CHUNK: tl.constexpr,        # expanded channels per loop step (power of two >= 16)
    BLOCK_K: tl.constexpr,      # input channels per expand dot step (power of two >= 16)
    BLOCK_CO: tl.constexpr,     # output channels per program (power of two >= 16); grid axis 1 = cdiv(COUT, BLOCK_CO)
    HAS_EXPAND: tl.constexpr,   # the block has an expand conv (w_expand, b_expand)
    RESIDUAL: tl.constexpr,     # add x to the output (STRIDE == 1 and CIN == COUT)
    DW_GATHER: tl.constexpr,    # depthwise taps by tl.gather on the halo tile (True) or by recompute (False)
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs: "ieee" (exact) or "tf32"
):
    P: tl.constexpr = TILE_H * TILE_W
    HALO_H: tl.constexpr = (TILE_H - 1) * STRIDE + 3

    pid = tl.program_id(0)
    n = pid // TILES_PER_IMG
    t = pid % TILES_PER_IMG
    oy0 = (t // TILES_W) * TILE_H
    ox0 = (t % TILES_W) * TILE_W
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = co < COUT

    n64 = n.to(tl.int64)
    x_img = x_ptr + n64 * H * W * CIN
    y_img = y_ptr + n64 * HO * WO * COUT

    # Output pixels of the tile, row-major.
    p = tl.arange(0, P)
    py = p // TILE_W
    px = p % TILE_W
    oy = oy0 + py
    ox = ox0 + px
    p_ok = (oy < HO) & (ox < WO)

    if DW_GATHER:
        # Input halo pixels: rows oy0 * STRIDE - 1 .. + HALO_H - 1, columns likewise, row-major, padded to HALO_P.
        q = tl.arange(0, HALO_P)
        iy = oy0 * STRIDE - 1 + q // HALO_W
        ix = ox0 * STRIDE - 1 + q % HALO_W
        q_ok = (q < HALO_H * HALO_W) & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        q_off = (iy.to(tl.int64) * W + ix) * CIN
        # Halo index of tap (0, 0) of each output pixel; tap (ky, kx) adds ky * HALO_W + kx (< HALO_H * HALO_W).
        tap00 = py * (STRIDE * HALO_W) + px * STRIDE

    acc = tl.zeros((P, BLOCK_CO), dtype=tl.float32)
    for c0 in range(0, CHID, CHUNK):
        c = c0 + tl.arange(0, CHUNK)
        c_ok = c < CHID
        d = tl.zeros((P, CHUNK), dtype=tl.float32)
        if DW_GATHER:
            h = _expanded_activation(x_img, q_off, q_ok, c, c_ok, we_ptr, be_ptr, CIN,
                                     HALO_P, CHUNK, BLOCK_K, HAS_EXPAND, DOT_PRECISION)   # [HALO_P, CHUNK]
        for tap in tl.static_range(9):  # tap = ky * 3 + kx
            if DW_GATHER:
                idx = tl.broadcast_to((tap00 + ((tap // 3) * HALO_W + tap % 3))[:, None], (P, CHUNK))
                hv = tl.gather(h, idx, 0)                                                  # [P, CHUNK]
            else:
                ty = oy * STRIDE + (tap // 3 - 1)
                tx = ox * STRIDE + (tap % 3 - 1)
                t_ok = p_ok & (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W)
                t_off = (ty.to(tl.int64) * W + tx) * CIN
                hv = _expanded_activation(x_img, t_off, t_ok, c, c_ok, we_ptr, be_ptr, CIN,
                                          P, CHUNK, BLOCK_K, HAS_EXPAND, DOT_PRECISION)   # [P, CHUNK]
            wv = tl.load(wdw_ptr + c * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
            d += hv * wv[None, :]
        bd = tl.load(bdw_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        d = tl.minimum(tl.maximum(d + bd[None, :], 0.0), 6.0)
        wp = tl.load(wp_ptr + co[None, :].to(tl.int64) * CHID + c[:, None],
                     mask=c_ok[:, None] & co_ok[None, :], other=0.0)                      # [CHUNK, BLOCK_CO]
        acc = tl.dot(d.to(wp.dtype), wp, acc, input_precision=DOT_PRECISION)

    acc += tl.load(bp_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = p_ok[:, None] & co_ok[None, :]
    if RESIDUAL:
        r_off = (oy.to(tl.int64) * W + ox) * CIN
        acc += tl.load(x_img + r_off[:, None] + co[None, :], mask=out_mask, other=0.0).to(tl.float32)
    y_off = (oy.to(tl.int64) * WO + ox) * COUT
    tl.store(y_img + y_off[:, None] + co[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_mask)
