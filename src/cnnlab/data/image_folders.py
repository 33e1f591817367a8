"""Image folders: one subfolder of images per class, named by the class, or train/ and test/ folders of those.

Images are read through Pillow and must all have one size. Images in subfolders of a class folder belong
to that class (as in Keras's image_dataset_from_directory; links to folders below a class folder are not
followed). The test split's classes are matched to the training split's by name: a test class that
training lacks is refused, a subset keeps training's indices. Folders beside train/ and test/ are ignored
with a one-line warning on stderr; `cnnlab data info` lists them and counts the images found in subfolders.

Images to predict (`read_unlabeled_images`) may lie in one flat folder, the usual Kaggle test folder, or in
subfolders; their ids are the file names' stems.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.errors import UserError, notice

from .common import RawSplit, is_os_level, one_line, os_error, shorten
from .idx import find_idx_pair

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "test")


def list_dir(folder: Path) -> list[Path]:
    """A folder's entries, sorted, hidden ones (".name") left out; OS errors become UserErrors."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise os_error(folder, exc) from None


def _contains(outer: str, inner: str) -> bool:
    """Whether the real path `inner` is `outer` or lies below it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def class_images(class_dir: Path, root: Path, skipped: list[Path] | None = None) -> tuple[list[Path], int]:
    """The image files of one class folder of `root`, its subfolders' included; and how many lie in subfolders.

    Sorted folder by folder, depth first; hidden names skipped; links to folders below the class folder not
    followed; a class folder that links to `root` or above it is not descended into (it would hold the
    dataset itself). An entry named like an image is taken for one, even a folder (reading it says so).
    Files not named like images are appended to `skipped` when it is given."""
    files, nested = [], 0
    descend = not _contains(os.path.realpath(class_dir), os.path.realpath(root))
    pending = [(class_dir, 0)]
    while pending:
        folder, depth = pending.pop()
        subfolders = []
        for entry in list_dir(folder):
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                files.append(entry)
                nested += depth > 0
            elif descend and not entry.is_symlink() and entry.is_dir():
                subfolders.append((entry, depth + 1))
            elif skipped is not None and not entry.is_dir():
                skipped.append(entry)
        pending.extend(reversed(subfolders))
    return files, nested


def ignored_beside(root: Path) -> str | None:
    """The one line saying which folders beside `root`'s train/ and test/ are ignored (None when there are none)."""
    ignored = [p.name for p in list_dir(root) if p.name not in SPLITS and p.is_dir()]
    if not ignored:
        return None
    one = len(ignored) == 1
    return (f"{root}: ignoring the folder{'' if one else 's'} {shorten(', '.join(ignored))} beside train/ and test/ "
            f"(only those two are read); move {'it' if one else 'them'} elsewhere to silence this")


