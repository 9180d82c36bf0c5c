"""torch.compile(fullgraph=True) traces fused models through the registered op's fake implementation."""
import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels.models import mobilenet_v2
from mnv2_kernels.testing import randomize_bn_


@pytest.mark.slow
def test_compile_fullgraph_fused_mobilenet_matches():
    torch._dynamo.reset()
    model = randomize_bn_(mobilenet_v2(num_classes=10, width_mult=0.35).eval())
    fused = mk.fuse(model)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_inductor_fused_block():
    torch._dynamo.reset()
    from mnv2_kernels.models import InvertedResidual

    block = randomize_bn_(InvertedResidual(16, 16, 1, 6)).eval()
    fused = mk.FusedInvertedResidual.from_module(block)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)
