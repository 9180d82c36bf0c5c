"""Plans (docs: /work/coord STATIC_INTERFACE, mirrored in docs/GPU_STATIC.md) for kernel versions that
predate ``static_plans``: the first Triton kernel (tile + tl.gather / recompute, commit f8b48b5, the one
measured on the H200) and the first CUDA kernel (8x8 tiles, WMMA). Built from the launcher's own
``_pick_config`` for Triton and from a Python mirror of ``make_layout`` in csrc/cuda for CUDA, so that
recorded runs of those versions can still be compiled and fitted after the rewrite.
"""
from __future__ import annotations


def _cdiv(a, b):
    return -(-a // b)


def triton_plans(launcher, kernel, N, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype):
    """Both depthwise modes of the first Triton kernel; `launcher` is its inverted_residual_triton module."""
    cfg = launcher._pick_config(Cin, Chid, Cout, H, W, stride, has_expand, dtype)
    ho, wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    tiles_w = _cdiv(wo, cfg.tile_w)
    tiles = _cdiv(ho, cfg.tile_h) * tiles_w
    limit = getattr(launcher, "_AUTO_GATHER_MAX_HALO", 128)
    chunks = _cdiv(Chid, cfg.chunk)
    ksteps = _cdiv(Cin, cfg.block_k) if has_expand else 1
    fp32 = str(dtype).endswith("float32")
    tname = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}[str(dtype)]
    plans = []
    for gather in (True, False):
        args = {n: f"ptr:{tname}" for n in kernel.arg_names[:8]}
        args.update(H=H, W=W, HO=ho, WO=wo, CIN=Cin, CHID=Chid, COUT=Cout, TILES_W=tiles_w, TILES_PER_IMG=tiles)
        plans.append(dict(
            name="triton-gather" if gather else "triton-recompute", backend="triton",
            chosen=gather == (cfg.halo_p <= limit), programs=N * tiles * _cdiv(Cout, cfg.block_co),
            num_warps=cfg.num_warps, num_stages=3, trips={1: chunks, 2: chunks * ksteps},
            kernel=kernel, args=args,
            constexprs=dict(STRIDE=stride, TILE_H=cfg.tile_h, TILE_W=cfg.tile_w, HALO_W=cfg.halo_w,
                            HALO_P=cfg.halo_p, CHUNK=cfg.chunk, BLOCK_K=cfg.block_k, BLOCK_CO=cfg.block_co,
                            HAS_EXPAND=has_expand, RESIDUAL=residual, DW_GATHER=gather,
                            DOT_PRECISION="ieee"),
            config=dict(cfg._asdict(), fp32_dot="ieee" if fp32 else None)))
    return plans


# Constants of csrc/cuda/inverted_residual_cuda.cu (first version); checked against the source below.
_CUDA = dict(kTH=8, kTW=8, kCH=32, kWarps=8, kSmallNFW=3, kBigNFW=10, kLDE=36, kLDK=40)


def cuda_plans(source_text, N, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype):
    """The first CUDA kernel's one variant (fp16 / bf16 only), with make_layout's shared memory size."""
    import re
    tname = str(dtype)
    if tname not in ("torch.float16", "torch.bfloat16"):
        return []
    for k, v in _CUDA.items():
        m = re.search(r"constexpr int %s = ([^;]+);" % k, source_text)
        if not m:
            raise RuntimeError(f"gpu_static.legacy: constant {k} not found in the CUDA source; this mirror of "
                               "the first CUDA kernel does not match it (give the launcher a static_plans)")
        try:
            val = eval(m.group(1), {}, dict(_CUDA))
        except Exception:
            val = None
        if val is not None and val != v:
            raise RuntimeError(f"gpu_static.legacy: {k} = {val} in the CUDA source, the mirror has {v}")
    c = _CUDA
    r16 = lambda v: _cdiv(v, 16) * 16
    a128 = lambda v: _cdiv(v, 128) * 128
    cinp = r16(Cin)
    ldi = cinp + 8
    hh, hw = (c["kTH"] - 1) * stride + 3, (c["kTW"] - 1) * stride + 3
    hpp = r16(hh * hw)
    nfw = c["kSmallNFW"] if r16(Cout) <= 32 * c["kSmallNFW"] else c["kBigNFW"]
    cout_tile = 32 * nfw
    coutp = r16(min(Cout, cout_tile))
    off = 0
    for size in (hpp * ldi * 2, (c["kCH"] * ldi * 2 if has_expand else 0), hpp * c["kLDE"] * 4,
                 c["kTH"] * c["kTW"] * c["kLDK"] * 2, coutp * c["kLDK"] * 2, c["kCH"] * 9 * 4, c["kCH"] * 4,
                 c["kCH"] * 4, c["kWarps"] * 256 * 4):
        off = a128(off + size)
    ho, wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    tiles = _cdiv(ho, c["kTH"]) * _cdiv(wo, c["kTW"])
    chunks = _cdiv(Chid, c["kCH"])
    threads = c["kWarps"] * 32
    T = "6__half" if tname == "torch.float16" else "13__nv_bfloat16"
    return [dict(
        name="cuda-tile8x8", backend="cuda", chosen=True, programs=N * tiles * _cdiv(Cout, cout_tile),
        num_warps=c["kWarps"], source="csrc/cuda/inverted_residual_cuda.cu",
        symbol=f"inverted_residual_kernelI{T}Li{nfw}E", smem_bytes=off, defines=[],
        # depth 1: the chunk loop; depth 2: the block-strided element loops inside it (expand epilogue over
        # HPP x kCH, depthwise over 64 x kCH elements per 256 threads); an estimate, this kernel never ran.
        trips={1: chunks, 2: chunks * _cdiv(hpp * c["kCH"], threads)},
        config=dict(tile="8x8", chunk=c["kCH"], nfw=nfw, cout_tile=cout_tile, halo_pixels=hpp))]
