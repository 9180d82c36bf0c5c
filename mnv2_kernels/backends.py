"""The backend table: which kernel serves which (device, dtype), and what backend="auto" picks.

In the style of xformers' attention dispatch: one row per backend says which devices and dtypes its kernel
computes and, for a given (device, dtype), every reason it cannot serve it (``not_supported_reasons``);
"auto" walks a per-device priority list and takes the first row with no reason; a request nothing can
serve raises an error that lists each row's reasons.

    row = select("auto", x.device, x.dtype)     # cheap: cached per (name, device, dtype)
    y = row.run(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)

Rows (``ROWS`` below is the one place that says which dtypes each kernel computes; this summary mirrors it,
and the C++ bindings check the same lists, held to the table by tests/test_backends.py):

  name       devices  dtypes                               op it calls
  cpu        cpu      float32, bfloat16                    torch.ops.mnv2.inverted_residual (extension _C)
  cuda       cuda     _CUDA_DTYPES below                   torch.ops.mnv2.inverted_residual (extension _C_cuda)
  triton     cuda     float16, bfloat16, float32           torch.ops.mnv2.inverted_residual_triton
             cpu      float32, float16 (the interpreter;   (compiled kernel on CUDA, interpreter on CPU)
                      bfloat16 refused: Triton 3.8's
                      interpreter computes bf16 tl.dot
                      wrongly)
  reference  any      float32, float16, bfloat16, float64  plain PyTorch (mnv2_kernels.reference)

"auto" priority, per device type (AUTO_PRIORITY): cpu -> cpu, reference; cuda -> cuda, triton, reference;
any other device -> reference. Falling back to the reference warns once per (device, dtype)
(ReferenceFallbackWarning), naming why each kernel refused. Why the order:

* The Triton interpreter is never picked by "auto": it is a test vehicle, hundreds of times slower than
  the reference. Ask for it with backend="triton".
* bfloat16 on the CPU: the CPU kernel converts bfloat16 to float32 on load and computes in float32, so a
  block costs about what it costs in float32, and far less than the reference (PyTorch's own bfloat16
  convolutions; without AVX512-BF16 / AMX ~180x slower on block 24->144->24, 56x56, batch 8): "auto" picks
  the CPU kernel. A whole bfloat16 model is still ~2.5-3.5x slower than in float32 on such a CPU, because
  the layers outside the blocks (stem, head, classifier) run PyTorch's bfloat16 kernels: for speed there,
  run the model in float32 ("auto" cannot change x's dtype). Numbers: docs/CONTRACT.md.

Errors (exception type by mistake, as everywhere in the package): an unknown backend name is a ValueError
(listing the choices; checked in one place, ``check_name``); x's dtype not floating point, or a dtype the
requested backend's kernel does not compute, is a TypeError; a backend that cannot run on x's device or is
not available here (extension not built, triton missing, interpreter off) is a RuntimeError. Rows are
chosen by (device, dtype) only: a limit that depends on the block's shape (the CUDA kernel's shared memory
on very wide blocks) is raised by the kernel's binding as a RuntimeError that names the backend to use.

Caching: ``select`` remembers its answer per (name, device, dtype) for the life of the process (thread-safe).
Availability is read once then: the extensions load when mnv2_kernels is imported, and whether the Triton
kernel runs in the interpreter (TRITON_INTERPRET=1) is fixed when mnv2_kernels.triton is first imported (the
kernel is decorated then), so a later change of the environment does not change what runs;
``clear_cache()`` makes ``select`` look again (it does not re-import anything).

Adding a backend: register its op (mnv2_kernels/ops.py), add one row to ``ROWS`` and, if "auto" should
use it, its name to ``AUTO_PRIORITY``.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch

from . import _ext
from ._validate import FLOATING_DTYPES, check_inverted_residual_args, check_x_dtype, kernel_dtype_message
from .reference import inverted_residual_reference

__all__ = ["Backend", "ROWS", "NAMES", "AUTO_PRIORITY", "ReferenceFallbackWarning", "select", "check_name",
           "auto_priority", "clear_cache"]

_F32, _F16, _BF16 = torch.float32, torch.float16, torch.bfloat16
# The CUDA kernel's dtypes (csrc/cuda/inverted_residual_binding.cpp checks the same list).
_CUDA_DTYPES = (_F16, _BF16)

DeviceLike = Union[torch.device, str]


class ReferenceFallbackWarning(UserWarning):
    """backend="auto" found no fused kernel for a (device, dtype) and runs the plain PyTorch reference."""


@dataclass(frozen=True)
class Backend:
    """One row of the table.

    name: the ``backend=`` value. kernel: how messages name its kernel ("CPU", "CUDA", "Triton").
    dtypes: device type -> dtypes the kernel computes ("*" = any device). notes: (device type, dtype) ->
    why that pair is refused (instead of the generic message). unavailable: device -> why this backend
    cannot run here at all (extension not built, ...), None when it can. op: what ``run`` calls.
    """
    name: str
    kernel: str
    dtypes: Mapping[str, Tuple[torch.dtype, ...]]
    op: Callable[..., torch.Tensor] = field(repr=False)
    unavailable: Callable[[torch.device], Optional[str]] = field(repr=False, default=lambda device: None)
    notes: Mapping[Tuple[str, torch.dtype], str] = field(default_factory=dict, repr=False)

    @property
    def devices(self) -> Tuple[str, ...]:
        """Device types the backend runs ("*" = any)."""
        return tuple(self.dtypes)

    def dtypes_on(self, device: DeviceLike) -> Tuple[torch.dtype, ...]:
        """The dtypes the backend computes on ``device`` (empty when it does not run there)."""
        kind = torch.device(device).type
        return tuple(self.dtypes.get(kind, self.dtypes.get("*", ())))

    def _refusals(self, device: torch.device, dtype: Optional[torch.dtype]) -> List[Tuple[Type[Exception], str]]:
        if "*" not in self.dtypes and device.type not in self.dtypes:
            kinds = " and ".join(k.upper() for k in self.dtypes)
            return [(RuntimeError, f"it runs {kinds} tensors only, got a tensor on {device}")]
        out: List[Tuple[Type[Exception], str]] = []
        why = self.unavailable(device)
        if why is not None:
            out.append((RuntimeError, why))
        if dtype is not None and dtype not in self.dtypes_on(device):
            note = self.notes.get((device.type, dtype))
            out.append((TypeError, note or kernel_dtype_message(self.kernel, self.dtypes_on(device), dtype)))
        return out

    def not_supported_reasons(self, device: DeviceLike, dtype: Optional[torch.dtype] = None) -> List[str]:
        """Every reason this backend cannot serve ``dtype`` tensors on ``device`` (empty when it can).
        With ``dtype=None`` only the device and the environment are checked."""
        return [text for _, text in self._refusals(torch.device(device), dtype)]

    def run(self, x: torch.Tensor, w_expand: Optional[torch.Tensor], b_expand: Optional[torch.Tensor],
            w_dw: torch.Tensor, b_dw: torch.Tensor, w_project: torch.Tensor, b_project: torch.Tensor,
            stride: int, residual: bool) -> torch.Tensor:
        """One block on this backend. Arguments and result: docs/CONTRACT.md (validated by the op: ValueError /
        TypeError). Does not re-check that the backend serves x's device and dtype: ``select`` did."""
        return self.op(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, residual)


