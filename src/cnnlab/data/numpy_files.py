"""NumPy files: an NPZ archive (images/labels, x_train/y_train[/x_test/y_test], x/y or X/y keys, optional
class_names) or an images .npy with its labels .npy beside it. Headers are checked before numpy allocates,
pickles are never loaded, and an NPZ holding two of those key sets is refused rather than one picked.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

from .common import (DECODE_ERRORS, RawSplit, is_os_level, check_claim, one_line, os_error, shorten,
                      validate_arrays)


def check_npy_header(fp, source: str, available: int) -> None:
    """Read an NPY header from `fp` and refuse object dtypes and sizes the data cannot hold.

    `available` is the byte count of the whole .npy stream; nothing is allocated here."""
    try:
        version = np.lib.format.read_magic(fp)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(fp)
    except DECODE_ERRORS as exc:
        if is_os_level(exc):
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
    except DECODE_ERRORS as exc:  # damaged member inside a valid zip
        if is_os_level(exc):
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
            raise UserError(f"{source}: class name {shorten(name)!r} appears twice; give every class its own name")
        seen.add(name)
    return names


def _key_set(layout: tuple[str | None, ...], keys: set[str]) -> str:
    """The keys of one NPZ layout that the archive holds, as "x_train/y_train/x_test"."""
    return "/".join(key for key in dict.fromkeys(layout) if key and key in keys)


def read_npz(path: Path) -> tuple[RawSplit, RawSplit | None]:
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise os_error(path, exc) from None
    with fp:
        start = fp.read(6)
        if start == b"\x93NUMPY":
            raise UserError(f"{path}: is an NPY file (one array), not an NPZ archive; rename it to .npy")
        if start.startswith(b"\x80"):  # pickle protocols 2 and later
            raise UserError(f"{path}: is a Python pickle, not an NPZ archive; cnnlab does not unpickle (loading one "
                            "can run code): save the arrays with numpy.savez")
        if not start.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # else numpy tries pickle and advises allow_pickle
            raise UserError(f"{path}: not an NPZ archive (a zip of .npy arrays; this file is not a zip); save it "
                            "with numpy.savez")
        fp.seek(0)
        try:
            archive = np.load(fp, allow_pickle=False)
        except DECODE_ERRORS as exc:  # numpy and zipfile raise several types for a damaged zip
            if is_os_level(exc):
                raise os_error(path, exc) from None
            raise UserError(f"{path}: cannot read as NPZ ({one_line(exc)}); save it with numpy.savez") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise UserError(f"{path}: not an NPZ archive; save it with numpy.savez")
        with archive:
            keys = set(archive.files)
            layouts = [layout for layout in _NPZ_KEYS if layout[0] in keys]
            if len(layouts) > 1:
                sets = [_key_set(layout, keys) for layout in layouts]
                listed = ", ".join(sets[:-1]) + " and " + sets[-1]
                raise UserError(f"{path}: holds {len(sets)} candidate datasets, keys {listed}; cnnlab will not guess "
                                "which is meant: save the NPZ again with one set of keys")
            for xk, yk, xtk, ytk in layouts:
                names = None
                if "class_names" in keys:
                    names = _class_names(_npz_member(path, archive, "class_names"), f"{path}[class_names]")

                def split(ik: str, lk: str | None) -> tuple[np.ndarray, np.ndarray | None]:
                    images = _npz_member(path, archive, ik)
                    labels = _npz_member(path, archive, lk) if lk in keys else None
                    return validate_arrays(images, labels, f"{path}[{ik}]", labels_source=f"{path}[{lk}]")

                train = RawSplit(*split(xk, yk), class_names=names)
                test = RawSplit(*split(xtk, ytk)) if xtk and xtk in keys else None
                return train, test
    raise UserError(f"{path}: NPZ needs arrays named images/labels or x_train/y_train[/x_test/y_test]; "
                    f"found {shorten(sorted(keys))}")


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
    except DECODE_ERRORS as exc:
        if is_os_level(exc):
            raise os_error(path, exc) from None
        raise UserError(f"{path}: cannot read as NPY ({one_line(exc)}); save it with numpy.save") from None


def read_npy(path: Path) -> RawSplit:
    """An images .npy; labels come from `<stem>_labels.npy` or `labels.npy` beside it (else unlabeled)."""
    images = load_npy(path)
    labels, labels_source = None, None
    for candidate in (path.with_name(f"{path.stem}_labels.npy"), path.with_name("labels.npy")):
        if candidate.is_file() and candidate != path:
            labels, labels_source = load_npy(candidate), f"{candidate}[labels]"
            break
    return RawSplit(*validate_arrays(images, labels, str(path), labels_source=labels_source))