def _read_image(file: Path, mode: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": extra lines on stderr, the image still reads
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # this one, though, refuses the image
            with Image.open(file) as img:
                frames = getattr(img, "n_frames", 1)
                if frames > 1:  # reading the first frame alone would pass off a part as the whole
                    raise UserError(f"{file}: animated or multi-page image ({frames} frames); cnnlab reads one image "
                                    "per file, save each frame you want as its own PNG")
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
        if is_os_level(exc):
            raise os_error(file, exc) from None
        raise UserError(f"{file}: cannot read image ({one_line(exc)}); replace or remove it") from None


def read_image_folder(folder: Path, keep_rgb: bool = False, *, train_classes: list[str] | None = None) -> RawSplit:
    """One subfolder per class, named by the class; images read through Pillow, all of one size.

    With `train_classes` (the test/ split of a train/ + test/ dataset) the labels are those classes' indices,
    matched by name; a class not among them is refused."""
    class_dirs = [p for p in list_dir(folder) if p.is_dir()]
    if not class_dirs:
        raise UserError(f"{folder}: no class subfolders (expected one folder of images per class)")
    names = [p.name for p in class_dirs]
    if train_classes is not None:
        index = {name: i for i, name in enumerate(train_classes)}
        unknown = next((name for name in names if name not in index), None)
        if unknown is not None:
            raise UserError(f"{folder / unknown}: test class {shorten(unknown)!r} is not a training class (training "
                            f"has {shorten(', '.join(train_classes))}); classes are matched by name: rename the folder "
                            "to a training class or remove it")
        class_ids, names = [index[name] for name in names], list(train_classes)
    else:
        class_ids = list(range(len(names)))
    files, labels = [], []
    for label, class_dir in zip(class_ids, class_dirs):
        found, _ = class_images(class_dir, folder)
        if not found:
            raise UserError(f"{class_dir}: class folder has no images (PNG or JPEG); add some or remove the folder")
        files += found
        labels += [label] * len(found)
    images = _read_images(files, keep_rgb)
    return RawSplit(images, np.asarray(labels, dtype=np.int64), class_names=names)


def _read_images(files: list[Path], keep_rgb: bool) -> np.ndarray:
    """The files' images, all of one size, as uint8 N x C x H x W (grayscale unless keep_rgb)."""
    images, first_shape, first_file = [], None, None
    mode = "RGB" if keep_rgb else "L"
    for file in files:
        array = _read_image(file, mode)
        if first_shape is None:
            first_shape, first_file = array.shape, file
        elif array.shape != first_shape:
            raise UserError(f"{file}: image size {array.shape[1]}x{array.shape[0]} differs from "
                            f"{first_file.name}'s {first_shape[1]}x{first_shape[0]}; mixed image sizes "
                            "are not supported, resize them to one size")
        images.append(array)
    stacked = np.stack(images)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(stacked)


def natural_key(name: str) -> tuple:
    """Sort key putting 2.png before 10.png: runs of digits compare as numbers (ties broken by the name)."""
    parts = re.split(r"([0-9]+)", name)  # digits at odd places, so no str is ever compared with an int
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def _ids(files: list[Path], folder: Path) -> list[str]:
    """The files' stems; where two files share a stem (cat/0.png, dog/0.png), every id is the path below
    `folder` without suffix (cat/0, dog/0), so the ids stay one per file and one kind for the whole input."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    ids = [f.relative_to(folder).with_suffix("").as_posix() for f in files]
    first: dict[str, Path] = {}
    for file, id_ in zip(files, ids):
        if id_ in first:  # a.png beside a.jpg: no id can tell them apart
            raise UserError(f"{file}: has the same name as {first[id_]} but for the suffix, so both would get the "
                            f"id {shorten(id_)!r}; a submission needs one id per image: rename or remove one")
        first[id_] = file
    return ids


def read_unlabeled_images(folder: Path, keep_rgb: bool = False) -> RawSplit:
    """The images in `folder` and its subfolders (no labels), to predict on; ids are the file names' stems.

    Files are sorted by path, numbers in names by value (2.png before 10.png); subfolders are read as class
    folders are (hidden names skipped, links to folders below them not followed); files not named like
    images are skipped with a one-line warning."""
    files, skipped = [], []
    for entry in list_dir(folder):
        if entry.suffix.lower() in IMAGE_SUFFIXES:
            files.append(entry)
        elif entry.is_dir():
            files += class_images(entry, folder, skipped)[0]
        else:
            skipped.append(entry)
    if not files:
        raise UserError(f"{folder}: no images (PNG, JPEG, ...) in the folder or its subfolders; give the folder "
                        "that holds the images to predict")
    files.sort(key=lambda f: tuple(map(natural_key, f.relative_to(folder).parts)))
    ids = _ids(files, folder)
    images = _read_images(files, keep_rgb)
    if skipped:  # said after reading, so a refusal stays the only line
        names = ", ".join(str(f.relative_to(folder)) for f in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        notice(f"{folder}: skipped {len(skipped)} file{'s' * (len(skipped) != 1)} not named like an image "
               f"({shorten(names)}); only {', '.join(sorted(IMAGE_SUFFIXES))} files are read")
    return RawSplit(images, None, ids=ids)


def image_folder_notes(path: Path) -> list[str]:
    """What `cnnlab data info` says of an image-folder dataset beyond counts: folders ignored beside train/
    and test/, and how many images were found in subfolders of class folders."""
    if not path.is_dir() or find_idx_pair(path, "train"):
        return []
    notes, splits = [], [path]
    if set(SPLITS) <= {p.name for p in list_dir(path) if p.is_dir()}:
        splits = [path / name for name in SPLITS]
        notes.append(ignored_beside(path))
    nested = sum(class_images(c, split)[1] for split in splits for c in list_dir(split) if c.is_dir())
    if nested:
        notes.append(f"{nested} image{'s' * (nested != 1)} in subfolders of class folders included")
    return [note for note in notes if note]
