"""The fused Triton kernel (mnv2_kernels/triton) against a float64 reference of docs/CONTRACT.md.

Without a GPU the tests run the kernel in Triton's interpreter on CPU tensors (small shapes, a persistent
grid of 3 programs so that rings are carried across bands and images; the whole CPU part takes about a
minute on 2 cores), including NaN/Inf propagation and the bfloat16 refusal. With a GPU, the `*_gpu` tests
compile it and check every MobileNetV2 block shape at batch 1, 8 and 64 in float16, bfloat16 and float32:
the kernel's error against float64 must stay within twice PyTorch eager's error on the same inputs (plus a
small floor), and both kernel variants where both apply.

Error measure everywhere: max |y - ref| / max |ref| (NaN or inf fails).
"""
import importlib
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest  # noqa: E402

import mnv2_kernels  # noqa: E402,F401  (defines torch.ops.mnv2.*)
from mnv2_kernels.reference import inverted_residual_reference  # noqa: E402
from mnv2_kernels.models import mobilenet_v2_blocks  # noqa: E402
from mnv2_kernels.testing import random_block_args, to_float64  # noqa: E402
from mnv2_kernels.triton import inverted_residual_triton  # noqa: E402

launcher = importlib.import_module("mnv2_kernels.triton.launcher")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason="interpreter tests run on machines without a GPU")

