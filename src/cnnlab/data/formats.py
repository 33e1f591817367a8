"""Readers for the file formats users bring: IDX (raw or gzipped), NPZ/NPY, Kaggle CSV, image folders.

Every reader returns plain numpy arrays (images uint8 N x C x H x W, labels int64 or None) after
`validate_arrays` has checked them, so a bad file fails here with one line that names it.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
IDX_IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass
class RawSplit:
    """One split as read from disk: uint8 images N x C x H x W, int64 labels (None if unlabeled)."""

    images: np.ndarray
    labels: np.ndarray | None
    ids: list[str] | None = None
    class_names: list[str] | None = field(default=None)


# ---------------------------------------------------------------- validation shared by all readers


def to_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """Accept N x H x W, N x H x W x C (Keras), N x C x H x W or N x (H*W) square; return N x C x H x W."""
    if images.ndim == 2:  # flattened square images, as in Kaggle CSVs
        side = int(round(np.sqrt(images.shape[1])))
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


def validate_arrays(images: np.ndarray, labels: np.ndarray | None, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Check pixel and label values and return (uint8 N x C x H x W, int64 labels)."""
    images = np.asarray(images)
    if images.dtype == object or not np.issubdtype(images.dtype, np.number):
        raise UserError(f"{source}: images are not numeric (dtype {images.dtype})")
    if len(images) == 0:
        raise UserError(f"{source}: the dataset is empty (0 images)")
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            bad = int((~np.isfinite(images)).any(axis=tuple(range(1, images.ndim))).argmax())
            raise UserError(f"{source}: image {bad} contains NaN or infinite pixel values")
        if images.max() <= 1.0 and (images != np.round(images)).any():
            raise UserError(f"{source}: pixel values look scaled to 0..1; cnnlab expects 0..255 "
                            "(multiply by 255 before saving)")
    lo, hi = images.min(), images.max()
    if lo < 0 or hi > 255:
        raise UserError(f"{source}: pixel values must lie in 0..255, found {lo}..{hi}")
    images = to_nchw(np.rint(images).astype(np.uint8) if images.dtype != np.uint8 else images, source)
    if labels is None:
        return np.ascontiguousarray(images), None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot labels, as Keras users keep them
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if len(labels) != len(images):
        raise UserError(f"{source}: {len(images)} images but {len(labels)} labels; the counts must match")
    if not np.issubdtype(labels.dtype, np.number):
        raise UserError(f"{source}: labels must be integers, got {labels.dtype} values such as {labels[0]!r}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            bad = labels[~np.isfinite(labels) | (labels != np.round(labels))][0]
            raise UserError(f"{source}: labels must be integers, found {bad}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise UserError(f"{source}: labels must be 0 or more, found {labels.min()}")
    return np.ascontiguousarray(images), labels


# ---------------------------------------------------------------- IDX


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise UserError(f"{path}: corrupt or truncated gzip file ({exc}); download it again") from None
    return data


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Read one IDX file (the MNIST format: big-endian magic, dimension sizes, then uint8 data)."""
    data = _read_maybe_gzip(path)
    if len(data) < 8:
        raise UserError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        kind = "images" if expect_magic == IDX_IMAGE_MAGIC else "labels"
        raise UserError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x{expect_magic:08x} for {kind})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) + header
    if len(data) != expected:
        raise UserError(f"{path}: wrong length: header promises {expected} bytes for shape {dims}, "
                        f"file has {len(data)}; the file is truncated or corrupt")
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


# ---------------------------------------------------------------- NPZ / NPY

_NPZ_KEYS = [("x_train", "y_train", "x_test", "y_test"), ("images", "labels", None, None),
             ("x", "y", None, None), ("X", "y", None, None)]


def read_npz(path: Path) -> tuple[RawSplit, RawSplit | None]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a damaged zip
        raise UserError(f"{path}: cannot read as NPZ ({exc})") from None
    with archive:
        keys = set(archive.files)
        for xk, yk, xtk, ytk in _NPZ_KEYS:
            if xk in keys:
                names = [str(n) for n in archive["class_names"]] if "class_names" in keys else None
                try:
                    train = RawSplit(*validate_arrays(archive[xk], archive[yk] if yk in keys else None,
                                                      f"{path}[{xk}]"), class_names=names)
                    test = None
                    if xtk and xtk in keys:
                        test = RawSplit(*validate_arrays(archive[xtk], archive[ytk] if ytk in keys else None,
                                                         f"{path}[{xtk}]"))
                except ValueError as exc:  # damaged member inside a valid zip
                    raise UserError(f"{path}: cannot read arrays ({exc})") from None
                return train, test
    raise UserError(f"{path}: NPZ needs arrays named images/labels or x_train/y_train[/x_test/y_test]; "
                    f"found {sorted(keys)}")


def read_npy(path: Path) -> RawSplit:
    """An images .npy; labels come from `<stem>_labels.npy` or `labels.npy` beside it (else unlabeled)."""
    def load(p: Path) -> np.ndarray:
        try:
            return np.load(p, allow_pickle=False)
        except Exception as exc:
            raise UserError(f"{p}: cannot read as NPY ({exc})") from None

    images = load(path)
    labels = None
    for candidate in (path.with_name(f"{path.stem}_labels.npy"), path.with_name("labels.npy")):
        if candidate.is_file() and candidate != path:
            labels = load(candidate)
            break
    return RawSplit(*validate_arrays(images, labels, str(path)))


# ---------------------------------------------------------------- Kaggle CSV


def read_csv(path: Path) -> RawSplit:
    """Kaggle layout: optional `label` column, optional `id` column, then one column per pixel."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the CSV file is empty") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: ragged CSV rows ({str(exc).strip()}); every row needs the same number of values") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file") from None
    columns = [c.strip().lower() for c in frame.columns]
    frame.columns = columns
    if len(frame) == 0:
        raise UserError(f"{path}: the dataset is empty (header but no rows)")
    labels_col = "label" if "label" in columns else None
    id_col = next((c for c in ("id", "imageid", "image_id") if c in columns), None)
    pixel_cols = [c for c in columns if c not in (labels_col, id_col)]
    if not pixel_cols:
        raise UserError(f"{path}: no pixel columns")
    empty = frame[pixel_cols] == ""
    if empty.values.any():
        row = int(empty.any(axis=1).values.argmax())
        raise UserError(f"{path}: row {row + 2} has fewer values than the header's {len(columns)} columns (ragged rows)")
    try:
        pixels = frame[pixel_cols].to_numpy().astype(np.float64)
    except ValueError:
        numeric = frame[pixel_cols].apply(pd.to_numeric, errors="coerce")
        row, col = np.argwhere(numeric.isna().to_numpy())[0]
        raise UserError(f"{path}: non-numeric pixel value {frame[pixel_cols].iat[row, col]!r} "
                        f"in row {row + 2}, column {pixel_cols[col]!r}") from None
    labels = None
    if labels_col:
        numeric = pd.to_numeric(frame[labels_col], errors="coerce")
        if numeric.isna().any():
            row = int(numeric.isna().values.argmax())
            raise UserError(f"{path}: labels must be integers, found {frame[labels_col].iat[row]!r} in row {row + 2}")
        labels = numeric.to_numpy()
    ids = frame[id_col].tolist() if id_col else None
    images, labels = validate_arrays(pixels, labels, str(path))
    return RawSplit(images, labels, ids=ids)


