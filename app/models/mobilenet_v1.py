"""MobileNet V1 (Howard et al., 2017), written from the paper and TF-slim's definition.

torchvision has no V1. The layout follows torchvision's V2/V3 (``features``, ``avgpool``,
``classifier``; ``Conv2dNormActivation`` blocks) so one importer and one inference path
serve the whole family.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32


def scaled_channels(channels: int, width_mult: float, *, min_depth: int = 8) -> int:
    """TF-slim's rounding of a width-multiplied layer: ``max(int(c * alpha), 8)``."""
    return max(int(channels * width_mult), min_depth)


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act."""

    def __init__(
        self,
        inp: int,
        oup: int,
        *,
        stride: int,
        norm_layer: Callable[..., nn.Module],
        activation: Callable[..., nn.Module],
    ):
        super().__init__(
            Conv2dNormActivation(
                inp,
                inp,
                kernel_size=3,
                stride=stride,
                groups=inp,
                norm_layer=norm_layer,
                activation_layer=activation,
            ),
            Conv2dNormActivation(
                inp, oup, kernel_size=1, norm_layer=norm_layer, activation_layer=activation
            ),
        )


class MobileNetV1(nn.Module):
    """MobileNet V1 with width multiplier ``width_mult`` (alpha).

    The resolution multiplier (rho) is simply the input size: the network is fully
    convolutional up to its global average pool.
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.001,
        norm_layer: Callable[..., nn.Module] | None = None,
        activation: Callable[..., nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        channels = scaled_channels(STEM_CHANNELS, width_mult)
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3,
                channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm_layer,
                activation_layer=activation,
            )
        ]
        for out, stride in BLOCKS:
            out_channels = scaled_channels(out, width_mult)
            layers.append(
                DepthwiseSeparable(
                    channels,
                    out_channels,
                    stride=stride,
                    norm_layer=norm_layer,
                    activation=activation,
                )
            )
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(channels, num_classes))
        self.last_channel = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
