"""The model variants we compare (original eager, BN-folded eager, torch.compile, fused) and a timer.

Shared by the main job (``python -m mnv2_kernels``) and the pytest-benchmark suites in benchmarks/.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn


def fold_all_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm2d that directly follows a Conv2d in a Sequential folded into it."""
    from ..folding import fold_conv_bn

    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if not isinstance(m, nn.Sequential):
            continue
        names = list(m._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = m._modules[a], m._modules[b]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d:
                w, bias = fold_conv_bn(conv, bn)
                new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, conv.groups, bias=True).to(conv.weight.device)
                with torch.no_grad():
                    new.weight.copy_(w)
                    new.bias.copy_(bias)
                m._modules[a], m._modules[b] = new.to(conv.weight.dtype), nn.Identity()
    return model


def compile_frozen(model: nn.Module, mode: str = "default") -> Callable:
    """torch.compile with inductor freezing (folds BN and weights as constants); call under no_grad."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, mode=mode)


def build_variants(model: nn.Module, device: torch.device, dtype: torch.dtype, *, with_compile: bool = True,
                   compile_mode: str = "default", backends=("auto",)) -> Dict[str, Callable]:
    """name -> callable(x) for the original model and its faster versions, all eval, on device/dtype.

    "eager": the model as given (NCHW inputs); "eager_cl": channels_last; "eager_folded_cl": BN folded,
    channels_last; "compile_freezing": torch.compile + freezing, channels_last; "fused": mnv2_kernels.fuse,
    channels_last ("fused_<backend>" for each backend other than "auto"). Inputs to the *_cl variants are converted to channels_last by the caller (see ``inputs``).
    """
    from ..fuse import fuse

    base = model.eval().to(device=device, dtype=dtype)
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    variants = {
        "eager": base,
        "eager_cl": cl,
        "eager_folded_cl": fold_all_bn(cl),
    }
    if with_compile:
        variants["compile_freezing"] = compile_frozen(copy.deepcopy(cl), compile_mode)
    for backend in backends:
        variants["fused" if backend == "auto" else f"fused_{backend}"] = fuse(cl, backend=backend)
    return variants


def cuda_graphed(fn: Callable, x: torch.Tensor) -> Callable:
    """``fn`` captured in a CUDA graph for inputs shaped like ``x``; the returned callable copies its input
    into the graph's static input and replays (the output buffer is reused between calls)."""
    static_x = x.clone()
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = fn(static_x)

    def replay(inp: torch.Tensor) -> torch.Tensor:
        static_x.copy_(inp)
        graph.replay()
        return static_y

    return replay


def wants_channels_last(variant: str) -> bool:
    return not variant.startswith("eager") or "_cl" in variant


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(fn: Callable, x: torch.Tensor, *, warmup: int = 2, iters: int = 10,
                  max_seconds: float = 20.0) -> List[float]:
    """Per-call wall times in seconds (synchronised on CUDA), after ``warmup`` calls; stops early after
    ``max_seconds`` of timed calls (at least 3 calls)."""
    device = x.device
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        synchronize(device)
        times: List[float] = []
        start_all = time.perf_counter()
        for i in range(iters):
            t0 = time.perf_counter()
            fn(x)
            synchronize(device)
            times.append(time.perf_counter() - t0)
            if i >= 2 and time.perf_counter() - start_all > max_seconds:
                break
    return times


def median_ms(times: List[float]) -> float:
    return statistics.median(times) * 1e3
