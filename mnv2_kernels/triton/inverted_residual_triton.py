"""Launcher of the fused Triton inverted-residual kernel (mnv2_kernels/triton/inverted_residual_kernel.py)."""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Optional

import torch

from .._validate import check_inverted_residual_args, wants_channels_last
from .inverted_residual_kernel import inverted_residual_kernel

_PREFIX = "mnv2.inverted_residual_triton: "
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DEPTHWISE_MODES = ("auto", "gather", "recompute")
# depthwise="auto" gathers taps only from halo tiles of at most this many pixels.  Measured on an H200
# (fp16, batch 256, the MobileNetV2 blocks): the gather was faster on every 128-pixel halo and 2-7x slower
# than recomputing on every 256-pixel halo.
_AUTO_GATHER_MAX_HALO = 128
_FP32_PRECISIONS = ("ieee", "tf32")

# Cost model of _pick_config, in units of one tensor-core multiply-add.  A depthwise multiply-add on the
# CUDA cores (plus its tl.gather) costs ~8 of them; one element moved from L2/DRAM costs ~64.  fp32 dots
# with input_precision="ieee" run on the CUDA cores too.
_DW_MAC_COST = 8
_FP32_DOT_MAC_COST = 8
_ELEMENT_LOAD_COST = 64
# Register budget, in float32 elements live per program: the project accumulator [P, BLOCK_CO] plus the
# expanded halo tile [HALO_P, CHUNK] stay within _MAX_LIVE_ELEMENTS (80 registers a thread at 8 warps);
# programs within _FOUR_WARP_ELEMENTS use 4 warps.  An expand dot operand [HALO_P, BLOCK_K] stays within
# _MAX_OPERAND_BYTES of shared memory per pipeline stage.
_MAX_LIVE_ELEMENTS = 20480
_FOUR_WARP_ELEMENTS = 8192
_MAX_OPERAND_BYTES = 16384


class _Config(NamedTuple):
    tile_h: int     # output tile rows (power of two)
    tile_w: int     # output tile columns (power of two)
    halo_w: int     # input columns read by a tile: (tile_w - 1) * stride + 3
    halo_p: int     # next power of two >= halo pixels of a tile
    chunk: int      # expanded channels per loop step
    block_k: int    # input channels per expand dot step
    block_co: int   # output channels per program
    num_warps: int


