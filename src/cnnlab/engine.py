"""The training engine as small public functions, in the shape of torchvision's reference train.py:

    setup = prepare(config)                   # device, precision, data on the device, model, optimizer
    train_one_epoch(setup, epoch)             # one pass over the training split
    evaluate(setup, setup.val)                # loss, accuracy and logits of a split
    fit(config, run_dir, callbacks=[...])     # the loop: checkpoints, history, callbacks, final files

Fast path (after airbench): the whole dataset sits on the device as uint8; each epoch shuffles by
index and slices batches; pixels become floats per batch on the device; augmentation is batched
tensor ops; loss and accuracy accumulate on the device and are read once per epoch.

One loop serves a standalone model and a fused group of K ensemble members (cnnlab.fused): a setup
has K members (1 for a standalone model), each with its own generator (shuffle, augmentation), its
own learning rate and its own run directory; logits are always N x K x classes inside the loop.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import runs
from cnnlab.augment import AugmentSettings, apply_affine, sample_params
from cnnlab.augment_modern import ModernAugment, apply_modern
from cnnlab.config import PLATEAU, TrainConfig
from cnnlab.data import Dataset, Split, load_dataset, train_val_split
from cnnlab.errors import UserError
from cnnlab.models import count_parameters, create_architecture, create_model, model_info
from cnnlab.runs import RunDir

# ------------------------------------------------------------------ devices and precision

AUTO_PRECISION_ENV = "CNNLAB_AUTO_PRECISION"  # fp32 or bf16: what precision "auto" means (tests, CI)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA device is available here; use device cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU multiplies bf16 in hardware."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def auto_precision(device: torch.device) -> str:
    """What `precision = "auto"` resolves to: $CNNLAB_AUTO_PRECISION if set, else bf16 where the
    hardware does bf16 natively (CUDA; CPUs with AMX/AVX512-BF16), else fp32."""
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise UserError(f"${AUTO_PRECISION_ENV}: must be fp32 or bf16, got {forced!r}; unset it for the default")
        return forced
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def autocast_for(device: torch.device, precision: str):
    """(resolved precision, autocast context factory).

    On the 2-core Xeon (AMX) dev machine, tuned-cnn trains at 2,819 img/s in bf16 + channels_last
    against 1,731 in fp32 + channels_last and 1,517 in plain fp32 (measured with the same batches).
    """
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "bf16":
        return precision, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return precision, contextlib.nullcontext  # fp32, or fp64 (model and inputs in float64: exactness checks)


def float_dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision == "fp64" else torch.float32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    import numpy
    import sklearn
    import torchvision

    import cnnlab

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cnnlab": cnnlab.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform(), "device": device_name(device), "git_commit": commit}


# ------------------------------------------------------------------ data on the device


def to_input(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The one place uint8 pixels become model input: floats in 0..1, on the images' device.
    Float tensors pass through: they are cached features of a frozen base (see cache_features)."""
    if images.dtype != torch.uint8:
        return images
    return images.to(dtype).mul_(1 / 255)


@dataclass
class DeviceData:
    images: torch.Tensor  # uint8 on the device (or float features of a frozen base)
    labels: torch.Tensor | None

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> "DeviceData":
        labels = split.labels.to(device) if split.labels is not None else None
        return cls(split.images.to(device), labels)

    def __len__(self) -> int:
        return len(self.images)


MEMORY_PREFIX = "memory:"  # config.data of a run trained on in-memory arrays


def data_fingerprint(dataset: Dataset) -> str:
    """config.data for in-memory arrays: their shape and a SHA-256 of their bytes, so a resume can check
    it was handed the same arrays (they cannot be reloaded from a path)."""
    digest = hashlib.sha256()
    for split in (dataset.train, dataset.test):
        if split is not None:
            digest.update(split.images.numpy().tobytes())
            if split.labels is not None:
                digest.update(split.labels.numpy().tobytes())
    shape = "x".join(map(str, dataset.train.images.shape))
    return f"{MEMORY_PREFIX}sha256={digest.hexdigest()[:16]};train={shape}"


