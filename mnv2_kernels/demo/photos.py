"""Real photos for demos and tests (shipped by scikit-image) and ImageNet preprocessing in plain torch."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket")   # a cat, an espresso, a person, a rocket launch
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def load_photos(names=PHOTO_NAMES) -> Dict[str, np.ndarray]:
    """The named scikit-image photos as uint8 [H, W, 3] arrays (raises ImportError naming the package)."""
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError("the real photos come from scikit-image: pip install scikit-image") from exc
    return {n: getattr(skimage.data, n)() for n in names}


def preprocess(img: np.ndarray, size: int = 224, resize: int = 256, mean=_MEAN, std=_STD) -> torch.Tensor:
    """torchvision's ImageNet eval transform: resize shorter side to 256 (bilinear, antialiased), center crop
    224, scale to [0, 1], normalise with ``mean``/``std`` (TensorFlow ports use 0.5, 0.5).
    img: uint8 [H, W, 3]. Returns float32 [3, size, size]."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)[None]
    h, w = x.shape[-2:]
    scale = resize / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                      align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s)[0].contiguous()


def photo_batch(names=PHOTO_NAMES, mean=_MEAN, std=_STD) -> torch.Tensor:
    """The named photos preprocessed into one float32 [len(names), 3, 224, 224] batch."""
    photos = load_photos(names)
    return torch.stack([preprocess(photos[n], mean=mean, std=std) for n in names])


def topk_labels(logits: torch.Tensor, k: int = 5) -> List[List[int]]:
    """Top-k class ids per row of [N, classes] logits."""
    return logits.topk(k, dim=1).indices.tolist()
