"""Optimizers by name, with weight decay kept off BatchNorm parameters and biases.

Decaying a BatchNorm scale or a bias only fights the normalization (a BN layer is invariant to the
scale of the weights before it, not to its own gamma) and is known to cost accuracy; the usual
recipe (timm, airbench, the ResNet "bag of tricks") decays conv and linear weights only. The split is
by shape: every parameter with ndim <= 1 (BN weight and bias, conv and linear biases) goes in a group
with weight_decay 0. That works for a model and for a bare list of tensors alike.

Groups are [decayed, not decayed], each in the model's parameter order, so a checkpointed optimizer
state always lines up with a rebuilt one. Without weight decay there is a single group, exactly as
before this module existed, so runs saved by older versions still resume.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.layers import dense_layout

OPTIMIZERS = ("adam", "rmsprop", "sgd", "adamw")


def _trainable(model_or_params: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    out, seen = [], set()
    for p in params:
        if p.requires_grad and id(p) not in seen:  # a tied parameter appears once, as in model.parameters()
            seen.add(id(p))
            out.append(p)
    return out


def param_groups(model_or_params: nn.Module | Iterable[torch.Tensor], weight_decay: float) -> list[dict]:
    """Trainable parameters as optimizer groups: one group when weight_decay is 0, else [decay, no decay]."""
    params = _trainable(model_or_params)
    if not params:
        raise UserError("the model has no trainable parameters to optimize")
    if weight_decay == 0:
        return [{"params": params, "weight_decay": 0.0}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [group for group in ({"params": decay, "weight_decay": weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}) if group["params"]]


def fusable(groups: list[dict]) -> bool:
    """Whether torch's fused Adam kernels take these parameters: floating point, on the CPU or CUDA, and dense
    (the CPU kernel walks each tensor as one flat buffer; a model of your own may hold a strided view)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() and dense_layout(p)
               for g in groups for p in g["params"])


def make_optimizer(name: str, model_or_params: nn.Module | Iterable[torch.Tensor], lr: float, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, nesterov: bool = True, capturable: bool = False) -> torch.optim.Optimizer:
    """`momentum` and `nesterov` concern sgd only; sgd with momentum=0 is the report's plain SGD.

    capturable: adam/adamw as a fused, CUDA-graph-capturable optimizer whose learning rate is a device
    tensor (the engine's CUDA-graph path changes it in place between replays)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if lr < 0 or weight_decay < 0 or momentum < 0:
        raise UserError(f"optimizer {name}: lr, weight_decay and momentum must not be negative "
                        f"(got {lr}, {weight_decay}, {momentum})")
    groups = param_groups(model_or_params, weight_decay)
    if capturable:
        if name not in ("adam", "adamw"):
            raise UserError(f"cuda_graphs: needs optimizer adam or adamw (a capturable fused optimizer), got {name}")
        device = groups[0]["params"][0].device
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        eps = 1e-7 if name == "adam" else 1e-8
        return cls(groups, lr=torch.tensor(lr, device=device), eps=eps, capturable=True, fused=True)
    if name == "adam":
        # fused: one pass over each tensor instead of a dozen; cnn3's 19.3M parameters, one update, 2-core AMX
        # Xeon: 117 ms unfused against 18.6 ms fused with the AVX2 emulation (89.8 against 17.1 ms natively)
        # (weight decay here is Adam's L2 penalty added to the gradient; use adamw for decoupled decay)
        return torch.optim.Adam(groups, lr=lr, eps=1e-7, fused=fusable(groups))  # Keras's epsilon
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1e-7)  # Keras's rho and epsilon
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fusable(groups))  # decoupled decay, set per group above
    if momentum == 0:
        return torch.optim.SGD(groups, lr=lr)  # the report's plain SGD (nesterov needs momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


@torch.no_grad()
def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each state tensor its parameter's memory layout. torch's fused CPU Adam (2.14) walks a parameter
    and its state as one flat buffer without checking their strides: state loaded from a checkpoint comes
    back contiguous while the conv weights train channels_last, and the update then mixed elements up (a
    resumed tuned-cnn's validation loss 0.28 where the uninterrupted run had 0.19)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)

