"""Seeded fuzz of the fused op and modules against an independent float64 reference (issue 8).

Each test draws N random block configurations from a seeded generator (channel counts 1-40, integer and
non-integer expansion ratios, with and without an expand conv, stride 1 and 2, odd and tiny image sizes,
batch 0-4, NCHW / channels_last / non-contiguous inputs, every dtype the backend computes) and checks shape,
dtype, memory format and values against ``naive_block``: a float64 implementation written with einsum and
shifted slices (no convolution), independent of mnv2_kernels.reference and of every kernel.

Parametrized over (backend, device): the CPU kernel, the reference and the Triton interpreter run here (the
interpreter with small shapes); the CUDA and Triton-on-GPU parameters skip without a GPU and are what the
GPU check script runs (`pytest tests/test_fuzz.py -k cuda`). A failure names the configuration's seed:
``_config(random.Random(seed), ...)`` rebuilds it.

Times on this project's 2-core CPU machine (busy, wall): CPU kernel 3 s (op) + 6 s (modules), reference
3 + 3 s, Triton interpreter 120 s (op) + 12 s (modules); `pytest tests/test_fuzz.py --durations=0`.
"""
import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mnv2_kernels as mk
from mnv2_kernels import ops
from mnv2_kernels.testing import assert_matches, backend_skip_reason, randomize_bn_

N_CONFIGS = 500
# dtypes each (backend, device) is fuzzed in (what its kernel computes; bfloat16 is refused by the Triton
# interpreter, float64 is the reference's)
DTYPES = {
    ("cpu", "cpu"): (torch.float32, torch.bfloat16),
    ("reference", "cpu"): (torch.float32,),   # (float64: test_naive_reference_agrees_with_convolutions)
    ("triton", "cpu"): (torch.float32, torch.float16),
    ("cuda", "cuda"): (torch.float16, torch.bfloat16),
    ("triton", "cuda"): (torch.float32, torch.float16, torch.bfloat16),
    ("reference", "cuda"): (torch.float32,),
}
# max |y - ref| / max |ref|: float32 is exact up to summation order; half types round the inputs (the
# reference uses the same rounded values), the stored output and, on some kernels, the hidden activations.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# The interpreter runs every program in Python: small shapes only.
SMALL = {("triton", "cpu")}
# The compiled Triton kernel takes its channel counts, stride and flags as constexprs (one compile, ~seconds,
# per combination): on the GPU it is fuzzed over sizes, batches, layouts and dtypes with a few channel sets.
FEW_CHANNELS = {("triton", "cuda"): [(16, 96, 24, True), (24, 24, 24, False), (7, 26, 7, True)]}


