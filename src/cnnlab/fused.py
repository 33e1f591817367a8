"""K copies of a sequential CNN fused into one network, so K ensemble members train at once.

Convolutions become grouped convolutions (K groups), dense layers batched matrix products, and
BatchNorm one layer over K x channels, so member k only ever sees its own activations: the fused
network's outputs and gradients equal those of K separate models with the same weights. Each member
gets its own shuffle of the data and its own learning rate (ReduceLROnPlateau per member); Adam is
elementwise, so members stay independent. Applies to nn.Sequential models built from Conv2d,
BatchNorm, ReLU, MaxPool2d, Dropout, Flatten and Linear (the report's CNNs); others train one after
another.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from cnnlab.augment import AugmentSettings
from cnnlab.budget import Budget
from cnnlab.data.prepared import load_data, split_data
from cnnlab.device import autocast_for, compiled, choose_precision, float_dtype, resolve_device, without_fp16
from cnnlab.engine.checkpoint import checkpoint_of, stored_precision, with_prefix
from cnnlab.engine.loop import default_callbacks, fit_setup
from cnnlab.engine.setup import Setup, TrainState, make_plateaus, model_options
from cnnlab.engine.step import member_losses  # noqa: F401  (the loss of K members, importable from here too)
from cnnlab.models import create_architecture, create_model
from cnnlab.models.custom import CUSTOM_MODEL
from cnnlab.runs import RunDir

_ELEMENTWISE = (nn.ReLU, nn.Dropout, nn.MaxPool2d, nn.Identity)


class MemberFlatten(nn.Module):
    """N x (K*C) x H x W -> N x K x (C*H*W), flattening each member's channels in its own order."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.k, -1)


class MemberLinear(nn.Module):
    """K independent dense layers: N x K x in -> N x K x out."""

    def __init__(self, k: int, fan_in: int, fan_out: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, fan_out, fan_in, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(k, fan_out, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nki,koi->nko", x, self.weight) + self.bias


class MemberBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over K x features for N x K x features input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k, f = x.shape
        return super().forward(x.reshape(n, k * f)).reshape(n, k, f)


def can_fuse(model: nn.Module) -> bool:
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.Linear, nn.Flatten) + _ELEMENTWISE) for m in model)


def fuse(models: list[nn.Sequential]) -> nn.Sequential:
    """One network computing all members; the input is N x (K*C) x H x W, the output N x K x classes.

    The fused layers take the members' dtype and device, so float64 members fuse without rounding."""
    k = len(models)
    layers = []
    for parts in zip(*models):
        first = parts[0]
        like = next(first.parameters(), None)
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        if isinstance(first, nn.Conv2d):
            layer = nn.Conv2d(first.in_channels * k, first.out_channels * k, first.kernel_size, first.stride,
                              first.padding, first.dilation, groups=k, bias=first.bias is not None, **factory)
            with torch.no_grad():
                layer.weight.copy_(torch.cat([p.weight for p in parts]))
                if first.bias is not None:
                    layer.bias.copy_(torch.cat([p.bias for p in parts]))
        elif isinstance(first, (nn.BatchNorm2d, nn.BatchNorm1d)):
            cls = nn.BatchNorm2d if isinstance(first, nn.BatchNorm2d) else MemberBatchNorm1d
            layer = cls(first.num_features * k, eps=first.eps, momentum=first.momentum, **factory)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(layer, name).copy_(torch.cat([getattr(p, name) for p in parts]))
        elif isinstance(first, nn.Linear):
            layer = MemberLinear(k, first.in_features, first.out_features, **factory)
            with torch.no_grad():
                layer.weight.copy_(torch.stack([p.weight for p in parts]))
                layer.bias.copy_(torch.stack([p.bias for p in parts]))
        elif isinstance(first, nn.Flatten):
            layer = MemberFlatten(k)
        else:
            layer = first  # elementwise or per-channel: acts on every member alike
        layers.append(layer)
    return nn.Sequential(*layers)


def unfuse(fused: nn.Sequential, template: nn.Sequential, k: int) -> list[dict[str, torch.Tensor]]:
    """Split the fused weights back into K state dicts with the template's keys."""
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(k)]
    for index, (layer, original) in enumerate(zip(fused, template)):
        for name, value in layer.state_dict().items():
            key = f"{index}.{name}"
            for member in range(k):
                if name == "num_batches_tracked":
                    states[member][key] = value.clone()
                elif isinstance(layer, MemberLinear):
                    states[member][key] = value[member].clone()
                else:
                    size = value.shape[0] // k
                    states[member][key] = value[member * size:(member + 1) * size].clone()
    return states


def member_rows(param: torch.Tensor, k: int) -> int:
    """Every fused parameter holds its members in equal blocks along dimension 0."""
    return param.shape[0] // k


