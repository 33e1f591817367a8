"""Test-time augmentation's views and their mean, shared by evaluation, predict, the onnxruntime route and
export: the image and its left-right mirror (flip TTA), and with `translate` also that pair shifted one
pixel along each diagonal (reflect padding), all ten views weighted equally.

Why translate (issue 20 item 4): cpu-budget, 10-minute budget, 10% validation split, each model scored
every way on the same 6,000 validation images (2-core AMX Xeon with AVX2 emulation, fp32): flip 94.50% and
93.92% (seeds 0 and 1), airbench's level 2 (two shifts, half the weight on them) 94.72% and 94.07%
(+0.18 on average: under the 0.2 bar), these ten views 94.78% and 94.20% (+0.28 both times). Eight more
forwards cost ~12 s on the 10,000 test images there, about half of one of the run's 18 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFTS = ((-1, -1), (1, 1), (-1, 1), (1, -1))  # (rows, columns) the content moves by: the four diagonals
VIEWS = {False: 2, True: 2 + 2 * len(SHIFTS)}  # forwards per image: flip TTA, and with translate


def views(x: torch.Tensor, translate: bool = False) -> list[torch.Tensor]:
    """[x, mirror] (+ each diagonal one-pixel shift and its mirror with translate) for N x C x H x W."""
    out = [x, x.flip(-1)]
    if translate:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        for dy, dx in SHIFTS:
            shifted = padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
            out += [shifted, shifted.flip(-1)]
    return out


def mean(logits: list[torch.Tensor]) -> torch.Tensor:
    """The views' logits averaged with equal weights ((plain + mirror) / 2 for flip TTA, as before)."""
    if len(logits) == 2:
        return (logits[0] + logits[1]) / 2
    return sum(logits[1:], logits[0]) / len(logits)


def batched(forward, x: torch.Tensor, translate: bool = False) -> torch.Tensor:
    """TTA through one forward of all views stacked (a handful of images: one call beats several)."""
    out = forward(torch.cat(views(x, translate)))
    return mean(list(out.split(len(x))))
