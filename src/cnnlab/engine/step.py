"""One optimizer step and one pass: learning rates (from one place), member losses, batches, the
train step (and its CUDA-graph form), `train_one_epoch`, `evaluate` and the warm-up.

Fast path (after airbench): the whole dataset sits on the device as uint8; each epoch shuffles by
index and slices batches; pixels become floats per batch on the device; augmentation is batched
tensor ops; loss and accuracy accumulate on the device and are read once per epoch. Logits are
always N x K x classes here (K = 1 for a standalone model).
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.augment import apply_affine, sample_params
from cnnlab.augment_modern import apply_modern
from cnnlab.config import PLATEAU
from cnnlab.data.prepared import DeviceData, to_input
from cnnlab.device import synchronize
from cnnlab.errors import UserError
from cnnlab.inference import flip_tta
from cnnlab.losses import classification_loss
from cnnlab.schedules import lr_at

from .setup import Setup


def learning_rates(setup: Setup, step: int) -> list[float]:
    """Each member's learning rate for optimizer step `step` (0-based)."""
    cfg = setup.config
    if cfg.lr_schedule == PLATEAU:
        return [h.param_groups[0]["lr"] for h in setup.lr_holders]
    total = cfg.epochs * setup.steps_per_epoch
    warmup = min(total, round(cfg.warmup_epochs * setup.steps_per_epoch))
    return [lr_at(cfg.lr_schedule, step, total, cfg.lr, warmup_steps=warmup)] * setup.members


def apply_learning_rates(setup: Setup, lrs: list[float]) -> None:
    if setup.group is not None:
        setup.group.set_learning_rates(setup, lrs)
    else:
        for group in setup.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lrs[0])  # a captured optimizer reads its rate from this tensor
            else:
                group["lr"] = lrs[0]