# fp32 uses input_precision="ieee" dots: exact up to summation order.
INTERP_TOL = {torch.float32: 1e-5, torch.float16: 4e-3}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| in float64; inf when got has NaN/inf."""
    got = got.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """x (NCHW-contiguous) re-laid as "nchw", "channels_last" or "strided" (non-contiguous in both formats)."""
    if kind == "nchw":
        return x
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    wide = x.new_zeros(*x.shape[:3], 2 * x.shape[3])
    wide[..., ::2] = x
    return wide[..., ::2]


def check_format(y: torch.Tensor, x: torch.Tensor) -> None:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


# ---------------------------------------------------------------------------------------------------------
# Interpreter (CPU) tests.
# (cin, chid, cout, stride, residual, expand, n, h, w)
CASES = [
    (16, 96, 16, 1, True, True, 2, 9, 9),      # t = 6, residual
    (8, 48, 20, 2, False, True, 1, 9, 7),      # t = 6, stride 2, odd width
    (16, 16, 16, 1, True, False, 3, 7, 7),     # t = 1 without expand conv, batch 3
    (20, 20, 36, 2, False, True, 1, 15, 15),   # t = 1 with expand conv, stride 2
    (20, 80, 36, 1, False, True, 1, 15, 9),    # t = 4
    (8, 16, 16, 1, False, True, 2, 7, 9),      # t = 2
    (3, 18, 5, 2, False, True, 1, 9, 9),       # odd channel counts
    (7, 7, 7, 1, True, False, 2, 7, 15),       # odd channels, no expand, residual
    (13, 39, 13, 1, True, True, 1, 1, 1),      # 1x1 image: only the centre tap is inside
    (12, 72, 24, 2, False, True, 1, 1, 15),    # one row, stride 2
    (24, 144, 24, 1, True, True, 1, 16, 16),   # exact tile multiples
]


def case_id(c):
    cin, chid, cout, s, res, exp, n, h, w = c
    return f"{cin}-{chid}-{cout}_s{s}{'_res' if res else ''}{'' if exp else '_noexp'}_n{n}_{h}x{w}"


def run_case(case, dtype=torch.float32, kind="nchw", device="cpu", seed=0, **kwargs):
    cin, chid, cout, s, res, exp, n, h, w = case
    args = random_block_args(cin, chid, cout, stride=s, residual=res, expand=exp, n=n, h=h, w=w,
                             dtype=dtype, device=device, seed=seed)
    x = layout(args[0], kind)
    y = inverted_residual_triton(x, *args[1:], **kwargs)
    ref = inverted_residual_reference(*to_float64(args))
    assert y.shape == ref.shape and y.dtype == dtype and y.device == x.device
    check_format(y, x)
    return rel_err(y.cpu(), ref)


@interpreter_only
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference_fp32(case):
    assert run_case(case) < INTERP_TOL[torch.float32]


@interpreter_only
@pytest.mark.parametrize("kind", ["channels_last", "strided"])
@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=case_id)
def test_input_layouts(case, kind):
    assert run_case(case, kind=kind) < INTERP_TOL[torch.float32]


# bfloat16 is left to the GPU tests: Triton 3.8's interpreter computes tl.dot on bfloat16 operands wrongly
# (a 16x16 bf16 dot returns ~1e10), so the launcher refuses bfloat16 CPU tensors (test_errors).
@interpreter_only
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2], CASES[6]], ids=case_id)
def test_float16(case):
    assert run_case(case, dtype=torch.float16, kind="channels_last") < INTERP_TOL[torch.float16]


@interpreter_only
@pytest.mark.parametrize("variant", ["ring", "chunk"])
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[6], CASES[8]], ids=case_id)
def test_variants(case, variant):
    """Both kernels, forced, on shapes whose output fits one tile (where the launcher may pick either)."""
    assert run_case(case, variant=variant) < INTERP_TOL[torch.float32]


@interpreter_only
def test_tf32_option_runs():
    assert run_case(CASES[0], fp32_precision="tf32") < 1e-2


@interpreter_only
@pytest.mark.parametrize("block_pb,rows,block_pa,chunk,block_k,block_co,co_tiles,co_rest", [
    (16, 1, 16, 16, 16, 16, 2, 16),     # several tiles per band and per expanded row, K steps, project tiles
    (32, 2, 64, 32, 64, 32, 1, 16),     # two-row bands, one K step, a smaller last project tile
    (64, 5, 32, 64, 32, 64, 1, 0),      # bands of 5 rows (the last one short), expand tiles across rows
])
@pytest.mark.parametrize("stride", [1, 2])
def test_forced_tilings(monkeypatch, block_pb, rows, block_pa, chunk, block_k, block_co, co_tiles, co_rest, stride):
    """Configurations the heuristic rarely picks for small shapes: several loop trip counts everywhere."""
    cin, chid = 40, 120
    cfg = launcher._Config(block_pb, rows, (rows - 1) * stride + 3, block_pa, chunk, -(-chid // chunk) * chunk,
                           block_k, -(-cin // block_k), block_co, co_tiles, co_rest, 4, 2)
    monkeypatch.setattr(launcher, "_pick_config", lambda *a: cfg)
    case = (cin, chid, 40, stride, stride == 1, True, 2, 9, 11)
    assert run_case(case) < INTERP_TOL[torch.float32]


@interpreter_only
@pytest.mark.parametrize("programs", [1, 2, 5])
def test_persistent_grid_sizes(monkeypatch, programs):
    """One program doing every band of every image (the ring carried across images) up to one per band."""
    monkeypatch.setattr(launcher, "_INTERPRETER_PROGRAMS", programs)
    assert run_case((8, 24, 8, 1, True, True, 2, 5, 6)) < INTERP_TOL[torch.float32]


def _nonfinite_case(cin, chid, cout, stride, residual, expand, n, h, w, poison):
    """Block arguments with non-finite values planted in x: (image, channel, row, col, value) per entry."""
    args = random_block_args(cin, chid, cout, stride=stride, residual=residual, expand=expand, n=n, h=h, w=w)
    x = args[0].clone()
    for img, ch, row, col, val in poison:
        x[img, ch, row, col] = val
    return (x,) + args[1:]


def check_nonfinite(args, **kwargs):
    """The kernel's output is NaN / +inf / -inf exactly where PyTorch's block's is, and close elsewhere."""
    y = inverted_residual_triton(*args, **kwargs).double()
    ref = inverted_residual_reference(*to_float64(args))
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y == float("inf"), ref == float("inf"))
    assert torch.equal(y == -float("inf"), ref == -float("inf"))
    fin = torch.isfinite(ref)
    assert fin.any()
    assert ((y[fin] - ref[fin]).abs().max() / ref[fin].abs().max()).item() < INTERP_TOL[torch.float32]
    return ref


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * w in numpy
@interpreter_only
@pytest.mark.parametrize("stride", [1, 2])
def test_nan_propagates_like_pytorch(stride):
    """A NaN input pixel poisons exactly the outputs whose 3x3 window (in the expanded space) covers it:
    ReLU6 keeps NaN (a max/min clamp would turn it into 0), and the zero padding of the image border and of
    padded channels never multiplies a NaN into other pixels."""
    nan = float("nan")
    args = _nonfinite_case(13, 39, 13, stride, stride == 1, True, 2, 7, 9,
                           [(0, 3, 0, 0, nan), (0, 0, 4, 5, nan), (1, 12, 6, 8, nan)])
    ref = check_nonfinite(args)
    assert ref.isnan().any() and not ref.isnan().all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * w in numpy
