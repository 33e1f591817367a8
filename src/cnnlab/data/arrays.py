"""In-memory arrays as a dataset (the Python API's `data=(x, y)`), checked exactly as a file's arrays are."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.errors import UserError

from . import assemble
from .common import RawSplit, validate_arrays


# dtypes whose .numpy() works as is; bfloat16, float8, complex32 and quantized tensors raised a TypeError
_NUMPY_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                 torch.uint64, torch.float16, torch.float32, torch.float64, torch.bool}


def tensor_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy, whatever its dtype, layout or device (float32 holds bfloat16 and float8 exactly)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in _NUMPY_DTYPES and tensor.layout == torch.strided:
        return tensor.numpy()
    if tensor.layout != torch.strided:  # sparse
        tensor = tensor.to_dense()
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    if tensor.is_floating_point() and tensor.dtype not in _NUMPY_DTYPES:
        tensor = tensor.float()
    elif tensor.dtype == torch.complex32:
        tensor = tensor.to(torch.complex64)  # refused as complex by validate_arrays, in one line
    return tensor.resolve_conj().resolve_neg().numpy()


# validate_arrays words its advice for files; in-memory arrays are not saved anywhere
def validate_memory(images, labels, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """validate_arrays for arrays held in memory: the same checks, advice worded for arrays, not files."""
    return validate_arrays(images, labels, source, in_memory=True)


def _numpy(value, what: str) -> np.ndarray:
    if torch.is_tensor(value):
        value = tensor_numpy(value)
    try:
        array = np.asarray(value)
    except ValueError:  # numpy refuses ragged nested lists
        raise UserError(f"data: {what} is not a rectangular array (rows or images of different sizes?)") from None
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
    images, labels = validate_memory(_numpy(x_train, "x_train"), _numpy(y_train, "y_train"), "data (x_train, y_train)")
    train = RawSplit(images, labels)
    test = None
    if x_test is not None:
        test = RawSplit(*validate_memory(_numpy(x_test, "x_test"), _numpy(y_test, "y_test"), "data (x_test, y_test)"))
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if len(class_names) <= int(labels.max()):
            raise UserError(f"data: {len(class_names)} class names for labels up to {int(labels.max())}; "
                            "give one name per class")
    return assemble(train, test, name="arrays", source="in-memory arrays", class_names=class_names, classes=classes)
