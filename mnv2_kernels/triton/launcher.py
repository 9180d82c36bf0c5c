"""Launcher of the fused Triton inverted-residual kernel (mnv2_kernels/triton/kernel.py, the "ring" design).

Checks the arguments, picks a configuration per block shape (deterministic, independent of the batch size
except for the persistent grid size), allocates the output and the per-program scratch ring, and launches.
``static_plans`` exposes the same configuration choice, GPU-free, for the static sm_90a report
(tools/gpu_static_report.py; interface in docs or the issue-7 notes).
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Optional

import torch

from .._validate import check_inverted_residual_args, wants_channels_last
from .kernel import inverted_residual_chunk_kernel, inverted_residual_ring_kernel

_PREFIX = "mnv2.inverted_residual_triton: "
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_VARIANTS = ("auto", "ring", "chunk")
_FP32_PRECISIONS = ("ieee", "tf32")

# Persistent grid: at most _PROGRAMS_PER_SM programs per SM, and no more programs than keep the whole grid's
# scratch within _L2_SCRATCH_BYTES (an H100/H200 has a 50 MB L2; the rest is left for the streamed input and
# output). _H200_SMS is the SM count static_plans assumes (the launcher asks the device).
_PROGRAMS_PER_SM = 2
_L2_SCRATCH_BYTES = 32 << 20
_H200_SMS = 132
# Programs of the interpreter's persistent grid (CPU tensors): a few, so the CPU tests exercise programs that
# carry their ring across bands and images.
_INTERPRETER_PROGRAMS = 3


# The generalised kernel options (kernel.py; launcher_ex.py) that make the kernels compute the MobileNetV2 block.
MV2_OPTIONS = dict(K=3, PAD_T=1, PAD_L=1, ACT_EXPAND="relu6", ACT_DW="relu6", ACT_PROJECT="none", HAS_SE=False,
                   POOL=False, SEPARATE_RES=False)

# ... and the chunk kernel's one-launch squeeze-excite options (off).
MV2_CHUNK_OPTIONS = dict(SE_FUSED=False, SE_ACT="none", SE_GATE="sigmoid", CRDP=16, SE_BLOCK_C=16, PROJ_PB=0,
                         DW_STATIC_K=3)


class _Config(NamedTuple):
    block_pb: int   # output pixels per depthwise/project tile
    rows: int       # output rows per band (work item)
    ring: int       # scratch rows per program: (rows - 1) * stride + 3
    block_pa: int   # input pixels per expand tile
    chunk: int      # expanded channels per loop step
    chs: int        # scratch channels: chid rounded up to a multiple of chunk
    block_k: int    # input channels per expand dot step
    k_steps: int    # cdiv(cin, block_k)
    block_co: int   # output channels per project tile
    co_tiles: int   # project tiles of block_co channels
    co_rest: int    # channels of one more, last project tile (0: none)
    num_warps: int
    num_stages: int


def _next_pow2(v: int) -> int:
    return 1 << max(0, v - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _pick_config(cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool, residual: bool,
                 dtype: torch.dtype) -> _Config:
    """The kernel configuration for one block shape (independent of the batch size).

    Output tiles of 64 pixels (128 when one output row is wider than 64 pixels, up to 112), a band of as many
    whole output rows as fill one tile (so the band's depthwise/project runs as one tile) and an expand tile
    that holds the band's new input rows in the steady state (rows * stride * w pixels, up to 256). Tiles of at
    least 64 pixels let both dots lower to wgmma on sm_90. The output channels go into one power-of-two
    accumulator, or two (e.g. 160 = 128 + 32) when one would pad by more than a quarter.
    """
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    block_pb = 128 if 64 < wo <= 128 else 64
    rows = max(1, min(ho, block_pb // wo))
    ring = (rows - 1) * stride + 3
    block_pa = max(64, min(256, _next_pow2(rows * stride * w)))
    # Channel chunks of 32, or 16 where 32 would pad the hidden channels (144 = 9 x 16) or the tile is 128
    # pixels wide (register pressure of the 9 unrolled taps).
    chunk = 32 if chid % 32 == 0 and block_pb <= 64 else 16
    if chid >= 384 and chid % 64 == 0 and block_pb <= 64 and dtype != torch.float32:
        chunk = 64          # wide blocks: fewer, fuller steps (wgmma N = 64); float32 FMA dots would spill
    chs = _cdiv(chid, chunk) * chunk
    # Input channels per expand step: all of them (padded to a power of two) up to 128 (float32: 64, its FMA
    # dots pay for the padding), so the x tile is loaded once per expand tile and stays in shared memory
    # across the chunks; else steps of 32.
    block_k = max(16, _next_pow2(cin)) if cin <= (64 if dtype == torch.float32 else 128) else 32
    k_steps = _cdiv(cin, block_k)
    # Project tiles: one power-of-two tile up to 128 channels without a residual; else tiles of equal width,
    # the widest of 64, 32, 16 channels (at most 4096 fp32 accumulators, 32 registers a thread) that pads Cout
    # by at most a quarter (or to the next multiple of 16). Wider or mixed tiles (128, 64 + 32) cost up to 255
    # registers with the residual epilogue in the sm_90a build.
    block_co = 16
    if not residual and cout <= 8192 // block_pb:
        block_co = max(16, _next_pow2(cout))
    else:
        for bc in (64, 32):
            if bc <= 4096 // block_pb and _cdiv(cout, bc) * bc - cout <= max(15, cout // 4):
                block_co = bc
                break
    return _Config(block_pb, rows, ring, block_pa, chunk, chs, block_k, k_steps, block_co, _cdiv(cout, block_co),
                   0, 4, 2)


def _pick_chunk_config(cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool,
                       residual: bool, dtype: torch.dtype) -> Optional[_Config]:
    """The "chunk" kernel's configuration, or None when the image's output does not fit one 64-pixel tile
    (that kernel holds one whole image per item). Same channel chunks and project tiles as the ring's."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    if ho * wo > 64:
        return None
    r = _pick_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype)
    if cin > 64:    # the chunk kernel reloads x every chunk: 32-channel K steps, no padding to 128
        r = r._replace(block_k=32, k_steps=_cdiv(cin, 32))
    # Expand tiles of up to 128 pixels (64 for float32, whose FMA dots on [128, K] tiles spill).
    return r._replace(block_pb=64, rows=ho, ring=(ho - 1) * stride + 3,
                      block_pa=max(64, min(64 if dtype == torch.float32 else 128, _next_pow2(h * w))))


