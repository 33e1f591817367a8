"""Readers for the file formats users bring: IDX (raw or gzipped), NPZ/NPY, Kaggle CSV, image folders.

This module holds what the readers share -- `RawSplit`, error and limit helpers, `validate_arrays`; the
readers live by format in `idx`, `numpy_files`, `csv_files` and `image_folders`, and `formats` gathers
them all (`from cnnlab.data.formats import read_csv`). Every reader returns plain numpy arrays (images
uint8 N x C x H x W, labels int64 or None) after `validate_arrays` has checked them, so a bad file fails
with one line that names it.

What a bad file gets (the contract the tests hold these readers to): a `UserError` whose message is one
line naming the file and the fix -- never another exception, a traceback or a silently wrong dataset.
Decisions behind it:

* Sizes claimed by headers (IDX dimensions, NPY/NPZ shapes, a CSV header's width) are checked against
  the bytes that actually follow, the image shape and this machine's memory, before anything is allocated
  or parsed.
* Pixels must lie in 0..255. Float pixels are rounded; floats that look scaled to 0..1 are refused, and
  so are pixels that are all 0 or 1 (a black-and-white mask saved as 0/1: multiply by 255). CSV pixels
  must be whole numbers (12.5 is refused, not rounded).
* Label problems name the labels (`file[labels]`, the NPZ key, e.g. `d.npz[y_train]`), not the images.
* Pickled/object arrays are never loaded (`allow_pickle=False`).
* Ambiguous sources are refused, never resolved by a silent pick: an NPZ with two sets of keys, an IDX
  file present both raw and gzipped with different contents, a CSV separated by ';' or tabs.
* Image folders: every image must have one size (no silent resize); grayscale, palette, RGB(A) and
  CMYK images are converted (alpha ignored); 16-bit, float and multi-frame (animated GIF, multi-page
  TIFF) images are refused; files and folders whose names start with "." are skipped; images in
  subfolders of a class folder belong to that class (as in Keras's image_dataset_from_directory);
  train/ and test/ classes are matched by name; Pillow's decompression-bomb limit applies.
* Values quoted in messages are cut to `VALUE_LIMIT` characters, so an error stays one short line.
* A file named .gz that is not gzipped is read as it is (as before); a damaged gzip file is refused.
"""

from __future__ import annotations

import errno
import gzip
import io
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

MAX_LABEL = 2**31 - 1  # labels number classes; anything larger is a corrupt or misread file
GZIP_MAGIC = b"\x1f\x8b"
VALUE_LIMIT = 80  # characters of a user's value (a cell, a column or class name) quoted in a message

# what decoding a damaged file can raise from the libraries (zip, gzip, numpy, Pillow); OS-level
# errors (a set errno) are told apart by `_os_error`
DECODE_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError,
                  RuntimeError, KeyError, IndexError, TypeError, UnicodeError, OverflowError, SyntaxError, MemoryError,
                  tokenize.TokenError)  # numpy parses NPY headers with tokenize


@dataclass
class RawSplit:
    """One split as read from disk: uint8 images N x C x H x W, int64 labels (None if unlabeled)."""

    images: np.ndarray
    labels: np.ndarray | None
    ids: list[str] | None = None
    class_names: list[str] | None = field(default=None)


# ---------------------------------------------------------------- errors and limits


def shorten(text: object, limit: int = VALUE_LIMIT) -> str:
    """`text` on one line, cut to `limit` characters with "…" (a 3,000-character cell stays out of messages)."""
    text = str(text)
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(exc: BaseException, limit: int = 120) -> str:
    """An exception's text squeezed onto one line (library messages may span several) and cut to `limit`."""
    return shorten(" ".join(str(exc).split()) or type(exc).__name__, limit)


