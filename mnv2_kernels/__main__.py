"""``python -m mnv2_kernels``: the main job, which lives in mnv2_kernels.demo (see its docstring)."""
import sys

from .demo.cli import main

sys.exit(main())
