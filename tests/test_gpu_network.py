"""On a GPU: the whole fused MobileNetV2 agrees with the original on real photos, per backend and dtype."""
import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels import ops
from mnv2_kernels.models import mobilenet_v2

from conftest import requires_cuda


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_fused_network_same_top5_on_photos(backend, dtype):
    reason = ops.backend_unavailable_reason(backend, torch.device("cuda"))
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("skimage")
    try:
        model = mobilenet_v2(weights="imagenet")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    from mnv2_kernels.demo.photos import photo_batch, topk_labels

    model = model.eval().to("cuda", dtype).to(memory_format=torch.channels_last)
    fused = mk.fuse(model, backend=backend)
    x = photo_batch().to("cuda", dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref64 = mobilenet_v2(weights="imagenet").eval().double()(photo_batch().double())
        ref, got = model(x).double().cpu(), fused(x).double().cpu()
    assert not torch.isnan(got).any()
    # top-1 must agree with the original; top-5 as a set (near-ties may swap order in low precision)
    assert got.argmax(1).tolist() == ref.argmax(1).tolist()
    assert [set(r) for r in topk_labels(got)] == [set(r) for r in topk_labels(ref)]
    err_fused = (got - ref64).abs().max().item()
    err_eager = (ref - ref64).abs().max().item()
    assert err_fused <= 2 * err_eager + 1e-3 * ref64.abs().max().item(), (err_fused, err_eager)
