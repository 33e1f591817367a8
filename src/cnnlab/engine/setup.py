"""What training needs, prepared once (`prepare` -> `Setup`): device, precision, data on the device,
the model, the optimizer, each member's generator and plateau, augmentation, EMA, torchrun."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab.augment import AugmentSettings
from cnnlab.augment_modern import ModernAugment
from cnnlab.config import TrainConfig
from cnnlab.data import Dataset
from cnnlab.data.prepared import DeviceData, load_data, split_data, to_input
from cnnlab.device import (autocast_for, compiled, choose_precision, float_dtype, resolve_device, set_deterministic, synchronize,
                           without_fp16)
from cnnlab.ema import ModelEMA
from cnnlab.errors import UserError
from cnnlab.models import create_model, model_info
from cnnlab.models.custom import CUSTOM_MODEL, build_custom, check_outputs
from cnnlab.optim import make_optimizer
from cnnlab.torchrun import Distributed, distributed_from_env, shard

from .model_size import check_model_fits


@dataclass
class TrainState:
    """What the loop changes from epoch to epoch; what a checkpoint holds besides tensors (callbacks add
    their own state beside it, e.g. early stopping's best value)."""

    epoch: int = 0
    step: int = 0  # optimizer steps taken (schedules are functions of it)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # the epoch of the weights kept by ctx.keep_best (restore_best)
    stopped_early: bool = False
    stop_reason: str | None = None
    budget: dict | None = None  # a budgeted run's measured speed and chosen epochs (cnnlab.budget.Plan)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Setup:
    """What training needs, prepared once: device, precision, data on the device, model(s), optimizer."""

    config: TrainConfig
    device: torch.device
    precision: str
    autocast: Callable
    dataset: Dataset
    train: DeviceData
    val: DeviceData | None
    test: DeviceData | None
    model: nn.Module  # what is saved (a fused group: the fused network)
    step_model: nn.Module  # what runs (the model, its head over cached features, or a compiled wrapper)
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per member: shuffling and augmentation
    spec: dict
    members: int = 1
    plateaus: list = field(default_factory=list)  # ReduceLROnPlateau per member (lr_schedule = plateau)
    lr_holders: list = field(default_factory=list)  # the optimizers those schedulers adjust
    augment: AugmentSettings | None = None
    modern: ModernAugment | None = None
    class_weights: torch.Tensor | None = None
    ema: ModelEMA | None = None
    group: object | None = None  # cnnlab.fused.FusedGroup for K > 1
    graph: object | None = None  # the captured training step, engine.step.GraphedStep (config.cuda_graphs)
    dist: Distributed | None = None  # torchrun: this process's rank among world_size
    feature_cache_seconds: float | None = None
    state: TrainState = field(default_factory=TrainState)
    states: list[TrainState] = field(default_factory=list)  # per member (one member: [state])
    precision_reason: str = ""  # why this precision (env.json): device.choose_precision
    scaler: torch.amp.GradScaler | None = None  # fp16 only: the loss scaler (its state is in the checkpoint)
    step_seconds: float | None = None  # warm-up's full-batch forward and backward (a first call: an upper bound)
    compile: dict | None = None  # compiled or eager, why, and the probe's figures (engine.compile_probe; env.json)
    flatten_grad: dict | None = None  # Flatten's gradient layout, why, the figures (engine.layout_probe; env.json)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.batch_size)

    @property
    def batch_size(self) -> int:
        """Images per step in this process: the config's batch, divided among torchrun's processes."""
        return self.config.batch_size // (self.dist.world_size if self.dist else 1)

    @property
    def dtype(self) -> torch.dtype:
        return float_dtype(self.precision)

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation runs: the averaged weights when EMA is on; never DDP's wrapper (no collectives)."""
        if self.ema is not None:
            return self.ema.module
        return getattr(self.step_model, "module", self.step_model) if self.dist else self.step_model

    @property
    def member_configs(self) -> list[TrainConfig]:
        return self.group.configs if self.group is not None else [self.config]


def model_options(config: TrainConfig, dataset: Dataset) -> dict:
    c, h, w = dataset.shape
    if config.model == CUSTOM_MODEL:
        return dict(num_classes=dataset.num_classes, in_chans=c, image_size=config.image_size or h, **config.model_params)
    info = model_info(config.model)
    options = dict(config.model_params)
    if info.family == "transfer":
        options["weights"] = config.weights or "imagenet"
    elif config.weights:
        raise UserError(f"weights: applies to transfer models only, not {config.model}")
    if h != w and info.family != "transfer":
        raise UserError(f"{dataset.source}: images are {h}x{w}; the models need square images")
    image_size = config.image_size or (None if info.family == "transfer" else h)
    return dict(num_classes=dataset.num_classes, in_chans=c, image_size=image_size, **options)


def class_weight_tensor(config: TrainConfig, train: DeviceData, num_classes: int) -> torch.Tensor | None:
    if config.class_weights is None:
        return None
    if config.class_weights == "balanced":  # scikit-learn's 'balanced': n / (classes * count)
        counts = torch.bincount(train.labels, minlength=num_classes).float()
        return (len(train) / (num_classes * counts.clamp(min=1))).to(train.labels.device)
    if len(config.class_weights) != num_classes:
        raise UserError(f"class_weights: {len(config.class_weights)} weights for {num_classes} classes; give one per class")
    return torch.tensor(config.class_weights, dtype=torch.float32, device=train.labels.device)


def make_plateaus(config: TrainConfig, lrs: list[float]) -> tuple[list, list]:
    """One ReduceLROnPlateau per member, each on a placeholder optimizer holding that member's rate;
    learning_rates() reads them, so the rate for a step comes from one place."""
    holders = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr) for lr in lrs]
    mode = "max" if config.plateau_monitor == "val_accuracy" else "min"
    plateaus = [torch.optim.lr_scheduler.ReduceLROnPlateau(h, mode=mode, factor=config.lr_factor,
                                                           patience=config.lr_patience, min_lr=config.min_lr,
                                                           threshold=config.plateau_threshold,
                                                           cooldown=config.plateau_cooldown)
                for h in holders]
    return plateaus, holders