@interpreter_only
def test_nan_propagates_without_expand():
    args = _nonfinite_case(7, 7, 7, 1, True, False, 1, 6, 6, [(0, 2, 5, 0, float("nan"))])
    assert check_nonfinite(args).isnan().any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * w in numpy
@interpreter_only
@pytest.mark.parametrize("residual", [False, True])
def test_inf_is_clamped_not_multiplied_by_zero(residual):
    """+/-inf in x: relu6(+/-inf) is 6 or 0 in PyTorch, so the block output stays finite (inf where the residual
    adds x itself); the kernel must not compute inf * 0 = NaN for padded channels or out-of-image pixels.
    39 expanded channels pad to the kernel's channel chunks."""
    inf = float("inf")
    args = _nonfinite_case(13, 39, 13, 1, residual, True, 1, 5, 6, [(0, 1, 0, 0, inf), (0, 5, 2, 3, -inf)])
    ref = check_nonfinite(args)
    assert ref.isnan().sum() == 0 and ref.isinf().any() == residual


@interpreter_only
def test_halo_is_zero_padded_after_activation():
    """A large positive b_expand makes relu6(b_expand) = 6 at out-of-image halo pixels; they must read 0."""
    args = random_block_args(16, 48, 16, stride=1, residual=False, n=1, h=8, w=8, expand_bias_shift=20.0)
    y = inverted_residual_triton(*args)
    ref = inverted_residual_reference(*to_float64(args))
    assert rel_err(y, ref) < INTERP_TOL[torch.float32]
    # The check has teeth: padding with relu6(b_expand) instead of 0 changes the border outputs.
    x, we, be, wd, bd, wp, bp = to_float64(args)[:7]
    h = torch.nn.functional.conv2d(x, we[:, :, None, None], be).clamp(0, 6)
    h = torch.nn.functional.pad(h, (1, 1, 1, 1), value=0.0) + torch.nn.functional.pad(
        torch.zeros_like(h), (1, 1, 1, 1), value=1.0) * be.clamp(0, 6)[None, :, None, None]
    h = torch.nn.functional.conv2d(h, wd[:, None], bd, groups=wd.shape[0]).clamp(0, 6)
    wrong = torch.nn.functional.conv2d(h, wp[:, :, None, None], bp)
    assert rel_err(wrong, ref) > 1e-2


@interpreter_only
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_empty_batch(kind):
    args = random_block_args(8, 48, 16, stride=2, n=1, h=9, w=9)
    x = layout(torch.empty(0, 8, 9, 9), kind)
    y = inverted_residual_triton(x, *args[1:])
    assert y.shape == (0, 16, 5, 5)
    check_format(y, x)


