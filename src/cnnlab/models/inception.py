"""A small Inception network (report 1.1: 'a smaller Inception network', about 3.29M parameters).

The report does not list its layers, only that it was built from Inception modules and had
3,290,597 trainable parameters. This is a GoogLeNet-style stack of seven modules (3a-3b, 4a-4e
widths of GoogLeNet) on a 3x3 stem, global-average-pooled: 3,339,781 trainable parameters at
5 classes, within 1.5% of the report's count.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import keras_init, register_model


class InceptionModule(nn.Module):
    """Parallel 1x1, 1x1->3x3, 1x1->5x5 and maxpool->1x1 branches, concatenated on channels."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int):
        super().__init__()

        def conv(a, b, k):
            return [nn.Conv2d(a, b, k, padding=k // 2), nn.ReLU(inplace=True)]

        self.branch1 = nn.Sequential(*conv(cin, c1, 1))
        self.branch3 = nn.Sequential(*conv(cin, c3r, 1), *conv(c3r, c3, 3))
        self.branch5 = nn.Sequential(*conv(cin, c5r, 1), *conv(c5r, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


# (c1, c3 reduce, c3, c5 reduce, c5, pool projection), GoogLeNet's widths
_MODULES_A = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)]
_MODULES_B = [(192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
              (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)]


@register_model("inception", description="Small Inception: seven Inception modules (report: 3.29M params)",
                min_image_size=4, family="inception")
def inception(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> nn.Module:
    """Stem conv 3x3 (64) + pool, modules 3a-3b, pool, modules 4a-4e, global average pool, dense."""
    layers: list[nn.Module] = [nn.Conv2d(in_chans, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    channels = 64
    for stage, specs in enumerate((_MODULES_A, _MODULES_B)):
        if stage == 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        for spec in specs:
            module = InceptionModule(channels, *spec)
            layers.append(module)
            channels = module.out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return keras_init(nn.Sequential(*layers))
