"""ImageNet-1k class names shared by every variant.

torchvision's category list is the readable, de-duplicated form of the WordNet labels
(``crane bird`` vs ``crane``); TF-origin variants have their ``background`` class
dropped at conversion, so index ``i`` here is TF's ``i + 1``.
"""

from __future__ import annotations

from functools import cache

from torchvision.models import MobileNet_V2_Weights


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names in the standard order."""
    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
