"""Python mirror of the CUDA kernel's launch plan (csrc/cuda/inverted_residual_cuda.cu, ``mnv2_ir_cuda_plan``).

Pure Python, no GPU, no torch, no C++ extension: tools (the static sm_90a report, tools/cuda_build_check.py)
and the CPU emulation test (tests/test_cuda_emulation.py) import it. tests/test_cuda_emulation.py checks that the
constants below match the .cu source and, when the CUDA extension is built, that ``plan`` matches the C++ plan
(the binding's ``_plan``) over many shapes. Keep the two in step.

Channel counts here are the kernel's: multiples of 8 (the binding pads odd counts with zeros); ``kernel_channels``
maps the op's channel counts to them.

    plan(N, Cin8, Chid8, Cout8, H, W, stride, has_expand, smem_limit=H200_SMEM_OPTIN, num_sms=H200_SMS,
         kernel=3, pad_t=1) -> dict
        (kernel / pad_t: the generalised block's K x K depthwise and its padding rows before the image,
        ``mnv2_ir_cuda_plan_ex``; ``pads`` gives them per axis as the binding computes them)
    static_plans(N, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype) -> list[dict]
        (the interface of the static GPU report, see docs/CUDA_KERNEL.md)
"""
from __future__ import annotations

# --- constants of inverted_residual_cuda.cu (checked against the source by tests/test_cuda_emulation.py)
WARPS = 8
THREADS = WARPS * 32
PX = 7                      # output pixels per depthwise work item
MAX_STEP_PIXELS = 256       # R * Wo <= this (unless R == 1)
CHUNK = 96                  # hidden channels per chunk in chunk mode
BUDGET2 = 113 * 1024        # shared memory per CTA for 2 CTAs per SM
MIN_RING_PIXELS = 24        # ring mode needs R * Wo >= this (or R == Ho)
MAX_CHANNELS = 1 << 16
MAX_K = 9                   # largest depthwise kernel (generalised block)

H200_SMS = 132
H200_SMEM_OPTIN = 232448    # cudaDevAttrMaxSharedMemoryPerBlockOptin on H100 / H200 (227 KB)

SOURCE = "csrc/cuda/inverted_residual_cuda.cu"