def member_losses(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                  class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits N x K x classes; targets N x K labels (or N x K x classes soft rows) -> each member's mean loss (K,)."""
    n, k, c = logits.shape
    if k == 1:
        return classification_loss(logits[:, 0], targets[:, 0], label_smoothing=label_smoothing,
                                    class_weights=class_weights)[None]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up to float32; float64 stays
    if targets.ndim == 2 and class_weights is None:
        return F.cross_entropy(logits.reshape(n * k, c), targets.reshape(n * k), reduction="none",
                               label_smoothing=label_smoothing).view(n, k).mean(0)
    return torch.stack([classification_loss(logits[:, m], targets[:, m], label_smoothing=label_smoothing,
                                            class_weights=class_weights) for m in range(k)])


def forward(setup: Setup, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """N x K x classes logits of every member (K = 1: a standalone model's N x classes, unsqueezed)."""
    out = (model or setup.step_model)(x)
    return out if setup.group is not None else out.unsqueeze(1)


def member_input(setup: Setup, x: torch.Tensor) -> torch.Tensor:
    """The same images for every member (evaluation): a fused group takes them as K x C channels."""
    if setup.group is not None:
        x = x.repeat(1, setup.members, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def make_batch(setup: Setup, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """idx: K x B image indices (member k's own shuffle) -> (model input, targets N x K).

    Images are gathered once for all members; each member's augmentation parameters come from its own
    generator (as in a standalone run), then one batched resampling transforms every image."""
    k, b = idx.shape
    x = to_input(setup.train.images[idx.reshape(-1)], setup.dtype)  # (K*B) x C x H x W
    y = setup.train.labels[idx]  # K x B
    if setup.augment is not None:
        params = [sample_params(b, setup.augment, g, x.device) for g in setup.generators]
        x = apply_affine(x, {key: torch.cat([p[key] for p in params]) for key in params[0]})
    if setup.modern is not None:  # standalone only (see fused.can_fuse_config)
        x, y = apply_modern(x, y[0], setup.modern, setup.generators[0], setup.dataset.num_classes)
        y = y[None]
    if k > 1:
        c, h, w = x.shape[1:]
        x = x.view(k, b, c, h, w).transpose(0, 1).reshape(b, k * c, h, w)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.transpose(0, 1)


def train_step(setup: Setup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step for every member; returns (losses (K,), logits N x K x classes), detached."""
    if setup.graph is not None and x.shape[0] == setup.graph.batch:
        losses, logits = setup.graph.replay(x, y)
        if setup.ema is not None:
            setup.ema.update(setup.model)
        return losses, logits
    with setup.autocast():
        logits = forward(setup, x)
    losses = member_losses(logits, y, setup.config.label_smoothing, setup.class_weights)
    setup.optimizer.zero_grad()
    if setup.scaler is not None:  # fp16: scale the loss so small gradients survive; a step with inf/nan is skipped
        setup.scaler.scale(losses.sum()).backward()
        if setup.config.clip_grad_norm:
            setup.scaler.unscale_(setup.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.config.clip_grad_norm)
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        losses.sum().backward()  # members share no weights, so each gets exactly its own gradient
        if setup.config.clip_grad_norm:  # off by default (None or 0); refused with CUDA graphs and fused groups
            torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.config.clip_grad_norm)
        setup.optimizer.step()
    if setup.ema is not None:
        setup.ema.update(setup.model)
    return losses.detach(), logits.detach()


class GraphedStep:
    """The whole training step (forward, loss, backward and a fused capturable Adam) captured once in a
    CUDA graph, so an epoch is a few hundred replays instead of thousands of kernel launches.

    Why: the tuned model's epoch on an H100 is launch-bound (measured there by the issue's author: a
    plain loop 3.3 s, torch.compile 1.9 s, compile with CUDA graphs 0.80 s). Batches are copied into
    static buffers; the last, smaller batch of an epoch runs eagerly on the same optimizer. The learning
    rate is a device tensor changed in place. Capturing needs a few real steps first (CUDA's rule), whose
    effects on weights, BatchNorm statistics and optimizer state are undone in place afterwards, so the
    graph keeps pointing at the same tensors. Resume is exact up to the graph's kernel choices, not bit
    for bit (tests/test_gpu.py states the tolerance)."""

    def __init__(self, setup: Setup, warmup_steps: int = 3):
        if setup.group is not None:
            raise UserError("cuda_graphs: not available for fused ensemble groups (they use torch.compile)")
        if setup.scaler is not None:
            raise UserError("precision fp16: not available with cuda_graphs; use bf16 or fp32, or turn cuda_graphs off")
        self.setup = setup
        self.batch = min(setup.batch_size, len(setup.train))
        model, opt = setup.model, setup.optimizer
        saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        saved_opt = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                     for p, state in opt.state.items()}
        rng = [g.get_state() for g in setup.generators]
        idx = torch.arange(self.batch, device=setup.device)[None]
        x, y = make_batch(setup, idx)
        self.x, self.y = x.clone(), y.clone()
        side = torch.cuda.Stream(setup.device)
        side.wait_stream(torch.cuda.current_stream(setup.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                opt.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream(setup.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.losses, self.logits = self._step()
        with torch.no_grad():  # undo the warm-up steps in place: the graph holds these very tensors
            for key, value in model.state_dict().items():
                value.copy_(saved_model[key])
            for p, state in opt.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        value.copy_(saved_opt[p][key]) if p in saved_opt else value.zero_()
        for g, state in zip(setup.generators, rng):
            g.set_state(state)

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        setup = self.setup
        with setup.autocast():
            logits = forward(setup, self.x)
        losses = member_losses(logits, self.y, setup.config.label_smoothing, setup.class_weights)
        losses.sum().backward()
        setup.optimizer.step()
        return losses.detach(), logits.detach()

    def replay(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.losses.clone(), self.logits.clone()


OnStep = Callable[[int, int, Callable[[], float], Callable[[], float]], None]


def train_one_epoch(setup: Setup, epoch: int, on_step: OnStep | None = None) -> tuple[list[float], list[float], float]:
    """One pass over the training split: (loss per member, accuracy per member, seconds)."""
    n, k = len(setup.train), setup.members
    setup.step_model.train()
    loss_sum = torch.zeros(k, device=setup.device)
    correct = torch.zeros(k, device=setup.device)
    synchronize(setup.device)
    start = time.perf_counter()
    perms = [torch.randperm(n, generator=g, device=setup.device) for g in setup.generators]
    seen = 0
    for step in range(setup.steps_per_epoch):
        apply_learning_rates(setup, learning_rates(setup, setup.state.step))
        idx = torch.stack([p[step * setup.batch_size:(step + 1) * setup.batch_size] for p in perms])
        x, y = make_batch(setup, idx)
        losses, logits = train_step(setup, x, y)
        batch = idx.shape[1]
        loss_sum += losses * batch
        hard = y if y.ndim == 2 else y.argmax(2)  # mixed targets count toward their larger share
        correct += (logits.argmax(2) == hard).sum(0)
        seen += batch
        setup.state.step += 1
        if on_step is not None:
            on_step(step + 1, seen, lambda s=seen: (loss_sum[0] / s).item(), lambda s=seen: (correct[0] / s).item())
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    if setup.dist:  # every process's images count; all take the same decisions from the same numbers
        loss_sum, correct = setup.dist.all_reduce_sum(loss_sum), setup.dist.all_reduce_sum(correct)
        n *= setup.dist.world_size
    return (loss_sum / n).tolist(), (correct / n).tolist(), seconds


@torch.inference_mode()
def split_logits(setup: Setup, images: torch.Tensor, model: nn.Module | None = None, final: bool = False) -> torch.Tensor:
    """N x K x classes float32 logits in eval mode (flip TTA as in inference: the mean with the mirror; the
    shifted views of tta_translate only in the final evaluation)."""
    model = model or setup.eval_model
    model.eval()
    out = []
    for start in range(0, len(images), setup.config.eval_batch_size):
        x = member_input(setup, to_input(images[start:start + setup.config.eval_batch_size], setup.dtype))
        with setup.autocast():
            out.append(flip_tta(lambda batch: forward(setup, batch, model), x, setup.config.tta,
                                final and setup.config.tta_translate))
    if not out:
        return torch.empty(0, setup.members, setup.dataset.num_classes, device=setup.device)
    return torch.cat(out)


def evaluate(setup: Setup, data: DeviceData, final: bool = False) -> tuple[list[float], list[float], float, torch.Tensor]:
    """(loss per member, accuracy per member, seconds, logits N x K x classes) on a labeled split; final: the
    evaluation whose logits are stored (tta_translate's shifted views too)."""
    synchronize(setup.device)
    start = time.perf_counter()
    logits = split_logits(setup, data.images, final=final)
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    k = setup.members
    labels = data.labels[:, None].expand(-1, k)
    losses, accuracy = member_losses(logits, labels), (logits.argmax(2) == labels).float().mean(0)
    if setup.dist:  # every process evaluated the whole split; the mean keeps their decisions identical
        losses = setup.dist.all_reduce_sum(losses.detach().clone()) / setup.dist.world_size
        accuracy = setup.dist.all_reduce_sum(accuracy.clone()) / setup.dist.world_size
    return losses.tolist(), accuracy.tolist(), seconds, logits


def rng_snapshot(setup: Setup) -> tuple:
    """Every random state a step draws from: torch's CPU generator, each member's, and CUDA's."""
    cuda = torch.cuda.get_rng_state_all() if setup.device.type == "cuda" else None
    return torch.get_rng_state(), [g.get_state() for g in setup.generators], cuda


def restore_rng(setup: Setup, snapshot: tuple) -> None:
    cpu, members, cuda = snapshot
    torch.set_rng_state(cpu)
    for g, state in zip(setup.generators, members):
        g.set_state(state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def warm_up(setup: Setup) -> float:
    """Run the shapes training will see once (compilation, cuDNN autotuning), then undo every effect.
    The fp16 gradient scaler is not used here (no optimizer step), so its state stays as it was."""
    cfg = setup.config
    model_state = copy.deepcopy(setup.model.state_dict())
    randomness = rng_snapshot(setup)
    synchronize(setup.device)
    start = time.perf_counter()
    n = len(setup.train)
    batch = setup.batch_size
    sizes = {min(batch, n), n % batch or min(batch, n)}
    setup.step_model.train()
    for size in sorted(sizes, reverse=True):
        idx = torch.arange(size, device=setup.device).expand(setup.members, -1)
        x, y = make_batch(setup, idx)
        with setup.autocast():
            logits = forward(setup, x)
        member_losses(logits, y, cfg.label_smoothing, setup.class_weights).sum().backward()
        if size == max(sizes):  # a full batch's first forward and backward: what compile = "auto" estimates from
            synchronize(setup.device)
            setup.step_seconds = time.perf_counter() - start
    setup.optimizer.zero_grad()
    if setup.val is not None:
        split_logits(setup, setup.val.images[: cfg.eval_batch_size])
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    setup.model.load_state_dict(model_state)
    restore_rng(setup, randomness)
    return seconds