# ----------------------------------------------------------------------------------------------------------
# Availability checks (why a backend cannot run here at all)
# ----------------------------------------------------------------------------------------------------------
_REBUILD = "rebuild with `pip install --no-build-isolation -e .` in an environment that has torch"


def _cpu_unavailable(device: torch.device) -> Optional[str]:
    if _ext.CPU_EXT is None:
        return f"the CPU extension is not built ({_ext.CPU_EXT_ERROR}); {_REBUILD}"
    return None


def _cuda_unavailable(device: torch.device) -> Optional[str]:
    if _ext.CUDA_EXT is None:
        return (f"the CUDA extension is not built ({_ext.CUDA_EXT_ERROR}); {_REBUILD}, a CUDA build of torch "
                "and nvcc (MNV2_BUILD_CUDA=1)")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"the CUDA kernel needs compute capability 8.0 or newer, {device} has {major}.{minor}"
    return None


def _triton_interpreter_active() -> bool:
    """Whether the Triton kernel was compiled for the interpreter (fixed when its module was imported)."""
    from . import triton as launcher_pkg

    launcher = sys.modules.get(getattr(launcher_pkg.inverted_residual_triton, "__module__", ""))
    active = getattr(launcher, "_interpreter_active", None)
    if active is not None:
        return bool(active())
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_unavailable(device: torch.device) -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc}); pip install triton"
    try:
        interpreting = device.type == "cpu" and _triton_interpreter_active()
    except Exception as exc:  # the launcher module itself failed to import
        return f"the Triton launcher (mnv2_kernels.triton) failed to import: {type(exc).__name__}: {exc}"
    if device.type == "cpu" and not interpreting:
        return ("Triton runs CPU tensors only in its interpreter, which is off: set TRITON_INTERPRET=1 before "
                "mnv2_kernels (and triton) is first imported")
    return None


