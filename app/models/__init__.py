"""The MobileNet family: V1 (own), V2 and V3 (torchvision builders), TF-compatible layers."""

from app.models.factory import ARCHS, Arch, Origin, build_model, count_parameters
from app.models.mobilenet_v1 import MobileNetV1

__all__ = ["ARCHS", "Arch", "MobileNetV1", "Origin", "build_model", "count_parameters"]