def load_data(config: TrainConfig, dataset: Dataset | None = None) -> Dataset:
    """The config's dataset, or the in-memory one given (checked against the fingerprint in config.data)."""
    if dataset is not None:
        if config.data.startswith(MEMORY_PREFIX) and config.data != data_fingerprint(dataset):
            raise UserError(f"data: these arrays differ from the ones the run was trained on ({config.data})")
        return dataset
    if config.data.startswith(MEMORY_PREFIX):
        raise UserError(f"data: this run was trained on in-memory arrays ({config.data}); they cannot be reloaded "
                        "from a path: pass the same arrays again (cnnlab.train(..., data=(x, y), resume=...))")
    return load_dataset(config.data, data_dir=config.data_dir, classes=config.classes)


def check_training_data(dataset: Dataset, train: Split, val: Split | None) -> None:
    """Degenerate data is refused with an explanation before anything trains."""
    if dataset.num_classes < 2:
        raise UserError(f"{dataset.source}: only one class ({dataset.class_names[0]!r}); a classifier needs at least "
                        "2 classes (check the labels or --classes)")
    if val is None:
        return
    if len(val.images) == 0:
        raise UserError(f"{dataset.source}: the validation split is empty; raise val_fraction or bring more images")
    missing = sorted(set(train.labels.unique().tolist()) - set(val.labels.unique().tolist()))
    if missing:
        raise UserError(f"{dataset.source}: the validation split has no image of class {dataset.class_names[missing[0]]!r}, "
                        "which training has; bring more images of it or raise val_fraction")


# ------------------------------------------------------------------ torchrun (one model, several processes)


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def distributed_from_env(device: str = "auto") -> Distributed | None:
    """torchrun's environment (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch.distributed as dist

    ctx = Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = resolve_device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return ctx


def shard(data: DeviceData, ctx: Distributed) -> DeviceData:
    """This rank's equal share of the training split (every rank must take the same number of steps)."""
    per_rank = len(data) // ctx.world_size
    idx = torch.arange(ctx.rank, per_rank * ctx.world_size, ctx.world_size, device=data.images.device)
    return DeviceData(data.images[idx], data.labels[idx])


# ------------------------------------------------------------------ the setup


@dataclass
class TrainState:
    """Everything that changes from epoch to epoch; what a checkpoint holds besides tensors."""

    epoch: int = 0
    step: int = 0  # optimizer steps taken (schedules are functions of it)
    history: list[dict] = field(default_factory=list)
    best_value: float | None = None  # of config.monitor
    best_epoch: int = 0
    epochs_since_best: int = 0
    stopped_early: bool = False
    stop_reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        data = dict(data)
        if "best_val_loss" in data:  # checkpoints written before callbacks existed
            best = data.pop("best_val_loss")
            data.setdefault("best_value", None if best is None or math.isinf(best) else best)
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
    ema: object | None = None  # cnnlab.ema.ModelEMA
    group: object | None = None  # cnnlab.fused.FusedGroup for K > 1
    graph: "GraphedStep | None" = None  # the captured training step (config.cuda_graphs)
    dist: "Distributed | None" = None  # torchrun: this process's rank among world_size
    feature_cache_seconds: float | None = None
    state: TrainState = field(default_factory=TrainState)
    states: list[TrainState] = field(default_factory=list)  # per member (one member: [state])

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


def split_data(config: TrainConfig, dataset: Dataset, device: torch.device):
    """(train, val or None, test or None) on the device; val is None when val_fraction is 0."""
    if config.val_fraction == 0:
        train_split, val_split = dataset.train, None
    else:
        splits = train_val_split(dataset, config.val_fraction, config.split_seed)
        train_split, val_split = splits.train, splits.val
    check_training_data(dataset, train_split, val_split)
    test = dataset.test if dataset.test is not None and dataset.test.labels is not None else None
    return (DeviceData.from_split(train_split, device),
            DeviceData.from_split(val_split, device) if val_split is not None else None,
            DeviceData.from_split(test, device) if test is not None else None)


def model_options(config: TrainConfig, dataset: Dataset) -> dict:
    c, h, w = dataset.shape
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
    plateaus = [torch.optim.lr_scheduler.ReduceLROnPlateau(h, mode="min", factor=config.lr_factor,
                                                           patience=config.lr_patience, min_lr=config.min_lr)
                for h in holders]
    return plateaus, holders