def os_error(path: Path | str, exc: OSError) -> UserError:
    """A UserError for an operating-system failure on `path` (or the file the error names)."""
    where = exc.filename if exc.filename not in (None, "") else path
    if isinstance(exc, PermissionError):
        return UserError(f"{where}: permission denied; make it readable (chmod u+r, and u+x for a folder) "
                         "or run as a user who may read it")
    if isinstance(exc, IsADirectoryError):
        return UserError(f"{where}: is a folder, but a file is expected here; give the file's path")
    if isinstance(exc, NotADirectoryError):
        return UserError(f"{where}: is a file (or under a file), but a folder is expected here; give a folder")
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{where}: no such file or folder")
    if exc.errno == errno.ELOOP:
        return UserError(f"{where}: symbolic link loop; fix or remove the link")
    return UserError(f"{where}: cannot read ({exc.strerror or one_line(exc)})")


def is_os_level(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno is not None


def memory_bytes() -> int:
    """Physical memory of this machine (a generous bound on what a dataset may claim)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def human_size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def check_claim(source: str, claimed: int, available: int | None, what: str) -> None:
    """Refuse a header whose claimed data size exceeds the bytes present or this machine's memory."""
    if available is not None and claimed > available:
        raise UserError(f"{source}: header claims {what} = {claimed} bytes of data, but only {available} bytes "
                        "follow; the file is truncated or corrupt")
    if claimed > memory_bytes():
        raise UserError(f"{source}: header claims {what} = {human_size(claimed)}, more than this machine's memory "
                        f"({human_size(memory_bytes())}); the file is corrupt or too large to load")


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise os_error(path, exc) from None


# ---------------------------------------------------------------- validation shared by all readers


def to_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """Accept N x H x W, N x H x W x C (Keras), N x C x H x W or N x (H*W) square; return N x C x H x W."""
    if images.ndim == 2:  # flattened square images, as in Kaggle CSVs
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise UserError(f"{source}: {images.shape[1]} pixels per row is not a square image; "
                            "store images as N x H x W instead")
        return images.reshape(len(images), 1, side, side)
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim == 4:
        if images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
            return images
        if images.shape[3] in (1, 3):
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if images.shape[1] in (1, 3):
            return images
    raise UserError(f"{source}: images have shape {tuple(images.shape)}; expected N x H x W, "
                    "N x H x W x C or N x C x H x W with 1 or 3 channels")


def grayscale(images: np.ndarray) -> np.ndarray:
    """uint8 N x 3 x H x W -> N x 1 x H x W by ITU-R 601-2 luma, the weights Pillow's convert("L") uses: how
    training reads RGB, so predict reads it the same way."""
    return np.rint(images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114)[:, None].astype(np.uint8)


def _shape_error(images: np.ndarray, source: str) -> UserError:
    return UserError(f"{source}: images have shape {tuple(images.shape)}; expected N x H x W, N x H x W x C "
                     "or N x C x H x W with 1 or 3 channels, or N x (H*W) for flattened square images")


def validate_arrays(images: np.ndarray, labels: np.ndarray | None, source: str,
                    labels_source: str | None = None, in_memory: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Check pixel and label values and return (uint8 N x C x H x W, int64 labels).

    `source` names the images in messages, `labels_source` (default `source`) the labels, e.g. "d.npz[labels]";
    `in_memory`: arrays passed to the API, so the advice speaks of converting them, not of saving a file."""
    images = np.asarray(images)
    store, first = ("convert them to", "first") if in_memory else ("save them as", "before saving")
    if images.dtype == object or not np.issubdtype(images.dtype, np.number):
        raise UserError(f"{source}: images are not numeric (dtype {images.dtype}); {store} uint8 0..255")
    if np.issubdtype(images.dtype, np.complexfloating):
        raise UserError(f"{source}: images are complex numbers (dtype {images.dtype}); {store} uint8 0..255")
    if images.ndim not in (2, 3, 4):
        raise _shape_error(images, source)
    if len(images) == 0:
        raise UserError(f"{source}: the dataset is empty (0 images)")
    if 0 in images.shape:
        raise UserError(f"{source}: images have shape {tuple(images.shape)}; every image needs at least one pixel")
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        if not finite.all():
            bad = int((~finite).any(axis=tuple(range(1, images.ndim))).argmax())
            raise UserError(f"{source}: image {bad} contains NaN or infinite pixel values")
        if images.max() <= 1.0 and (images != np.round(images)).any():
            raise UserError(f"{source}: pixel values look scaled to 0..1; cnnlab expects 0..255 "
                            f"(multiply by 255 {first})")
    lo, hi = images.min(), images.max()
    if lo < 0 or hi > 255:
        raise UserError(f"{source}: pixel values must lie in 0..255, found {lo}..{hi}")
    if hi == 1:
        raise UserError(f"{source}: every pixel is 0 or 1; cnnlab expects 0..255 (if 1 means white, multiply by 255 "
                        f"{first})")
    images = to_nchw(np.rint(images).astype(np.uint8) if images.dtype != np.uint8 else images, source)
    if labels is None:
        return np.ascontiguousarray(images), None
    return np.ascontiguousarray(images), validate_labels(labels, len(images), labels_source or source)


def validate_labels(labels: np.ndarray, n_images: int, source: str) -> np.ndarray:
    """Integer labels 0..MAX_LABEL, one per image (one-hot rows accepted); returns int64 of length n_images."""
    labels = np.asarray(labels)
    if labels.dtype == object or not np.issubdtype(labels.dtype, np.number) \
            or np.issubdtype(labels.dtype, np.complexfloating):
        example = labels.reshape(-1)[0] if labels.size else None
        words = isinstance(example, (str, bytes))  # class names as labels: say how to number them
        raise UserError(f"{source}: labels must be integers, got {labels.dtype} values such as {shorten(example)!r}"
                        + ("; number them with names, labels = np.unique(labels, return_inverse=True) and pass "
                           "class_names=list(names)" if words else ""))
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot labels, as Keras users keep them
        if len(labels) != n_images:
            raise UserError(f"{source}: {n_images} images but {len(labels)} labels; the counts must match")
        if not ((labels == 0) | (labels == 1)).all() or not (labels.sum(axis=1) == 1).all():
            raise UserError(f"{source}: labels have shape {tuple(labels.shape)} but are not one-hot (exactly one 1 "
                            "per row); save one integer class per image instead")
        labels = labels.argmax(axis=1)
    if labels.size != n_images or (labels.ndim > 1 and labels.shape[0] != n_images):
        raise UserError(f"{source}: {n_images} images but {labels.size} labels (label shape "
                        f"{tuple(labels.shape)}); the counts must match")
    labels = labels.reshape(-1)
    if np.issubdtype(labels.dtype, np.floating):
        bad_mask = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad_mask.any():
            raise UserError(f"{source}: labels must be integers, found {labels[bad_mask][0]}")
    if labels.min() < 0:
        raise UserError(f"{source}: labels must be 0 or more, found {labels.min()}")
    if labels.max() > MAX_LABEL:
        raise UserError(f"{source}: label {labels.max()} is far too large; labels number the classes 0..K-1")
    return labels.astype(np.int64)


# ---------------------------------------------------------------- gzip (IDX and CSV files)


def gunzip(raw: bytes, path: Path, limit: int | None = None) -> bytes:
    """Decompress gzip data, stopping after limit + 1 bytes (a header's claim plus one; default this machine's memory)."""
    limit = memory_bytes() if limit is None else limit
    chunks, size = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while size <= limit:  # in chunks: read(n) would allocate all n bytes at once
                chunk = stream.read(min(limit + 1 - size, 1 << 22))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt or truncated gzip file ({one_line(exc)}); download it again") from None
    return b"".join(chunks)


def gzip_check(raw: bytes, path: Path) -> None:
    """Decompress all of a gzip stream in chunks, keeping nothing: a damaged stream raises the gzip error."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt or truncated gzip file ({one_line(exc)}); download it again") from None
