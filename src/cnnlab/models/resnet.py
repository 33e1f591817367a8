"""ResNet-50 as the report built it (the Coursera 'Residual Networks' assignment, in Keras).

Bottleneck blocks in stages of 3, 4, 6 and 3, Keras-style convolutions *with* biases, the stride on
the first 1x1 conv of each convolutional block. With 3 input channels (grayscale stacked three
times, as the report did) and 5 classes this has exactly the report's 23,544,837 trainable
parameters; with our default single channel the stem has 6,272 fewer. Adapted to small inputs by
ending in a global average pool instead of the assignment's fixed 2x2 pool, so 28x28 works.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import keras_bn, keras_init, register_model


class Bottleneck(nn.Module):
    """1x1 (stride s) -> 3x3 -> 1x1 with BatchNorm; a projection shortcut when shapes change."""

    def __init__(self, cin: int, filters: tuple[int, int, int], stride: int = 1, project: bool = False):
        super().__init__()
        f1, f2, f3 = filters
        self.main = nn.Sequential(
            nn.Conv2d(cin, f1, 1, stride=stride), keras_bn(f1), nn.ReLU(inplace=True),
            nn.Conv2d(f1, f2, 3, padding=1), keras_bn(f2), nn.ReLU(inplace=True),
            nn.Conv2d(f2, f3, 1), keras_bn(f3))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, f3, 1, stride=stride), keras_bn(f3)) if project else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.main(x) + self.shortcut(x))


@register_model("resnet50", description="ResNet-50, bottleneck stages 3-4-6-3, Keras-style",
                min_image_size=5, family="resnet")
def resnet50(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> nn.Module:
    """Zero-pad 3, conv 7x7/2 (64), BN, max-pool 3/2, then the four bottleneck stages and a dense layer."""
    layers: list[nn.Module] = [nn.ZeroPad2d(3), nn.Conv2d(in_chans, 64, 7, stride=2), keras_bn(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, stride=2)]
    channels = 64
    for blocks, filters, stride in ((3, (64, 64, 256), 1), (4, (128, 128, 512), 2),
                                    (6, (256, 256, 1024), 2), (3, (512, 512, 2048), 2)):
        for i in range(blocks):
            layers.append(Bottleneck(channels, filters, stride if i == 0 else 1, project=(i == 0)))
            channels = filters[2]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return keras_init(nn.Sequential(*layers))
