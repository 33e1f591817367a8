"""IDX files, the MNIST format (big-endian magic, dimension sizes, then uint8 data), raw or gzipped.

A folder holds `train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]`, and maybe the same for
`t10k` or `test`. A file present both gzipped and raw must hold the same data in both (then the .gz is
read); different contents are refused, naming both, rather than one picked silently. To predict, one images
file alone (`t10k-images-idx3-ubyte[.gz]`, as Fashion-MNIST ships it) is read too (`read_idx_images`).
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

from .common import (GZIP_MAGIC, RawSplit, check_claim, gunzip, gzip_check, one_line, os_error, read_file,
                      validate_arrays)

IDX_IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def read_idx(path: Path, expect_magic: int, raw: bytes | None = None) -> np.ndarray:
    """Read one IDX file (the MNIST format: big-endian magic, dimension sizes, then uint8 data)."""
    raw = read_file(path) if raw is None else raw
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


def _same_data(gz_path: Path, raw_path: Path) -> bool:
    """Whether the .gz file decompresses (or, not gzipped, reads) to exactly the raw file's bytes.

    Compared in chunks, stopping at the first difference, so neither file is held in memory."""
    try:
        with open(gz_path, "rb") as packed, open(raw_path, "rb") as plain:
            gzipped = packed.read(2) == GZIP_MAGIC
            packed.seek(0)
            stream = gzip.GzipFile(fileobj=packed) if gzipped else packed
            while True:
                try:
                    chunk = stream.read(1 << 20)
                except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    raise UserError(f"{gz_path}: corrupt or truncated gzip file ({one_line(exc)}); "
                                    "download it again") from None
                if chunk != plain.read(len(chunk) or 1):
                    return False
                if not chunk:
                    return True
    except OSError as exc:
        raise os_error(gz_path, exc) from None


def idx_file(folder: Path, stem: str) -> Path | None:
    """`<stem>.gz` or `<stem>` in `folder` (the .gz when both hold the same data); None if neither is there."""
    packed, plain = folder / f"{stem}.gz", folder / stem
    if packed.is_file() and plain.is_file():
        if not _same_data(packed, plain):
            raise UserError(f"{packed} and {plain}: the same IDX file twice, gzipped and not, with different "
                            "contents; cnnlab will not guess which is right: delete or move one of them")
        return packed
    return packed if packed.is_file() else plain if plain.is_file() else None


def find_idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """Find `<prefix>-images-idx3-ubyte[.gz]` and its labels file in a folder."""
    images, labels = idx_file(folder, f"{prefix}-images-idx3-ubyte"), idx_file(folder, f"{prefix}-labels-idx1-ubyte")
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
        raise UserError(f"{labels_path}[labels]: {images_path.name} has {len(images)} images but {labels_path.name} "
                        f"has {len(labels)} labels; the counts must match")
    images, labels = validate_arrays(images, labels, str(images_path), labels_source=f"{labels_path}[labels]")
    return RawSplit(images, labels)


def read_idx_folder(folder: Path) -> tuple[RawSplit, RawSplit | None]:
    train = find_idx_pair(folder, "train")
    if train is None:
        raise UserError(f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] files")
    test = find_idx_pair(folder, "t10k") or find_idx_pair(folder, "test")
    return read_idx_split(*train), (read_idx_split(*test) if test else None)


_IDX_NAME = re.compile(r"idx[0-9]-ubyte(\.gz)?$", re.IGNORECASE)


def _magic(raw: bytes, path: Path) -> int | None:
    head = gunzip(raw, path, 3) if raw[:2] == GZIP_MAGIC else raw
    return int.from_bytes(head[:4], "big") if len(head) >= 4 else None


def is_idx_file(path: Path) -> bool:
    """Whether a file is named like an IDX file (t10k-images-idx3-ubyte.gz) or starts with an unsigned-byte
    IDX magic number (0x000008..), whatever its name."""
    if _IDX_NAME.search(path.name):
        return True
    try:
        with open(path, "rb") as fp:
            head = fp.read(4)
            if head[:2] == GZIP_MAGIC:
                fp.seek(0)
                head = gzip.GzipFile(fileobj=fp).read(4)
    except (OSError, EOFError, zlib.error):
        return False  # not IDX as far as can be told; the caller's "unknown format" line names the file
    return head[:3] == b"\0\0\x08"


def read_idx_images(path: Path) -> RawSplit:
    """One IDX images file without its labels (the images to predict on); a labels file is refused as such."""
    raw = read_file(path)
    try:
        magic = _magic(raw, path)
    except UserError:
        magic = None  # a damaged gzip stream: read_idx says so
    if magic == IDX_LABEL_MAGIC:
        raise UserError(f"{path}: holds labels (IDX magic 0x{magic:08x}), not images; give the images file "
                        "beside it, e.g. t10k-images-idx3-ubyte.gz")
    images, _ = validate_arrays(read_idx(path, IDX_IMAGE_MAGIC, raw), None, str(path))
    return RawSplit(images, None)


def idx_images_in(folder: Path) -> Path | None:
    """The IDX images file in `folder` to predict on: the test split's (t10k- or test-), else the training
    split's; None if the folder holds no IDX files. Labels may be missing: predict does not need them."""
    for prefix in ("t10k", "test", "train"):
        images = idx_file(folder, f"{prefix}-images-idx3-ubyte")
        if images is not None:
            return images
        if idx_file(folder, f"{prefix}-labels-idx1-ubyte") is not None:  # its images must not be skipped for another split's
            raise UserError(f"{folder}: found {prefix} labels but no {prefix}-images-idx3-ubyte[.gz] beside them; "
                            "add the images file (predict reads the images, not the labels)")
    return None
