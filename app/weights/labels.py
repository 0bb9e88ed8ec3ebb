"""ImageNet-1k class names shared by every variant.

torchvision's category list is the readable, de-duplicated form of the WordNet labels
(``crane bird`` vs ``crane``); TF-origin variants have their ``background`` class
dropped at conversion, so index ``i`` here is TF's ``i + 1``. The list ships as package
data (``imagenet_classes.txt``, torchvision's ``IMAGENET1K_V1`` categories, one per line)
so that serving LiteRT variants never needs torchvision installed or imported.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

LABELS_FILE = "imagenet_classes.txt"


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names in the standard order."""
    text = resources.files("app.weights").joinpath(LABELS_FILE).read_text(encoding="utf-8")
    labels = tuple(text.splitlines())
    if len(labels) != 1000:  # a damaged install: never answer with shifted labels
        raise RuntimeError(f"{LABELS_FILE} holds {len(labels)} labels, expected 1000")
    return labels