@interpreter_only
def test_errors():
    args = random_block_args(8, 48, 8, residual=True)
    with pytest.raises(TypeError, match="supports float16, bfloat16 and float32"):
        inverted_residual_triton(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    with pytest.raises(ValueError, match="block expects 8 input channels, got 5"):
        inverted_residual_triton(torch.randn(1, 5, 9, 9), *args[1:])
    with pytest.raises(ValueError, match="variant must be one of"):
        inverted_residual_triton(*args, variant="gather")
    with pytest.raises(ValueError, match="variant 'chunk' needs an output image of at most 64 pixels, got 9x9"):
        inverted_residual_triton(*args, variant="chunk")
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        inverted_residual_triton(*args, fp32_precision="bf16")


@interpreter_only
def test_ring_past_int32_offsets_refused():
    """A program's ring (3 rows x (W + 2) x Chid here) indexes with int32: past 2^31 elements the launcher
    refuses before allocating, saying what to do."""
    args = random_block_args(8, 2048, 8, n=1, h=1, w=1)
    x = torch.zeros(1, 8, 1, 400_000)
    with pytest.raises(ValueError, match="too large for the Triton kernel's per-program scratch; use backend="):
        inverted_residual_triton(x, *args[1:])


@interpreter_only
def test_bfloat16_cpu_refused():
    """Triton's interpreter computes bfloat16 tl.dot wrongly: the launcher refuses it, saying what to do."""
    args = random_block_args(8, 48, 8, residual=True, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"float32 and float16, got torch.bfloat16.*backend='cpu'"):
        inverted_residual_triton(*args)


@interpreter_only
def test_static_plans_match_the_launch():
    """static_plans (the static sm_90a report's view) describes the configuration the launcher uses."""
    import inspect
    for shape in [(24, 144, 24, 56, 56, 1, True, True), (160, 960, 320, 7, 7, 1, True, False),
                  (96, 576, 160, 14, 14, 2, True, False)]:
        plans = launcher.static_plans(256, *shape[:3], *shape[3:5], *shape[5:], torch.float16)
        assert [p["chosen"] for p in plans].count(True) == 1
        names = [p["name"] for p in plans]
        assert set(names) <= {"triton-ring", "triton-chunk"} and len(names) == len(set(names))
        for plan in plans:
            variant = plan["name"].split("-", 1)[1]
            cfg, programs, ints, consts, kernel = launcher._launch_params(variant, 256, *shape, torch.float16, 132)
            assert plan["constexprs"] == consts and plan["programs"] == programs
            assert plan["num_warps"] == cfg.num_warps and plan["kernel"] is kernel
            assert all(plan["args"][k] == v for k, v in ints.items())
            params = inspect.signature(getattr(kernel, "fn", kernel)).parameters
            assert set(params) == set(plan["args"]) | set(plan["constexprs"])
            trips = plan["trips"]
            assert trips[1] == ints["ITEMS_PER_PROG"] and trips[3] >= trips[2] >= trips[1]
            scratch = launcher._scratch_bytes(variant, cfg, shape[4], 2, True)
            assert programs * scratch <= launcher._L2_SCRATCH_BYTES or programs <= 132


@interpreter_only
def test_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setattr(launcher, "_interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        inverted_residual_triton(*random_block_args(8, 48, 8))


@interpreter_only
def test_registered_op_runs_the_launcher():
    args = random_block_args(8, 48, 8, residual=True, n=1)
    y = torch.ops.mnv2.inverted_residual_triton(*args)
    assert rel_err(y, inverted_residual_reference(*to_float64(args))) < INTERP_TOL[torch.float32]


# ---------------------------------------------------------------------------------------------------------
# GPU tests: the kernel's error must stay within 2x eager PyTorch's error on the same inputs, plus a floor.
GPU_ATOL = {torch.float32: 1e-5, torch.float16: 5e-4, torch.bfloat16: 4e-3}
GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
PRECOMPILE_TIMEOUT_S = 45

# MobileNetV2 block shapes at 224x224 input, from the package's one block table (blocks 5-6, 8-10, 12-13,
# 15-16 repeat a shape): (blocks, cin, t, cout, stride, h); the first block also without its expand conv.
MBV2_BLOCKS = [(b.name, b.cin, b.chid // b.cin, b.cout, b.stride, b.h) for b in mobilenet_v2_blocks()]
GPU_SHAPES = [(f"b{b}", cin, cin * t, cout, s, s == 1 and cin == cout, True, h)
              for b, cin, t, cout, s, h in MBV2_BLOCKS] + [("b1_noexp", 32, 32, 16, 1, False, False, 112)]


def _has_cuda_kernel() -> bool:
    return (hasattr(torch.ops.mnv2, "inverted_residual")
            and torch._C._dispatch_has_kernel_for_dispatch_key("mnv2::inverted_residual", "CUDA"))


BACKENDS = ["triton"] + (["cuda"] if torch.cuda.is_available() and _has_cuda_kernel() else [])


def backend_fn(backend: str):
    if backend == "cuda":
        return torch.ops.mnv2.inverted_residual
    if hasattr(torch.ops.mnv2, "inverted_residual_triton"):
        return torch.ops.mnv2.inverted_residual_triton
    return inverted_residual_triton


def gpu_args(cin, chid, cout, stride, residual, expand, n, h, w, dtype, seed=0):
    """Block arguments on the GPU: weights from random_block_args, x ~ 2 N(0, 1) drawn on the GPU."""
    args = random_block_args(cin, chid, cout, stride=stride, residual=residual, expand=expand, n=1, h=1, w=1,
                             dtype=dtype, device="cuda", seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(n, cin, h, w, device="cuda", generator=g) * 2.0).to(dtype)
    return (x.contiguous(memory_format=torch.channels_last),) + args[1:]


def _compile_job(job):
    """Worker process: runs one GPU case at batch 1, which leaves its kernel in Triton's on-disk cache."""
    case, dtype, variant = job
    inverted_residual_triton(*gpu_args(*case[:6], 1, *case[7:], dtype), variant=variant)
    torch.cuda.synchronize()


def _gpu_compile_jobs():
    """One (case, dtype) per distinct kernel specialisation the GPU tests below need (channel counts and the
    configuration are compile-time constants; image sizes and the batch are not)."""
    jobs = ([((cin, chid, cout, s, res, exp, 1, h, h), dt, "auto")
             for _, cin, chid, cout, s, res, exp, h in GPU_SHAPES for dt in GPU_DTYPES]
            + [(case, dt, "auto") for case, dt in ODD_GPU]
            + [(case, torch.float16, v) for case in VARIANT_GPU_CASES for v in ("ring", "chunk")]
            + [(LAYOUT_GPU_CASE, torch.float16, "auto"), (INT64_GPU_CASE, torch.float16, "auto")])
    distinct = {}
    for case, dt, variant in jobs:
        cin, chid, cout, s, res, exp, _, h, w = case
        v = launcher._chosen_variant(cin, chid, cout, h, w, s, exp, res, dt) if variant == "auto" else variant
        cfg = launcher._variant_config(v, cin, chid, cout, h, w, s, exp, res, dt)
        distinct.setdefault((v, cfg, cin, chid, cout, s, res, exp, dt), (case, dt, v))
    return list(distinct.values())


@pytest.fixture(scope="module")
def precompiled():
    """Compiles the GPU tests' kernels in parallel worker processes first (one compile takes 2-4 s and the
    tests need ~50); the tests then load them from Triton's cache. A failure here only costs time: the
    tests compile, and report errors, themselves."""
    jobs = _gpu_compile_jobs()
    pool = ProcessPoolExecutor(min(16, os.cpu_count() or 1, len(jobs)), mp_context=multiprocessing.get_context("spawn"))
    try:
        list(pool.map(_compile_job, jobs, timeout=PRECOMPILE_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001  (a worker error, crash or timeout: the tests compile serially)
        warnings.warn(f"parallel precompile failed ({type(exc).__name__}: {exc}); tests compile serially")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def check_gpu(backend, args, dtype):
    if backend == "cuda" and dtype == torch.float32:  # (issue 10 helper) the CUDA kernel serves fp16 / bf16 only
        pytest.skip("the CUDA kernel serves float16 and bfloat16 (mnv2_kernels/backends.py); float32 runs on triton")
    with torch.no_grad():
        y = backend_fn(backend)(*args)
        torch.cuda.synchronize()
        ref = inverted_residual_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
        eager = inverted_residual_reference(*args)
    assert y.shape == ref.shape and y.dtype == dtype
    check_format(y, args[0])
    err, eager_err = rel_err(y, ref), rel_err(eager, ref)
    assert err <= 2 * eager_err + GPU_ATOL[dtype], f"kernel error {err:.3e}, eager error {eager_err:.3e}"


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: s[0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mobilenetv2_blocks_gpu(precompiled, backend, shape, batch, dtype):
    _, cin, chid, cout, s, res, exp, h = shape
    check_gpu(backend, gpu_args(cin, chid, cout, s, res, exp, batch, h, h, dtype), dtype)


LAYOUT_GPU_CASE = (24, 144, 24, 1, True, True, 3, 15, 13)
# Shapes where both kernels apply (output of at most 64 pixels): each forced (blocks 14, 15-16, 17 at batch 8).
VARIANT_GPU_CASES = [(96, 576, 160, 2, False, True, 8, 14, 14), (160, 960, 160, 1, True, True, 8, 7, 7),
                     (160, 960, 320, 1, False, True, 8, 7, 7)]
INT64_GPU_CASE = (16, 16, 16, 1, True, False, 8193, 128, 128)    # 8193 * 16 * 128 * 128 > 2^31 elements
# Every odd case in float16; a few in bfloat16 and float32 (each (shape, dtype) pair is one more compile).
ODD_GPU = ([(c, torch.float16) for c in CASES] + [(CASES[0], torch.bfloat16), (CASES[6], torch.bfloat16),
                                                  (CASES[1], torch.float32), (CASES[3], torch.float32)])


@requires_cuda
@pytest.mark.parametrize("case,dtype", ODD_GPU, ids=lambda v: case_id(v) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_configurations_gpu(precompiled, backend, case, dtype):
    check_gpu(backend, gpu_args(*case, dtype), dtype)


@requires_cuda
@pytest.mark.parametrize("kind", ["nchw", "strided"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_gpu(precompiled, backend, kind):
    args = gpu_args(*LAYOUT_GPU_CASE, torch.float16)
    check_gpu(backend, (layout(args[0].contiguous(), kind),) + args[1:], torch.float16)


@requires_cuda
@pytest.mark.parametrize("variant", ["ring", "chunk"])
@pytest.mark.parametrize("case", VARIANT_GPU_CASES, ids=case_id)
def test_variants_gpu(precompiled, case, variant):
    args = gpu_args(*case, torch.float16)
    y = inverted_residual_triton(*args, variant=variant)
    ref = inverted_residual_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    assert rel_err(y, ref) <= 2 * rel_err(inverted_residual_reference(*args), ref) + GPU_ATOL[torch.float16]


@requires_cuda
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_nan_inf_gpu(precompiled, dtype):
    """NaN/Inf propagate on the GPU exactly as in PyTorch's block (same NaN/inf positions)."""
    args = gpu_args(*LAYOUT_GPU_CASE, dtype)
    x = args[0].clone()
    x[0, 3, 0, 0], x[1, 5, 7, 6], x[2, 0, 14, 12] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        y = inverted_residual_triton(x, *args[1:]).double()
        ref = inverted_residual_reference(*[a.double() if isinstance(a, torch.Tensor) else a
                                            for a in (x,) + args[1:]])
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert ref.isnan().any() and torch.isfinite(ref).any()


@requires_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_int64_indexing_gpu(precompiled, backend):
    """N * H * W * C past 2^31 elements: the last images must still be right (int64 offsets)."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2 ** 30:
        pytest.skip("needs ~10 GB of GPU memory")
    cin, chid, cout, s, res, exp, n, h, w = INT64_GPU_CASE
    args = gpu_args(cin, chid, cout, s, res, exp, 1, h, w, torch.float16)
    x = torch.empty(n, cin, h, w, device="cuda", dtype=torch.float16, memory_format=torch.channels_last)
    x.normal_()
    with torch.no_grad():
        y = backend_fn(backend)(x, *args[1:])
        tail = (x[-2:],) + args[1:]
        ref = inverted_residual_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in tail])
        eager = inverted_residual_reference(*tail)
    err, eager_err = rel_err(y[-2:], ref), rel_err(eager, ref)
    del x, y
    torch.cuda.empty_cache()
    assert err <= 2 * eager_err + GPU_ATOL[torch.float16], f"kernel error {err:.3e}, eager error {eager_err:.3e}"
