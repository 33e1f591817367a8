"""Model registry in the style of timm: `@register_model` builders, `create_model(name, ...)`.

Contract for every model: float input N x C x H x W with pixels scaled to 0..1, logits out
(softmax belongs to the loss and to prediction). Builders are keyword-only and take
`num_classes`, `in_chans`, `image_size`; options left unset never override a model's defaults.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from cnnlab.errors import UserError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    image_size: int  # default input size (height = width)
    min_image_size: int  # smallest input the design allows
    tunable: dict = field(default_factory=dict)  # hyperparameter -> search space (see tune)
    family: str = "cnn"


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, description: str | None = None, image_size: int = 28, min_image_size: int = 8,
                   tunable: dict | None = None, family: str = "cnn"):
    """Register `builder` under `name` (description: the docstring's first line unless given). Registering the
    same function again (a notebook cell run twice, a module reloaded) replaces the entry; another function
    under a name already taken is one line."""
    def wrap(builder):
        held = _REGISTRY.get(name)
        if held is not None and _origin(held.builder) != _origin(builder):
            module, qualname = _origin(held.builder)
            raise UserError(f"register_model: the name {name!r} is taken by {module}.{qualname}; choose another name")
        summary = description if description is not None else (inspect.getdoc(builder) or "").split("\n")[0]
        _REGISTRY[name] = ModelInfo(name, builder, summary, image_size, min_image_size, tunable or {}, family)
        return builder
    return wrap


def _origin(builder) -> tuple[str, str]:
    return getattr(builder, "__module__", "?"), getattr(builder, "__qualname__", repr(builder))


def list_models() -> list[str]:
    """The registered model names: the built-in ones, then those of @cnnlab.register_model."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; known models are {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                 image_size: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model; unset options (None) keep the model's own defaults."""
    info = model_info(name)
    options = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                                     **kwargs).items() if v is not None}
    size = options.get("image_size", info.image_size)
    if size < info.min_image_size:
        raise UserError(f"model {name} needs inputs of at least {info.min_image_size}x{info.min_image_size}; "
                        f"got {size}x{size}")
    _check_options(name, info.builder, options)
    given = ", ".join(f"{k}={v!r}" for k, v in options.items()
                      if k not in ("num_classes", "in_chans", "image_size")) or "these options"
    try:
        with warnings.catch_warnings():  # a 0-unit layer is refused below, so torch's warning adds nothing
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            model = info.builder(**options)
    except (TypeError, ValueError, RuntimeError) as exc:  # a value out of range: torch's own words say which
        raise UserError(f"model {name} cannot be built with {given}: {exc}") from None
    if any(p.numel() == 0 for p in model.parameters()):  # torch builds a 0-unit layer without a word
        raise UserError(f"model {name} with {given} has a layer with no weights; "
                        f"sizes must be at least 1")
    # what it takes to rebuild this exact model from a run directory
    model.cnnlab_spec = {"name": name, **options}
    return model


def _check_options(name: str, builder: Callable[..., nn.Module], options: dict) -> None:
    """One line for an option the builder does not take, or a value of another kind than its default's."""
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key, value in options.items():
        if key not in params:
            raise UserError(f"model {name} has no parameter {key!r}; its parameters are {', '.join(params)}")
        default = params[key].default
        if isinstance(default, bool):
            kind, ok = "true or false", isinstance(value, bool)
        elif isinstance(default, numbers.Integral):
            kind, ok = "a whole number", isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif isinstance(default, numbers.Real):
            kind, ok = "a number", isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            raise UserError(f"model {name}: {key} must be {kind} (its default is {default!r}), got {value!r}")


def create_architecture(name: str, **kwargs) -> nn.Module:
    """The model without downloading pretrained weights: for counting, summaries, and rebuilding a saved
    run whose weights file holds every tensor."""
    if model_info(name).family == "transfer":
        kwargs["weights"] = "random"
    return create_model(name, **kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


# ------------------------------------------------------------------ shared building blocks


def keras_init(module: nn.Module) -> nn.Module:
    """Glorot-uniform kernels and zero biases, as Keras initializes Conv2D and Dense."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def keras_bn(channels: int, dims: int = 2) -> nn.Module:
    """BatchNorm with Keras's epsilon (1e-3). Momentum stays at PyTorch's 0.1, not Keras's 0.01: with 0.01 the
    running statistics are still far off after a short first epoch (val accuracy 0.24 after one epoch
    at 5 classes, measured), which makes short runs look broken."""
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(channels, eps=1e-3)


def flat_features(features: nn.Module, in_chans: int, image_size: int, model_name: str) -> int:
    """Size of the flattened feature map for this input size (computed, so any size works)."""
    with torch.no_grad():
        try:
            out = features.eval()(torch.zeros(1, in_chans, image_size, image_size))
        except RuntimeError as exc:
            raise UserError(f"model {model_name}: input {image_size}x{image_size} is too small for its "
                            f"convolutions and poolings ({str(exc).splitlines()[0]})") from None
    features.train()
    return int(out[0].numel())
