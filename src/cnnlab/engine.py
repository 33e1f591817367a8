"""Training and prediction: the report's recipe, done fast.

Fast path (after airbench): the whole dataset sits on the device as uint8; each epoch shuffles by
index and slices batches; pixels become floats per batch on the device; augmentation is batched
tensor ops; loss and accuracy accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import json
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
from cnnlab.augment import AugmentSettings, augment_batch
from cnnlab.config import TrainConfig
from cnnlab.data import Split, load_dataset, train_val_split
from cnnlab.errors import UserError
from cnnlab.models import count_parameters, create_architecture, create_model, model_info


# ------------------------------------------------------------------ devices and precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU multiplies bf16 in hardware."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


AUTO_PRECISION_ENV = "CNNLAB_AUTO_PRECISION"  # fp32 or bf16: what precision "auto" means (tests, CI)


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
    """bf16 autocast or fp32, as the precision setting says ("auto": see auto_precision).

    On the 2-core Xeon (AMX) dev machine, tuned-cnn trains at 2,819 img/s in bf16 + channels_last
    against 1,731 in fp32 + channels_last and 1,517 in plain fp32 (measured with the same batches).
    """
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "bf16":
        return precision, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return precision, contextlib.nullcontext


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


# ------------------------------------------------------------------ batches on the device


def to_input(images: torch.Tensor) -> torch.Tensor:
    """The one place uint8 pixels become model input: float in 0..1, on the images' device.
    Float tensors pass through: they are cached features of a frozen base (see Trainer._cache_features)."""
    if images.dtype != torch.uint8:
        return images
    return images.float().mul_(1 / 255)


@dataclass
class DeviceData:
    images: torch.Tensor  # uint8 on the device
    labels: torch.Tensor | None

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> "DeviceData":
        labels = split.labels.to(device) if split.labels is not None else None
        return cls(split.images.to(device), labels)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024,
                   autocast=contextlib.nullcontext) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 images, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with autocast():
            out.append(model(to_input(images[start:start + batch_size])).float())
    return torch.cat(out) if out else torch.empty(0)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = F.cross_entropy(logits.float(), labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


# ------------------------------------------------------------------ the training loop


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    train_seconds: float
    eval_seconds: float


@dataclass
class TrainState:
    """Everything that changes from epoch to epoch; what a checkpoint holds."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    epochs_since_best: int = 0
    stopped_early: bool = False


class Reporter:
    """Progress callbacks; the CLI supplies a terminal or a plain-line implementation."""

    def start(self, run_dir: Path, config: TrainConfig, info: dict) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, done: int, images: int, loss: Callable[[], float], accuracy: Callable[[], float]) -> None: ...
    def epoch_end(self, row: dict) -> None: ...


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        # not fused=True: +10% on cnn2 on the CPU, but a resumed run then no longer matched an
        # uninterrupted one bit for bit (tests/test_engine.py); exact resume matters more
        return torch.optim.Adam(params, lr=lr, eps=1e-7)  # Keras's epsilon
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)  # Keras's rho and epsilon
    return torch.optim.SGD(params, lr=lr)


