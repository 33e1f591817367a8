"""data.prepared: the pre-flight's splits, and train_images (a stratified subset of the training pool)."""

from __future__ import annotations

import pytest
import torch

from cnnlab.config import build_config
from cnnlab.data.prepared import load_data, training_splits
from cnnlab.errors import UserError

from conftest import write_npz_dataset


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "d.npz", 300, 30)


def test_train_images_keeps_every_class_in_its_share_and_the_same_validation_split(npz):
    full = build_config({"data": str(npz)})
    part = build_config({"data": str(npz), "train_images": 60})
    train, val, _ = training_splits(part, load_data(part))
    all_train, all_val, _ = training_splits(full, load_data(full))
    assert len(train.images) == 60 and torch.bincount(train.labels).tolist() == [20, 20, 20]
    assert torch.equal(val.images, all_val.images)  # the split is the same one; only training shrinks
    rows = {tuple(r.flatten().tolist()) for r in all_train.images}
    assert all(tuple(r.flatten().tolist()) in rows for r in train.images)


def test_train_images_too_small_for_the_classes(npz):
    cfg = build_config({"data": str(npz), "train_images": 2})
    with pytest.raises(UserError, match="train_images: 2 images cannot hold one of each of the 3 classes"):
        training_splits(cfg, load_data(cfg))
