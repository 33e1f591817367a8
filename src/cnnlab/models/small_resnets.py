"""Residual networks made for small images: the modern recipe's models (issue 11).

- resnet9: the DAWNBench ResNet-9 of Myrtle.ai (David Page), which airbench grew out of: a prep conv,
  three conv-BN-ReLU layers each followed by a 2x2 max pool, residual blocks after the first and the
  last, a global max pool, a bias-free linear layer and a fixed 0.125 scale on the logits. The scale
  keeps the initial logits small, so the softmax starts near uniform and the high one-cycle learning
  rates do not saturate it. Adapted to 28x28 grayscale: `in_chans` input channels, and pools with
  ceil_mode so 28 -> 14 -> 7 -> 4 keeps the last row and column (a floor pool would drop 7 -> 3).
  `width` is the prep conv's channels; the layers have 2, 4 and 8 times that (64 = the original).
- wrn-D-K: Zagoruyko and Komodakis's wide ResNet, pre-activation blocks (BN-ReLU-conv), (D - 4) / 6
  blocks in each of three groups of 16K, 32K and 64K channels, strides 1, 2, 2 (28 -> 14 -> 7), dropout
  between a block's two convs, global average pool. WRN-28-10 (36M parameters) is the large model of
  the Random Erasing paper's Fashion-MNIST runs; WRN-16-4 is the one a small budget can train.

All use PyTorch's default initialization except as noted, BatchNorm after (resnet9) or before (WRN)
every conv, bias-free convs (a BN follows), and only shape-agnostic ops (flatten after pooling to 1x1),
so channels_last inputs stay channels_last throughout.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class Scale(nn.Module):
    """Multiply by a fixed constant (not learned)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class GlobalMaxPool(nn.Module):
    """Max over height and width, N x C x H x W -> N x C x 1 x 1: nn.AdaptiveMaxPool2d(1)'s values and, but for
    ties, its gradients (a tie shares the gradient; in resnet9 ties are zeros after a ReLU, whose gradient is
    zero either way). Why not nn.AdaptiveMaxPool2d: torch.compile (inductor, torch 2.14.1, CPU, one thread)
    lowers it to a vectorized argmax whose index store corrupts the heap: resnet9 width 8, batch 256, crashed
    (SIGSEGV) in the compile probe's first compiled step, 3 runs of 3, on a 2-core Zen 5 AMD EPYC with
    OMP_NUM_THREADS=1 (AVX2 emulated or not); a plain max reduction stores no indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, (2, 3), True)


WIDTHS = {"type": "categorical", "choices": [16, 32, 64]}
DROPOUT = {"type": "float", "low": 0.0, "high": 0.5}


@register_model("resnet9", description="ResNet-9 (DAWNBench/airbench style), residual layers, max pools; width option",
                min_image_size=8, tunable={"width": WIDTHS}, family="resnet")
def resnet9(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, width: int = 64,
            logit_scale: float = 0.125) -> nn.Module:
    """prep conv(w) -> conv(2w), pool, res(2w) -> conv(4w), pool -> conv(8w), pool, res(8w) -> max -> linear -> scale.
    `image_size` is accepted for the registry's contract; any size of at least 8 works (global pooling)."""
    if width < 1:
        raise TypeError(f"width must be a positive number of channels, got {width}")
    w1, w2, w3, w4 = width, 2 * width, 4 * width, 8 * width

    def pool() -> nn.Module:
        return nn.MaxPool2d(2, ceil_mode=True)

    return nn.Sequential(
        *_conv_bn(in_chans, w1),
        *_conv_bn(w1, w2), pool(), Residual(nn.Sequential(*_conv_bn(w2, w2), *_conv_bn(w2, w2))),
        *_conv_bn(w2, w3), pool(),
        *_conv_bn(w3, w4), pool(), Residual(nn.Sequential(*_conv_bn(w4, w4), *_conv_bn(w4, w4))),
        GlobalMaxPool(), nn.Flatten(), nn.Linear(w4, num_classes, bias=False), Scale(logit_scale))


class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the shortcut.
    When the shape changes, the shortcut is a 1x1 conv of the *pre-activated* input, as in the authors'
    code (the activation is then shared by both branches)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.project = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                        if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not inplace on x itself: the identity shortcut still needs it
        pre = torch.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(pre)))))
        return out + (self.project(pre) if self.project is not None else x)


def wide_resnet(depth: int, widen: int, *, num_classes: int, in_chans: int, dropout: float) -> nn.Module:
    if (depth - 4) % 6 or depth < 10:
        raise TypeError(f"wide ResNet depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
    if not 0.0 <= dropout < 1.0:
        raise TypeError(f"dropout must be in [0, 1), got {dropout}")
    blocks = (depth - 4) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)]
    cin = 16
    for group, stride in enumerate((1, 2, 2)):
        cout = 16 * widen * 2 ** group
        for i in range(blocks):
            layers.append(WideBlock(cin, cout, stride if i == 0 else 1, dropout))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():  # the authors' initialization: He-normal convs (fan out), zero linear bias
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


@register_model("wrn-16-4", description="Wide ResNet 16-4, pre-activation, 28x28 input; dropout option",
                min_image_size=8, tunable={"dropout": DROPOUT}, family="resnet")
def wrn_16_4(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout: float = 0.0) -> nn.Module:
    """Two blocks per group, 64-128-256 channels. `image_size` only satisfies the registry's contract."""
    return wide_resnet(16, 4, num_classes=num_classes, in_chans=in_chans, dropout=dropout)


@register_model("wrn-28-10", description="Wide ResNet 28-10, pre-activation (heavy: 36M params, GPU only)",
                min_image_size=8, tunable={"dropout": DROPOUT}, family="resnet")
def wrn_28_10(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout: float = 0.0) -> nn.Module:
    """Four blocks per group, 160-320-640 channels."""
    return wide_resnet(28, 10, num_classes=num_classes, in_chans=in_chans, dropout=dropout)