def prepare(config: TrainConfig, dataset: Dataset | None = None, precision: str | None = None) -> Setup:
    """Everything one standalone training needs. Fails on bad input before anything is written.

    `precision` overrides the config's resolved precision (a resumed run keeps the one it started with)."""
    from cnnlab.optim import make_optimizer

    dist_ctx = distributed_from_env(config.device)
    device = resolve_device(config.device)
    if dist_ctx and device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
    resolved, autocast = autocast_for(device, precision or config.precision)
    dataset = load_data(config, dataset)
    train, val, test = split_data(config, dataset, device)
    if dist_ctx:
        if config.batch_size % dist_ctx.world_size:
            raise UserError(f"batch_size: {config.batch_size} images per step do not divide among "
                            f"{dist_ctx.world_size} processes; use a multiple of {dist_ctx.world_size}")
        if config.cuda_graphs:
            raise UserError("cuda_graphs: not available with several processes (torchrun); turn it off")
        train = shard(train, dist_ctx)
    torch.manual_seed(config.seed)  # model init and dropout
    model = create_model(config.model, **model_options(config, dataset)).to(device, float_dtype(resolved))
    spec = dict(model.cnnlab_spec)
    # channels_last: +14% on the CPU in fp32, +46% in bf16 (tuned-cnn, 2-core Xeon, measured)
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
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
    if getattr(model, "feature_cacheable", False) and setup.augment is None and setup.modern is None:
        cache_features(setup)
    if config.ema:
        from cnnlab.ema import ModelEMA

        setup.ema = ModelEMA(model, decay=config.ema)
    if dist_ctx:
        setup.dist = dist_ctx
        from torch.nn.parallel import DistributedDataParallel

        if config.sync_batchnorm:
            if device.type != "cuda":
                raise UserError("sync_batchnorm: SyncBatchNorm needs CUDA; turn it off on the CPU")
            setup.model = setup.step_model = nn.SyncBatchNorm.convert_sync_batchnorm(setup.model)
        setup.step_model = DistributedDataParallel(setup.step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        setup.step_model = torch.compile(setup.step_model)
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


# ------------------------------------------------------------------ learning rates: one place


def learning_rates(setup: Setup, step: int) -> list[float]:
    """Each member's learning rate for optimizer step `step` (0-based)."""
    cfg = setup.config
    if cfg.lr_schedule == PLATEAU:
        return [h.param_groups[0]["lr"] for h in setup.lr_holders]
    from cnnlab.schedules import lr_at

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


# ------------------------------------------------------------------ one epoch


def member_losses(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                  class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits N x K x classes; targets N x K labels (or N x K x classes soft rows) -> each member's mean loss (K,)."""
    from cnnlab.losses import classification_loss

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
    losses.sum().backward()  # members share no weights, so each gets exactly its own gradient
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
def split_logits(setup: Setup, images: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """N x K x classes float32 logits in eval mode (flip TTA: the mean with the left-right mirror)."""
    model = model or setup.eval_model
    model.eval()
    out = []
    for start in range(0, len(images), setup.config.eval_batch_size):
        x = member_input(setup, to_input(images[start:start + setup.config.eval_batch_size], setup.dtype))
        with setup.autocast():
            logits = forward(setup, x, model).float()
            if setup.config.tta and x.dim() == 4:
                logits = (logits + forward(setup, x.flip(-1), model).float()) / 2
        out.append(logits)
    if not out:
        return torch.empty(0, setup.members, setup.dataset.num_classes, device=setup.device)
    return torch.cat(out)


def evaluate(setup: Setup, data: DeviceData) -> tuple[list[float], list[float], float, torch.Tensor]:
    """(loss per member, accuracy per member, seconds, logits N x K x classes) on a labeled split."""
    synchronize(setup.device)
    start = time.perf_counter()
    logits = split_logits(setup, data.images)
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    k = setup.members
    labels = data.labels[:, None].expand(-1, k)
    losses, accuracy = member_losses(logits, labels), (logits.argmax(2) == labels).float().mean(0)
    if setup.dist:  # every process evaluated the whole split; the mean keeps their decisions identical
        losses = setup.dist.all_reduce_sum(losses.detach().clone()) / setup.dist.world_size
        accuracy = setup.dist.all_reduce_sum(accuracy.clone()) / setup.dist.world_size
    return losses.tolist(), accuracy.tolist(), seconds, logits


def warm_up(setup: Setup) -> float:
    """Run the shapes training will see once (compilation, cuDNN autotuning), then undo every effect."""
    cfg = setup.config
    model_state = copy.deepcopy(setup.model.state_dict())
    rng, gens = torch.get_rng_state(), [g.get_state() for g in setup.generators]
    cuda_rng = torch.cuda.get_rng_state_all() if setup.device.type == "cuda" else None
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
    setup.optimizer.zero_grad()
    if setup.val is not None:
        split_logits(setup, setup.val.images[: cfg.eval_batch_size])
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    setup.model.load_state_dict(model_state)
    torch.set_rng_state(rng)
    for g, state in zip(setup.generators, gens):
        g.set_state(state)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    return seconds


# ------------------------------------------------------------------ checkpoints (tensors + JSON)


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer state_dict as safetensors tensors + JSON metadata (never pickled)."""
    groups = [{k: (float(v) if torch.is_tensor(v) else v) for k, v in g.items()} for g in state["param_groups"]]
    tensors, meta = {}, {"param_groups": groups, "state": {}}
    for pid, entries in state["state"].items():
        meta["state"][str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
                meta["state"][str(pid)][key] = "tensor"
            else:
                meta["state"][str(pid)][key] = value
    return tensors, meta


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for pid, entries in meta["state"].items():
        state[int(pid)] = {key: tensors[f"optim.{pid}.{key}"] if value == "tensor" else value
                           for key, value in entries.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_of(model_state: dict, optimizer_state_dict: dict, plateau, generator: torch.Generator,
                  state: TrainState, config: TrainConfig, precision: str, device: torch.device,
                  best_weights: dict | None = None, ema_state: dict | None = None) -> tuple[dict, dict]:
    """One member's checkpoint, in the format a standalone run writes (a fused member's resumes alone too)."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    opt_tensors, opt_meta = optimizer_tensors(optimizer_state_dict)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    for key, value in (best_weights or {}).items():
        tensors[f"best.{key}"] = value
    for key, value in (ema_state or {}).items():
        tensors[f"ema.{key}"] = value
    meta = {"train_state": state.__dict__, "optimizer": opt_meta, "scheduler": plateau.state_dict(),
            "config": config.to_dict(), "precision": precision}
    return tensors, meta


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_checkpoints(setup: Setup, run_dirs: list[RunDir], best_weights: list[dict | None]) -> None:
    if setup.group is not None:
        parts = setup.group.member_checkpoints(setup, best_weights)
    else:
        opt = setup.optimizer.state_dict()
        ema = setup.ema.state_dict() if setup.ema is not None else None
        parts = [checkpoint_of(setup.model.state_dict(), opt, setup.plateaus[0], setup.generators[0], setup.state,
                               setup.config, setup.precision, setup.device, best_weights[0], ema)]
    for run_dir, (tensors, meta) in zip(run_dirs, parts):
        run_dir.save_checkpoint(tensors, meta)


def load_checkpoints(setup: Setup, run_dirs: list[RunDir]) -> list[dict | None]:
    """Restore every member from its run directory's checkpoint; returns each member's best weights (or None)."""
    loaded = [run_dir.load_checkpoint() for run_dir in run_dirs]
    for run_dir, (tensors, meta) in zip(run_dirs, loaded):
        if "train_state" not in meta or "optimizer" not in meta or "model.rng" in tensors:
            raise UserError(f"{run_dir.file(runs.CHECKPOINT)}: not a cnnlab checkpoint (damaged or edited)")
    epochs = {meta["train_state"]["epoch"] for _, meta in loaded}
    if len(epochs) > 1:
        raise UserError(f"{', '.join(map(str, run_dirs))}: members stopped at different epochs; resume them one by one")
    try:
        if setup.group is not None:
            setup.group.load_member_checkpoints(setup, loaded)
        else:
            tensors, meta = loaded[0]
            setup.model.load_state_dict(_prefixed(tensors, "model."))
            rates = [g["lr"] for g in setup.optimizer.param_groups]
            setup.optimizer.load_state_dict(optimizer_state(tensors, meta["optimizer"]))
            for group, rate in zip(setup.optimizer.param_groups, rates):
                if torch.is_tensor(rate):  # a capturable optimizer keeps its rate in a device tensor
                    group["lr"] = rate.fill_(float(group["lr"]))
            if setup.ema is not None:
                setup.ema.load_state_dict(_prefixed(tensors, "ema."))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{run_dirs[0].file(runs.CHECKPOINT)}: does not fit this model and configuration "
                        f"({str(exc).splitlines()[0]}); start a new run") from None
    for m, (tensors, meta) in enumerate(loaded):
        setup.plateaus[m].load_state_dict(meta["scheduler"])
        setup.lr_holders[m].param_groups[0]["lr"] = _member_lr(setup, m, meta)
        setup.generators[m].set_state(tensors["rng.generator"].to(torch.uint8).cpu())
        setup.states[m] = TrainState.from_dict(meta["train_state"])
    tensors, _ = loaded[0]
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and setup.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], setup.device)
    setup.state = setup.states[0]
    return [_prefixed(t, "best.") or None for t, _ in loaded]


