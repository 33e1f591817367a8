"""The modern recipe's augmentation: random crop, horizontal flip, random erasing, mixup and cutmix.

Every operation takes a float batch N x C x H x W on any device and a torch.Generator on that same
device, draws its parameters per image, and builds the result with index arithmetic, gathers and
broadcast comparisons: no Python loop over images, so a whole batch costs a handful of kernels on a
GPU. An operation that is switched off (p=0, padding 0, alpha 0) returns its input unchanged and
draws nothing from the generator.

The crop pads by *reflection*, as airbench does for CIFAR-10: reflection continues the image's own
texture instead of adding a hard frame, and unlike zero padding it means the same thing whether the
batch is raw 0..1 pixels or already normalized (zero is only black before normalization). On
Fashion-MNIST, whose background is black, the two mostly coincide; they differ for the garments that
touch the border (trousers, dresses, bags), where reflection does not cut the item off with a line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.errors import UserError

# ------------------------------------------------------------------ random crop


def sample_crop_offsets(n: int, padding: int, generator: torch.Generator, device) -> torch.Tensor:
    """N x 2 (row, column) offsets into the padded image, each in [0, 2 * padding]."""
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)


def crop_at(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by `padding` and cut each image back to H x W at its own (row, column) offset."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # N x H rows of the padded image
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # N x W columns
    # two gathers: the rows of each image, then the columns of those rows
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """A random shift of up to `padding` pixels each way, per image (pad-and-crop)."""
    if padding == 0:
        return x
    if not 0 < padding < min(x.shape[-2:]):
        raise UserError(f"augment crop_padding must be between 0 and {min(x.shape[-2:]) - 1} for "
                        f"{x.shape[-2]}x{x.shape[-1]} images (reflection needs it), got {padding}")
    return crop_at(x, padding, sample_crop_offsets(x.shape[0], padding, generator, x.device))


# ------------------------------------------------------------------ horizontal flip


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    if p == 0:
        return x
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


# ------------------------------------------------------------------ random erasing


def sample_erasing_boxes(n: int, height: int, width: int, generator: torch.Generator, device, *, p: float = 0.5,
                         scale: tuple[float, float] = (0.02, 0.25), ratio: tuple[float, float] = (0.3, 3.3)
                         ) -> dict[str, torch.Tensor]:
    """One rectangle per image: area a fraction of the image drawn from `scale`, aspect ratio (h / w) drawn
    log-uniformly from `ratio` (as torchvision's RandomErasing), `apply` true with probability p.

    torchvision retries up to ten times when a rectangle does not fit; here a side that would not fit is
    clipped to the image instead, so the draw is one fixed set of random numbers per image.
    """
    u = torch.rand(n, 5, generator=generator, device=device)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    h = torch.sqrt(area * aspect).round().clamp(1, height).long()
    w = torch.sqrt(area / aspect).round().clamp(1, width).long()
    top = (u[:, 2] * (height - h + 1)).long().clamp(max=height - h)  # uniform over the positions that fit
    left = (u[:, 3] * (width - w + 1)).long().clamp(max=width - w)
    return {"apply": u[:, 4] < p, "top": top, "left": left, "height": h, "width": w}


def _box_mask(height: int, width: int, top, left, h, w) -> torch.Tensor:
    """N x H x W, true inside each image's rectangle (broadcast comparisons, no loop)."""
    rows = torch.arange(height, device=top.device)[None, :, None]
    cols = torch.arange(width, device=top.device)[None, None, :]
    return ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))


def random_erasing(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.25),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> torch.Tensor:
    """Fill one random rectangle per image (chosen with probability p) with `value`, across all channels."""
    if p == 0:
        return x
    n, _, height, width = x.shape
    box = sample_erasing_boxes(n, height, width, generator, x.device, p=p, scale=scale, ratio=ratio)
    mask = _box_mask(height, width, box["top"], box["left"], box["height"], box["width"]) & box["apply"][:, None, None]
    return torch.where(mask[:, None], torch.as_tensor(value, dtype=x.dtype, device=x.device), x)


# ------------------------------------------------------------------ mixup and cutmix


def sample_gamma(shape: torch.Tensor | float, n: int, generator: torch.Generator, device, rounds: int = 12) -> torch.Tensor:
    """n Gamma(shape, 1) samples from `generator` (torch.distributions takes no generator, so a seeded run
    could not reproduce them). Marsaglia and Tsang's method, vectorized: `rounds` candidates per sample
    and the first accepted one wins. Acceptance is above 95% per candidate for shape >= 1 (shapes below 1
    use Gamma(shape + 1) * U^(1/shape)), so twelve rounds all fail with probability under 1e-15; such a
    sample falls back to the mean."""
    shape = torch.as_tensor(shape, dtype=torch.float32, device=device).expand(n)
    boost = shape < 1
    d = torch.where(boost, shape + 1, shape) - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    z = torch.randn(n, rounds, generator=generator, device=device)
    u = torch.rand(n, rounds, generator=generator, device=device)
    v = (1.0 + c[:, None] * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d[:, None] * (1.0 - v + torch.log(v.clamp_min(1e-30))))
    first = torch.where(ok.any(1), ok.float().argmax(1), 0)
    sample = torch.where(ok.any(1), (d[:, None] * v).gather(1, first[:, None])[:, 0], shape)
    u_boost = torch.rand(n, generator=generator, device=device)
    return torch.where(boost, sample * u_boost.clamp_min(1e-30) ** (1.0 / shape), sample)


