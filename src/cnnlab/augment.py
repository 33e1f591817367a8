"""The report's ImageDataGenerator augmentation, drawn per image and applied in batches on the device.

Keras settings (report 1.2): rotation_range=8 (degrees), zoom_range=0.1 (x and y zoom drawn
independently from [0.9, 1.1]), shear_range=0.3 (degrees, as Keras measures shear),
width/height_shift_range=0.08 (fraction of the size), vertical_flip=True (p=0.5), fill_mode
'nearest' (uncovered pixels copy the nearest edge) and bilinear interpolation. Each image gets its
own parameters; torchvision's v2 transforms would draw one set per batch, which is not the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    rotation: float = 8.0  # degrees, drawn from [-rotation, rotation]
    zoom: float = 0.1  # zoom factors drawn from [1 - zoom, 1 + zoom], x and y separately
    shear: float = 0.3  # degrees
    shift: float = 0.08  # fraction of width / height
    vertical_flip: bool = True


def sample_params(n: int, settings: AugmentSettings, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
    """Draw one parameter set per image (uniform, as Keras does)."""
    u = torch.rand(n, 7, generator=generator, device=device) * 2 - 1  # in [-1, 1)
    s = settings
    return {
        "angle": u[:, 0] * s.rotation,
        "zoom_x": 1 + u[:, 1] * s.zoom,
        "zoom_y": 1 + u[:, 2] * s.zoom,
        "shear": u[:, 3] * s.shear,
        "shift_x": u[:, 4] * s.shift,
        "shift_y": u[:, 5] * s.shift,
        "flip": (u[:, 6] < 0) if s.vertical_flip else torch.zeros(n, dtype=torch.bool, device=device),
    }


def affine_matrices(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """N x 2 x 3 matrices mapping output to input coordinates, in affine_grid's normalized [-1, 1] space.

    Keras composes rotation @ shift @ shear @ zoom about the image centre; a shift of a fraction f
    of the size is 2f in normalized units. The flip negates y of the output.
    """
    a = torch.deg2rad(p["angle"])
    sh = torch.deg2rad(p["shear"])
    n = a.shape[0]
    eye = torch.eye(3, device=a.device, dtype=a.dtype).expand(n, 3, 3).clone()

    def mat(m00, m01, m02, m10, m11, m12):
        m = eye.clone()
        m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = m00, m01, m02
        m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = m10, m11, m12
        return m

    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rotation = mat(torch.cos(a), -torch.sin(a), zero, torch.sin(a), torch.cos(a), zero)
    shift = mat(one, zero, 2 * p["shift_x"], zero, one, 2 * p["shift_y"])
    shear = mat(one, -torch.sin(sh), zero, zero, torch.cos(sh), zero)
    zoom = mat(p["zoom_x"], zero, zero, zero, p["zoom_y"], zero)
    flip = mat(one, zero, zero, zero, torch.where(p["flip"], -one, one), zero)
    return (rotation @ shift @ shear @ zoom @ flip)[:, :2, :]


def apply_affine(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Resample each image of x (float N x C x H x W) with its own parameters, in one batched call."""
    theta = affine_matrices(params).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """x: float N x C x H x W on any device; returns the transformed batch (same shape)."""
    return apply_affine(x, sample_params(x.shape[0], settings, generator, x.device))