def _variant_config(variant: str, cin: int, chid: int, cout: int, h: int, w: int, stride: int,
                    has_expand: bool, residual: bool, dtype: torch.dtype) -> Optional[_Config]:
    if variant == "ring":
        return _pick_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype)
    return _pick_chunk_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype)


def _chosen_variant(cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool,
                    residual: bool, dtype: torch.dtype) -> str:
    """"chunk" where it applies (whole image in one tile: its scratch does not grow with the image's
    expanded size, which for 7x7 blocks would not fit L2 as a ring of rows), else "ring". Deterministic."""
    return "chunk" if _pick_chunk_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype) else "ring"


def _scratch_bytes(variant: str, cfg: _Config, w: int, itemsize: int, has_expand: bool, k: int = 3,
                   pool: bool = False) -> int:
    """Scratch of one program: its ring (rows of w + 2 * (k // 2) pixels) and its depthwise tile (none in the
    squeeze-excite pool pass), both in x's dtype."""
    ring = cfg.ring * (w + 2 * (k // 2)) * (cfg.chs if variant == "ring" else cfg.chunk) * itemsize if has_expand else 0
    return ring + (0 if pool else cfg.block_pb * cfg.chs * itemsize)


def _programs_per_sm(scratch_bytes: int, sms: int, per_sm: int) -> int:
    """k programs on every SM: k <= per_sm, the grid's scratch within _L2_SCRATCH_BYTES, k >= 1."""
    return max(1, min(per_sm, _L2_SCRATCH_BYTES // max(1, scratch_bytes * sms)))


def _programs(items: int, scratch_bytes: int, sms: int, per_sm: int) -> int:
    """Persistent grid size: the same number of programs on every SM (k * sms; programs get equal item counts,
    so an SM with one program more would take that much longer); never more programs than items."""
    return max(1, min(items, _programs_per_sm(scratch_bytes, sms, per_sm) * sms))


def _launch_params(variant: str, n: int, cin: int, chid: int, cout: int, h: int, w: int, stride: int,
                   has_expand: bool, residual: bool, dtype: torch.dtype, sms: int, per_sm: int = _PROGRAMS_PER_SM,
                   fp32_precision: str = "ieee"):
    """(config, programs, runtime int args, constexprs, kernel) of a variant exactly as the launch uses them."""
    cfg = _variant_config(variant, cin, chid, cout, h, w, stride, has_expand, residual, dtype)
    return _launch_from_config(variant, cfg, n, cin, chid, cout, h, w, stride, has_expand, residual, dtype, sms,
                               per_sm, fp32_precision, MV2_OPTIONS)


def _launch_from_config(variant: str, cfg: _Config, n: int, cin: int, chid: int, cout: int, h: int, w: int,
                        stride: int, has_expand: bool, residual: bool, dtype: torch.dtype, sms: int, per_sm: int,
                        fp32_precision: str, options: dict):
    """(config, programs, runtime int args, constexprs, kernel) of one launch of the variant's kernel with the
    configuration ``cfg`` (this module's or launcher_ex's) and the generalised constexprs ``options``
    (MV2_OPTIONS keys): the persistent grid, the warp / chunk adjustments and the kernel's arguments."""
    k = options["K"]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    bands = _cdiv(ho, cfg.rows) if variant == "ring" else 1     # chunk: one image per item
    items = n * bands
    scratch = _scratch_bytes(variant, cfg, w, dtype.itemsize, has_expand, k, options["POOL"])
    programs = _programs(items, scratch, sms, per_sm)
    if per_sm > 1 and _programs_per_sm(scratch, sms, per_sm) == 1:
        # One program per SM (the L2 budget allows no more): 8 warps, so that each scheduler has two to
        # switch between while the other waits on memory. Independent of the batch (one compile).
        cfg = cfg._replace(num_warps=8)
    elif variant == "chunk" and cfg.chunk == 64:
        # 64-channel steps of the chunk kernel at 4 warps spill in the sm_90a build (block 14): 32.
        cfg = cfg._replace(chunk=32, chs=_cdiv(chid, 32) * 32)
    ints = dict(H=h, W=w, HO=ho, WO=wo, BANDS=bands, ITEMS=items, ITEMS_PER_PROG=_cdiv(items, programs))
    consts = dict(CIN=cin, CHID=chid, COUT=cout, CHS=cfg.chs, STRIDE=stride, R=cfg.rows, RING=cfg.ring,
                  BLOCK_PA=cfg.block_pa, BLOCK_PB=cfg.block_pb, CHUNK=cfg.chunk,
                  BORDER=_next_pow2(max(1, 2 * (k // 2) * cfg.ring)), BLOCK_K=cfg.block_k,
                  K_STEPS=cfg.k_steps, BLOCK_CO=cfg.block_co, CO_TILES=cfg.co_tiles, CO_REST=cfg.co_rest,
                  HAS_EXPAND=has_expand, RESIDUAL=residual,
                  DOT_PRECISION=fp32_precision if dtype == torch.float32 else "ieee", **options)
    kernel = inverted_residual_ring_kernel
    if variant == "chunk":
        del ints["BANDS"], consts["R"], consts["BORDER"]
        consts.update(MV2_CHUNK_OPTIONS)
        kernel = inverted_residual_chunk_kernel
    return cfg, programs, ints, consts, kernel


def _loop_trips(variant: str, cfg: _Config, n: int, h: int, w: int, stride: int, has_expand: bool,
                programs: int) -> dict:
    """Trips per program of the kernel's loop bodies by nesting depth, for the static report.

    ring:  1 = items (bands); 2 = the tile loops of phases A and B (the larger of their average trip counts:
           equal in the steady state); 3 = the channel-chunk loops inside them and the project's K loops.
    chunk: 1 = items (images); 2 = the channel-chunk loop and the project's K loops; 3 = expand tiles."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    chunks = cfg.chs // cfg.chunk
    if variant == "chunk":
        per = _cdiv(n, programs)
        return {1: per, 2: per * chunks, 3: per * chunks * (_cdiv(h * w, cfg.block_pa) if has_expand else 1)}
    bands = _cdiv(ho, cfg.rows)
    tiles_a = tiles_b = 0
    hi = -1
    for b in range(bands):                       # one image, as one program sees it
        oy0 = b * cfg.rows
        ny = min(ho - oy0, cfg.rows)
        r1 = (oy0 + ny - 1) * stride + 2
        e0 = max(oy0 * stride - 1, hi)
        tiles_a += _cdiv(max(0, r1 - e0) * w, cfg.block_pa)
        tiles_b += _cdiv(ny * wo, cfg.block_pb)
        hi = r1
    items_per_prog = _cdiv(n * bands, programs)
    tiles = max(tiles_a if has_expand else 0, tiles_b) / bands
    return {1: items_per_prog, 2: round(items_per_prog * tiles), 3: round(items_per_prog * tiles * chunks)}


def static_plans(N: int, Cin: int, Chid: int, Cout: int, H: int, W: int, stride: int, has_expand: bool,
                 residual: bool, dtype: torch.dtype) -> list:
    """The kernel variants this launcher can launch for a shape, GPU-free, for the static sm_90a report.

    One dict per variant that applies to the shape ("triton-ring" always, "triton-chunk" when the output
    image fits one tile), with the exact kernel, specialisation arguments, constexprs, warps, stages and
    persistent grid size that ``inverted_residual_triton`` uses on a 132-SM GPU (an H100/H200); keys as the
    static-report interface defines them (name, chosen, backend, programs, num_warps, trips, kernel, args,
    constexprs, num_stages), plus ``config`` (the launcher's config as a dict).
    """
    chosen = _chosen_variant(Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype)
    ptr = "ptr:" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    plans = []
    for variant in ("ring", "chunk"):
        if _variant_config(variant, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype) is None:
            continue
        cfg, programs, ints, consts, kernel = _launch_params(variant, N, Cin, Chid, Cout, H, W, stride,
                                                             has_expand, residual, dtype, _H200_SMS)
        args = {name: ptr for name in ("x_ptr", "we_ptr", "be_ptr", "wp_ptr", "bp_ptr", "y_ptr", "dbuf_ptr",
                                       "res_ptr")}
        args.update(wdw_ptr="ptr:fp32", bdw_ptr="ptr:fp32", ring_ptr=ptr, gate_ptr="ptr:fp32", pool_ptr="ptr:fp32")
        args.update(ints)
        plans.append(dict(name="triton-" + variant, chosen=variant == chosen, backend="triton", programs=programs,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                          trips=_loop_trips(variant, cfg, N, H, W, stride, has_expand, programs),
                          kernel=kernel, args=args, constexprs=consts, config=cfg._asdict()))
    return plans


def _interpreter_active() -> bool:
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(inverted_residual_ring_kernel, InterpretedFunction)


def check_dtype(x: torch.Tensor, prefix: str) -> None:
    """TypeError unless x's dtype is one the Triton kernels compute (float16, bfloat16, float32)."""
    if x.dtype not in _DTYPES:
        raise TypeError(prefix + f"supports float16, bfloat16 and float32, got {x.dtype}; convert the input "
                        "and the module with .to(torch.float16) (or bfloat16/float32)")


def check_device(x: torch.Tensor, prefix: str) -> None:
    """RuntimeError unless Triton can run x's device here (CUDA, or the CPU with the interpreter on); TypeError
    for bfloat16 CPU tensors (the interpreter's bfloat16 tl.dot is wrong)."""
    if x.device.type == "cpu":
        if not _interpreter_active():
            raise RuntimeError(prefix + "x is a CPU tensor but Triton's interpreter is off; set the environment "
                               "variable TRITON_INTERPRET=1 before importing triton (and mnv2_kernels), or "
                               "move the block and its input to a CUDA device")
        if x.dtype == torch.bfloat16:
            raise TypeError(prefix + "Triton's interpreter (CPU tensors) supports float32 and float16, got "
                            "torch.bfloat16 (its bfloat16 tl.dot is wrong); convert the input and the module "
                            "with .to(torch.float32), or use backend='cpu' (the C++ kernel computes bfloat16)")
    elif x.device.type != "cuda":
        raise RuntimeError(prefix + f"Triton cannot run tensors on {x.device}; move the block and its input "
                           "to a CUDA device (or to the CPU with TRITON_INTERPRET=1)")


def inverted_residual_triton(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                             w_dw: torch.Tensor, b_dw: torch.Tensor, w_project: torch.Tensor,
                             b_project: torch.Tensor, stride: int, residual: bool, *,
                             variant: str = "auto", fp32_precision: str = "ieee") -> torch.Tensor:
    """One eval-mode MobileNetV2 inverted-residual block (BatchNorm folded) as a single Triton launch.

    Computes (docs/CONTRACT.md)::

        h = relu6(conv1x1(x, w_expand) + b_expand)        # skipped when w_expand is None (then Chid == Cin)
        h = relu6(depthwise3x3(h, w_dw, stride, padding=1) + b_dw)
        y = conv1x1(h, w_project) + b_project (+ x when residual)

    with ReLU6 propagating NaN as torch's does and the zero padding applied to the activated h.

    Args:
        x: [N, Cin, H, W], float16, bfloat16 or float32, any strides (read as channels_last / NHWC).
            CPU tensors run in Triton's interpreter (float32 and float16 only).
        w_expand: [Chid, Cin] or None; b_expand: [Chid] or None (None exactly when w_expand is None).
        w_dw: [Chid, 3, 3]; b_dw: [Chid]; w_project: [Cout, Chid]; b_project: [Cout].
            All weights in x's dtype and on x's device.
        stride: 1 or 2 (depthwise stride; padding is always 1).
        residual: add x to the output; needs stride 1 and Cin == Cout.
        variant: "auto" (the launcher's choice), "ring" (persistent programs with an L2-resident ring of
            expanded rows, any shape) or "chunk" (one image per item, one chunk of expanded channels of the
            whole image at a time; output images of at most 64 pixels). See mnv2_kernels/triton/kernel.py.
            Same result; a speed choice.
        fp32_precision: tl.dot input precision for float32 inputs: "ieee" (exact fp32) or "tf32" (faster,
            ~1e-3 relative error).

    Returns:
        [N, Cout, (H - 1) // stride + 1, (W - 1) // stride + 1] in x's dtype, channels_last if x is
        channels_last (and not also NCHW-contiguous), else contiguous NCHW. Accumulation is float32.
        N == 0 returns an empty tensor of that shape.

    Raises:
        ValueError / TypeError: bad shapes, devices, dtypes, stride or residual (from
            mnv2_kernels._validate.check_inverted_residual_args), an unsupported dtype (TypeError; also
            bfloat16 CPU tensors, which Triton's interpreter computes wrongly), or a bad ``variant`` /
            ``fp32_precision``. Raised before anything is allocated.
        RuntimeError: x is a CPU tensor but Triton's interpreter is not active (set TRITON_INTERPRET=1
            before importing triton), or x is on a device Triton cannot run.
    """
    d = check_inverted_residual_args(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)
    check_dtype(x, _PREFIX)
    if variant not in _VARIANTS:
        raise ValueError(_PREFIX + f"variant must be one of {_VARIANTS}, got {variant!r} (the gather and "
                         "recompute kernels were replaced by the ring kernel)")
    if variant == "chunk" and _pick_chunk_config(d.Cin, d.Chid, d.Cout, d.H, d.W, d.stride, d.has_expand,
                                                 d.residual, x.dtype) is None:
        raise ValueError(_PREFIX + f"variant 'chunk' needs an output image of at most 64 pixels, got {d.Ho}x{d.Wo}; "
                         "use variant='auto' or 'ring'")
    if fp32_precision not in _FP32_PRECISIONS:
        raise ValueError(_PREFIX + f"fp32_precision must be one of {_FP32_PRECISIONS}, got {fp32_precision!r}")
    check_device(x, _PREFIX)
    ring_cfg = _pick_config(d.Cin, d.Chid, d.Cout, d.H, d.W, d.stride, d.has_expand, d.residual, x.dtype)
    if d.has_expand and ring_cfg.ring * (d.W + 2) * 64 * _cdiv(d.Chid, 64) >= 2 ** 31:
        # Offsets inside one program's ring are int32.
        raise ValueError(_PREFIX + f"an image of {d.H}x{d.W} pixels with {d.Chid} expanded channels is too large "
                         "for the Triton kernel's per-program scratch; use backend='cuda' or 'cpu', or split the "
                         "image")

    y = torch.empty((d.N, d.Cout, d.Ho, d.Wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if d.N > 0:
        sms, per_sm = ((torch.cuda.get_device_properties(x.device).multi_processor_count, _PROGRAMS_PER_SM)
                       if x.is_cuda else (_INTERPRETER_PROGRAMS, 1))
        if variant == "auto":
            variant = _chosen_variant(d.Cin, d.Chid, d.Cout, d.H, d.W, d.stride, d.has_expand, d.residual,
                                      x.dtype)
        cfg, programs, ints, consts, kernel = _launch_params(variant, d.N, d.Cin, d.Chid, d.Cout, d.H, d.W,
                                                             d.stride, d.has_expand, d.residual, x.dtype, sms,
                                                             per_sm, fp32_precision)
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        w_dw_t = torch.zeros((9, cfg.chs), dtype=torch.float32, device=x.device)     # [9, CHS], zero-padded
        w_dw_t[:, :d.Chid] = w_dw.reshape(d.Chid, 9).t()
        b_dw_p = torch.zeros((cfg.chs,), dtype=torch.float32, device=x.device)
        b_dw_p[:d.Chid] = b_dw
        ring_ch = cfg.chs if variant == "ring" else cfg.chunk
        ring = (torch.empty((programs, cfg.ring, d.W + 2, ring_ch), dtype=x.dtype, device=x.device)
                if d.has_expand else torch.empty((1,), dtype=x.dtype, device=x.device))
        dbuf = torch.empty((programs, cfg.block_pb, cfg.chs), dtype=x.dtype, device=x.device)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            kernel[(programs,)](
                x_nhwc,
                w_expand.contiguous() if d.has_expand else x_nhwc,
                b_expand.contiguous() if d.has_expand else x_nhwc,
                w_dw_t, b_dw_p, w_project.contiguous(), b_project.contiguous(), y, ring, dbuf,
                x_nhwc, w_dw_t, w_dw_t,          # res_ptr, gate_ptr, pool_ptr: unread (MV2_OPTIONS)
                *ints.values(), **consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
    return y if wants_channels_last(x) else y.contiguous()
