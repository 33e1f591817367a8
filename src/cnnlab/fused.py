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

import torch
import torch.nn.functional as F
from torch import nn

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


def member_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits N x K x classes, labels N x K -> each member's mean cross-entropy (K,)."""
    n, k, c = logits.shape
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up to float32; float64 stays
    return F.cross_entropy(logits.reshape(n * k, c), labels.reshape(n * k), reduction="none").view(n, k).mean(0)


# ------------------------------------------------------------------ training K members at once


def train_members_fused(config, seeds: list[int], run_dirs: list, reporter=None) -> list[dict]:
    """Train len(seeds) members of config.model as one fused network; write one run directory each.

    Returns each member's metrics. Members' initial weights equal standalone runs with the same
    seeds; shuffles and augmentation draw from each member's own generator, as standalone runs do.
    """
    import copy
    import math
    import time
    from dataclasses import replace

    from cnnlab import runs
    from cnnlab.augment import AugmentSettings, augment_batch
    from cnnlab.engine import EpochResult, Reporter, Trainer, synchronize, to_input
    from cnnlab.models import create_model

    reporter = reporter or Reporter()
    k = len(seeds)
    trainers = [Trainer(replace(config, seed=s), d, reporter) for s, d in zip(seeds, run_dirs)]
    base = trainers[0]
    base._prepare()
    device, autocast = base.device, base.autocast
    spec = dict(base.spec)
    name = spec.pop("name")
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(create_model(name, **spec))
    template = copy.deepcopy(members[0])
    net = fuse(members).to(device, memory_format=torch.channels_last)
    optimizer = MemberAdam(net.parameters(), k, config.lr)
    # one ReduceLROnPlateau per member, each driving its member's learning rate
    holders = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr) for _ in range(k)]
    schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(h, mode="min", factor=config.lr_factor,
                                                             patience=config.lr_patience, min_lr=config.min_lr)
                  for h in holders]
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    settings = AugmentSettings() if config.augment else None
    train_images, train_labels = base.train_data.images, base.train_data.labels
    n, (c, h, w) = len(train_images), train_images.shape[1:]
    steps = math.ceil(n / config.batch_size)
    histories: list[list[dict]] = [[] for _ in range(k)]

    def evaluate(images: torch.Tensor, labels: torch.Tensor):
        net.eval()
        outs = []
        with torch.inference_mode():
            for start in range(0, len(images), config.eval_batch_size):
                x = to_input(images[start:start + config.eval_batch_size]).repeat(1, k, 1, 1)
                with autocast():
                    outs.append(net(x.contiguous(memory_format=torch.channels_last)).float())
        logits = torch.cat(outs)  # N x K x classes
        losses = member_losses(logits, labels[:, None].expand(-1, k))
        accuracy = (logits.argmax(2) == labels[:, None]).float().mean(0)
        return losses.tolist(), accuracy.tolist(), logits

    def warm_up() -> float:
        """One training batch and one evaluation batch, then every effect undone: kernel selection and
        allocation are timed apart from epoch 1, as in the engine."""
        state, rng = copy.deepcopy(net.state_dict()), torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
        synchronize(device)
        start = time.perf_counter()
        net.train()
        size = min(config.batch_size, n)
        x = to_input(train_images[:size]).repeat(1, k, 1, 1).contiguous(memory_format=torch.channels_last)
        with autocast():
            member_losses(net(x), train_labels[:size, None].expand(-1, k)).sum().backward()
        optimizer.zero_grad()
        evaluate(base.val_data.images[:config.eval_batch_size], base.val_data.labels[:config.eval_batch_size])
        synchronize(device)
        net.load_state_dict(state)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        return time.perf_counter() - start

    warmup_seconds = warm_up()
    for epoch in range(1, config.epochs + 1):
        net.train()
        reporter.epoch_start(epoch, config.epochs, steps)
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device)
        synchronize(device)
        start = time.perf_counter()
        perms = [torch.randperm(n, generator=g, device=device) for g in generators]
        for step in range(steps):
            idx = torch.stack([p[step * config.batch_size:(step + 1) * config.batch_size] for p in perms])  # K x B
            batch = idx.shape[1]
            xs = to_input(train_images[idx.reshape(-1)]).view(k, batch, c, h, w)  # one gather for all members
            if settings is not None:  # each member draws from its own generator, as a standalone run would
                xs = torch.stack([augment_batch(x, settings, g) for x, g in zip(xs, generators)])
            x = xs.transpose(0, 1).reshape(batch, k * c, h, w).contiguous(memory_format=torch.channels_last)
            y = train_labels[idx].T  # B x K
            with autocast():
                logits = net(x)
            losses = member_losses(logits, y)
            optimizer.zero_grad()
            losses.sum().backward()  # members share no weights, so each gets exactly its own gradient
            optimizer.step()
            loss_sum += losses.detach() * batch
            correct += (logits.detach().argmax(2) == y).sum(0)
        synchronize(device)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        val_loss, val_acc, _ = evaluate(base.val_data.images, base.val_data.labels)
        eval_seconds = time.perf_counter() - start
        train_loss, train_acc = (loss_sum / n).tolist(), (correct / n).tolist()
        for m in range(k):
            row = EpochResult(epoch, train_loss[m], train_acc[m], val_loss[m], val_acc[m], float(optimizer.lr[m]),
                              train_seconds / k, eval_seconds / k).__dict__  # seconds: each member's share
            histories[m].append(row)
            schedulers[m].step(val_loss[m])
            optimizer.lr[m] = holders[m].param_groups[0]["lr"]
        reporter.epoch_end({**histories[0][-1], "train_seconds": train_seconds, "eval_seconds": eval_seconds})

    # split the fused weights back into ordinary run directories
    results = []
    for m, (trainer, state) in enumerate(zip(trainers, unfuse(net.cpu(), template, k))):
        member = copy.deepcopy(template)
        member.load_state_dict(state)
        trainer.model = trainer.step_model = member.to(device, memory_format=torch.channels_last)
        trainer.spec, trainer.dataset = base.spec, base.dataset
        trainer.train_data, trainer.val_data, trainer.test_data = base.train_data, base.val_data, base.test_data
        trainer.state.history, trainer.state.epoch = histories[m], config.epochs
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        trainer._write_start()
        runs.write_csv(trainer.run_dir / "history.csv", histories[m])
        runs_metrics = trainer._finish(warmup=warmup_seconds)
        runs_metrics["fused_members"] = k
        results.append(runs_metrics)
    return results
