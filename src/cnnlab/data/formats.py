"""Readers for the file formats users bring: IDX (raw or gzipped), NPZ/NPY, Kaggle CSV, image folders.

Every reader returns plain numpy arrays (images uint8 N x C x H x W, labels int64 or None) after
`validate_arrays` has checked them, so a bad file fails here with one line that names it.

What a bad file gets (the contract the tests hold these readers to): a `UserError` whose message is one
line naming the file and the fix -- never another exception, a traceback or a silently wrong dataset.
Decisions behind it:

* Sizes claimed by headers (IDX dimensions, NPY/NPZ shapes) are checked against the bytes that
  actually follow, and against this machine's memory, before anything is allocated.
* Pixels must lie in 0..255. Float pixels are rounded; floats that look scaled to 0..1 are refused, and
  so are pixels that are all 0 or 1 (a black-and-white mask saved as 0/1: multiply by 255).
* Pickled/object arrays are never loaded (`allow_pickle=False`).
* Image folders: every image must have one size (no silent resize); grayscale, palette, RGB(A) and
  CMYK images are converted (alpha ignored); 16-bit and float images are refused rather than clipped;
  files and folders whose names start with "." are skipped; Pillow's decompression-bomb limit applies.
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
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
IDX_IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MAX_LABEL = 2**31 - 1  # labels number classes; anything larger is a corrupt or misread file
GZIP_MAGIC = b"\x1f\x8b"

# what decoding a damaged file can raise from the libraries (zip, gzip, numpy, Pillow); OS-level
# errors (a set errno) are told apart by `_os_error`
_DECODE_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError,
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


def one_line(exc: BaseException) -> str:
    """An exception's text squeezed onto one line (library messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


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


def _is_os_level(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno is not None


def memory_bytes() -> int:
    """Physical memory of this machine (a generous bound on what a dataset may claim)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def _human(n: int) -> str:
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
        raise UserError(f"{source}: header claims {what} = {_human(claimed)}, more than this machine's memory "
                        f"({_human(memory_bytes())}); the file is corrupt or too large to load")


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


def _shape_error(images: np.ndarray, source: str) -> UserError:
    return UserError(f"{source}: images have shape {tuple(images.shape)}; expected N x H x W, N x H x W x C "
                     "or N x C x H x W with 1 or 3 channels, or N x (H*W) for flattened square images")


def validate_arrays(images: np.ndarray, labels: np.ndarray | None, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Check pixel and label values and return (uint8 N x C x H x W, int64 labels)."""
    images = np.asarray(images)
    if images.dtype == object or not np.issubdtype(images.dtype, np.number):
        raise UserError(f"{source}: images are not numeric (dtype {images.dtype}); save them as uint8 0..255")
    if np.issubdtype(images.dtype, np.complexfloating):
        raise UserError(f"{source}: images are complex numbers (dtype {images.dtype}); save them as uint8 0..255")
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
                            "(multiply by 255 before saving)")
    lo, hi = images.min(), images.max()
    if lo < 0 or hi > 255:
        raise UserError(f"{source}: pixel values must lie in 0..255, found {lo}..{hi}")
    if hi == 1:
        raise UserError(f"{source}: every pixel is 0 or 1; cnnlab expects 0..255 (if 1 means white, multiply by 255 "
                        "before saving)")
    images = to_nchw(np.rint(images).astype(np.uint8) if images.dtype != np.uint8 else images, source)
    if labels is None:
        return np.ascontiguousarray(images), None
    return np.ascontiguousarray(images), validate_labels(labels, len(images), source)


def validate_labels(labels: np.ndarray, n_images: int, source: str) -> np.ndarray:
    """Integer labels 0..MAX_LABEL, one per image (one-hot rows accepted); returns int64 of length n_images."""
    labels = np.asarray(labels)
    if labels.dtype == object or not np.issubdtype(labels.dtype, np.number) \
            or np.issubdtype(labels.dtype, np.complexfloating):
        example = labels.reshape(-1)[0] if labels.size else None
        raise UserError(f"{source}: labels must be integers, got {labels.dtype} values such as {example!r}")
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


# ---------------------------------------------------------------- IDX