# ----------------------------------------------------------------------------------------------------------
# The ops each row calls
# ----------------------------------------------------------------------------------------------------------
def _fused_op(*args):
    return torch.ops.mnv2.inverted_residual(*args)


def _triton_op(*args):
    return torch.ops.mnv2.inverted_residual_triton(*args)


def _reference_op(*args):
    check_inverted_residual_args(*args)
    return inverted_residual_reference(*args)


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------
ROWS: Dict[str, Backend] = {
    "cpu": Backend("cpu", "CPU", {"cpu": (_F32, _BF16)}, _fused_op, _cpu_unavailable),
    "cuda": Backend("cuda", "CUDA", {"cuda": _CUDA_DTYPES}, _fused_op, _cuda_unavailable),
    "triton": Backend(
        "triton", "Triton", {"cuda": (_F16, _BF16, _F32), "cpu": (_F32, _F16)}, _triton_op, _triton_unavailable,
        notes={("cpu", _BF16): "Triton 3.8's interpreter computes bfloat16 tl.dot wrongly, so the Triton kernel "
                               "refuses bfloat16 CPU tensors; use torch.float32 or torch.float16 (or a CUDA "
                               "device), or backend='cpu'"}),
    "reference": Backend("reference", "reference", {"*": FLOATING_DTYPES}, _reference_op),
}
NAMES: Tuple[str, ...] = ("auto",) + tuple(ROWS)
# backend="auto": rows tried in order for each device type; the first that serves (device, dtype) wins.
AUTO_PRIORITY: Dict[str, Tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}
_AUTO_OTHER = ("reference",)


def check_name(backend: str) -> str:
    """Returns ``backend`` if it is one of NAMES, else raises ValueError listing the choices."""
    if not isinstance(backend, str) or backend not in NAMES:
        raise ValueError(f"mnv2_kernels: unknown backend {backend!r}; choose one of "
                         f"{', '.join(repr(n) for n in NAMES)}")
    return backend


def auto_priority(device: DeviceLike) -> Tuple[str, ...]:
    """The rows backend="auto" tries for tensors on ``device``, in order."""
    return AUTO_PRIORITY.get(torch.device(device).type, _AUTO_OTHER)


def _dtype_str(dtype: Optional[torch.dtype]) -> str:
    return f"{dtype} tensors" if dtype is not None else "tensors"


def _reason_lines(names: Sequence[str], device: torch.device, dtype: Optional[torch.dtype],
                  tag: Callable[[str], str] = lambda name: "") -> List[str]:
    return [f"  {n}{tag(n)}: {'; '.join(ROWS[n].not_supported_reasons(device, dtype))}" for n in names]


def _explicit_error(row: Backend, device: torch.device, dtype: Optional[torch.dtype],
                    refusals: List[Tuple[Type[Exception], str]]) -> Exception:
    exc_type = TypeError if all(t is TypeError for t, _ in refusals) else RuntimeError
    lines = [f"mnv2_kernels: backend={row.name!r} is unavailable for {_dtype_str(dtype)} on {device}: "
             + "; ".join(text for _, text in refusals)]
    serving = [n for n, r in ROWS.items() if n != row.name and not r._refusals(device, dtype)]
    refusing = [n for n, r in ROWS.items() if n != row.name and r._refusals(device, dtype)]
    if serving:
        auto = next(n for n in auto_priority(device) + tuple(ROWS) if n in serving)
        lines.append(f"Backends that serve them: {', '.join(repr(n) for n in serving)} (backend='auto' picks "
                     f"{auto!r}).")
    if refusing:
        lines.append("The other backends refuse them:")
        lines += _reason_lines(refusing, device, dtype)
    return exc_type("\n".join(lines))


