"""Triton path of mnv2_kernels: the fused inverted-residual kernel and its launcher.

CUDA tensors run compiled kernels; CPU tensors run in Triton's interpreter, which needs the environment
variable TRITON_INTERPRET=1 set before triton is first imported.
"""
from .inverted_residual_triton import inverted_residual_triton

__all__ = ["inverted_residual_triton"]