class Trainer:
    """One training run into one run directory."""

    def __init__(self, config: TrainConfig, run_dir: Path, reporter: Reporter | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.reporter = reporter or Reporter()
        self.device = resolve_device(config.device)
        self.precision, self.autocast = autocast_for(self.device, config.precision)
        self.state = TrainState()
        self.feature_cache_seconds: float | None = None  # set when a frozen base's features are cached

    # -------------------------------------------------------------- setup

    def _prepare(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)  # model init and dropout
        dataset = load_dataset(cfg.data, data_dir=cfg.data_dir, classes=cfg.classes)
        splits = train_val_split(dataset, cfg.val_fraction, cfg.split_seed)
        self.dataset = dataset
        self.train_data = DeviceData.from_split(splits.train, self.device)
        self.val_data = DeviceData.from_split(splits.val, self.device)
        self.test_data = DeviceData.from_split(splits.test, self.device) if splits.test is not None and \
            splits.test.labels is not None else None
        c, h, w = dataset.shape
        info = model_info(cfg.model)
        options = dict(cfg.model_params)
        if info.family == "transfer":
            options["weights"] = cfg.weights or "imagenet"
        elif cfg.weights:
            raise UserError(f"--weights applies to transfer models only, not {cfg.model}")
        image_size = cfg.image_size or (None if info.family == "transfer" else h)
        if h != w and info.family != "transfer":
            raise UserError(f"{dataset.source}: images are {h}x{w}; the models need square images")
        self.model = create_model(cfg.model, num_classes=dataset.num_classes, in_chans=c, image_size=image_size,
                                  **options).to(self.device)
        self.spec = dict(self.model.cnnlab_spec)
        # channels_last: +14% on the CPU in fp32, +46% in bf16 (tuned-cnn, 2-core Xeon, measured)
        self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.optimizer = make_optimizer(cfg.optimizer, [p for p in self.model.parameters() if p.requires_grad], cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)  # shuffling, augmentation
        self.augment = AugmentSettings() if cfg.augment else None
        if getattr(self.model, "feature_cacheable", False) and self.augment is None:
            self._cache_features()
        else:
            self.step_model = self.model
        if cfg.compile:
            self.step_model = torch.compile(self.step_model)

    @torch.inference_mode()
    def _cache_features(self) -> None:
        """A frozen base never changes: run it once over every split and train only the head on its output
        (the report did the same with VGG19's predict). Without augmentation only: augmented images differ
        every epoch."""
        synchronize(self.device)
        start = time.perf_counter()
        self.model.eval()
        for name in ("train_data", "val_data", "test_data"):
            data = getattr(self, name)
            if data is None:
                continue
            chunks = []
            for i in range(0, len(data.images), self.config.eval_batch_size):
                x = to_input(data.images[i:i + self.config.eval_batch_size]).contiguous(memory_format=torch.channels_last)
                with self.autocast():
                    chunks.append(self.model.features(x).float())
            setattr(self, name, DeviceData(torch.cat(chunks), data.labels))
        synchronize(self.device)
        self.feature_cache_seconds = time.perf_counter() - start
        self.step_model = self.model.head

    def _model_metadata(self) -> dict:
        c, h, w = self.dataset.shape
        trainable, frozen = count_parameters(self.model)
        return {"spec": self.spec, "num_classes": self.dataset.num_classes, "class_names": self.dataset.class_names,
                "class_ids": self.dataset.class_ids, "input_shape": [c, h, w], "dataset": self.dataset.name,
                "trainable_params": trainable, "frozen_params": frozen, "input_scale": "pixels / 255"}

    # -------------------------------------------------------------- one epoch

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.step_model(x)
            loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_input(self.train_data.images[idx])
        if self.augment is not None:
            x = augment_batch(x, self.augment, self.generator)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.train_data.labels[idx]

    def train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        cfg, n = self.config, len(self.train_data.images)
        steps = math.ceil(n / cfg.batch_size)
        self.model.train()
        self.reporter.epoch_start(epoch, cfg.epochs, steps)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        synchronize(self.device)
        start = time.perf_counter()
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        seen = 0
        for step in range(steps):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = self._batch(idx)
            loss, logits = self._train_step(x, y)
            loss_sum += loss * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            self.reporter.step(step + 1, seen, lambda s=seen: (loss_sum / s).item(),
                               lambda s=seen: (correct / s).item())
        synchronize(self.device)
        seconds = time.perf_counter() - start
        return (loss_sum / n).item(), (correct / n).item(), seconds

    def evaluate(self, data: DeviceData) -> tuple[float, float, float, torch.Tensor]:
        synchronize(self.device)
        start = time.perf_counter()
        logits = predict_logits(self.step_model, data.images, self.config.eval_batch_size, self.autocast)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        loss, acc = loss_and_accuracy(logits, data.labels)
        return loss, acc, seconds, logits

    # -------------------------------------------------------------- warm-up, kept out of epoch 1

    def warm_up(self) -> float:
        """Run the shapes training will see once (compilation, cuDNN autotuning), then undo every effect."""
        cfg = self.config
        model_state = copy.deepcopy(self.model.state_dict())
        rng, gen = torch.get_rng_state(), self.generator.get_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        synchronize(self.device)
        start = time.perf_counter()
        n = len(self.train_data.images)
        sizes = {min(cfg.batch_size, n), n % cfg.batch_size or min(cfg.batch_size, n)}
        self.model.train()
        for size in sorted(sizes, reverse=True):
            x, y = self._batch(torch.arange(size, device=self.device))
            with self.autocast():
                loss = F.cross_entropy(self.step_model(x).float(), y)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        predict_logits(self.step_model, self.val_data.images[: cfg.eval_batch_size], cfg.eval_batch_size, self.autocast)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.model.load_state_dict(model_state)
        torch.set_rng_state(rng)
        self.generator.set_state(gen)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        return seconds

    # -------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        opt_meta = {"param_groups": opt["param_groups"], "state": {}}
        for pid, entries in opt["state"].items():
            opt_meta["state"][str(pid)] = {}
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{key}"] = value
                    opt_meta["state"][str(pid)][key] = "tensor"
                else:
                    opt_meta["state"][str(pid)][key] = value
        tensors["rng.cpu"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"train_state": self.state.__dict__, "optimizer": opt_meta,
                "scheduler": self.scheduler.state_dict(), "config": self.config.to_dict()}
        runs.save_tensors(self.run_dir / "checkpoint.safetensors", tensors, {"cnnlab": json.dumps(meta)})

    def load_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.safetensors"
        from safetensors import safe_open

        tensors = runs.load_tensors(path)
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["cnnlab"])
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt_state = {}
        for pid, entries in meta["optimizer"]["state"].items():
            opt_state[int(pid)] = {key: tensors[f"optim.{pid}.{key}"] if value == "tensor" else value
                                   for key, value in entries.items()}
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.cpu"])
        self.generator.set_state(tensors["rng.generator"].to(torch.uint8).cpu())
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.state = TrainState(**meta["train_state"])

    # -------------------------------------------------------------- the run

    def _write_start(self) -> None:
        runs.write_json(self.run_dir / "config.json", self.config.to_dict())
        runs.write_json(self.run_dir / "env.json", environment(self.device))

    def _status(self, status: str, extra: dict | None = None) -> None:
        runs.write_json(self.run_dir / "metrics.json", {"status": status, "epochs_done": self.state.epoch,
                                                        **(extra or {})})

    def fit(self, resume: bool = False) -> dict:
        self._prepare()  # data and model first: a bad input fails before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        else:
            self._write_start()
        info = {"device": device_name(self.device), "precision": self.precision, "params": count_parameters(self.model),
                "train": len(self.train_data.images), "val": len(self.val_data.images),
                "test": len(self.test_data.images) if self.test_data else 0, "dataset": self.dataset.name}
        self.reporter.start(self.run_dir, self.config, info)
        warmup = self.warm_up()
        self._status("running", {"warmup_seconds": warmup})
        try:
            while self.state.epoch < self.config.epochs and not self.state.stopped_early:
                self._run_epoch()
        except KeyboardInterrupt:
            self._status("interrupted", {"warmup_seconds": warmup})
            raise
        return self._finish(warmup)

    def _run_epoch(self) -> None:
        cfg, st = self.config, self.state
        epoch = st.epoch + 1
        train_loss, train_acc, train_s = self.train_one_epoch(epoch)
        val_loss, val_acc, eval_s, _ = self.evaluate(self.val_data)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val_loss)
        row = EpochResult(epoch, train_loss, train_acc, val_loss, val_acc, lr, train_s, eval_s).__dict__
        st.history.append(row)
        st.epoch = epoch
        if val_loss < st.best_val_loss:
            st.best_val_loss, st.epochs_since_best = val_loss, 0
        else:
            st.epochs_since_best += 1
        if cfg.early_stopping and st.epochs_since_best >= cfg.early_stopping:
            st.stopped_early = True
        # checkpoint first, then history: a kill between the two leaves history behind, never ahead
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            self.save_checkpoint()
        runs.write_csv(self.run_dir / "history.csv", st.history)
        self.reporter.epoch_end(row)

    def _finish(self, warmup: float) -> dict:
        val_loss, val_acc, _, val_logits = self.evaluate(self.val_data)
        tensors = {"val_logits": val_logits, "val_labels": self.val_data.labels}
        metrics = {"val_loss": val_loss, "val_accuracy": val_acc}
        if self.test_data is not None:
            test_loss, test_acc, test_s, test_logits = self.evaluate(self.test_data)
            tensors.update(test_logits=test_logits, test_labels=self.test_data.labels)
            metrics.update(test_loss=test_loss, test_accuracy=test_acc, test_predict_seconds=test_s)
        history = self.state.history
        train_secs = [r["train_seconds"] for r in history]
        metrics.update(
            status="finished", epochs_done=self.state.epoch, stopped_early=self.state.stopped_early,
            warmup_seconds=warmup, train_seconds_total=sum(train_secs),
            train_seconds_per_epoch_median=sorted(train_secs)[len(train_secs) // 2] if train_secs else None,
            train_images_per_second=(len(self.train_data.images) * len(train_secs) / sum(train_secs)) if train_secs else None,
            best_val_epoch=min(history, key=lambda r: r["val_loss"])["epoch"] if history else None,
            feature_cache_seconds=self.feature_cache_seconds,
            device=device_name(self.device), precision=self.precision)
        runs.save_tensors(self.run_dir / "logits.safetensors", tensors)
        runs.save_tensors(self.run_dir / "model.safetensors", self.model.state_dict(),
                          {"cnnlab": json.dumps(self._model_metadata())})
        runs.write_json(self.run_dir / "metrics.json", metrics)
        # model.json last: its presence is what marks a run directory finished for every reader
        runs.write_json(self.run_dir / "model.json", self._model_metadata())
        return metrics


def train(config: TrainConfig, run_dir: Path, reporter: Reporter | None = None, resume: bool = False) -> dict:
    return Trainer(config, run_dir, reporter).fit(resume=resume)


# ------------------------------------------------------------------ loading a trained model


def run_autocast(run_dir: str | Path, device: torch.device):
    """The precision the run trained and evaluated in, so predictions match its stored logits."""
    metrics = Path(run_dir) / "metrics.json"
    precision = runs.read_json(metrics).get("precision", "fp32") if metrics.is_file() else "fp32"
    return autocast_for(torch.device(device), precision)[1]


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a run's model from model.json and model.safetensors."""
    run_dir = runs.require_run_dir(run_dir)
    meta = runs.read_json(run_dir / "model.json")
    spec = dict(meta["spec"])
    name = spec.pop("name")
    model = create_architecture(name, **spec)  # every weight, a pretrained base included, is in model.safetensors
    path = run_dir / "model.safetensors"
    state = runs.load_tensors(path)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit model {name} ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors)")
    for key, value in expected.items():
        if value.shape != state[key].shape:
            raise UserError(f"{path}: tensor {key} has shape {tuple(state[key].shape)}, "
                            f"model {name} expects {tuple(value.shape)}")
    model.load_state_dict(state)
    # the memory format training used, so the same kernels run and logits come out bit-identical
    return model.to(device, memory_format=torch.channels_last).eval(), meta