_warned: set = set()
_warned_lock = threading.Lock()


def _warn_fallback(device: torch.device, dtype: torch.dtype) -> None:
    key = (str(device), dtype)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    kernels = [n for n in ROWS if n != "reference"]
    tried = auto_priority(device)
    warnings.warn("\n".join(
        [f"mnv2_kernels: no fused kernel serves {dtype} tensors on {device}, so backend='auto' runs the plain "
         "PyTorch reference (correct, not faster). Why each kernel refused:"]
        + _reason_lines(kernels, device, dtype,
                        lambda n: "" if n in tried else f" (not tried by backend='auto' on {device.type})")
        + ["(Shown once per device and dtype.)"]), ReferenceFallbackWarning, stacklevel=4)


@functools.lru_cache(maxsize=None)
def _select(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    check_x_dtype(dtype)
    if name != "auto":
        row = ROWS[name]
        refusals = row._refusals(device, dtype)
        if refusals:
            raise _explicit_error(row, device, dtype, refusals)
        return row
    for n in auto_priority(device):
        if not ROWS[n]._refusals(device, dtype):
            if n == "reference":
                _warn_fallback(device, dtype)
            return ROWS[n]
    lines = [f"mnv2_kernels: no backend serves {dtype} tensors on {device}:"] + _reason_lines(list(ROWS), device,
                                                                                              dtype)
    raise RuntimeError("\n".join(lines))


def select(backend: str, device: DeviceLike, dtype: torch.dtype) -> Backend:
    """The row that runs ``dtype`` tensors on ``device`` for ``backend`` (one of NAMES).

    "auto" picks the first row of ``auto_priority(device)`` that serves them (the reference last, with one
    ReferenceFallbackWarning per (device, dtype)). Cheap: cached per (backend, device, dtype); see the module
    docstring for when availability is read.

    Raises:
        ValueError: unknown ``backend`` (the message lists the choices).
        TypeError: ``dtype`` is not floating point, or the requested backend's kernel does not compute it
            (and nothing else stops it); the message lists what each backend says.
        RuntimeError: the requested backend cannot run on ``device`` or is not available here; the message
            lists every backend's reasons and which backends can serve the input.
    """
    return _select(check_name(backend), torch.device(device), dtype)


def clear_cache() -> None:
    """Forget ``select``'s answers (the fallback warning stays once per process)."""
    _select.cache_clear()


# ----------------------------------------------------------------------------------------------------------
# The generalised block (issue 13): which kernel serves which block configuration
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockConfig:
    """What a generalised block computes, beyond its shapes (docs/CONTRACT.md, "The generalised block").

    kernel: depthwise kernel size (1, 3, 5, 7, 9). act_expand / act_dw: activation names (reference.ACTIVATIONS;
    act_expand is "relu6" when the block has no expand conv). padding: "symmetric" or "tf_same". se: whether
    it has squeeze-excite; se_act / se_gate: the SE's activations (ignored when se is False).
    """
    kernel: int = 3
    act_expand: str = "relu6"
    act_dw: str = "relu6"
    padding: str = "symmetric"
    se: bool = False
    se_act: str = "relu"
    se_gate: str = "sigmoid"
    act_project: str = "none"
    dw_start: int = 0        # kernel size of a leading depthwise conv (MobileNetV4 UIB ExtraDW), 0: none

    @property
    def is_mobilenet_v2(self) -> bool:
        """The configuration torch.ops.mnv2.inverted_residual (and every fused kernel) computes."""
        return (self.kernel == 3 and self.act_expand == "relu6" and self.act_dw == "relu6"
                and self.padding == "symmetric" and not self.se and self.act_project == "none"
                and not self.dw_start)

    def features(self) -> List[str]:
        """What the block needs beyond the MobileNetV2 block, in words (empty for a MobileNetV2 block)."""
        out = []
        for act in dict.fromkeys((self.act_expand, self.act_dw)):
            if act != "relu6":
                out.append(act)
        if self.kernel != 3:
            out.append(f"{self.kernel}x{self.kernel} depthwise")
        if self.padding != "symmetric":
            out.append("TF 'same' padding")
        if self.se:
            out.append(f"squeeze-excite ({self.se_act}, {self.se_gate})")
        if self.act_project != "none":
            out.append(f"{self.act_project} after the project conv")
        if self.dw_start:
            out.append(f"leading {self.dw_start}x{self.dw_start} depthwise")
        return out


@dataclass(frozen=True)
class ExSupport:
    """What one kernel computes of the generalised block. A kernel that gains an option adds it here (and
    registers its implementation of torch.ops.mnv2.inverted_residual_ex for its device key in ops.py)."""
    kernels: Tuple[int, ...] = (3,)
    acts: Tuple[str, ...] = ("relu6",)
    paddings: Tuple[str, ...] = ("symmetric",)
    se_acts: Tuple[str, ...] = ()        # empty: no squeeze-excite
    se_gates: Tuple[str, ...] = ()
    project_acts: Tuple[str, ...] = ("none",)
    dw_start_kernels: Tuple[int, ...] = ()
    op: Optional[Callable[..., torch.Tensor]] = field(default=None, repr=False)  # None: not registered yet

    def refusals(self, cfg: BlockConfig) -> List[str]:
        out = [f"no {a} activation" for a in dict.fromkeys((cfg.act_expand, cfg.act_dw)) if a not in self.acts]
        if cfg.kernel not in self.kernels:
            out.append(f"no {cfg.kernel}x{cfg.kernel} depthwise")
        if cfg.padding not in self.paddings:
            out.append(f"no {cfg.padding} padding")
        if cfg.dw_start and cfg.dw_start not in self.dw_start_kernels:
            out.append(f"no leading {cfg.dw_start}x{cfg.dw_start} depthwise")
        if cfg.act_project not in self.project_acts:
            out.append(f"no {cfg.act_project} after the project conv")
        if cfg.se and (cfg.se_act not in self.se_acts or cfg.se_gate not in self.se_gates):
            out.append(f"no squeeze-excite ({cfg.se_act}, {cfg.se_gate})")
        if not out and self.op is None:
            out.append("its torch.ops.mnv2.inverted_residual_ex implementation is not registered yet")
        return out


def _ex_reference_op(*args):
    from .ops import _ex_reference_impl  # the reference itself, never a device kernel registered for the op
    return _ex_reference_impl(*args)


def _ex_cpu_op(*args):
    return torch.ops.mnv2.inverted_residual_ex(*args)  # CPU tensors: mnv2_kernels/cpu_ex.py (the fused kernel)


_EX_CPU_ACTS = ("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none")


_EX_ACTS = ("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none")


def _ex_cuda_op(*args):
    return torch.ops.mnv2.inverted_residual_ex(*args)  # CUDA tensors: the _C_cuda extension's kernel


def _ex_triton_op(*args):
    return torch.ops.mnv2.inverted_residual_ex_triton(*args)


# What each kernel computes of the generalised block (issue 13). Every row serves every option of the contract
# today; a row that loses one (or a new kernel) narrows its tuples, and ex_refusals() then says why.
EX_SUPPORT: Dict[str, ExSupport] = {
    # csrc/cpu/kernel_ex_impl.h via mnv2_kernels/cpu_ex.py (issue 13): every option
    "cpu": ExSupport(kernels=(1, 3, 5, 7, 9), acts=_EX_CPU_ACTS, paddings=("symmetric", "tf_same"),
                     se_acts=_EX_CPU_ACTS, se_gates=("sigmoid", "hardsigmoid"), project_acts=_EX_CPU_ACTS,
                     dw_start_kernels=(1, 3, 5, 7, 9), op=_ex_cpu_op),
    # csrc/cuda (issue 13): mnv2_ir_ex_kernel<T> (stride, K, pads, activations at run time) + squeeze-excite MLP + leading depthwise kernels, registered
    # for the CUDA key by csrc/cuda/inverted_residual_binding.cpp (float16 / bfloat16, as the "cuda" row of ROWS)
    "cuda": ExSupport(kernels=(1, 3, 5, 7, 9), acts=_EX_ACTS, paddings=("symmetric", "tf_same"), se_acts=_EX_ACTS,
                      se_gates=("sigmoid", "hardsigmoid"), project_acts=_EX_ACTS, dw_start_kernels=(1, 3, 5, 7, 9),
                      op=_ex_cuda_op),
    "triton": ExSupport(kernels=(1, 3, 5, 7, 9), acts=_EX_ACTS, paddings=("symmetric", "tf_same"), se_acts=_EX_ACTS,
                        se_gates=("sigmoid", "hardsigmoid"), project_acts=_EX_ACTS, dw_start_kernels=(1, 3, 5, 7, 9),
                        op=_ex_triton_op),     # mnv2_kernels/triton/launcher_ex.py (issue 13)
    "reference": ExSupport(kernels=(1, 3, 5, 7, 9), acts=("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none"),
                           paddings=("symmetric", "tf_same"),
                           se_acts=("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none"),
                           se_gates=("sigmoid", "hardsigmoid"),
                           project_acts=("relu6", "relu", "hardswish", "silu", "gelu", "gelu_tanh", "none"),
                           dw_start_kernels=(1, 3, 5, 7, 9),
                           op=_ex_reference_op),
}


def ex_refusals(cfg: BlockConfig, device: DeviceLike, dtype: Optional[torch.dtype] = None) -> Dict[str, List[str]]:
    """Every reason each backend cannot serve a block of configuration ``cfg`` for ``dtype`` tensors on
    ``device`` (rows with no reason serve it): the device/dtype reasons of ``ROWS`` plus the configuration's."""
    device = torch.device(device)
    out = {}
    for name, row in ROWS.items():
        reasons = row.not_supported_reasons(device, dtype)
        reasons += [f"the {row.kernel} kernel has " + r if r.startswith("no ") else r
                    for r in EX_SUPPORT[name].refusals(cfg)]
        out[name] = reasons
    return out


def ex_kernel_gaps(cfg: BlockConfig, device: DeviceLike) -> str:
    """One line for reports: why no fused kernel on ``device`` serves ``cfg`` (e.g. "no fused kernel for
    hardswish, 5x5 depthwise yet")."""
    return f"no fused kernel for {', '.join(cfg.features()) or 'this block'} yet"


@functools.lru_cache(maxsize=None)
def _select_ex(name: str, device: torch.device, dtype: torch.dtype, cfg: BlockConfig) -> Callable:
    check_x_dtype(dtype)
    refusals = ex_refusals(cfg, device, dtype)
    order = auto_priority(device) if name == "auto" else (name,)
    for n in order:
        if not refusals[n]:
            return EX_SUPPORT[n].op
    lines = [f"mnv2_kernels: backend={name!r} cannot run a block with {', '.join(cfg.features()) or cfg} for "
             f"{_dtype_str(dtype)} on {device}:"] + [f"  {n}: {'; '.join(r)}" for n, r in refusals.items() if r]
    serving = [n for n, r in refusals.items() if not r]
    if serving:
        lines.append(f"Backends that serve it: {', '.join(repr(n) for n in serving)}.")
    raise RuntimeError("\n".join(lines))


def select_ex(backend: str, device: DeviceLike, dtype: torch.dtype, cfg: BlockConfig) -> Callable:
    """The op that runs a generalised block of configuration ``cfg`` for ``backend`` (one of NAMES).

    "auto" takes the first row of ``auto_priority(device)`` whose kernel serves (device, dtype, cfg); today
    that is the reference for every non-MobileNetV2 configuration (no ReferenceFallbackWarning here:
    ``fuse()`` reports and warns per block). Raises ValueError (unknown name), TypeError (x's dtype not
    floating point), RuntimeError (the named backend cannot serve it; the message lists every row's reasons).
    """
    return _select_ex(check_name(backend), torch.device(device), dtype, cfg)