def _next_pow2(v: int) -> int:
    return 1 << max(0, v - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _pick_config(cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool,
                 dtype: torch.dtype) -> _Config:
    """Tile sizes for one block shape: the cheapest under a simple cost model (see the constants above)
    among power-of-two tiles of 16..128 output pixels whose halo fits 256 pixels, within the register
    budget.  Deterministic; independent of the batch size."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    chunk = 16 if chid <= 16 else 32
    chid_pad = _cdiv(chid, chunk) * chunk
    dot_cost = _FP32_DOT_MAC_COST if dtype == torch.float32 else 1
    best = None
    for tile_h in (1, 2, 4, 8, 16):
        for tile_w in (1, 2, 4, 8, 16):
            p = tile_h * tile_w
            if not 16 <= p <= 128:
                continue
            halo_w = (tile_w - 1) * stride + 3
            halo_p = _next_pow2(((tile_h - 1) * stride + 3) * halo_w)
            if halo_p > 256:
                continue
            # Input channels per expand step: all (padded to a power of two) while the operand fits, else
            # the largest power of two that fits, 32 rather than 64 when that avoids padding (96, 160).
            block_k = min(max(16, _next_pow2(cin)), max(16, _MAX_OPERAND_BYTES // (halo_p * dtype.itemsize)))
            if block_k == 64 and cin > 64 and cin % 64 and cin % 32 == 0:
                block_k = 32
            block_co = max(16, _next_pow2(cout))
            while block_co > 16 and p * block_co + halo_p * chunk > _MAX_LIVE_ELEMENTS:
                block_co //= 2
            programs = _cdiv(ho, tile_h) * _cdiv(wo, tile_w) * _cdiv(cout, block_co)
            expand = halo_p * _cdiv(cin, block_k) * block_k * chid_pad * dot_cost if has_expand else 0
            per_program = (expand + p * 9 * chid_pad * _DW_MAC_COST + p * chid_pad * block_co * dot_cost
                           + _ELEMENT_LOAD_COST * (chid * (cin + 9 + block_co) + halo_p * cin + p * block_co))
            if best is None or programs * per_program < best[0]:
                live = p * block_co + halo_p * chunk
                best = (programs * per_program,
                        _Config(tile_h, tile_w, halo_w, halo_p, chunk, block_k, block_co,
                                4 if live <= _FOUR_WARP_ELEMENTS else 8))
    return best[1]


def _interpreter_active() -> bool:
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(inverted_residual_kernel, InterpretedFunction)


def inverted_residual_triton(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                             w_dw: torch.Tensor, b_dw: torch.Tensor, w_project: torch.Tensor,
                             b_project: torch.Tensor, stride: int, residual: bool, *,
                             depthwise: str = "auto", fp32_precision: str = "ieee") -> torch.Tensor:
    """One eval-mode MobileNetV2 inverted-residual block (BatchNorm folded) as a single Triton launch.

    Computes (docs/CONTRACT.md)::

        h = relu6(conv1x1(x, w_expand) + b_expand)        # skipped when w_expand is None (then Chid == Cin)
        h = relu6(depthwise3x3(h, w_dw, stride, padding=1) + b_dw)
        y = conv1x1(h, w_project) + b_project (+ x when residual)

    Args:
        x: [N, Cin, H, W], float16, bfloat16 or float32, any strides (read as channels_last / NHWC).
        w_expand: [Chid, Cin] or None; b_expand: [Chid] or None (None exactly when w_expand is None).
        w_dw: [Chid, 3, 3]; b_dw: [Chid]; w_project: [Cout, Chid]; b_project: [Cout].
            All weights in x's dtype and on x's device.
        stride: 1 or 2 (depthwise stride; padding is always 1).
        residual: add x to the output; needs stride 1 and Cin == Cout.
        depthwise: "gather" (taps by tl.gather on the expanded halo tile), "recompute" (re-expand the
            shifted input at each of the 9 taps) or "auto" (gather on halo tiles of at most 128 pixels, else
            recompute; the faster one in H200 measurements). Same result; a speed choice.
        fp32_precision: tl.dot input precision for float32 inputs: "ieee" (exact fp32) or "tf32" (faster,
            ~1e-3 relative error).

    Returns:
        [N, Cout, (H - 1) // stride + 1, (W - 1) // stride + 1] in x's dtype, channels_last if x is
        channels_last (and not also NCHW-contiguous), else contiguous NCHW. Accumulation is float32.
        N == 0 returns an empty tensor of that shape.

    Raises:
        ValueError / TypeError: bad shapes, devices, dtypes, stride or residual (from
            mnv2_kernels._validate.check_inverted_residual_args), an unsupported dtype, or a bad
            ``depthwise`` / ``fp32_precision``. Raised before anything is allocated.
        RuntimeError: x is a CPU tensor but Triton's interpreter is not active (set TRITON_INTERPRET=1
            before importing triton), or x is on a device Triton cannot run.
    """
    d = check_inverted_residual_args(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)
    if x.dtype not in _DTYPES:
        raise TypeError(_PREFIX + f"supports float16, bfloat16 and float32, got {x.dtype}; convert the input "
                        "and the module with .to(torch.float16) (or bfloat16/float32)")
    if depthwise not in _DEPTHWISE_MODES:
        raise ValueError(_PREFIX + f"depthwise must be one of {_DEPTHWISE_MODES}, got {depthwise!r}")
    if fp32_precision not in _FP32_PRECISIONS:
        raise ValueError(_PREFIX + f"fp32_precision must be one of {_FP32_PRECISIONS}, got {fp32_precision!r}")
    if x.device.type == "cpu":
        if not _interpreter_active():
            raise RuntimeError(_PREFIX + "x is a CPU tensor but Triton's interpreter is off; set the environment "
                               "variable TRITON_INTERPRET=1 before importing triton (and mnv2_kernels), or "
                               "move the block and its input to a CUDA device")
    elif x.device.type != "cuda":
        raise RuntimeError(_PREFIX + f"Triton cannot run tensors on {x.device}; move the block and its input "
                           "to a CUDA device (or to the CPU with TRITON_INTERPRET=1)")

    y = torch.empty((d.N, d.Cout, d.Ho, d.Wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if d.N > 0:
        cfg = _pick_config(d.Cin, d.Chid, d.Cout, d.H, d.W, d.stride, d.has_expand, x.dtype)
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        w_dw9 = w_dw.reshape(d.Chid, 9).contiguous()
        dw_gather = depthwise == "gather" or (depthwise == "auto" and cfg.halo_p <= _AUTO_GATHER_MAX_HALO)
        tiles_w = _cdiv(d.Wo, cfg.tile_w)
        tiles_per_img = _cdiv(d.Ho, cfg.tile_h) * tiles_w
        grid = (d.N * tiles_per_img, _cdiv(d.Cout, cfg.block_co))
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            inverted_residual_kernel[grid](
                x_nhwc,
                w_expand.contiguous() if d.has_expand else w_dw9,
                b_expand.contiguous() if d.has_expand else w_dw9,
                w_dw9, b_dw.contiguous(), w_project.contiguous(), b_project.contiguous(), y,
                d.H, d.W, d.Ho, d.Wo, d.Cin, d.Chid, d.Cout, tiles_w, tiles_per_img,
                STRIDE=d.stride, TILE_H=cfg.tile_h, TILE_W=cfg.tile_w, HALO_W=cfg.halo_w, HALO_P=cfg.halo_p,
                CHUNK=cfg.chunk, BLOCK_K=cfg.block_k, BLOCK_CO=cfg.block_co, HAS_EXPAND=d.has_expand,
                RESIDUAL=d.residual, DW_GATHER=dw_gather,
                DOT_PRECISION=fp32_precision if x.dtype == torch.float32 else "ieee",
                num_warps=cfg.num_warps,
            )
    return y if wants_channels_last(x) else y.contiguous()

