"""Triton path of mnv2_kernels: the fused inverted-residual kernel (kernel.py) and its launcher (launcher.py).

CUDA tensors run compiled kernels; CPU tensors run in Triton's interpreter, which needs the environment
variable TRITON_INTERPRET=1 set before triton is first imported.
"""
from .launcher import inverted_residual_triton, static_plans

__all__ = ["inverted_residual_triton", "static_plans"]
