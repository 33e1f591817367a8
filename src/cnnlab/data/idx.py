"""IDX files, the MNIST format (big-endian magic, dimension sizes, then uint8 data), raw or gzipped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

from .formats import GZIP_MAGIC, RawSplit, check_claim, gunzip, gzip_check, read_file, validate_arrays

IDX_IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Read one IDX file (the MNIST format: big-endian magic, dimension sizes, then uint8 data)."""
    raw = read_file(path)
    gzipped = raw[:2] == GZIP_MAGIC
    try:
        return _read_idx_data(raw, gzipped, path, expect_magic)
    except UserError:
        if gzipped:  # a damaged gzip stream is the better explanation of a bad header or length
            gzip_check(raw, path)
        raise


def _read_idx_data(raw: bytes, gzipped: bool, path: Path, expect_magic: int) -> np.ndarray:
    head = gunzip(raw, path, 3) if gzipped else raw
    if len(head) < 4:
        raise UserError(f"{path}: too short to be an IDX file ({len(head)} bytes)")
    magic = int.from_bytes(head[:4], "big")
    if magic != expect_magic:
        kind = "images" if expect_magic == IDX_IMAGE_MAGIC else "labels"
        raise UserError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x{expect_magic:08x} for {kind})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    head = gunzip(raw, path, header - 1) if gzipped else raw
    if len(head) < header:
        raise UserError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if 0 in dims:
        raise UserError(f"{path}: header says shape {dims}, which holds no data; the file is empty or corrupt")
    expected = math.prod(dims) + header
    check_claim(str(path), expected, None, f"shape {dims}")
    data = gunzip(raw, path, expected) if gzipped else raw
    if len(data) != expected:
        have = f"at least {len(data)}" if gzipped and len(data) > expected else str(len(data))
        raise UserError(f"{path}: wrong length: header promises {expected} bytes for shape {dims}, "
                        f"file has {have}{' after decompression' if gzipped else ''}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """Find `<prefix>-images-idx3-ubyte[.gz]` and its labels file in a folder."""
    def one(kind: str) -> Path | None:
        for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}"):
            if (folder / name).is_file():
                return folder / name
        return None

    images, labels = one("images-idx3-ubyte"), one("labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = "images" if images is None else "labels"
        raise UserError(f"{folder}: found {prefix} {'labels' if images is None else 'images'} "
                        f"but no {prefix}-{missing} IDX file beside it")
    return images, labels


def read_idx_split(images_path: Path, labels_path: Path) -> RawSplit:
    images = read_idx(images_path, IDX_IMAGE_MAGIC)
    labels = read_idx(labels_path, IDX_LABEL_MAGIC)
    if len(images) != len(labels):
        raise UserError(f"{images_path}: {len(images)} images but {labels_path.name} has "
                        f"{len(labels)} labels; the counts must match")
    images, labels = validate_arrays(images, labels, str(images_path))
    return RawSplit(images, labels)


def read_idx_folder(folder: Path) -> tuple[RawSplit, RawSplit | None]:
    train = find_idx_pair(folder, "train")
    if train is None:
        raise UserError(f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] files")
    test = find_idx_pair(folder, "t10k") or find_idx_pair(folder, "test")
    return read_idx_split(*train), (read_idx_split(*test) if test else None)
