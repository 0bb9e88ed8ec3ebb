"""MobileNet V1/V2/V3 image-classification service."""

__version__ = "0.1.0"
