"""Build any member of the family from (architecture, width, origin).

One architecture definition serves both weight origins: torchvision checkpoints load
into the plain builders; TF Lite releases need the same modules with TF's padding and
batch norm folded into biases (identity BN with ``eps=0``).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small

from app.models.layers import use_tf_same_padding
from app.models.mobilenet_v1 import MobileNetV1

Arch = Literal["v1", "v2", "v3-small", "v3-large"]
Origin = Literal["tflite", "torchvision", "random"]
ARCHS: tuple[Arch, ...] = ("v1", "v2", "v3-small", "v3-large")


def build_model(
    arch: Arch, *, width: float = 1.0, num_classes: int = 1000, origin: Origin = "torchvision"
) -> nn.Module:
    """An uninitialised (random-weight) model in eval mode, ready for ``load_state_dict``."""
    tf = origin == "tflite"
    # TF checkpoints fold BN into the conv bias: identity BN must not add an epsilon.
    norm = partial(nn.BatchNorm2d, eps=0.0) if tf else None
    kwargs: dict = {"width_mult": width, "num_classes": num_classes}
    if norm is not None:
        kwargs["norm_layer"] = norm
    if arch == "v1":
        model: nn.Module = MobileNetV1(**kwargs)
    elif arch == "v2":
        model = mobilenet_v2(weights=None, **kwargs)
    elif arch == "v3-small":
        model = mobilenet_v3_small(weights=None, **kwargs)
    elif arch == "v3-large":
        model = mobilenet_v3_large(weights=None, **kwargs)
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    if tf:
        use_tf_same_padding(model)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count (BN running stats excluded), as papers report it."""
    return sum(p.numel() for p in model.parameters())
