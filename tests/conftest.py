import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors; it must be chosen before
# triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mnv2_kernels  # noqa: E402,F401  (defines the ops and loads the kernels)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