def prepare(config: TrainConfig, dataset: Dataset | None = None, precision: str | None = None, builder=None) -> Setup:
    """Everything one standalone training needs. Fails on bad input before anything is written.

    `precision` overrides the config's resolved precision (a resumed run keeps the one it started with);
    `builder` is the nn.Module or factory of model "custom" (cnnlab.models.custom)."""
    dist_ctx = distributed_from_env(config.device)
    device = resolve_device(config.device)
    if dist_ctx and device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
    resolved, reason = choose_precision(device, precision or config.precision)
    if dist_ctx:  # every process trains in rank 0's precision: a CPU's bf16 probe, timed by each at once, may differ
        resolved, reason = dist_ctx.share((resolved, reason))
    if config.cuda_graphs:
        resolved, reason = without_fp16(resolved, reason, precision or config.precision, "cuda_graphs")
    resolved, autocast = autocast_for(device, resolved)
    dataset = load_data(config, dataset)
    train, val, test = split_data(config, dataset, device)
    if dist_ctx:
        if config.batch_size % dist_ctx.world_size:
            raise UserError(f"batch_size: {config.batch_size} images per step do not divide among "
                            f"{dist_ctx.world_size} processes; use a multiple of {dist_ctx.world_size}")
        if config.cuda_graphs:
            raise UserError("cuda_graphs: not available with several processes (torchrun); turn it off")
        train = shard(train, dist_ctx)
    if config.model != CUSTOM_MODEL:  # before the seeded build: a model too large for memory is one line, not an OOM kill
        check_model_fits(config.model, model_options(config, dataset), dataset.shape, device)
    torch.manual_seed(config.seed)  # model init and dropout
    if config.model == CUSTOM_MODEL:
        if builder is None:
            raise UserError("model custom: a model of your own is passed to cnnlab.train as an nn.Module or a factory")
        model = build_custom(builder, **model_options(config, dataset)).to(device, float_dtype(resolved))
        check_outputs(model, dataset.shape, dataset.num_classes)
    else:
        model = create_model(config.model, **model_options(config, dataset)).to(device, float_dtype(resolved))
    spec = dict(model.cnnlab_spec)
    # channels_last: +14% on the CPU in fp32, +46% in bf16 (tuned-cnn, 2-core Xeon, measured)
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    set_deterministic(config.deterministic, device)
    if config.cuda_graphs and device.type != "cuda":
        raise UserError("cuda_graphs: CUDA graphs need a CUDA device; use device cuda or turn cuda_graphs off")
    optimizer = make_optimizer(config.optimizer, model, config.lr, weight_decay=config.weight_decay,
                               momentum=config.momentum, nesterov=config.nesterov, capturable=config.cuda_graphs)
    plateaus, holders = make_plateaus(config, [config.lr])
    shuffle_seed = config.seed + (1000 * dist_ctx.rank if dist_ctx else 0)  # each rank its own order and draws
    setup = Setup(config, device, resolved, autocast, dataset, train, val, test, model, model, optimizer,
                  [torch.Generator(device=device).manual_seed(shuffle_seed)], spec, plateaus=plateaus,
                  lr_holders=holders, augment=AugmentSettings() if config.augment else None,
                  modern=modern_augment(config), class_weights=class_weight_tensor(config, train, dataset.num_classes))
    setup.states = [setup.state]
    setup.precision_reason = reason
    if resolved == "fp16":
        setup.scaler = torch.amp.GradScaler(device.type)
    if getattr(model, "feature_cacheable", False) and setup.augment is None and setup.modern is None:
        cache_features(setup)
    if config.ema:
        setup.ema = ModelEMA(model, decay=config.ema)
    if dist_ctx:
        setup.dist = dist_ctx
        if config.sync_batchnorm:
            if device.type != "cuda":
                raise UserError("sync_batchnorm: SyncBatchNorm needs CUDA; turn it off on the CPU")
            setup.model = setup.step_model = nn.SyncBatchNorm.convert_sync_batchnorm(setup.model)
        setup.step_model = DistributedDataParallel(setup.step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile is True:  # "auto" is decided after warm-up, by measurement (engine.compile_probe)
        setup.step_model = compiled(setup.step_model)
    return setup


def modern_augment(config: TrainConfig) -> ModernAugment | None:
    settings = ModernAugment(crop_padding=config.crop_padding, hflip=config.hflip, erasing=config.erasing,
                             mixup=config.mixup, cutmix=config.cutmix)
    return settings if settings != ModernAugment(crop_padding=0, hflip=False) else None


@torch.inference_mode()
def cache_features(setup: Setup) -> None:
    """A frozen base never changes: run it once over every split and train only the head on its output
    (the report did the same with VGG19's predict). Without augmentation only: augmented images differ
    every epoch."""
    synchronize(setup.device)
    start = time.perf_counter()
    setup.model.eval()
    batch = setup.config.eval_batch_size
    for name in ("train", "val", "test"):
        data = getattr(setup, name)
        if data is None:
            continue
        chunks = []
        for i in range(0, len(data), batch):
            x = to_input(data.images[i:i + batch], setup.dtype).contiguous(memory_format=torch.channels_last)
            with setup.autocast():
                chunks.append(setup.model.features(x).float())
        setattr(setup, name, DeviceData(torch.cat(chunks), data.labels))
    synchronize(setup.device)
    setup.feature_cache_seconds = time.perf_counter() - start
    setup.step_model = setup.model.head
