"""Layer tables in the report's (Keras) form, built on torchinfo's forward pass.

Keras counts BatchNorm's moving mean and variance as non-trainable parameters; PyTorch keeps them
as buffers. We count them the Keras way so the totals can be compared with the report's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_HIDDEN = (nn.ReLU, nn.Identity)  # Keras folds activations into the layer before them


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple  # without the batch dimension, channels first
    params: int  # parameters plus BatchNorm statistics, as Keras counts them


@dataclass
class Summary:
    rows: list[LayerRow]
    total: int
    trainable: int
    non_trainable: int


def _keras_params(module: nn.Module) -> int:
    stats = sum(b.numel() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return sum(p.numel() for p in module.parameters()) + stats


def summarize(model: nn.Module, input_size: tuple[int, int, int], depth: int = 1) -> Summary:
    """One row per leaf layer (or per module at `depth`), output shapes from a real forward pass."""
    import torchinfo

    names = {id(m): name for name, m in model.named_modules()}
    stats = torchinfo.summary(model, input_size=(1, *input_size), depth=depth, verbose=0, device="cpu",
                              mode="eval")
    rows = []
    for layer in stats.summary_list:
        if layer.depth == 0 or layer.depth > depth or isinstance(layer.module, _HIDDEN):
            continue
        if not (layer.is_leaf_layer or layer.depth == depth):
            continue
        shape = tuple(layer.output_size[1:]) if layer.output_size else ()
        rows.append(LayerRow(names.get(id(layer.module), layer.var_name), type(layer.module).__name__, shape,
                             _keras_params(layer.module)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = _keras_params(model)
    return Summary(rows, total, trainable, total - trainable)


def keras_shape(shape: tuple) -> str:
    """(C, H, W) -> '(None, H, W, C)', the report's channels-last form."""
    dims = (*shape[1:], shape[0]) if len(shape) == 3 else shape
    return "(None, " + ", ".join(str(d) for d in dims) + ")"