class MemberAdam:
    """torch.optim.Adam's update (same formula, same defaults otherwise) with one learning rate per member.

    `lr` is a CPU tensor the caller may change between steps (ReduceLROnPlateau per member); the
    per-parameter learning-rate tensors on the device are rebuilt only when it changes, so a step
    never copies from the host.
    """

    def __init__(self, params, k: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-7):
        self.params = [p for p in params if p.requires_grad]
        self.k, self.betas, self.eps = k, betas, eps
        self.lr = torch.full((k,), float(lr))
        self._lr_seen: torch.Tensor | None = None
        self._lr_per_param: list[torch.Tensor] = []
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """Clones of the state (the budget's speed probe puts it back in place with load_state_dict)."""
        return {"step_count": self.step_count, "lr": self.lr.clone(), "exp_avg": [m.clone() for m in self.exp_avg],
                "exp_avg_sq": [v.clone() for v in self.exp_avg_sq]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        self.lr.copy_(state["lr"])
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)

    def _learning_rates(self) -> list[torch.Tensor]:
        if self._lr_seen is None or not torch.equal(self._lr_seen, self.lr):
            self._lr_seen = self.lr.clone()
            self._lr_per_param = [self.lr.repeat_interleave(member_rows(p, self.k)).view(-1, *([1] * (p.dim() - 1)))
                                  .to(p.device, p.dtype) for p in self.params]
        return self._lr_per_param

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        bias1, bias2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
        for p, m, v, lr in zip(self.params, self.exp_avg, self.exp_avg_sq, self._learning_rates()):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / bias2 ** 0.5).add_(self.eps)
            p.addcdiv_(m * (-lr / bias1), denom)



# ------------------------------------------------------------------ a fused group in the engine


def can_fuse_config(config) -> tuple[bool, str]:
    """The one place that decides whether members of this configuration can train fused, and why not.

    Fused: the report's sequential CNNs (layer types above), Adam (MemberAdam is Adam per member)
    without weight decay, no early stopping (members would stop at different epochs), and none of
    the per-run extras the fused network does not implement per member."""
    if config.model == CUSTOM_MODEL:
        return False, "a model of your own trains one member after another"
    if not can_fuse(create_architecture(config.model, num_classes=2, **config.model_params)):
        return False, f"{config.model} is not a plain sequential CNN"
    reasons = [why for why, bad in (
        ("optimizer is not adam", config.optimizer != "adam"), ("weight decay", config.weight_decay),
        ("early stopping", config.early_stopping), ("restore_best", config.keeps_best), ("EMA", config.ema),
        ("class weights", config.class_weights is not None), ("crop/flip/erasing/mixup/cutmix",
                                                              config.crop_padding or config.hflip or config.erasing
                                                              or config.mixup or config.cutmix),
        ("flip TTA", config.tta), ("CUDA graphs (use compile)", config.cuda_graphs),
        ("precision fp16 (use bf16 or fp32)", config.precision == "fp16"),
        ("gradient clipping", config.clip_grad_norm)) if bad]
    return (False, ", ".join(reasons)) if reasons else (True, "")