def _gunzip(raw: bytes, path: Path, limit: int | None = None) -> bytes:
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


def _gzip_check(raw: bytes, path: Path) -> None:
    """Decompress all of a gzip stream in chunks, keeping nothing: a damaged stream raises the gzip error."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt or truncated gzip file ({one_line(exc)}); download it again") from None


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Read one IDX file (the MNIST format: big-endian magic, dimension sizes, then uint8 data)."""
    raw = read_file(path)
    gzipped = raw[:2] == GZIP_MAGIC
    try:
        return _read_idx_data(raw, gzipped, path, expect_magic)
    except UserError:
        if gzipped:  # a damaged gzip stream is the better explanation of a bad header or length
            _gzip_check(raw, path)
        raise


def _read_idx_data(raw: bytes, gzipped: bool, path: Path, expect_magic: int) -> np.ndarray:
    head = _gunzip(raw, path, 3) if gzipped else raw
    if len(head) < 4:
        raise UserError(f"{path}: too short to be an IDX file ({len(head)} bytes)")
    magic = int.from_bytes(head[:4], "big")
    if magic != expect_magic:
        kind = "images" if expect_magic == IDX_IMAGE_MAGIC else "labels"
        raise UserError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x{expect_magic:08x} for {kind})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    head = _gunzip(raw, path, header - 1) if gzipped else raw
    if len(head) < header:
        raise UserError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if 0 in dims:
        raise UserError(f"{path}: header says shape {dims}, which holds no data; the file is empty or corrupt")
    expected = math.prod(dims) + header
    check_claim(str(path), expected, None, f"shape {dims}")
    data = _gunzip(raw, path, expected) if gzipped else raw
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


# ---------------------------------------------------------------- NPZ / NPY


def check_npy_header(fp, source: str, available: int) -> None:
    """Read an NPY header from `fp` and refuse object dtypes and sizes the data cannot hold.

    `available` is the byte count of the whole .npy stream; nothing is allocated here."""
    try:
        version = np.lib.format.read_magic(fp)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(fp)
    except _DECODE_ERRORS as exc:
        if _is_os_level(exc):
            raise os_error(source, exc) from None
        raise UserError(f"{source}: not a valid NPY array ({one_line(exc)}); save it with numpy.save") from None
    if dtype.hasobject:
        raise UserError(f"{source}: holds Python objects (dtype {dtype}), which cnnlab does not unpickle; "
                        "save a numeric array (images uint8, labels integers) or strings for class_names")
    claimed = math.prod(shape) * dtype.itemsize
    check_claim(source, claimed, available - fp.tell(), f"shape {shape} of {dtype}")


_NPZ_KEYS = [("x_train", "y_train", "x_test", "y_test"), ("images", "labels", None, None),
             ("x", "y", None, None), ("X", "y", None, None)]


def _npz_member(path: Path, archive, key: str) -> np.ndarray:
    """One array of an NPZ, its header checked before numpy allocates it."""
    source = f"{path}[{key}]"
    try:
        names = archive.zip.namelist()
        name = f"{key}.npy" if f"{key}.npy" in names else key
        info = archive.zip.getinfo(name)
        with archive.zip.open(info) as member:
            is_npy = member.read(6) == b"\x93NUMPY"
        if is_npy:
            with archive.zip.open(info) as member:
                check_npy_header(member, source, info.file_size)
        value = archive[key]
    except UserError:
        raise
    except _DECODE_ERRORS as exc:  # damaged member inside a valid zip
        if _is_os_level(exc):
            raise os_error(path, exc) from None
        raise UserError(f"{source}: cannot read array ({one_line(exc)}); the file is damaged, save it again") from None
    if not isinstance(value, np.ndarray):
        raise UserError(f"{source}: is not a NumPy array; save the NPZ with numpy.savez")
    return value


def _class_names(values: np.ndarray, source: str) -> list[str]:
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise UserError(f"{source}: class_names must be a 1-D array of strings, got shape {tuple(values.shape)} "
                        f"of {values.dtype}; save e.g. numpy.array(['cat', 'dog'])")
    try:
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    except UnicodeDecodeError:
        raise UserError(f"{source}: class_names are bytes that are not UTF-8 text; save them as str") from None
    seen = set()
    for name in names:
        if name in seen:
            raise UserError(f"{source}: class name {name!r} appears twice; give every class its own name")
        seen.add(name)
    return names


