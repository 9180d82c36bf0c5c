"""Helpers for tests and benchmarks: realistic random blocks and BatchNorm statistics."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm2d real-like statistics (freshly initialised BNs are identities, hiding bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def imagenet_or_random_mobilenet_v2() -> nn.Module:
    """This package's MobileNetV2 with torchvision's ImageNet weights when the offline checkpoint is installed,
    else random weights with random BN statistics (benchmarks: realistic activations either way)."""
    from .models import mobilenet_v2
    try:
        return mobilenet_v2(weights="imagenet")
    except RuntimeError:
        return randomize_bn_(mobilenet_v2())


def mobilenet_v2_models() -> list:
    """[(name, factory)] of the MobileNetV2 classes fuse() gives the pooled-head forward: this package's and,
    when installed, torchvision's, each with random BN statistics (tests)."""
    from .models import mobilenet_v2
    out = [("mnv2_kernels", lambda: randomize_bn_(mobilenet_v2()))]
    try:
        import torchvision
        out.append(("torchvision", lambda: randomize_bn_(torchvision.models.mobilenet_v2())))
    except ImportError:
        pass
    return out


def random_block_args(cin: int, chid: int, cout: int, *, stride: int = 1, residual: bool = False,
                      expand: bool = True, n: int = 2, h: int = 9, w: int = 9,
                      dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0,
                      expand_bias_shift: float = 0.0) -> Tuple:
    """Random arguments for ``mnv2::inverted_residual`` (docs/CONTRACT.md order), scaled like folded weights.

    Weights ~ N(0, 1/fan_in) so activations stay O(1) and ReLU6 clips at both 0 and 6 somewhere.
    ``expand_bias_shift`` adds a constant to b_expand (a large value exposes wrong halo padding).
    Returns (x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual).
    """
    if not expand and chid != cin:
        raise ValueError(f"without an expand conv the hidden width equals the input width ({cin}), got {chid}")
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    x = rnd(n, cin, h, w) * 2.0
    w_e = rnd(chid, cin, scale=2.0 / cin ** 0.5) if expand else None
    b_e = rnd(chid) + 1.0 + expand_bias_shift if expand else None
    w_d = rnd(chid, 3, 3, scale=0.6)
    b_d = rnd(chid) + 0.5
    w_p = rnd(cout, chid, scale=1.0 / chid ** 0.5)
    b_p = rnd(cout)

    def cast(t: Optional[torch.Tensor]):
        return None if t is None else t.to(device=device, dtype=dtype)

    return (cast(x), cast(w_e), cast(b_e), cast(w_d), cast(b_d), cast(w_p), cast(b_p), stride, residual)


def to_float64(args: Tuple) -> Tuple:
    """The same op arguments in float64 on the CPU (for a high-precision reference)."""
    return tuple(a.detach().to("cpu", torch.float64) if isinstance(a, torch.Tensor) else a for a in args)


def assert_matches(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "") -> float:
    """The accuracy check of the tests: ``got`` has NaN, +inf and -inf exactly where ``ref`` has them, and on
    the finite positions max |got - ref| / max |ref| <= tol (computed in float64). Returns that error.

    Raises AssertionError naming the first position where the special values differ, or the error found.
    """
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    g, r = got.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        diff = test(g) != test(r)
        if diff.any():
            at = tuple(int(i) for i in diff.nonzero()[0])
            raise AssertionError(f"{what}: {name} positions differ ({int(diff.sum())} of {diff.numel()}), first at "
                                 f"{at}: got {g[at].item()}, expected {r[at].item()}")
    finite = torch.isfinite(r)
    if not finite.any():
        return 0.0
    scale = r[finite].abs().max().clamp_min(1e-30)
    err = ((g[finite] - r[finite]).abs().max() / scale).item()
    assert err <= tol, f"{what}: max |got - ref| / max |ref| = {err:.3e} > {tol:.1e}"
    return err


# (backend, device) pairs the module-level tests run on; those this machine cannot run are skipped.
BACKEND_DEVICES = (("cpu", "cpu"), ("reference", "cpu"), ("triton", "cpu"),
                   ("cuda", "cuda"), ("triton", "cuda"), ("reference", "cuda"))


def backend_skip_reason(backend: str, device: str) -> Optional[str]:
    """Why the tests cannot run ``backend`` on ``device`` here (None when they can). The Triton interpreter
    ("triton" on "cpu") runs only on machines without a GPU, where tests/conftest.py turns it on."""
    if device == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if backend == "triton" and device == "cpu" and torch.cuda.is_available():
        return "the Triton interpreter is tested on machines without a GPU"
    from . import ops
    return ops.backend_unavailable_reason(backend, torch.device(device))


def kernel_dtype(backend: str) -> torch.dtype:
    """The dtype module-level tests use for ``backend`` (the CUDA kernel computes float16/bfloat16 only)."""
    return torch.float16 if backend == "cuda" else torch.float32