def _member_lr(setup: Setup, m: int, meta: dict) -> float:
    return float(meta["optimizer"]["param_groups"][0]["lr"])


# ------------------------------------------------------------------ fit: the loop


class NonFiniteLoss(Exception):
    pass


class Context:
    """What callbacks see: the setup, the run directories, each member's state, and a way to stop."""

    def __init__(self, setup: Setup, run_dirs: list[RunDir]):
        self.setup, self.run_dirs = setup, run_dirs
        self.config = setup.config
        self.best_weights: list[dict | None] = [None] * setup.members
        self.warmup_seconds = 0.0

    @property
    def state(self) -> TrainState:
        return self.setup.state

    @property
    def states(self) -> list[TrainState]:
        return self.setup.states

    def stop(self, reason: str) -> None:
        """Stop after this epoch; the run then finishes normally and records the reason."""
        for state in self.states:
            state.stopped_early, state.stop_reason = True, reason

    @property
    def stop_requested(self) -> bool:
        return all(state.stopped_early for state in self.states)


def default_callbacks(config: TrainConfig, extra=()) -> list:
    from cnnlab.callbacks import Checkpoint, EarlyStopping

    out = []
    if config.early_stopping or config.keeps_best:
        out.append(EarlyStopping(config.early_stopping, config.monitor, config.keeps_best))
    if config.checkpoint_every:
        out.append(Checkpoint(config.checkpoint_every))
    return out + list(extra)