# ---------------------------------------------------------------- folder of class subfolders


def read_image_folder(folder: Path, keep_rgb: bool = False) -> RawSplit:
    """One subfolder per class, named by the class; images read through Pillow."""
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{folder}: no class subfolders (expected one folder of images per class)")
    images, labels, first_shape, first_file = [], [], None, None
    mode = "RGB" if keep_rgb else "L"
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{class_dir}: class folder has no images (PNG or JPEG)")
        for file in files:
            try:
                with Image.open(file) as img:
                    array = np.asarray(img.convert(mode))
            except (UnidentifiedImageError, OSError) as exc:
                raise UserError(f"{file}: cannot read image ({exc})") from None
            if first_shape is None:
                first_shape, first_file = array.shape, file
            elif array.shape != first_shape:
                raise UserError(f"{file}: image size {array.shape[1]}x{array.shape[0]} differs from "
                                f"{first_file.name}'s {first_shape[1]}x{first_shape[0]}; mixed image sizes "
                                "are not supported, resize them to one size")
            images.append(array)
            labels.append(label)
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[:, None]
    else:
        stacked = stacked.transpose(0, 3, 1, 2)
    return RawSplit(np.ascontiguousarray(stacked), np.asarray(labels, dtype=np.int64),
                    class_names=[p.name for p in class_dirs])
