"""An exponential moving average of a model's weights, evaluated instead of the raw weights.

After each optimizer step, every floating-point parameter *and buffer* of the average moves towards the
model's: ema = d * ema + (1 - d) * model. BatchNorm's running mean and variance are averaged like the
weights (as timm's ModelEmaV2/V3 and YOLOv5 do) rather than copied: copied statistics would describe
the latest weights, not the averaged ones the EMA model evaluates with. Integer buffers (BatchNorm's
num_batches_tracked) are copied. (Recomputing the statistics with the averaged weights over some
training batches would be more exact still; it costs a pass over data, so it is left to the caller.)

With warmup=True the decay of update n (n = updates done before it, from 0) is
min(decay, (1 + n) / (10 + n)), TensorFlow's num_updates rule that timm's ModelEma and YOLOv5 use: the
first updates follow the model closely, so the average is not dominated by the random initial weights
of a short run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

UPDATES_KEY = "ema_updates"


def _unwrap(model: nn.Module) -> nn.Module:
    """The module behind torch.compile, whose parameter names carry an _orig_mod. prefix."""
    return getattr(model, "_orig_mod", model)


def _tensors(model: nn.Module) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    """(names, floating tensors, other buffers) in a fixed order: parameters, then buffers."""
    names, floats, others = [], [], []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        names.append(name)
        (floats if t.is_floating_point() else others).append(t)
    return names, floats, others


class ModelEMA:
    """Averaged copy of `model`; call update(model) after every optimizer step and evaluate `module`."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(_unwrap(model)).eval()  # same device, dtype and memory format
        self.module.requires_grad_(False)
        self._names, self._floats, self._others = _tensors(self.module)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, floats, others = _tensors(_unwrap(model))
        if names != self._names:
            raise ValueError("ModelEMA.update: the model does not have the averaged model's parameters and buffers")
        weight = 1.0 - self.current_decay()
        # lerp: ema + (1 - d) * (model - ema) = d * ema + (1 - d) * model; one fused kernel per tensor list
        torch._foreach_lerp_(self._floats, [t.detach().to(e.dtype) for t, e in zip(floats, self._floats)], weight)
        for ema_t, t in zip(self._others, others):
            ema_t.copy_(t)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain, separate, contiguous tensors (safetensors refuses shared or strided ones), plus the update count."""
        state = {k: v.detach().clone().contiguous() for k, v in self.module.state_dict().items()}
        if UPDATES_KEY in state:
            raise ValueError(f"the model has a tensor named {UPDATES_KEY!r}")
        state[UPDATES_KEY] = torch.tensor(self.updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop(UPDATES_KEY))
        self.module.load_state_dict(state)  # strict: a mismatched checkpoint is an error, not a silent partial load