def read_npz(path: Path) -> tuple[RawSplit, RawSplit | None]:
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise os_error(path, exc) from None
    with fp:
        if fp.read(6) == b"\x93NUMPY":
            raise UserError(f"{path}: is an NPY file (one array), not an NPZ archive; rename it to .npy")
        fp.seek(0)
        try:
            archive = np.load(fp, allow_pickle=False)
        except _DECODE_ERRORS as exc:  # numpy and zipfile raise several types for a damaged zip
            if _is_os_level(exc):
                raise os_error(path, exc) from None
            raise UserError(f"{path}: cannot read as NPZ ({one_line(exc)}); save it with numpy.savez") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise UserError(f"{path}: not an NPZ archive; save it with numpy.savez")
        with archive:
            keys = set(archive.files)
            for xk, yk, xtk, ytk in _NPZ_KEYS:
                if xk not in keys:
                    continue
                names = None
                if "class_names" in keys:
                    names = _class_names(_npz_member(path, archive, "class_names"), f"{path}[class_names]")

                def split(ik: str, lk: str | None) -> tuple[np.ndarray, np.ndarray | None]:
                    images = _npz_member(path, archive, ik)
                    labels = _npz_member(path, archive, lk) if lk in keys else None
                    return validate_arrays(images, labels, f"{path}[{ik}]")

                train = RawSplit(*split(xk, yk), class_names=names)
                test = RawSplit(*split(xtk, ytk)) if xtk and xtk in keys else None
                return train, test
    raise UserError(f"{path}: NPZ needs arrays named images/labels or x_train/y_train[/x_test/y_test]; "
                    f"found {sorted(keys)}")


def load_npy(path: Path) -> np.ndarray:
    """np.load for one .npy file, its header checked first (no pickles, no claims beyond the file)."""
    try:
        with open(path, "rb") as fp:
            if fp.read(4) == b"PK\x03\x04":
                raise UserError(f"{path}: is an NPZ archive (several arrays), not an NPY file; rename it to .npz")
            fp.seek(0)
            check_npy_header(fp, str(path), os.fstat(fp.fileno()).st_size)
            fp.seek(0)
            return np.load(fp, allow_pickle=False)
    except UserError:
        raise
    except _DECODE_ERRORS as exc:
        if _is_os_level(exc):
            raise os_error(path, exc) from None
        raise UserError(f"{path}: cannot read as NPY ({one_line(exc)}); save it with numpy.save") from None


def read_npy(path: Path) -> RawSplit:
    """An images .npy; labels come from `<stem>_labels.npy` or `labels.npy` beside it (else unlabeled)."""
    images = load_npy(path)
    labels = None
    for candidate in (path.with_name(f"{path.stem}_labels.npy"), path.with_name("labels.npy")):
        if candidate.is_file() and candidate != path:
            labels = load_npy(candidate)
            break
    return RawSplit(*validate_arrays(images, labels, str(path)))


