"""ImageNet class names for the demo (index = class id)."""
from __future__ import annotations

import functools
import os
from typing import List


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> List[str]:
    """The 1000 ImageNet class names, index = class id."""
    path = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")
    with open(path) as f:
        return [line.rstrip("\n") for line in f]