def fit(config: TrainConfig, run_dir: str | Path | RunDir, callbacks=(), resume: bool = False,
        dataset: Dataset | None = None) -> dict:
    """Train one model into one run directory and return its final metrics.

    `callbacks` (cnnlab.callbacks.Callback) come after the defaults the config asks for (early
    stopping, checkpoints). `resume` continues from the directory's checkpoint."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    precision = stored_precision(run_dir) if resume else None
    setup = prepare(config, dataset, precision)  # data and model first: a bad input fails before anything is written
    if setup.dist and setup.dist.rank != 0:  # torchrun: rank 0 alone writes the run directory
        return fit_setup(setup, [runs.ReadOnlyRunDir(run_dir.path)], default_callbacks(config, callbacks), resume)[0]
    with run_dir.owned():
        return fit_setup(setup, [run_dir], default_callbacks(config, callbacks), resume)[0]


def stored_precision(run_dir: RunDir) -> str | None:
    if run_dir.has_checkpoint():
        return runs.tensor_metadata(run_dir.file(runs.CHECKPOINT)).get("precision")
    return None


def member_configs(setup: Setup) -> list[TrainConfig]:
    return setup.group.configs if setup.group is not None else [setup.config]


def fit_setup(setup: Setup, run_dirs: list[RunDir], callbacks: list, resume: bool = False) -> list[dict]:
    """The loop over epochs for a prepared setup (one member per run directory, all owned by the caller)."""
    ctx = Context(setup, run_dirs)
    if resume:
        ctx.best_weights = load_checkpoints(setup, run_dirs)
    else:
        env = environment(setup.device)
        for run_dir, cfg in zip(run_dirs, member_configs(setup)):
            run_dir.clear()
            run_dir.write_start(cfg.to_dict(), env)
    for run_dir in run_dirs:
        run_dir.unfinish()  # the weights are about to change: the old result no longer holds
    for cb in callbacks:
        cb.on_train_start(ctx)
    ctx.warmup_seconds = warm_up(setup)
    if setup.config.cuda_graphs and setup.graph is None:
        start = time.perf_counter()
        setup.graph = GraphedStep(setup)
        synchronize(setup.device)
        ctx.warmup_seconds += time.perf_counter() - start

    def status(value: str, **extra) -> None:
        for run_dir, state in zip(run_dirs, setup.states):
            run_dir.write_status(value, epochs_done=state.epoch, precision=setup.precision,
                                 warmup_seconds=ctx.warmup_seconds, **extra)

    status(runs.RUNNING)
    try:
        while setup.state.epoch < setup.config.epochs and not ctx.stop_requested:
            run_epoch(ctx, callbacks)
    except KeyboardInterrupt:
        status(runs.INTERRUPTED)
        raise
    except NonFiniteLoss as exc:
        status(runs.FAILED, reason=str(exc))
        raise UserError(f"{run_dirs[0]}: {exc}") from None
    except UserError as exc:  # e.g. the disk filled up while writing a checkpoint
        with contextlib.suppress(UserError):
            status(runs.FAILED, reason=str(exc))
        raise
    results = finish(ctx)
    for cb in callbacks:
        cb.on_train_end(ctx, results)
    return results


def run_epoch(ctx: Context, callbacks: list) -> None:
    setup = ctx.setup
    epoch = setup.state.epoch + 1
    for cb in callbacks:
        cb.on_epoch_start(ctx, epoch, setup.steps_per_epoch)

    def on_step(done, images, loss, accuracy):
        for cb in callbacks:
            cb.on_step(ctx, done, images, loss, accuracy)

    lrs = learning_rates(setup, setup.state.step)
    train_loss, train_acc, train_s = train_one_epoch(setup, epoch, on_step)
    bad = [m for m, value in enumerate(train_loss) if not math.isfinite(value)]
    if bad:
        raise NonFiniteLoss(f"training diverged: the training loss became {train_loss[bad[0]]} in epoch {epoch}; "
                            f"lower the learning rate (lr = {setup.config.lr:g}) or check the data")
    if setup.val is not None:
        val_loss, val_acc, eval_s, _ = evaluate(setup, setup.val)
    else:
        val_loss, val_acc, eval_s = [math.nan] * setup.members, [math.nan] * setup.members, 0.0
    k = setup.members
    rows = []
    for m in range(k):
        row = {"epoch": epoch, "train_loss": train_loss[m], "train_accuracy": train_acc[m], "val_loss": val_loss[m],
               "val_accuracy": val_acc[m], "lr": lrs[m],
               "train_seconds": train_s / k, "eval_seconds": eval_s / k}  # a fused member's share of the time
        rows.append(row)
        state = setup.states[m]
        state.history.append(row)
        state.epoch = epoch
        if m:
            state.step = setup.state.step
        if setup.config.lr_schedule == PLATEAU:
            setup.plateaus[m].step(val_loss[m])
    for cb in callbacks:
        cb.on_epoch_end(ctx, rows)
    # after the checkpoint callback: a kill between the two leaves history behind, never ahead
    for run_dir, state in zip(ctx.run_dirs, setup.states):
        run_dir.write_history(state.history)


def model_metadata(setup: Setup, weights_epoch: int) -> dict:
    c, h, w = setup.dataset.shape
    trainable, frozen = count_parameters(setup.group.template if setup.group is not None else setup.model)
    return {"spec": setup.spec, "num_classes": setup.dataset.num_classes, "class_names": setup.dataset.class_names,
            "class_ids": setup.dataset.class_ids, "input_shape": [c, h, w], "dataset": setup.dataset.name,
            "trainable_params": trainable, "frozen_params": frozen, "input_scale": "pixels / 255",
            "weights_epoch": weights_epoch, "tta": setup.config.tta}


def finish(ctx: Context) -> list[dict]:
    """Final evaluation and files of every member: best weights restored if asked, model.json last."""
    setup = ctx.setup
    restored = [best is not None and setup.config.keeps_best for best in ctx.best_weights]
    if any(restored):
        member_weights = final_weights(setup)
        for m, best in enumerate(ctx.best_weights):
            if restored[m]:
                member_weights[m] = best
        load_member_weights(setup, member_weights)
    splits = {"val": setup.val, "test": setup.test}
    evaluated = {name: evaluate(setup, data) for name, data in splits.items() if data is not None}
    weights = final_weights(setup)
    results = []
    for m, (run_dir, state) in enumerate(zip(ctx.run_dirs, setup.states)):
        logits, metrics = {}, {}
        for name, (losses, accs, seconds, out) in evaluated.items():
            logits[f"{name}_logits"], logits[f"{name}_labels"] = out[:, m], splits[name].labels
            metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = losses[m], accs[m]
            if name == "test":
                metrics["test_predict_seconds"] = seconds
        history = state.history
        train_secs = [r["train_seconds"] for r in history]
        weights_epoch = state.best_epoch if restored[m] else state.epoch
        metrics.update(
            status=runs.FINISHED, epochs_done=state.epoch, stopped_early=state.stopped_early,
            stop_reason=state.stop_reason, weights_epoch=weights_epoch,
            warmup_seconds=ctx.warmup_seconds, train_seconds_total=sum(train_secs),
            train_seconds_per_epoch_median=sorted(train_secs)[len(train_secs) // 2] if train_secs else None,
            train_images_per_second=(len(setup.train) * len(train_secs) / sum(train_secs)) if train_secs else None,
            best_val_epoch=min(history, key=lambda r: r["val_loss"])["epoch"] if setup.val is not None and history else None,
            feature_cache_seconds=setup.feature_cache_seconds,
            device=device_name(setup.device), precision=setup.precision)
        if setup.group is not None:
            metrics["fused_members"] = setup.members
        if setup.dist:
            metrics["world_size"] = setup.dist.world_size
        run_dir.write_result(metrics, logits, weights[m], model_metadata(setup, weights_epoch))
        results.append(metrics)
    return results


def final_weights(setup: Setup) -> list[dict[str, torch.Tensor]]:
    """Each member's weights as a standalone model's state dict (the EMA's when EMA is on)."""
    if setup.group is not None:
        return setup.group.member_weights(setup)
    model = setup.ema.module if setup.ema is not None else setup.model
    return [{k: v.detach().clone() for k, v in model.state_dict().items()}]


def load_member_weights(setup: Setup, weights: list[dict[str, torch.Tensor]]) -> None:
    if setup.group is not None:
        setup.group.load_member_weights(setup, weights)
    else:
        (setup.ema.module if setup.ema is not None else setup.model).load_state_dict(weights[0])


def train(config: TrainConfig, run_dir, callbacks=(), resume: bool = False, dataset: Dataset | None = None) -> dict:
    """Alias of fit (the name earlier versions used)."""
    return fit(config, run_dir, callbacks, resume, dataset)


# ------------------------------------------------------------------ loading a trained model


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024,
                   autocast=contextlib.nullcontext, tta: bool = False) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 images, in eval mode; tta: mean with the mirror."""
    model.eval()
    dtype = next(model.parameters(), torch.empty(0)).dtype  # float64 for fp64 runs
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], dtype)
        with autocast():
            logits = model(x).float()
            if tta:
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits)
    return torch.cat(out) if out else torch.empty(0)


def run_autocast(run_dir: str | Path, device: torch.device):
    """The precision the run trained and evaluated in, so predictions match its stored logits."""
    run = RunDir(run_dir)
    precision = run.read_metrics().get("precision", "fp32") if run.file(runs.METRICS).is_file() else "fp32"
    return autocast_for(torch.device(device), precision)[1]


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a run's model from model.json and model.safetensors."""
    run = RunDir(run_dir).require_finished()
    meta = run.read_model_meta()
    spec = dict(meta["spec"])
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise UserError(f"{run.file(runs.MODEL)}: 'spec' has no model name; the file was edited or damaged")
    try:
        model = create_architecture(name, **spec)  # every weight, a pretrained base included, is in model.safetensors
    except TypeError as exc:
        raise UserError(f"{run.file(runs.MODEL)}: the model spec does not fit {name} ({exc}); the file was edited") from None
    path = run.file(runs.WEIGHTS)
    state = run.weights()
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit model {name} ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors)")
    for key, value in expected.items():
        if value.shape != state[key].shape:
            raise UserError(f"{path}: tensor {key} has shape {tuple(state[key].shape)}, "
                            f"model {name} expects {tuple(value.shape)}")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise UserError(f"{path}: tensor {key} holds NaN or infinite values; the run diverged, retrain it")
    if any(v.dtype == torch.float64 for v in state.values()):
        model = model.double()  # an fp64 run
    model.load_state_dict(state)
    # the memory format training used, so the same kernels run and logits come out bit-identical
    return model.to(device, memory_format=torch.channels_last).eval(), meta


def config_for_resume(run_dir: RunDir, epochs: int | None = None, device: str | None = None) -> TrainConfig:
    """The stored configuration of a run, with the only settings a resume may change."""
    from cnnlab.config import build_config

    stored = run_dir.read_config()
    return build_config(stored, {"epochs": epochs, "device": device})
