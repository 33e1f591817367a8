"""Transfer learning from ImageNet (report 1.1): VGG19 as a frozen feature extractor, Inception v3
with its last layers retrained.

Grayscale input is stacked to 3 channels, resized (150x150 as in the report) and normalized with
ImageNet statistics inside the model, so these models take the same 0..1 input as every other.
Weights come from torchvision's weights API (cached in $TORCH_HOME), or a local file; the
architecture alone (weights=None) is what tests and `cnnlab models` build.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UserError, option
from cnnlab.runs import load_tensors

from .registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_pretrained_state(arch: str, weights_enum, weights: str | Path | None) -> dict | None:
    """None or 'random': random init. 'imagenet': torchvision's cached or downloaded weights. A path: a local file."""
    if state_is_random(weights):
        return None
    if str(weights) == "imagenet":
        entry = weights_enum.IMAGENET1K_V1
        file_name = Path(urlparse(entry.url).path).name
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torch.hub prints "Downloading: ..." even when quiet
                return entry.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # offline, proxy, HTTP or hash error: all mean "no usable file"
            raise UserError(f"{arch}: ImageNet weights not available ({type(exc).__name__}); put {file_name} "
                            f"(from {entry.url}) at {cached}, or pass {option('weights', metavar='PATH')}") from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"{option('weights', path)}: no such file")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:
        raise UserError(f"{option('weights', path)}: not a PyTorch state dict ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{option('weights', path)}: expected a state dict of tensors")
    return state


def state_is_random(weights) -> bool:
    return weights is None or str(weights).lower() in ("random", "none")


def _load_into(module: nn.Module, state: dict, arch: str, source: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"{source}: not {arch} weights (missing {len(missing)} tensors, e.g. {missing[0]!r})")
    if unexpected:
        raise UserError(f"{source}: not {arch} weights (unexpected tensors such as {unexpected[0]!r})")


class ImageNetInput(nn.Module):
    """Gray -> 3 channels, resize, ImageNet normalization."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class FrozenBaseClassifier(nn.Module):
    """A frozen pretrained base used as a feature extractor, then one trainable dense layer.

    `features(x)` never changes during training, so the engine may compute it once and cache it.
    """

    feature_cacheable = True

    def __init__(self, base: nn.Module, image_size: int, in_chans: int, num_classes: int):
        super().__init__()
        self.prepare = ImageNetInput(image_size)
        self.base = base.requires_grad_(False)
        with torch.no_grad():
            flat = self.base.eval()(self.prepare(torch.zeros(1, in_chans, image_size, image_size))).numel()
        self.head = nn.Linear(flat, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # frozen: no dropout, no statistics updates
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.prepare(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("vgg19-transfer", description="VGG19 (ImageNet), frozen base + one dense layer",
                image_size=150, min_image_size=32, family="transfer")
def vgg19_transfer(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 150,
                   weights: str = "imagenet") -> nn.Module:
    """The report's recipe: stack to RGB, resize to 150x150, VGG19 conv base (frozen), Dense(classes)."""
    from torchvision.models import VGG19_Weights  # torchvision's model zoo: 2.3 s of `import cnnlab` (AMX Xeon)
    from torchvision.models.vgg import cfgs, make_layers

    base = make_layers(cfgs["E"], batch_norm=False)  # VGG19's convolutional part only
    state = load_pretrained_state("vgg19-transfer", VGG19_Weights, weights)
    if state is not None:
        base_state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        _load_into(base, base_state, "VGG19", str(weights))
    return FrozenBaseClassifier(base, image_size, in_chans, num_classes)


def _parameter_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that own parameters directly (conv, batchnorm, linear), in definition order."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


class PartlyFrozen(nn.Module):
    """A pretrained network whose last `trainable_layers` parameter layers train; the rest stay frozen."""

    def __init__(self, net: nn.Module, image_size: int, trainable_layers: int):
        super().__init__()
        self.prepare = ImageNetInput(image_size)
        self.net = net
        layers = _parameter_layers(net)
        self.frozen_layers = layers[: max(0, len(layers) - trainable_layers)]
        for layer in self.frozen_layers:
            layer.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for layer in self.frozen_layers:
            layer.eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x))


@register_model("inceptionv3-transfer", description="Inception v3 (ImageNet), last 10 layers retrained",
                image_size=150, min_image_size=75, family="transfer")
def inceptionv3_transfer(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 150,
                         trainable_layers: int = 10, weights: str = "imagenet") -> nn.Module:
    """A 'layer' is a module with its own parameters (conv, batchnorm, the new dense head), counted from the end."""
    from torchvision.models import Inception_V3_Weights, inception_v3  # lazy: see vgg19_transfer

    net = inception_v3(weights=None, aux_logits=False, init_weights=state_is_random(weights), transform_input=False)
    state = load_pretrained_state("inceptionv3-transfer", Inception_V3_Weights, weights)
    if state is not None:
        kept = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
        net.fc = nn.Identity()
        _load_into(net, kept, "Inception v3", str(weights))
    net.fc = nn.Linear(2048, num_classes)
    if trainable_layers < 1:
        raise UserError(f"inceptionv3-transfer: trainable_layers must be at least 1, got {trainable_layers}")
    return PartlyFrozen(net, image_size, trainable_layers)
