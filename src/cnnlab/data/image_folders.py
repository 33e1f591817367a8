"""Image folders: one subfolder of images per class, named by the class; images read through Pillow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

from .formats import RawSplit, _is_os_level, one_line, os_error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


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
