"""Static sm_90a (H100/H200) analysis of the package's GPU kernels on a GPU-less machine (issue 7).

Modules: ``repo`` (load kernel sources of the working tree or of a git commit without running the
package's __init__), ``blocks`` (the MobileNetV2 block shapes, from mnv2_kernels.models), ``legacy`` (plans
of kernels that predate ``static_plans``), ``triton_worker`` (compile Triton plans in a subprocess with the
GPU machine's Triton), ``cuda`` (nvcc -cubin of CUDA plans), ``sass`` (SASS parsing and loop-weighted
instruction mix), ``model`` (features, fit and prediction), ``runs`` (recorded GPU runs).
Entry point: tools/gpu_static_report.py.
"""
