"""Fused MobileNetV2 vs ONNX Runtime vs OpenVINO on the CPU, each engine in its own process.

    .venv/bin/python benchmarks/engines_cpu.py --batch 1 32 --threads 2 --rounds 3 --calls 15

The runner lives in mnv2_kernels/demo/engines.py (the main job, ``python -m mnv2_kernels``, uses it too);
see its docstring for the method. Install the engines with ``pip install -e .[bench]``.
"""
import sys

from mnv2_kernels.demo.engines import main

if __name__ == "__main__":
    sys.exit(main())
