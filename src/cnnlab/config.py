"""Training configuration: defaults from the report (section 1.2/1.4), overridable by a TOML file and flags.

Precedence: defaults < config file < --params file < command-line flags. Unknown keys are an error.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cnnlab.errors import UserError


@dataclass
class TrainConfig:
    model: str = "tuned-cnn"  # registry name (cnnlab models)
    data: str = "fashion-mnist"  # built-in name or path
    data_dir: str | None = None  # where built-in datasets live
    classes: str | None = None  # e.g. "0,1,2,3,4" for the report's 5 classes
    val_fraction: float = 0.2  # the report's 80/20 split
    split_seed: int = 0  # fixed, so runs with different seeds share one validation set
    epochs: int = 40  # report: 40
    batch_size: int = 128  # report: 128
    optimizer: str = "adam"  # adam | sgd | rmsprop
    lr: float = 1e-3  # report: Adam(lr=0.001)
    lr_factor: float = 0.2  # ReduceLROnPlateau(factor=0.2, patience=5) on validation loss
    lr_patience: int = 5
    min_lr: float = 0.0
    early_stopping: int = 0  # stop after this many epochs without a better validation loss; 0 = off
    augment: bool = False  # the report's ImageDataGenerator settings (cnnlab.augment)
    seed: int = 0  # drives init, shuffling, augmentation and dropout
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    image_size: int | None = None  # model input size; None = the data's size (transfer models resize inside)
    weights: str | None = None  # transfer models: 'imagenet' (default) or a local file
    model_params: dict = field(default_factory=dict)  # the model's own hyperparameters (dropout rates, units)
    checkpoint_every: int = 1  # epochs between resume checkpoints; 0 = none
    eval_batch_size: int = 1024

    def validate(self) -> "TrainConfig":
        from cnnlab.models import model_info

        model_info(self.model)  # unknown model -> clear error
        choices = {"optimizer": ("adam", "sgd", "rmsprop"), "device": ("auto", "cpu", "cuda"),
                   "precision": ("auto", "fp32", "bf16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"{key}: must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        positive = ("epochs", "batch_size", "eval_batch_size")
        for key in positive:
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise UserError(f"{key}: must be a positive integer, got {getattr(self, key)!r}")
        if not self.lr > 0:
            raise UserError(f"lr: must be positive, got {self.lr}")
        if not 0 < self.lr_factor < 1:
            raise UserError(f"lr_factor: must lie between 0 and 1, got {self.lr_factor}")
        for key in ("lr_patience", "early_stopping", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise UserError(f"{key}: must be 0 or more, got {getattr(self, key)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = {f.name for f in fields(TrainConfig)}


def _normalize_keys(data: dict, source: str) -> dict:
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"{source}: unknown key {key!r}; known keys are {', '.join(sorted(FIELDS))}")
        out[name] = value
    return out


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from None
    return _normalize_keys(data, str(path))


def read_params_file(path: str | Path) -> dict:
    """A best-parameters JSON (as `cnnlab tune` writes): training keys and model hyperparameters."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--params {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--params {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"--params {path}: expected a JSON object of parameter names and values")
    data = data.get("params", data)
    train = {k.replace("-", "_"): v for k, v in data.items() if k.replace("-", "_") in FIELDS}
    model = {k: v for k, v in data.items() if k.replace("-", "_") not in FIELDS}
    if model:
        train["model_params"] = model
    return train


def build_config(*layers: dict) -> TrainConfig:
    """Merge option layers left to right; None means 'not given'."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key == "model_params":
                merged["model_params"] = {**merged.get("model_params", {}), **value}
            else:
                merged[key] = value
    unknown = set(merged) - FIELDS
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))}")
    return TrainConfig(**merged).validate()
