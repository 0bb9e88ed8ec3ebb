"""MobileNet V1/V2/V3 image-classification service."""
