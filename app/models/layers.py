"""Layers that let one architecture run weights trained in TensorFlow.

TF's 'SAME' padding is asymmetric for stride 2 (extra pixel at bottom/right), PyTorch's
is symmetric; on these MobileNets that difference alone costs most top-1 agreement
with the original models. ``Conv2dSame`` pads like TF and keeps ``nn.Conv2d``'s
parameter names, so checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pads(size: int, *, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding TF's 'SAME' uses along one axis of length ``size``."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'SAME' padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, bottom = tf_same_pads(
            h, kernel=self.kernel_size[0], stride=self.stride[0], dilation=self.dilation[0]
        )
        left, right = tf_same_pads(
            w, kernel=self.kernel_size[1], stride=self.stride[1], dilation=self.dilation[1]
        )
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Swap every strided conv of ``model`` for a ``Conv2dSame`` (in place; returns it).

    Stride-1 convs with odd kernels already pad symmetrically in both frameworks, so only
    strided ones change. Parameters are shared, state_dict keys are unchanged.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and max(child.stride) > 1:
                same = Conv2dSame(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=0,
                    dilation=child.dilation,
                    groups=child.groups,
                    bias=child.bias is not None,
                    device=child.weight.device,
                    dtype=child.weight.dtype,
                )
                same.weight = child.weight
                if child.bias is not None:
                    same.bias = child.bias
                setattr(parent, name, same)
    return model
