"""A configuration's data, ready to train on: loaded once, checked, split, and moved to the device.

The pre-flight (`preflight`) is what every command runs before it writes anything: it loads the
dataset once, refuses degenerate data, and hands the loaded dataset on, so training never loads it
a second time. Pixels stay uint8 on the device; `to_input` is the one place they become floats.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import UserError, option

from . import Dataset, Split, load_dataset, train_val_split
from .fingerprint import MEMORY_PREFIX  # config.data of a run trained on in-memory arrays



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
                        f"2 classes (check the labels or {option('classes')})")
    if val is None:
        return
    if len(val.images) == 0:
        raise UserError(f"{dataset.source}: the validation split is empty; raise val_fraction or bring more images")
    missing = sorted(set(train.labels.unique().tolist()) - set(val.labels.unique().tolist()))
    if missing:
        raise UserError(f"{dataset.source}: the validation split has no image of class {dataset.class_names[missing[0]]!r}, "
                        "which training has; bring more images of it or raise val_fraction")


def training_splits(config: TrainConfig, dataset: Dataset) -> tuple[Split, Split | None, Split | None]:
    """(train, val or None, labeled test or None); val is None when val_fraction is 0. Checked."""
    if config.val_fraction == 0:
        train, val = dataset.train, None
    else:
        splits = train_val_split(dataset, config.val_fraction, config.split_seed)
        train, val = splits.train, splits.val
    if config.train_images is not None and config.train_images < len(train.images):
        train = stratified_subset(dataset, train, config.train_images, config.split_seed)
    check_training_data(dataset, train, val)
    test = dataset.test if dataset.test is not None and dataset.test.labels is not None else None
    return train, val, test


def stratified_subset(dataset: Dataset, split: Split, size: int, seed: int) -> Split:
    """`size` images of the split, every class in its share (scikit-learn's stratified split, seeded)."""
    from sklearn.model_selection import train_test_split  # lazy, as in cnnlab.metrics

    labels = split.labels.numpy()
    if size < dataset.num_classes:
        raise UserError(f"train_images: {size} images cannot hold one of each of the {dataset.num_classes} classes; "
                        f"use at least {dataset.num_classes}")
    keep, _ = train_test_split(np.arange(len(labels)), train_size=size, random_state=seed, stratify=labels)
    idx = torch.from_numpy(np.sort(keep))
    return Split(split.images[idx].contiguous(), split.labels[idx])


def split_data(config: TrainConfig, dataset: Dataset, device: torch.device):
    """(train, val or None, test or None) as DeviceData on the device."""
    train, val, test = training_splits(config, dataset)
    return tuple(DeviceData.from_split(s, device) if s is not None else None for s in (train, val, test))


def preflight(config: TrainConfig, dataset: Dataset | None = None) -> Dataset:
    """Load and check the data once, before anything is written; training then reuses what this returns."""
    dataset = load_data(config, dataset)
    training_splits(config, dataset)
    return dataset
