"""Launcher of the generalised Triton block, ``mnv2::inverted_residual_ex_triton`` (issue 13).

docs/CONTRACT.md, "The generalised block". The block runs on the MobileNetV2 kernels of kernel.py (the "ring"
and "chunk" variants, same configuration choice as launcher.py) with their generalised constexpr options:
depthwise kernel size K, top/left padding (symmetric k // 2, or TensorFlow "same" computed per call from the
input size, ``reference.tf_same_pads``), activations after expand / depthwise / project, and:

* squeeze-excite, never writing the expanded tensor. Ring kernel (images of more than 256 output pixels): two
  launches: pass 1 (POOL) runs expand + depthwise and accumulates per-item channel sums of the (activated)
  depthwise output into a small float32 buffer; the excite MLP (mean, conv1x1, se_act, conv1x1, se_gate on
  [N, Chid]) runs as plain float32 torch ops; pass 2 (HAS_SE) recomputes expand + depthwise, multiplies by the
  gate and projects. Chunk kernel (images of up to 256 output pixels, _chunk_config): one launch (SE_FUSED): the
  image's whole depthwise output is in the program's scratch tile, so pool, MLP and gate run in-kernel.
* a leading depthwise (MobileNetV4 UIB "ExtraDW", no activation): ``depthwise_kernel`` writes the narrow
  [N, H1, W1, Cin] tensor (in x's dtype, as eager rounds it), the block runs on it, and the residual
  (stride_start 1 only) adds the original x (SEPARATE_RES).

``static_plans_ex`` exposes the launches GPU-free for the static sm_90a report (tools/gpu_static_report.py
``--ex``), in the same dict format as launcher.static_plans.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import launcher as L
from .kernel import depthwise_kernel

_PREFIX = "mnv2.inverted_residual_ex_triton: "
_DW_BLOCK_P = 64       # leading depthwise: output pixels per program
_DW_BLOCK_C = 32       # leading depthwise: channels per program


def pads(padding: str, size: int, k: int, stride: int) -> int:
    """The zero padding before (top / left) along an axis of ``size`` pixels; the padding after is implied
    by the output size (Ho = (size - 1) // stride + 1 in both modes for odd k)."""
    if padding == "symmetric":
        return k // 2
    from ..reference import tf_same_pads
    return tf_same_pads(size, k, stride)[0]


_SE_CHUNK_PIXELS = 256   # output images up to this many pixels run squeeze-excite blocks on the chunk kernel


def _chunk_config(cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool, residual: bool,
                  dtype: torch.dtype, se: bool) -> Optional[L._Config]:
    """The chunk kernel's configuration: launcher.py's (output images of <= 64 pixels), or, for squeeze-excite
    blocks, images of up to _SE_CHUNK_PIXELS output pixels in one tile of 128 / 256 (8 warps, channel chunks of
    <= 32, the project in 64-pixel sub-tiles), so that the SE runs in one launch; None when it does not apply."""
    cfg = L._pick_chunk_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    if cfg is not None or not se or ho * wo > _SE_CHUNK_PIXELS:
        return cfg
    r = L._pick_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype)   # 64-pixel project tiles
    if cin > 64:
        r = r._replace(block_k=32, k_steps=L._cdiv(cin, 32))
    block_pb = L._next_pow2(ho * wo)
    chunk = min(r.chunk, 32)
    return r._replace(block_pb=block_pb, rows=ho, ring=(ho - 1) * stride + 3, chunk=chunk,
                      chs=L._cdiv(chid, chunk) * chunk, num_warps=8,
                      block_pa=max(64, min(64 if dtype == torch.float32 else 128, L._next_pow2(h * w))))


def _variant_cfg(variant: str, cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool,
                 residual: bool, dtype: torch.dtype, se: bool = False) -> Optional[L._Config]:
    if variant == "ring":
        return L._pick_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype)
    return _chunk_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype, se)