class FusedGroup:
    """The member-wise view of a fused network: configs, template, per-member weights and checkpoints."""

    def __init__(self, configs: list, template: nn.Sequential):
        self.configs, self.template, self.k = configs, template, len(configs)
        # which fused parameters hold members stacked (MemberLinear) rather than concatenated
        self._stacked: list[bool] = []

    def bind(self, net: nn.Sequential) -> None:
        self._stacked = [isinstance(layer, MemberLinear) for layer in net for _ in layer.parameters(recurse=False)]

    def _slice(self, tensor: torch.Tensor, i: int, m: int) -> torch.Tensor:
        if self._stacked[i]:
            return tensor[m]
        size = tensor.shape[0] // self.k
        return tensor[m * size:(m + 1) * size]

    def _join(self, parts: list[torch.Tensor], i: int) -> torch.Tensor:
        return torch.stack(parts) if self._stacked[i] else torch.cat(parts)

    def set_learning_rates(self, setup, lrs: list[float]) -> None:
        setup.optimizer.lr.copy_(torch.tensor(lrs, dtype=setup.optimizer.lr.dtype))  # CPU; MemberAdam caches per change

    def member_weights(self, setup) -> list[dict[str, torch.Tensor]]:
        return unfuse(setup.model, self.template, self.k)

    def load_member_weights(self, setup, weights: list[dict[str, torch.Tensor]]) -> None:
        members = []
        for state in weights:
            member = copy.deepcopy(self.template)
            member.load_state_dict(state)
            members.append(member)
        setup.model.load_state_dict(fuse(members).state_dict())

    def member_checkpoints(self, setup, best_weights: list, states: list[dict]) -> list[tuple[dict, dict]]:
        """Each member's checkpoint in a standalone run's format (torch Adam state, its own generator
        and plateau), so a member can also be resumed alone."""
        opt: MemberAdam = setup.optimizer
        out = []
        for m, (weights, cfg) in enumerate(zip(self.member_weights(setup), self.configs)):
            adam = torch.optim.Adam(self.template.parameters(), lr=float(opt.lr[m]), eps=opt.eps, betas=opt.betas)
            state = adam.state_dict()
            state["state"] = {i: {"step": torch.tensor(float(opt.step_count)),
                                  "exp_avg": self._slice(ea, i, m).detach().cpu().clone(),
                                  "exp_avg_sq": self._slice(eas, i, m).detach().cpu().clone()}
                              for i, (ea, eas) in enumerate(zip(opt.exp_avg, opt.exp_avg_sq))} if opt.step_count else {}
            out.append(checkpoint_of(weights, state, setup.plateaus[m], setup.generators[m], states[m], cfg,
                                     setup.precision, setup.device, best_weights[m]))
        return out

    def load_member_checkpoints(self, setup, loaded: list[tuple[dict, dict]]) -> None:
        self.load_member_weights(setup, [with_prefix(tensors, "model.") for tensors, _ in loaded])
        opt: MemberAdam = setup.optimizer
        steps = {int(tensors["optim.0.step"]) if "optim.0.step" in tensors else 0 for tensors, _ in loaded}
        if len(steps) != 1:
            raise ValueError("members' optimizer steps differ")
        opt.step_count = steps.pop()
        if opt.step_count:
            for i, (ea, eas) in enumerate(zip(opt.exp_avg, opt.exp_avg_sq)):
                ea.copy_(self._join([t[f"optim.{i}.exp_avg"] for t, _ in loaded], i))
                eas.copy_(self._join([t[f"optim.{i}.exp_avg_sq"] for t, _ in loaded], i))
        self.set_learning_rates(setup, [float(meta["optimizer"]["param_groups"][0]["lr"]) for _, meta in loaded])


def prepare_fused(config, seeds: list[int], dataset=None, precision: str | None = None):
    """A setup of len(seeds) members of config.model trained as one fused network.

    Members' initial weights equal standalone runs with the same seeds; shuffles and augmentation
    parameters come from each member's own generator, as in standalone runs."""
    ok, why = can_fuse_config(config)
    if not ok:
        raise ValueError(f"cannot fuse {config.model}: {why}")
    device = resolve_device(config.device)
    resolved, reason = without_fp16(*choose_precision(device, precision or config.precision),
                                    precision or config.precision, "fused ensemble groups")
    resolved, autocast = autocast_for(device, resolved)
    dataset = load_data(config, dataset)
    train, val, test = split_data(config, dataset, device)
    options = model_options(config, dataset)
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(create_model(config.model, **options).to(dtype=float_dtype(resolved)))
    spec = dict(members[0].cnnlab_spec)
    template = copy.deepcopy(members[0])
    net = fuse(members).to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seeds[0])  # dropout draws of the group
    group = FusedGroup([replace(config, seed=s) for s in seeds], template)
    group.bind(net)
    plateaus, holders = make_plateaus(config, [config.lr] * len(seeds))
    setup = Setup(config, device, resolved, autocast, dataset, train, val, test, net, net,
                  MemberAdam(net.parameters(), len(seeds), config.lr),
                  [torch.Generator(device=device).manual_seed(s) for s in seeds], spec, members=len(seeds),
                  plateaus=plateaus, lr_holders=holders, augment=AugmentSettings() if config.augment else None,
                  group=group)
    setup.states = [setup.state] + [TrainState() for _ in seeds[1:]]
    setup.precision_reason = reason
    if config.compile is True:  # one compiled graph for all K members: the fused network is what runs
        setup.step_model = compiled(net)
    return setup


def train_members_fused(config, seeds: list[int], run_dirs: list, callbacks=(), resume: bool = False,
                        dataset=None, budget=None) -> list[dict]:
    """Train len(seeds) members as one fused network, one ordinary run directory each (the caller owns
    them). With resume, the group continues from its members' checkpoints. Returns each member's metrics.
    `budget` (cnnlab.budget.Budget; default config.time_budget from now): the group's time, which fixes its
    epochs (not on resume)."""
    budget = budget or Budget.starting(config.time_budget)
    run_dirs = [d if isinstance(d, RunDir) else RunDir(d) for d in run_dirs]
    setup = prepare_fused(config, seeds, dataset, stored_precision(run_dirs[0]) if resume else None)
    return fit_setup(setup, run_dirs, default_callbacks(config, callbacks), resume, budget)
