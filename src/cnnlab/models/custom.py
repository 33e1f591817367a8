"""Models of the user's own: an nn.Module instance (copied, each layer re-initialised with its
`reset_parameters` under the run's seed) or a callable building one from num_classes, in_chans and
image_size. A run records the class's import path in model.json but never imports it: reloading takes
the module or factory explicitly (cnnlab.load_run(path, model=MyNet)). Studies and ensembles name such
a model by its class's (or factory's) name and record its import path; continuing them takes it again."""

from __future__ import annotations

import copy
import functools
import re
import weakref

import torch
from torch import nn

from cnnlab.errors import UserError, notice

CUSTOM_MODEL = "custom"  # the model name config.json records for a model of the user's own
PASS_AGAIN = "a directory never causes code to be imported"


def is_custom(model) -> bool:
    """An nn.Module instance or a factory (a class or a function), not a model name."""
    return isinstance(model, nn.Module) or (callable(model) and not isinstance(model, str))


def _target(builder):
    """What names a builder: an instance's class, a partial's function, else the callable itself."""
    if isinstance(builder, nn.Module):
        return type(builder)
    if isinstance(builder, functools.partial):
        return _target(builder.func)
    return builder if hasattr(builder, "__qualname__") else type(builder)


def class_path(obj) -> str:
    target = _target(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', getattr(target, '__name__', '?'))}"


def display_name(path: str) -> str:
    """A model of the user's own as reports, study run directories and ensemble manifests name it: the last
    part of its import path (the class's or the factory's name), safe as a file name ("<lambda>" -> "lambda")."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", str(path).rsplit(".", 1)[-1]) or CUSTOM_MODEL


def model_name(builder) -> str:
    return display_name(class_path(builder))


def spec_label(model: str, spec: dict) -> str:
    """The model's name for display from config.json's model and model.json's spec."""
    return display_name(spec["class"]) if model == CUSTOM_MODEL and isinstance(spec.get("class"), str) else model


def require_importable(builder, fix: str = "or train without Ray") -> None:
    """Ray workers import a model of the user's own by its import path: refuse (one line) a lambda, a nested
    function or class, or one defined in __main__ (a script run directly, a notebook)."""
    target = _target(builder)
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        where = "a lambda or a nested definition" if "<" in qualname else "defined in __main__ (a script or a notebook)"
        raise UserError(f"model {model_name(builder)}: {where}, which Ray workers cannot import; define it at the top "
                        f"level of an importable module, or register it with cnnlab.register_model, {fix}")


def refuse_by_name(directory, what: str, path: str) -> UserError:
    """The one line for a group directory of a model of the user's own continued without the model."""
    name = display_name(path)
    return UserError(f"{directory}: {name} is a model of your own ({path}); pass it again, e.g. "
                     f"cnnlab.{what}(MyNet, ..., out='{directory}') ({PASS_AGAIN})")


def build_custom(builder, *, num_classes: int, in_chans: int, image_size: int | None, **options) -> nn.Module:
    """The network for one run (seed set by the caller): a fresh copy of a module, or the factory's result."""
    if isinstance(builder, nn.Module):
        net = copy.deepcopy(builder)
        kept = []
        for name, layer in net.named_modules():
            reset = getattr(layer, "reset_parameters", None)
            if reset is None and type(layer).__module__.startswith("torch."):  # MultiheadAttention's private one;
                reset = getattr(layer, "_reset_parameters", None)  # a user's own may take arguments
            if callable(reset):
                reset()
            else:
                kept += [f"{name}.{p}" if name else p for p, v in layer.named_parameters(recurse=False) if v is not None]
        if kept:
            _warn_kept(builder, kept)
    elif callable(builder):
        try:
            net = builder(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **options)
        except TypeError as exc:
            raise UserError(f"model {class_path(builder)}: a factory takes num_classes, in_chans and image_size "
                            f"as keywords ({exc})") from None
        if not isinstance(net, nn.Module):
            raise UserError(f"model {class_path(builder)}: the factory returned {type(net).__name__}, not an nn.Module")
    else:
        raise UserError(f"model: expected a name, an nn.Module or a factory, got {type(builder).__name__}")
    net.cnnlab_spec = {"name": CUSTOM_MODEL, "class": class_path(builder if not isinstance(builder, nn.Module) else net),
                       "num_classes": num_classes, "in_chans": in_chans, "image_size": image_size, **options}
    return net


_WARNED: weakref.WeakSet = weakref.WeakSet()  # instances warned about: once, not once per ensemble member


def _warn_kept(builder: nn.Module, kept: list[str]) -> None:
    """Parameters of layers without reset_parameters keep the values the instance was built with, whatever the
    seed: two runs of one seed could differ (the instance built under another torch seed), and every ensemble
    member started from the same values. Said once per instance."""
    if builder in _WARNED:
        return
    _WARNED.add(builder)
    names = ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
    notice(f"model {class_path(type(builder))}: {names} keep the values the instance was built with (their layers "
           f"have no reset_parameters), so the seed does not set them; pass the class or a factory instead of an "
           f"instance for a fresh model per seed")


def check_outputs(net: nn.Module, image_shape: tuple, num_classes: int) -> None:
    """One forward of two blank images before anything trains: a model of one's own that does not map N x C x H x W
    images to N x num_classes logits fails here in one line, not as a torch error mid-training (a model with too
    many outputs trained without any error and wrote a run no command could evaluate). Eval mode and no_grad: the
    weights, BatchNorm statistics and random state stay as they were."""
    name = class_path(type(net)) if not hasattr(net, "cnnlab_spec") else net.cnnlab_spec["class"]
    first = next(iter(net.parameters()), None)
    images = torch.zeros(2, *image_shape, dtype=first.dtype if first is not None and first.is_floating_point()
                         else torch.float32, device=first.device if first is not None else "cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(images)
    except Exception as exc:  # whatever the user's forward raises: one line naming the shape it was given
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"model {name}: its forward fails on images shaped {tuple(images.shape)} (N x C x H x W: "
                        f"{type(exc).__name__}: {detail[:200]}); make it take {image_shape[0]}-channel "
                        f"{image_shape[1]}x{image_shape[2]} images (in_chans and image_size are passed to a factory)") from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"model {name}: its forward returned {type(out).__name__}; return one tensor of logits, "
                        f"N x {num_classes} (one column per class)")
    if tuple(out.shape) != (2, num_classes):
        raise UserError(f"model {name}: returned shape {tuple(out.shape)} for 2 images; the data has {num_classes} "
                        f"classes, so it must return (2, {num_classes}): one logit per class (a factory is passed "
                        f"num_classes={num_classes})")