def sample_beta(alpha: float, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """n draws from Beta(alpha, alpha), as the ratio of two Gamma(alpha) draws."""
    g = sample_gamma(alpha, 2 * n, generator, device)
    a, b = g[:n], g[n:]
    total = a + b
    return torch.where(total > 0, a / total.clamp_min(1e-30), 0.5)  # both underflow only for tiny alpha


def _soft(y: torch.Tensor, num_classes: int, dtype) -> torch.Tensor:
    """Integer labels as one-hot rows; soft rows pass through."""
    return y.to(dtype) if y.ndim == 2 else F.one_hot(y.long(), num_classes).to(dtype)


def mixup(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image blended with a random partner, lam ~ Beta(alpha, alpha) drawn per image (timm's
    'elem' mode: more variety per batch than one lam for all); targets are blended with the same lam."""
    if alpha == 0:
        return x, _soft(y, num_classes, x.dtype)
    n = x.shape[0]
    lam = sample_beta(alpha, n, generator, x.device).to(x.dtype)
    partner = torch.randperm(n, generator=generator, device=x.device)
    targets = _soft(y, num_classes, x.dtype)
    mixed = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
    return mixed, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]


def sample_cutmix_boxes(n: int, height: int, width: int, alpha: float, generator: torch.Generator, device
                        ) -> dict[str, torch.Tensor]:
    """Per image a box of about (1 - lam) of the area, lam ~ Beta(alpha, alpha), centred uniformly and
    clipped to the image (as in the CutMix paper and timm); `lam` is recomputed from the clipped box so
    the targets match the pixels actually pasted."""
    lam = sample_beta(alpha, n, generator, device)
    cut = torch.sqrt(1.0 - lam)
    cut_h, cut_w = (height * cut).long(), (width * cut).long()
    cy = torch.randint(0, height, (n,), generator=generator, device=device)
    cx = torch.randint(0, width, (n,), generator=generator, device=device)
    top, bottom = (cy - cut_h // 2).clamp(0, height), (cy + cut_h // 2).clamp(0, height)
    left, right = (cx - cut_w // 2).clamp(0, width), (cx + cut_w // 2).clamp(0, width)
    h, w = bottom - top, right - left
    return {"top": top, "left": left, "height": h, "width": w, "lam": 1.0 - (h * w).float() / (height * width)}


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float, generator: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a box from a random partner into each image; targets weighted by the pasted area."""
    if alpha == 0:
        return x, _soft(y, num_classes, x.dtype)
    n, _, height, width = x.shape
    box = sample_cutmix_boxes(n, height, width, alpha, generator, x.device)
    partner = torch.randperm(n, generator=generator, device=x.device)
    mask = _box_mask(height, width, box["top"], box["left"], box["height"], box["width"])
    mixed = torch.where(mask[:, None], x[partner], x)
    lam = (1 - (box["height"] * box["width"]).to(x.dtype) / (height * width))[:, None]  # box["lam"] in x's precision
    targets = _soft(y, num_classes, x.dtype)
    return mixed, lam * targets + (1 - lam) * targets[partner]


# ------------------------------------------------------------------ the recipe's pipeline


@dataclass(frozen=True)
class ModernAugment:
    crop_padding: int = 2  # pixels of random shift each way (reflect-padded); 0 = off
    hflip: bool = True  # mirror half the images left-right (garments are left-right symmetric)
    erasing: float = 0.0  # probability of erasing one rectangle per image
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 = off

    def __post_init__(self):
        if self.crop_padding < 0:
            raise UserError(f"augment crop_padding must not be negative, got {self.crop_padding}")
        if not 0.0 <= self.erasing <= 1.0:
            raise UserError(f"augment erasing is a probability in [0, 1], got {self.erasing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise UserError(f"augment mixup and cutmix are Beta alphas >= 0, got {self.mixup} and {self.cutmix}")

    @property
    def soft_targets(self) -> bool:
        """Whether apply_modern returns soft target rows instead of integer labels."""
        return self.mixup > 0 or self.cutmix > 0


def apply_modern(x: torch.Tensor, y: torch.Tensor, settings: ModernAugment, generator: torch.Generator,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop, flip, erase, then mixup or cutmix. Targets are y itself unless mixup or cutmix is on, then
    N x num_classes soft rows. With both on, each image gets one of the two, evenly (timm switches per
    batch; per image needs no host sync to decide and both are cheap next to the model)."""
    x = random_crop(x, settings.crop_padding, generator)
    x = random_hflip(x, generator, 0.5 if settings.hflip else 0.0)
    x = random_erasing(x, generator, p=settings.erasing)
    if not settings.soft_targets:
        return x, y
    if settings.mixup == 0:
        return cutmix(x, y, num_classes, settings.cutmix, generator)
    if settings.cutmix == 0:
        return mixup(x, y, num_classes, settings.mixup, generator)
    mixed_x, mixed_y = mixup(x, y, num_classes, settings.mixup, generator)
    cut_x, cut_y = cutmix(x, y, num_classes, settings.cutmix, generator)
    use_cut = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(use_cut[:, None, None, None], cut_x, mixed_x), torch.where(use_cut[:, None], cut_y, mixed_y)
