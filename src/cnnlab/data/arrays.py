"""In-memory arrays as a dataset (the Python API's `data=(x, y)`), checked exactly as a file's arrays are."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.errors import UserError

from . import assemble
from .common import RawSplit, validate_arrays


def _numpy(value, what: str) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise UserError(f"data: {what} is not a numeric array (got {type(value).__name__})")
    if not array.flags.writeable:  # np.frombuffer, a memory map opened read-only: torch would warn on sharing it
        array = array.copy()
    return array


def dataset_from_arrays(x_train, y_train, x_test=None, y_test=None, class_names=None, classes=None):
    """numpy arrays or tensors (images N x H x W, N x H x W x C or N x C x H x W, pixels 0..255; integer
    labels) -> a Dataset named 'arrays'."""

    if (x_test is None) != (y_test is None):
        raise UserError("data: give both x_test and y_test, or neither")
    images, labels = validate_arrays(_numpy(x_train, "x_train"), _numpy(y_train, "y_train"), "data (x_train, y_train)")
    train = RawSplit(images, labels)
    test = None
    if x_test is not None:
        test = RawSplit(*validate_arrays(_numpy(x_test, "x_test"), _numpy(y_test, "y_test"), "data (x_test, y_test)"))
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if len(class_names) <= int(labels.max()):
            raise UserError(f"data: {len(class_names)} class names for labels up to {int(labels.max())}; "
                            "give one name per class")
    return assemble(train, test, name="arrays", source="in-memory arrays", class_names=class_names, classes=classes)