def naive_block(x, w_e, b_e, w_d, b_d, w_p, b_p, stride: int, residual: bool) -> torch.Tensor:
    """docs/CONTRACT.md's block in float64 with einsum and shifted slices (no convolution routines)."""
    x = x.double()
    h = x
    if w_e is not None:
        h = (torch.einsum("nchw,dc->ndhw", h, w_e.double()) + b_e.double()[:, None, None]).clamp(0.0, 6.0)
    n, c, hh, ww = h.shape
    ho, wo = (hh - 1) // stride + 1, (ww - 1) // stride + 1
    hp = F.pad(h, (1, 1, 1, 1))  # zero padding of the activated hidden tensor
    acc = b_d.double()[None, :, None, None].expand(n, c, ho, wo).clone()
    for ky in range(3):
        for kx in range(3):
            tap = hp[:, :, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            acc += tap * w_d.double()[:, ky, kx][None, :, None, None]
    h = acc.clamp(0.0, 6.0)
    y = torch.einsum("nchw,oc->nohw", h, w_p.double()) + b_p.double()[:, None, None]
    return y + x if residual else y


def _config(rng: random.Random, small: bool, channels=None) -> dict:
    """One random block configuration (all sizes drawn from rng; channels from the list when given)."""
    cmax = 24 if small else 40
    cin = rng.randint(1, cmax)
    expand = rng.random() < 0.85
    if expand:
        t = rng.choice([1, 2, 3, 4, 6, 0.5, 1.5, 2.5, 3.75, 4.5])   # non-integer widths too
        chid = max(1, int(round(cin * t)))
    else:
        chid = cin
    stride = rng.choice([1, 2])
    cout = cin if (stride == 1 and rng.random() < 0.4) else rng.randint(1, cmax)
    if channels:
        cin, chid, cout, expand = rng.choice(channels)
    residual = stride == 1 and cin == cout and rng.random() < 0.8
    hmax = 8 if small else 17
    return dict(cin=cin, chid=chid, cout=cout, expand=expand, stride=stride, residual=residual,
                n=rng.randint(0, 2 if small else 4), h=rng.randint(1, hmax), w=rng.randint(1, hmax),
                layout=rng.choice(["nchw", "channels_last", "strided"]))


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # contiguous in neither format
        wide = x.new_zeros(*x.shape[:3], 2 * x.shape[3])
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _args(cfg: dict, g: torch.Generator, dtype: torch.dtype, device: str):
    """Random op arguments (already rounded to dtype) scaled like folded weights."""
    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)

    cin, chid, cout = cfg["cin"], cfg["chid"], cfg["cout"]
    x = _layout(rnd(cfg["n"], cin, cfg["h"], cfg["w"], scale=2.0), cfg["layout"])
    w_e = rnd(chid, cin, scale=2.0 / cin ** 0.5) if cfg["expand"] else None
    b_e = rnd(chid, shift=1.0) if cfg["expand"] else None
    return (x, w_e, b_e, rnd(chid, 3, 3, scale=0.6), rnd(chid, shift=0.5), rnd(cout, chid, scale=chid ** -0.5),
            rnd(cout), cfg["stride"], cfg["residual"])


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """One intra-op thread: thousands of tiny CPU ops with 2 OpenMP threads on a busy 2-core machine run ~20x
    slower (spinning threads), which would make the fuzz's time depend on the machine's load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _skip(backend: str, device: str) -> None:
    reason = backend_skip_reason(backend, device)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("backend,device", [pytest.param(b, d, id=f"{b}-{d}") for b, d in DTYPES])
def test_fuzz_op(backend: str, device: str):
    """N_CONFIGS random configurations through ops.inverted_residual(backend=...) against naive_block."""
    _skip(backend, device)
    small = (backend, device) in SMALL
    dtypes = DTYPES[(backend, device)]
    failures = []
    for seed in range(N_CONFIGS):
        rng = random.Random(seed)
        cfg = _config(rng, small, FEW_CHANNELS.get((backend, device)))
        dtype = dtypes[seed % len(dtypes)]
        args = _args(cfg, torch.Generator().manual_seed(seed), dtype, device)
        x = args[0]
        try:
            y = ops.inverted_residual(*args, backend=backend)
            ho, wo = (cfg["h"] - 1) // cfg["stride"] + 1, (cfg["w"] - 1) // cfg["stride"] + 1
            assert y.shape == (cfg["n"], cfg["cout"], ho, wo) and y.dtype == dtype and y.device == x.device
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                assert y.is_contiguous(memory_format=torch.channels_last), "output not channels_last"
            else:
                assert y.is_contiguous(), "output not contiguous"
            assert_matches(y, naive_block(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args]),
                           TOL[dtype])
        except Exception as exc:  # noqa: BLE001 (collected: one report names every failing seed)
            failures.append(f"seed {seed} {dtype} {cfg}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, f"{len(failures)} of {N_CONFIGS} configurations failed:\n" + "\n".join(failures[:20])


class _Block(nn.Module):
    """A hand-written block of a random configuration (torchvision's layer order, its own names)."""

    def __init__(self, cfg: dict):
        super().__init__()
        cin, chid, cout = cfg["cin"], cfg["chid"], cfg["cout"]
        layers = []
        if cfg["expand"]:
            layers += [nn.Conv2d(cin, chid, 1, bias=False), nn.BatchNorm2d(chid), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(chid, chid, 3, cfg["stride"], 1, groups=chid, bias=cfg["dw_bias"]),
                   nn.BatchNorm2d(chid, eps=cfg["eps"]), nn.ReLU6(inplace=True),
                   nn.Conv2d(chid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = cfg["residual"]

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


N_MODULE_CONFIGS = 60


@pytest.mark.parametrize("backend,device", [pytest.param(b, d, id=f"{b}-{d}") for b, d in DTYPES])
def test_fuzz_fused_module_against_the_original(backend: str, device: str):
    """Random hand-written blocks: fuse() recognises each, and the fused module (recognition, folding with
    each BN's eps and the conv bias, kernel) matches the original block run in float32 on the CPU (PyTorch's
    float64 depthwise convolution is too slow for a fuzz; the op fuzz above has the float64 oracle)."""
    _skip(backend, device)
    small = (backend, device) in SMALL
    dtype = DTYPES[(backend, device)][0]
    failures = []
    n_configs = N_MODULE_CONFIGS // 2 if small else N_MODULE_CONFIGS   # the interpreter: ~0.3 s a block
    for seed in range(n_configs):
        rng = random.Random(10_000 + seed)
        cfg = dict(_config(rng, small, FEW_CHANNELS.get((backend, device))), dw_bias=rng.random() < 0.3, eps=rng.choice([1e-5, 1e-3, 0.1]))
        torch.manual_seed(seed)
        original = randomize_bn_(_Block(cfg), seed=seed).eval()
        x = _layout(torch.randn(cfg["n"], cfg["cin"], cfg["h"], cfg["w"],
                                generator=torch.Generator().manual_seed(seed)), cfg["layout"])
        try:
            model = nn.Sequential(copy.deepcopy(original)).to(device, dtype).eval()
            fused, report = mk.fuse(model, backend=backend, return_report=True, inplace=True)
            assert len(report.fused) == 1, str(report)
            with torch.no_grad():
                y = fused(x.to(device, dtype))
                ref = original(x)
            assert_matches(y, ref, TOL[dtype])
        except Exception as exc:  # noqa: BLE001
            failures.append(f"seed {seed} {cfg}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, f"{len(failures)} of {n_configs} failed:\n" + "\n".join(failures[:20])


def test_naive_reference_agrees_with_convolutions():
    """The fuzz's oracle against F.conv2d in float64 (so neither can be wrong in the same way unnoticed)."""
    for seed in range(40):
        cfg = _config(random.Random(seed), small=False)
        args = _args(cfg, torch.Generator().manual_seed(seed), torch.float64, "cpu")
        assert_matches(naive_block(*args), mk.inverted_residual_reference(*args), 1e-12)