def _ex_config(variant: str, cin: int, chid: int, cout: int, h: int, w: int, stride: int, has_expand: bool,
               residual: bool, dtype: torch.dtype, k: int, pad_t: int, se: bool = False) -> Optional[L._Config]:
    """The launch configuration for the shape (launcher.py's, the chunk kernel's for squeeze-excite), with the
    ring rows a k x k depthwise needs (None: the variant does not apply to the shape)."""
    cfg = _variant_cfg(variant, cin, chid, cout, h, w, stride, has_expand, residual, dtype, se)
    if cfg is None:
        return None
    if variant == "ring":
        return cfg._replace(ring=(cfg.rows - 1) * stride + k)
    ho = (h - 1) // stride + 1
    # stored rows: image row iy at iy + k // 2; read rows up to (ho - 1) * stride - pad_t + k // 2 + k - 1
    return cfg._replace(ring=max((ho - 1) * stride + k + k // 2 - pad_t, h + k // 2))


def _launch_params(variant: str, n: int, cin: int, chid: int, cout: int, h: int, w: int, stride: int,
                   has_expand: bool, residual: bool, dtype: torch.dtype, sms: int, per_sm: int, fp32_precision: str,
                   options: dict, se_fused: Optional[tuple] = None):
    """(config, programs, runtime int args, constexprs, kernel) of one launch of the block kernels; ``options``
    are the generalised constexprs (launcher.MV2_OPTIONS keys); ``se_fused`` (se_act, se_gate, Crd): the chunk
    kernel's one-launch squeeze-excite."""
    cfg = _ex_config(variant, cin, chid, cout, h, w, stride, has_expand, residual, dtype, options["K"],
                     options["PAD_T"], se_fused is not None)
    cfg, programs, ints, consts, kernel = L._launch_from_config(variant, cfg, n, cin, chid, cout, h, w, stride,
                                                                has_expand, residual, dtype, sms, per_sm,
                                                                fp32_precision, options)
    if variant == "chunk":
        if cfg.block_pb > 64:     # project in 64-pixel sub-tiles; depthwise rows in a loop (9 taps in flight spill)
            consts.update(PROJ_PB=64, DW_STATIC_K=1)
        if se_fused is not None:                       # (se_act, se_gate, crd): squeeze-excite in this launch
            se_act, se_gate, crd = se_fused
            crdp = max(16, L._next_pow2(crd))
            consts.update(SE_FUSED=True, SE_ACT=se_act, SE_GATE=se_gate, CRDP=crdp,
                          SE_BLOCK_C=max(16, min(cfg.chunk, 1024 * cfg.num_warps // crdp)))
    return cfg, programs, ints, consts, kernel


def _options(k: int, pad_t: int, pad_l: int, act_expand: str, act_dw: str, act_project: str, has_se: bool,
             pool: bool, separate_res: bool) -> dict:
    return dict(K=k, PAD_T=pad_t, PAD_L=pad_l, ACT_EXPAND=act_expand, ACT_DW=act_dw, ACT_PROJECT=act_project,
                HAS_SE=has_se, POOL=pool, SEPARATE_RES=separate_res)


def _chosen(cin, chid, cout, h, w, stride, has_expand, residual, dtype, se=False) -> str:
    """"chunk" where it applies (launcher.py's rule; with squeeze-excite up to _SE_CHUNK_PIXELS output pixels,
    where it saves the second pass), else "ring"."""
    return "chunk" if _chunk_config(cin, chid, cout, h, w, stride, has_expand, residual, dtype, se) else "ring"


def static_plans_ex(N: int, Cin: int, Chid: int, Cout: int, H: int, W: int, stride: int, has_expand: bool,
                    residual: bool, dtype: torch.dtype, *, k: int = 3, padding: str = "symmetric",
                    act_expand: str = "relu6", act_dw: str = "relu6", act_project: str = "none",
                    se: bool = False, crd: int = 0, se_act: str = "relu", se_gate: str = "sigmoid",
                    dw_start: int = 0, stride_start: int = 1) -> list:
    """The launches of one generalised block, GPU-free, for the static sm_90a report: per variant ("ring",
    and "chunk" where the output image fits one tile) one plan per launch ("triton-ex-<variant>", and with
    squeeze-excite on the ring "triton-ex-ring-pool" for pass 1; the chunk kernel does squeeze-excite in its
    one launch, SE_FUSED), each a dict like launcher.static_plans's (kernel,
    args, constexprs, programs, num_warps, num_stages, trips) plus ``launch`` (which pass) and ``variant``."""
    ptr = "ptr:" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    plans = []
    if dw_start:    # the leading depthwise (launched first; H, W below are then its output's)
        h1, w1 = (H - 1) // stride_start + 1, (W - 1) // stride_start + 1
        cp = L._cdiv(Cin, _DW_BLOCK_C) * _DW_BLOCK_C
        npix = N * h1 * w1
        programs = L._cdiv(npix, _DW_BLOCK_P) * (cp // _DW_BLOCK_C)
        plans.append(dict(name="triton-ex-dwstart", variant="dwstart", launch="dwstart", chosen=True,
                          backend="triton", programs=programs, num_warps=4, num_stages=3, trips={1: dw_start},
                          kernel=depthwise_kernel,
                          args=dict(x_ptr=ptr, w_ptr="ptr:fp32", b_ptr="ptr:fp32", y_ptr=ptr, H=H, W=W, HO=h1, WO=w1,
                                    NPIX=npix),
                          constexprs=dict(C=Cin, CP=cp, K=dw_start, STRIDE=stride_start,
                                          PAD_T=pads(padding, H, dw_start, stride_start),
                                          PAD_L=pads(padding, W, dw_start, stride_start), BLOCK_P=_DW_BLOCK_P,
                                          BLOCK_C=_DW_BLOCK_C),
                          config=dict(block_p=_DW_BLOCK_P, block_c=_DW_BLOCK_C)))
        H, W = h1, w1
    pad_t, pad_l = pads(padding, H, k, stride), pads(padding, W, k, stride)
    chosen = _chosen(Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype, se)
    for variant in ("ring", "chunk"):
        if _variant_cfg(variant, Cin, Chid, Cout, H, W, stride, has_expand, residual, dtype, se) is None:
            continue
        fused = (se_act, se_gate, crd or max(1, Chid // 4)) if se and variant == "chunk" else None
        passes = [("pool", True), ("block", False)] if se and fused is None else [("block", False)]
        for launch, pool in passes:
            opts = _options(k, pad_t, pad_l, act_expand, act_dw, act_project, se and fused is None and not pool,
                            pool, False)
            cfg, programs, ints, consts, kernel = _launch_params(variant, N, Cin, Chid, Cout, H, W, stride,
                                                                 has_expand, residual, dtype, L._H200_SMS,
                                                                 L._PROGRAMS_PER_SM, "ieee", opts, fused)
            args = {name: ptr for name in ("x_ptr", "we_ptr", "be_ptr", "wp_ptr", "bp_ptr", "y_ptr", "dbuf_ptr",
                                           "res_ptr", "ring_ptr")}
            args.update(wdw_ptr="ptr:fp32", bdw_ptr="ptr:fp32", gate_ptr="ptr:fp32", pool_ptr="ptr:fp32")
            args.update(ints)
            trips = L._loop_trips(variant, cfg, N, H, W, stride, has_expand, programs)
            if k > 3:   # the depthwise row loop (one level deeper than the chunk loop)
                trips[4] = trips[3] * k
            plans.append(dict(name=f"triton-ex-{variant}" + ("-pool" if pool else ""), variant=variant,
                              launch=launch, chosen=variant == chosen, backend="triton", programs=programs,
                              num_warps=cfg.num_warps, num_stages=cfg.num_stages, trips=trips, kernel=kernel,
                              args=args, constexprs=consts, config=cfg._asdict()))
    return plans


def _pack_se(w_r: torch.Tensor, b_r: torch.Tensor, w_e: torch.Tensor, b_e: torch.Tensor, chs: int, crdp: int
             ) -> torch.Tensor:
    """The chunk kernel's packed float32 SE weights (kernel._se_fused): w_r [CRDP, CHS] | b_r [CRDP] |
    w_e^T [CRDP, CHS] | b_e [CHS], zero-padded from w_r [Crd, Chid], b_r [Crd], w_e [Chid, Crd], b_e [Chid]."""
    crd, chid = w_r.shape
    buf = torch.zeros((2 * crdp * chs + crdp + chs,), dtype=torch.float32, device=w_r.device)
    buf[:crdp * chs].view(crdp, chs)[:crd, :chid] = w_r
    buf[crdp * chs:crdp * chs + crd] = b_r
    o = crdp * chs + crdp
    buf[o:o + crdp * chs].view(crdp, chs)[:crd, :chid] = w_e.t()
    buf[o + crdp * chs:o + crdp * chs + chid] = b_e
    return buf


def _excite(pooled: torch.Tensor, count: int, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, se_act: str,
            se_gate: str) -> torch.Tensor:
    """The squeeze-excite MLP in float32: pooled [N, Chid] channel sums of the depthwise output over ``count``
    pixels -> gate [N, Chid]."""
    from ..reference import activation
    s = pooled / count                                                                        # [N, Chid]
    s = activation(torch.addmm(b_se_reduce.float(), s, w_se_reduce.float().t()), se_act)      # [N, Crd]
    return activation(torch.addmm(b_se_expand.float(), s, w_se_expand.float().t()), se_gate)  # [N, Chid]


def _leading_depthwise(x_nhwc: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, padding: str
                       ) -> torch.Tensor:
    """depthwise_kernel: [N, C, H, W] (channels_last) -> [N, C, H1, W1] channels_last in x's dtype."""
    n, c, h, w_ = x_nhwc.shape
    k = w.shape[-1]
    ho, wo = (h - 1) // stride + 1, (w_ - 1) // stride + 1
    cp = L._cdiv(c, _DW_BLOCK_C) * _DW_BLOCK_C
    w_t = torch.zeros((k * k, cp), dtype=torch.float32, device=x_nhwc.device)                 # [K*K, CP]
    w_t[:, :c] = w.reshape(c, k * k).t()
    b_p = torch.zeros((cp,), dtype=torch.float32, device=x_nhwc.device)
    b_p[:c] = b
    y = torch.empty((n, c, ho, wo), dtype=x_nhwc.dtype, device=x_nhwc.device, memory_format=torch.channels_last)
    npix = n * ho * wo
    if npix:
        depthwise_kernel[(L._cdiv(npix, _DW_BLOCK_P), cp // _DW_BLOCK_C)](
            x_nhwc, w_t, b_p, y, h, w_, ho, wo, npix, C=c, CP=cp, K=k, STRIDE=stride,
            PAD_T=pads(padding, h, k, stride), PAD_L=pads(padding, w_, k, stride), BLOCK_P=_DW_BLOCK_P,
            BLOCK_C=_DW_BLOCK_C, num_warps=4)
    return y


def inverted_residual_ex_triton(x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
                                w_dw: torch.Tensor, b_dw: torch.Tensor, w_se_reduce: Optional[torch.Tensor],
                                b_se_reduce: Optional[torch.Tensor], w_se_expand: Optional[torch.Tensor],
                                b_se_expand: Optional[torch.Tensor], w_project: torch.Tensor,
                                b_project: torch.Tensor, stride: int, residual: bool, act_expand: str = "relu6",
                                act_dw: str = "relu6", padding: str = "symmetric", se_act: str = "relu",
                                se_gate: str = "sigmoid", act_project: str = "none",
                                w_dw_start: Optional[torch.Tensor] = None, b_dw_start: Optional[torch.Tensor] = None,
                                stride_start: int = 1, *, variant: str = "auto",
                                fp32_precision: str = "ieee") -> torch.Tensor:
    """One generalised eval-mode block (docs/CONTRACT.md, "The generalised block") on the Triton kernels.

    Args (the op's schema, then options):
        x: [N, Cin, H, W], float16, bfloat16 or float32, any strides (read as channels_last). CPU tensors run
            in Triton's interpreter (float32 and float16 only).
        w_expand [Chid, Cin] / b_expand [Chid] or both None; w_dw [Chid, k, k] (k in 1, 3, 5, 7, 9), b_dw [Chid];
        w_se_reduce [Crd, Chid], b_se_reduce [Crd], w_se_expand [Chid, Crd], b_se_expand [Chid] or all None;
        w_project [Cout, Chid], b_project [Cout]; stride 1 or 2; residual (stride 1, stride_start 1, Cin == Cout);
        act_expand / act_dw / se_act / act_project: reference.ACTIVATIONS; se_gate: sigmoid / hardsigmoid;
        padding: "symmetric" or "tf_same"; w_dw_start [Cin, k0, k0] / b_dw_start [Cin] or None, stride_start.
        variant: "auto", "ring" or "chunk" (as in launcher.inverted_residual_triton; same result).
        fp32_precision: "ieee" or "tf32" (tl.dot precision for float32 inputs).

    Returns:
        [N, Cout, Ho, Wo], Ho = (H1 - 1) // stride + 1, H1 = (H - 1) // stride_start + 1, in x's dtype and
        memory format (channels_last if x is channels_last and not NCHW-contiguous). Float32 accumulation; the
        squeeze-excite pool and MLP in float32.

    Raises:
        ValueError / TypeError: bad shapes, options, devices, dtypes (ops.check_inverted_residual_ex_args), a
            dtype the Triton kernels lack (also bfloat16 CPU tensors), a bad variant or fp32_precision; all
            before anything is allocated.
        RuntimeError: CPU tensors with the interpreter off, or a device Triton cannot run.
    """
    from ..ops import check_inverted_residual_ex_args
    from .._validate import wants_channels_last
    N, Cout, Ho, Wo = check_inverted_residual_ex_args(
        x, w_expand, b_expand, w_dw, b_dw, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, w_project,
        b_project, stride, residual, act_expand, act_dw, padding, se_act, se_gate, act_project, w_dw_start,
        b_dw_start, stride_start)
    L.check_dtype(x, _PREFIX)
    if variant not in L._VARIANTS:
        raise ValueError(_PREFIX + f"variant must be one of {L._VARIANTS}, got {variant!r}")
    Cin, H, W = x.shape[1], x.shape[2], x.shape[3]
    H1, W1 = (H - 1) // stride_start + 1, (W - 1) // stride_start + 1
    Chid, k = w_dw.shape[0], w_dw.shape[-1]
    has_expand, has_se = w_expand is not None, w_se_reduce is not None
    if variant == "chunk" and _chunk_config(Cin, Chid, Cout, H1, W1, stride, has_expand, residual, x.dtype,
                                            has_se) is None:
        raise ValueError(_PREFIX + f"variant 'chunk' needs an output image of at most 64 pixels ({_SE_CHUNK_PIXELS} "
                         f"with squeeze-excite), got {Ho}x{Wo}; use variant='auto' or 'ring'")
    if fp32_precision not in L._FP32_PRECISIONS:
        raise ValueError(_PREFIX + f"fp32_precision must be one of {L._FP32_PRECISIONS}, got {fp32_precision!r}")
    L.check_device(x, _PREFIX)
    ring_cfg = _ex_config("ring", Cin, Chid, Cout, H1, W1, stride, has_expand, residual, x.dtype, k, k // 2)
    if has_expand and ring_cfg.ring * (W1 + 2 * (k // 2)) * 64 * L._cdiv(Chid, 64) >= 2 ** 31:
        raise ValueError(_PREFIX + f"an image of {H1}x{W1} pixels with {Chid} expanded channels is too large "
                         "for the Triton kernel's per-program scratch; use backend='reference', or split the image")

    y = torch.empty((N, Cout, Ho, Wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if N > 0:
        sms, per_sm = ((torch.cuda.get_device_properties(x.device).multi_processor_count, L._PROGRAMS_PER_SM)
                       if x.is_cuda else (L._INTERPRETER_PROGRAMS, 1))
        if variant == "auto":
            variant = _chosen(Cin, Chid, Cout, H1, W1, stride, has_expand, residual, x.dtype, has_se)
        pad_t, pad_l = pads(padding, H1, k, stride), pads(padding, W1, k, stride)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            x_nhwc = x.contiguous(memory_format=torch.channels_last)
            h_nhwc = x_nhwc
            if w_dw_start is not None:
                h_nhwc = _leading_depthwise(x_nhwc, w_dw_start, b_dw_start, stride_start, padding)

            se_fused = (se_act, se_gate, w_se_reduce.shape[0]) if has_se and variant == "chunk" else None

            def launch(pool: bool, gate: Optional[torch.Tensor], pool_buf: Optional[torch.Tensor]):
                opts = _options(k, pad_t, pad_l, act_expand, act_dw, act_project, gate is not None, pool,
                                residual and w_dw_start is not None)
                cfg, programs, ints, consts, kernel = _launch_params(variant, N, Cin, Chid, Cout, H1, W1, stride,
                                                                     has_expand, residual, x.dtype, sms, per_sm,
                                                                     fp32_precision, opts,
                                                                     None if pool else se_fused)
                w_dw_t = torch.zeros((k * k, cfg.chs), dtype=torch.float32, device=x.device)   # [K*K, CHS]
                w_dw_t[:, :Chid] = w_dw.reshape(Chid, k * k).t()
                b_dw_p = torch.zeros((cfg.chs,), dtype=torch.float32, device=x.device)
                b_dw_p[:Chid] = b_dw
                ring_ch = cfg.chs if variant == "ring" else cfg.chunk
                ring = (torch.empty((programs, cfg.ring, W1 + 2 * (k // 2), ring_ch), dtype=x.dtype,
                                    device=x.device) if has_expand else torch.empty((1,), dtype=x.dtype,
                                                                                    device=x.device))
                dbuf = (torch.empty((1,), dtype=x.dtype, device=x.device) if pool else
                        torch.empty((programs, cfg.block_pb, cfg.chs), dtype=x.dtype, device=x.device))
                if pool:
                    pool_buf = torch.zeros((ints["ITEMS"], cfg.chs), dtype=torch.float32, device=x.device)
                gate_p = w_dw_t
                if se_fused is not None and not pool:
                    gate_p = _pack_se(w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, cfg.chs, consts["CRDP"])
                    pool_buf = torch.empty((programs, cfg.chs), dtype=torch.float32, device=x.device)
                if gate is not None:
                    gate_p = torch.zeros((N, cfg.chs), dtype=torch.float32, device=x.device)       # [N, CHS]
                    gate_p[:, :Chid] = gate
                kernel[(programs,)](
                    h_nhwc,
                    w_expand.contiguous() if has_expand else h_nhwc,
                    b_expand.contiguous() if has_expand else h_nhwc,
                    w_dw_t, b_dw_p, w_project.contiguous(), b_project.contiguous(), y, ring, dbuf,
                    x_nhwc, gate_p, w_dw_t if pool_buf is None else pool_buf,
                    *ints.values(), **consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                )
                return pool_buf

            gate = None
            if has_se and se_fused is None:     # ring: pass 1 (pool), the MLP here, pass 2 (gated block)
                sums = launch(True, None, None)                                  # [N * bands, CHS] float32
                sums = sums.view(N, -1, sums.shape[-1]).sum(1)[:, :Chid]        # [N, Chid]
                gate = _excite(sums, Ho * Wo, w_se_reduce, b_se_reduce, w_se_expand, b_se_expand, se_act, se_gate)
            launch(False, gate, None)
    return y if wants_channels_last(x) else y.contiguous()