def round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def pad_ld(elems: int) -> int:
    """Leading dimension (2-byte elements) of a shared row of `elems` channels (see the .cu)."""
    return elems if (elems // 8) % 2 == 1 else elems + 8


def kernel_channels(cin: int, chid: int, cout: int, has_expand: bool):
    """(Cin8, Chid8, Cout8): the channel counts the kernel sees after the binding's zero padding."""
    c8 = lambda c: round_up(max(int(c), 1), 8)  # noqa: E731
    cin8 = c8(cin)
    return cin8, (c8(chid) if has_expand else cin8), c8(cout)


def pack_k32(w):
    """The binding's weight packing (inverted_residual_binding.cpp, pack_k32): w [R, C] (torch or NumPy) ->
    [R, C32], zero columns appended to a multiple of 32, each 32-column block permuted so that column
    8q + 4s + 2h + e holds old column 16s + 8h + 2q + e."""
    import numpy as np
    w = np.asarray(w)
    rows, cols = w.shape
    c32 = round_up(cols, 32)
    p = np.zeros((rows, c32), dtype=w.dtype)
    p[:, :cols] = w
    return p.reshape(rows, c32 // 32, 2, 2, 4, 2).transpose(0, 1, 4, 2, 3, 5).reshape(rows, c32)


def ring_gap(K):
    """Zero pixels between ring rows for a K x K depthwise (the .cu's ring_gap): max(K // 2, 1)."""
    return max(K // 2, 1)


def ring_rows_for(R, S, K, H):
    """Ring rows: (R - 1) * S + max(K, S), capped at H (the .cu's ring_rows_for)."""
    return min((R - 1) * S + max(K, S), H)


def ring_pixels(RR, W, Z=1):
    """Pixels of the ring: RR rows of W + Z (Z zero pixels before each row), Z final zero pixels, slack (the .cu)."""
    return RR * (W + Z) + Z + 2 * PX + 2


def pads(size, kernel, stride, padding):
    """(before, after) padding along one axis as the binding computes it: kernel // 2 each side ("symmetric") or
    TensorFlow "same" (reference.tf_same_pads)."""
    if padding == "symmetric":
        return kernel // 2, kernel // 2
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def layout(Cin8, Chid8, H, W, Wo, S, R, HC, K=3):
    """Shared-memory layout of one CTA (offsets in bytes), as make_layout in the .cu."""
    RR = ring_rows_for(R, S, K, H)
    LX = pad_ld(round_up(Cin8, 32))
    MXP = round_up(RR * W, 32)
    LH = pad_ld(HC)
    KP = round_up(Chid8, HC)
    LD2 = pad_ld(KP)
    MOP = round_up(R * Wo, 32)
    a128 = lambda v: round_up(v, 128)  # noqa: E731
    off = 0
    off_x = off
    off = a128(off + MXP * LX * 2)
    off_ring = off
    off = a128(off + ring_pixels(RR, W, ring_gap(K)) * LH * 2)
    off_dw = off
    off = a128(off + MOP * LD2 * 2)
    off_wdw = off
    off = a128(off + K * K * HC * 4)
    off_bdw = off
    off = a128(off + HC * 4)
    return dict(RR=RR, LX=LX, MXP=MXP, LH=LH, KP=KP, LD2=LD2, MOP=MOP, off_x=off_x, off_ring=off_ring,
                off_dw=off_dw, off_wdw=off_wdw, off_bdw=off_bdw, total=off)


def _best_rows(Cin8, Chid8, H, W, Ho, Wo, S, HC, budget, K=3):
    rmax = min(max(MAX_STEP_PIXELS // Wo, 1), Ho)
    for R in range(rmax, 0, -1):
        if layout(Cin8, Chid8, H, W, Wo, S, R, HC, K)["total"] <= budget:
            return R
    return 0


def _chunk_mode_slots(H, W, Ho, S, R, K=3, pad_t=1):
    """Expanded pixel slots (rounded to 32-pixel warp tiles) of one image in chunk mode (one step per band)."""
    slots = 0
    for oy0 in range(0, Ho, R):
        r1 = min(oy0 + R, Ho)
        slots += round_up((min((r1 - 1) * S - pad_t + K, H) - max(oy0 * S - pad_t, 0)) * W, 32)
    return slots


def plan(N, Cin8, Chid8, Cout8, H, W, stride, has_expand=True, smem_limit=H200_SMEM_OPTIN, num_sms=H200_SMS,
         kernel=3, pad_t=1):
    """The kernel's configuration for a block shape: same fields as the C struct mnv2_ir_plan (``ok`` = 0 when
    the shape cannot run within `smem_limit`). ``kernel`` / ``pad_t``: mnv2_ir_cuda_plan_ex's (3 / 1: MobileNetV2)."""
    bad = dict(ok=0, rows=0, chunk=0, nchunks=0, ring_rows=0, steps=0, bands=0, ctas_per_sm=0, items=0, grid=0,
               smem=0)
    K = kernel
    if (N < 0 or H < 1 or W < 1 or Cin8 < 8 or Chid8 < 8 or Cin8 > MAX_CHANNELS or Chid8 > MAX_CHANNELS
            or stride not in (1, 2) or num_sms < 1 or K < 1 or K > MAX_K or K % 2 == 0 or pad_t < 0
            or pad_t > K // 2):
        return bad
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    ChidP = round_up(Chid8, 32)
    hc_chunk = min(ChidP, CHUNK)
    R = HC = 0
    for budget in (min(BUDGET2, smem_limit), smem_limit):
        r = _best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, ChidP, budget, K)
        if r > 0 and (r == Ho or r * Wo >= MIN_RING_PIXELS):
            R, HC = r, ChidP
            break
        rc = _best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, hc_chunk, budget, K)
        if rc > 0 and budget != smem_limit:  # one CTA per SM with taller bands when far fewer halo pixels
            rl = _best_rows(Cin8, Chid8, H, W, Ho, Wo, stride, hc_chunk, smem_limit, K)
            if rl > rc and (10 * _chunk_mode_slots(H, W, Ho, stride, rl, K, pad_t)
                            < 7 * _chunk_mode_slots(H, W, Ho, stride, rc, K, pad_t)):
                rc = rl
        if rc > 0:
            R, HC = rc, hc_chunk
            break
    if R == 0:
        return bad
    L = layout(Cin8, Chid8, H, W, Wo, stride, R, HC, K)
    steps = (Ho + R - 1) // R
    ctas = 2 if L["total"] <= BUDGET2 else 1
    slots = ctas * num_sms
    nchunks = L["KP"] // HC
    if nchunks > 1:
        bands = steps
    else:
        bands = min(max(slots // N if N > 0 else 1, 1), steps)
    items = N * bands
    return dict(ok=1, rows=R, chunk=HC, nchunks=nchunks, ring_rows=L["RR"], steps=steps, bands=bands,
                ctas_per_sm=ctas, items=items, grid=min(items, slots), smem=L["total"])


def schedule(N, Cin8, Chid8, Cout8, H, W, stride, p, critical_path=False, kernel=3, pad_t=1):
    """Per-CTA loop structure of the kernel for plan `p`: the work each loop does, for the static model.

    Returns dict with, per program (CTA, the busiest one), the trip counts of each loop of the kernel:
      items, steps, chunks (total chunk iterations), load_vec (cp.async vectors per thread), expand_tiles /
      expand_k (warp tiles per warp, 32-wide K steps each), copy_vec (no-expand copies per thread), dw_items
      (depthwise items per thread), proj_tiles / proj_k (warp tiles per warp, 32-wide K steps each).
    critical_path=False: average work per warp / thread (idle warps issue nothing: the issue-bound count);
    True: the busiest warp / thread of each phase (ceil), the barrier-to-barrier critical path.
    """
    div = (lambda a, b: -(-a // b)) if critical_path else (lambda a, b: a / b)  # noqa: E731
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    R, HC = p["rows"], p["chunk"]
    L = layout(Cin8, Chid8, H, W, Wo, stride, R, HC, kernel)
    items_per_cta = -(-p["items"] // max(p["grid"], 1))
    CinP = round_up(Cin8, 32)
    # totals over one image (all bands), then divided by bands to get per item
    t = dict(load_vec=0, expand_tiles=0, copy_vec=0, dw_items=0, proj_tiles=0, steps=0, chunks=0)
    ns = -(-Wo // PX)
    for b in range(p["bands"]):
        k0, k1 = b * p["steps"] // p["bands"], (b + 1) * p["steps"] // p["bands"]
        oy0 = k0 * R
        e0 = max(0, oy0 * stride - pad_t)
        for k in range(k0, k1):
            nrows = min(R, Ho - oy0)
            e1 = min(H, (oy0 + nrows - 1) * stride - pad_t + kernel)
            npix = (e1 - e0) * W
            t["steps"] += 1
            t["load_vec"] += div(round_up(npix, 32) * CinP // 8, THREADS)
            for _ in range(p["nchunks"]):
                t["chunks"] += 1
                if Cin8 and Chid8:
                    t["expand_tiles"] += div((npix + 31) // 32 * (HC // 32), WARPS)
                    t["copy_vec"] += div(npix * HC // 8, THREADS)
                t["dw_items"] += div(nrows * ns * (HC // 8), THREADS)
            t["proj_tiles"] += div((nrows * Wo + 31) // 32 * ((Cout8 + 31) // 32), WARPS)
            e0 = e1
            oy0 += R
    per_item = {k: v / p["bands"] for k, v in t.items()}
    out = {k: v * items_per_cta for k, v in per_item.items()}
    out.update(items=items_per_cta, expand_k=CinP // 32, proj_k=round_up(Chid8, 32) // 32, layout=L)
    return out


def static_plans(N, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype):
    """The static report's interface (one variant: the ring kernel). `dtype`: 'float16' / 'bfloat16' or a torch
    dtype. Trip counts by loop depth are approximations of this kernel's nest (item > step > chunk > phase loop >
    K loop); ``loops`` gives the exact per-loop counts (see schedule())."""
    name = str(dtype).replace("torch.", "")
    cin8, chid8, cout8 = kernel_channels(Cin, Chid, Cout, has_expand)
    p = plan(N, cin8, chid8, cout8, H, W, stride, has_expand)
    if not p["ok"] or name not in ("float16", "bfloat16"):
        return []
    s = schedule(N, cin8, chid8, cout8, H, W, stride, p)
    tname = "__half" if name == "float16" else "__nv_bfloat16"
    # The report weights SASS loops by nesting depth only, but this kernel has several loops per depth with
    # different trip counts: depth 3 holds the chunk loop and the project tile loop, depth 4 the depthwise item
    # loop, the expand tile loop, the project K loop, the prefetch loop and the weight staging loop. Each depth
    # gets the average of its loops' trips weighted by their body sizes (warp-instructions of the current sm_90a
    # build, printed by `tools/cuda_build_check.py --predict`, which weights every loop exactly).
    body3 = dict(chunk=30, proj_tile=330)
    body4 = dict(dw=1075, expand_tile=285, proj_k=48, load=25, stage=57)
    t3 = (body3["chunk"] * s["chunks"] + body3["proj_tile"] * s["proj_tiles"]) / sum(body3.values())
    stage = -(-p["chunk"] // THREADS) * (s["chunks"] if p["nchunks"] > 1 else 1)
    t4 = (body4["dw"] * s["dw_items"] + body4["expand_tile"] * s["expand_tiles"]
          + body4["proj_k"] * s["proj_tiles"] * s["proj_k"] + body4["load"] * s["load_vec"]
          + body4["stage"] * stage) / sum(body4.values())
    trips = {1: int(s["items"]), 2: max(1, int(round(s["steps"]))), 3: max(1, int(round(t3))),
             4: max(1, int(round(t4))), 5: max(1, int(round(s["expand_tiles"] * s["expand_k"])))}
    return [dict(name="cuda-ring", chosen=True, backend="cuda", programs=int(p["grid"]), num_warps=WARPS,
                 trips=trips, loops=s, plan=p, source=SOURCE,
                 symbol=f"mnv2_ir_ring_kernelI{len(tname)}{tname}Li{stride}E", smem_bytes=int(p["smem"]),
                 defines=[])]
