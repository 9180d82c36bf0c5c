"""Triton path of mnv2_kernels: the fused inverted-residual kernels (kernel.py), the MobileNetV2 block's launcher
(launcher.py) and the generalised block's (launcher_ex.py, issue 13).

CUDA tensors run compiled kernels; CPU tensors run in Triton's interpreter, which needs the environment
variable TRITON_INTERPRET=1 set before triton is first imported.
"""
from .launcher import inverted_residual_triton, static_plans
from .launcher_ex import inverted_residual_ex_triton, static_plans_ex

__all__ = ["inverted_residual_triton", "static_plans", "inverted_residual_ex_triton", "static_plans_ex"]
