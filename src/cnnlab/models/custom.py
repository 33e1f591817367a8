"""Models of the user's own: an nn.Module instance (copied, each layer re-initialised with its
`reset_parameters` under the run's seed) or a callable building one from num_classes, in_chans and
image_size. A run records the class's import path in model.json but never imports it: reloading takes
the module or factory explicitly (cnnlab.load_run(path, model=MyNet))."""

from __future__ import annotations

import copy

from torch import nn

from cnnlab.errors import UserError

CUSTOM_MODEL = "custom"  # the model name config.json records for a model of the user's own


def class_path(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj) if isinstance(obj, nn.Module) else obj
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', getattr(cls, '__name__', '?'))}"


def build_custom(builder, *, num_classes: int, in_chans: int, image_size: int | None, **options) -> nn.Module:
    """The network for one run (seed set by the caller): a fresh copy of a module, or the factory's result."""
    if isinstance(builder, nn.Module):
        net = copy.deepcopy(builder)
        for layer in net.modules():
            if callable(getattr(layer, "reset_parameters", None)):
                layer.reset_parameters()
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