# ---------------------------------------------------------------- Kaggle CSV


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path) -> RawSplit:
    """Kaggle layout: a header row, optional `label` column, optional `id` column, then one column per pixel."""
    import pandas as pd

    raw = read_file(path)
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip(raw, path)
        if len(raw) > memory_bytes():
            raise UserError(f"{path}: decompresses to more than this machine's memory ({_human(memory_bytes())}); "
                            "split it or use a machine with more memory")
    try:
        # header=None: the first row is read as data, so rows longer than the header are an error
        # instead of pandas silently turning the first column into an index
        table = pd.read_csv(io.BytesIO(raw), header=None, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the CSV file is empty") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: ragged CSV rows ({one_line(exc)}); every row needs the same number of values") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file (not UTF-8); save it as CSV text") from None
    except (ValueError, OverflowError, MemoryError) as exc:
        raise UserError(f"{path}: cannot read as CSV ({one_line(exc)})") from None
    header = [str(c).strip().lstrip("\ufeff").strip().lower() for c in table.iloc[0]]
    frame = table.iloc[1:].reset_index(drop=True)
    if header and all(_is_number(c) for c in header):
        raise UserError(f"{path}: the first row holds numbers, not column names; add a header row such as "
                        "label,pixel1,pixel2,... (Kaggle's layout)")
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise UserError(f"{path}: column {dup!r} appears twice in the header; give every column its own name")
    frame.columns = header
    if len(frame) == 0:
        raise UserError(f"{path}: the dataset is empty (header but no rows)")
    labels_col = "label" if "label" in header else None
    id_col = next((c for c in ("id", "imageid", "image_id") if c in header), None)
    pixel_cols = [c for c in header if c not in (labels_col, id_col)]
    if not pixel_cols:
        raise UserError(f"{path}: no pixel columns; after label/id, give one column per pixel")
    empty = frame[pixel_cols] == ""
    if empty.values.any():
        row = int(empty.any(axis=1).values.argmax())
        raise UserError(f"{path}: row {row + 2} has fewer values than the header's {len(header)} columns, or an "
                        "empty cell (ragged rows); every row needs one value per column")
    try:
        pixels = frame[pixel_cols].to_numpy().astype(np.float64)
    except (ValueError, OverflowError):
        numeric = frame[pixel_cols].apply(pd.to_numeric, errors="coerce")
        bad = np.argwhere(numeric.isna().to_numpy())
        row, col = bad[0] if len(bad) else (0, 0)
        raise UserError(f"{path}: non-numeric pixel value {frame[pixel_cols].iat[row, col]!r} "
                        f"in row {row + 2}, column {pixel_cols[col]!r}") from None
    labels = None
    if labels_col:
        numeric = pd.to_numeric(frame[labels_col], errors="coerce")
        if numeric.isna().any():
            row = int(numeric.isna().values.argmax())
            raise UserError(f"{path}: labels must be integers, found {frame[labels_col].iat[row]!r} in row {row + 2}")
        labels = numeric.to_numpy(dtype=np.float64)
    ids = frame[id_col].tolist() if id_col else None
    images, labels = validate_arrays(pixels, labels, str(path))
    return RawSplit(images, labels, ids=ids)


# ---------------------------------------------------------------- folder of class subfolders

def list_dir(folder: Path) -> list[Path]:
    """A folder's entries, sorted, hidden ones (".name") left out; OS errors become UserErrors."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise os_error(folder, exc) from None


def _read_image(file: Path, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": extra lines on stderr, the image still reads
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # this one, though, refuses the image
            with Image.open(file) as img:
                if img.mode.split(";")[0] in ("I", "F"):  # Pillow would clip these to 0..255 without a word
                    depth = "floating-point" if img.mode == "F" else "16-bit" if img.mode.startswith("I;16") else "32-bit"
                    raise UserError(f"{file}: {depth} image (mode {img.mode}); cnnlab reads 8-bit images and will "
                                    "not clip these, save it as an 8-bit PNG")
                return np.asarray(img.convert(mode))
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{file}: image too large ({one_line(exc)}); cnnlab reads small images, "
                        "resize it") from None
    except Exception as exc:  # Pillow's decoders raise many types for a damaged file
        if _is_os_level(exc):
            raise os_error(file, exc) from None
        raise UserError(f"{file}: cannot read image ({one_line(exc)}); replace or remove it") from None


def read_image_folder(folder: Path, keep_rgb: bool = False) -> RawSplit:
    """One subfolder per class, named by the class; images read through Pillow, all of one size."""
    class_dirs = [p for p in list_dir(folder) if p.is_dir()]
    if not class_dirs:
        raise UserError(f"{folder}: no class subfolders (expected one folder of images per class)")
    images, labels, first_shape, first_file = [], [], None, None
    mode = "RGB" if keep_rgb else "L"
    for label, class_dir in enumerate(class_dirs):
        files = [p for p in list_dir(class_dir) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"{class_dir}: class folder has no images (PNG or JPEG); add some or remove the folder")
        for file in files:
            array = _read_image(file, mode)
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
