"""Datasets as uint8 tensors: built-in ones, files users bring, class subsets and splits.

`load_dataset` gives a labeled pool (`train`) and, when the source has one, the official test split,
which stays untouched. `train_val_split` carves the report's stratified, seeded 80/20
train/validation split out of the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import UserError, either, notice, option

from .builtin import BUILTIN, load_builtin
from .formats import (RawSplit, find_idx_pair, ignored_beside, list_dir, os_error, read_csv, read_idx_folder,
                      read_image_folder, read_npy, read_npz)
from .common import grayscale
from .idx import idx_images_in, is_idx_file, read_idx_images
from .image_folders import read_unlabeled_images

__all__ = ["Split", "Dataset", "Splits", "load_dataset", "load_unlabeled", "train_val_split",
           "parse_classes", "BUILTIN", "known_datasets"]


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor | None  # int64, N (None for an unlabeled split)
    ids: list[str] | None = None  # ids from the source (Kaggle test CSVs), else None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Dataset:
    name: str
    source: str  # where it was read from
    class_names: list[str]
    train: Split  # the labeled pool the train/validation split is carved from
    test: Split | None  # the official test split, kept apart
    class_ids: list[int]  # label in the source of each class (differs after --classes)
    verified: bool = False  # checksums matched an official release

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split | None
    dataset: Dataset


def known_datasets() -> list[str]:
    return sorted(BUILTIN)


def _to_split(raw: RawSplit, keep_rgb: bool) -> Split:
    images = raw.images
    if images.shape[1] == 3 and not keep_rgb:
        images = grayscale(images)
    labels = torch.from_numpy(raw.labels) if raw.labels is not None else None
    return Split(torch.from_numpy(np.ascontiguousarray(images)), labels, raw.ids)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:
        raise os_error(path, exc) from None


_FILE_SUFFIXES = (".npz", ".npy", ".csv", ".csv.gz")


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def _read_path(path: Path, keep_rgb: bool, train_classes: list[str] | None = None) -> tuple[RawSplit, RawSplit | None]:
    """The split(s) a path holds; train_classes: it is a test split, whose class folders match training's by name."""
    try:
        return _read_path_unguarded(path, keep_rgb, train_classes)
    except OSError as exc:  # anything the readers did not turn into a UserError themselves
        raise os_error(path, exc) from None


def _read_path_unguarded(path: Path, keep_rgb: bool, train_classes: list[str] | None) -> tuple[RawSplit, RawSplit | None]:
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: broken symbolic link or link loop; point it at the dataset")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    suffix = _suffix(path)
    if path.is_dir():
        if suffix in _FILE_SUFFIXES:
            raise UserError(f"{path}: is a folder, but its name says a {suffix} file; give the file's path")
        if find_idx_pair(path, "train"):
            return read_idx_folder(path)
        subdirs = {p.name for p in list_dir(path) if p.is_dir()}
        if {"train", "test"} <= subdirs:
            train = read_image_folder(path / "train", keep_rgb)
            test = read_image_folder(path / "test", keep_rgb, train_classes=train.class_names)  # matched by name
            ignored = ignored_beside(path)
            if ignored:  # said once both splits were read, so a refusal stays the only line
                notice(ignored)
            return train, test
        return read_image_folder(path, keep_rgb, train_classes=train_classes), None
    if suffix == ".npz":
        return read_npz(path)
    if suffix == ".npy":
        return read_npy(path), None
    if suffix in (".csv", ".csv.gz"):
        return read_csv(path), None
    raise UserError(f"{path}: unknown format {suffix or '(no extension)'}; use a folder of IDX files, "
                    ".npz, .npy, .csv, or a folder with one subfolder of images per class")


def parse_classes(spec: str | list | None, class_names: list[str]) -> list[int] | None:
    """'0,1,2' or 'Trouser,Bag' -> source label indices; None keeps all classes.

    A value that is a class name means that class (so folders named '3' and '7' are chosen by name);
    otherwise a whole number is a class index."""
    if spec is None or (isinstance(spec, (list, tuple)) and len(spec) == 0):
        return None
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if all(item == "" for item in items):
        raise UserError(f"classes: none listed; list at least 2 classes, e.g. 0,1 ({option('classes', '0,1')}), or leave "
                        "it out to keep all")
    known = f"known classes are 0..{len(class_names) - 1} ({', '.join(class_names)})"
    chosen = []
    for item in items:
        if item == "":
            raise UserError(f"classes {spec}: empty entry between commas; {known}")
        if item in class_names:
            idx = class_names.index(item)
        elif item.lstrip("-").isdecimal() and item.count("-") <= 1 and item.isascii():
            idx = int(item)
        else:
            raise UserError(f"classes: unknown class {item!r}; {known}")
        if not 0 <= idx < len(class_names):
            raise UserError(f"classes: class {idx} does not exist; this dataset has classes 0..{len(class_names) - 1}")
        if idx in chosen:
            raise UserError(f"classes: class {item!r} is listed twice")
        chosen.append(idx)
    if len(chosen) < 2:
        raise UserError(f"classes {spec}: keep at least 2 classes; a classifier needs at least two to tell apart")
    return chosen


def _keep_classes(split: Split, chosen: list[int]) -> Split:
    remap = torch.full((int(split.labels.max()) + 1,), -1, dtype=torch.int64)
    for new, old in enumerate(chosen):
        if old < len(remap):
            remap[old] = new
    new_labels = remap[split.labels]
    keep = new_labels >= 0
    ids = [i for i, k in zip(split.ids, keep.tolist()) if k] if split.ids else None
    return Split(split.images[keep].contiguous(), new_labels[keep], ids)


def load_dataset(data: str | Path = "fashion-mnist", *, data_dir: str | Path | None = None,
                 classes: str | list | None = None, keep_rgb: bool = False,
                 test_data: str | Path | None = None) -> Dataset:
    """Load a built-in dataset by name, or a file/folder the user brings."""
    data = str(data)
    verified = False
    if data in BUILTIN:
        raw_train, raw_test, folder = load_builtin(data, data_dir)
        names, source, name, verified = list(BUILTIN[data].class_names), str(folder), data, True
    elif _exists(Path(data).expanduser()) or any(c in data for c in "/\\.") or data.startswith("~"):
        path = Path(data).expanduser()
        raw_train, raw_test = _read_path(path, keep_rgb)
        name, source = path.stem, str(path)
        names = raw_train.class_names
    else:
        raise UserError(f"unknown dataset {data!r}; built-in datasets are {', '.join(known_datasets())}, "
                        "or give a path to an IDX folder, .npz, .npy, .csv or image folder")
    if test_data is not None:
        raw_test, _ = _read_path(Path(test_data).expanduser(), keep_rgb, raw_train.class_names)
    return assemble(raw_train, raw_test, name=name, source=source, class_names=names, verified=verified,
                    classes=classes, keep_rgb=keep_rgb, test_source=str(test_data) if test_data is not None else None)


class NoLabels(UserError):
    """Images without labels where training needs them (`data info` describes such a file instead)."""


def assemble(raw_train: RawSplit, raw_test: RawSplit | None, *, name: str, source: str, class_names: list[str] | None,
             verified: bool = False, classes: str | list | None = None, keep_rgb: bool = False,
             test_source: str | None = None) -> Dataset:
    """Read splits -> a checked Dataset: labels in range, one image size, --classes applied, every class present."""
    names = class_names
    if raw_train.labels is None:
        reader = either("`cnnlab predict RUN --input`", "cnnlab.submission(run, input)")
        raise NoLabels(f"{source}: the training data has no labels (a test file? {reader} reads it)")
    n_classes = len(names) if names else int(raw_train.labels.max()) + 1
    if not names and n_classes > len(raw_train.labels):  # some class would have no image; don't name a billion
        raise UserError(f"{source}: labels go up to {n_classes - 1} but there are only {len(raw_train.labels)} "
                        "training images, so some classes have none; number the classes 0..K-1 without gaps")
    for split_name, raw in (("train", raw_train), ("test", raw_test)):
        if raw is not None and raw.labels is not None and raw.labels.max() >= n_classes:
            what = f"the {n_classes} class_names" if names else f"{n_classes} classes"
            raise UserError(f"{source} ({split_name}): label {int(raw.labels.max())} is out of range; "
                            f"{what} means labels 0..{n_classes - 1}")
    names = names or [str(i) for i in range(n_classes)]
    train = _to_split(raw_train, keep_rgb)
    test = _to_split(raw_test, keep_rgb) if raw_test is not None else None
    if test is not None and test.images.shape[1:] != train.images.shape[1:]:
        raise UserError(f"{test_source or source}: test images are {tuple(test.images.shape[1:])} (C x H x W) but "
                        f"training images are {tuple(train.images.shape[1:])}; they must have one size and channel count")
    class_ids = list(range(n_classes))
    chosen = parse_classes(classes, names)
    if chosen is not None:
        train = _keep_classes(train, chosen)
        if test is not None and test.labels is not None:
            test = _keep_classes(test, chosen)
        names, class_ids = [names[i] for i in chosen], chosen
    missing = sorted(set(range(len(names))) - set(train.labels.unique().tolist()))
    if missing:
        hint = "" if class_names or chosen is not None else (  # numbered labels: the gap is in the numbering
            f" (labels {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''} never occur); number "
            f"the classes 0..K-1 without gaps, or choose some with {option('classes')}")
        raise UserError(f"{source}: class {names[missing[0]]!r} has no training images{hint}")
    if len(names) < 2:
        raise UserError(f"{source}: only one class ({names[0]!r}); a classifier needs at least 2 classes, "
                        "add images of another class")
    return Dataset(name, source, names, train, test, class_ids, verified)


def load_unlabeled(path: str | Path, keep_rgb: bool = False) -> Split:
    """Images to predict on, labels ignored: a Kaggle test CSV, NPZ/NPY, an IDX images file or folder, or a folder
    of images (flat, as Kaggle ships a test set, or in subfolders; ids are the file names' stems). A source holding
    a training and a test split (the IDX folder, an NPZ with x_train and x_test, train/ and test/ image folders)
    gives its test split, the images a submission is for (it gave the training split: 60,000 Fashion-MNIST
    predictions, not 10,000)."""
    path = Path(path).expanduser()
    try:
        raw = _read_unlabeled(path, keep_rgb)
    except OSError as exc:  # anything the readers did not turn into a UserError themselves
        raise os_error(path, exc) from None
    return _to_split(raw, keep_rgb)


def _read_unlabeled(path: Path, keep_rgb: bool) -> RawSplit:
    suffix = _suffix(path)
    if path.is_dir() and suffix not in _FILE_SUFFIXES:
        images = idx_images_in(path)
        if images is not None:  # only the images file: predict needs no labels, nor the training split
            return read_idx_images(images)
        if {"train", "test"} <= {p.name for p in list_dir(path) if p.is_dir()}:
            return read_unlabeled_images(path / "test", keep_rgb)
        return read_unlabeled_images(path, keep_rgb)
    if path.is_file() and suffix not in _FILE_SUFFIXES:
        if is_idx_file(path):
            return read_idx_images(path)
        raise UserError(f"{path}: unknown format {suffix or '(no extension)'}; predict reads a .csv, .npz or .npy "
                        "file, an IDX images file (t10k-images-idx3-ubyte.gz) or a folder of images")
    if suffix in (".csv", ".csv.gz") and path.is_file():
        return read_csv(path, with_labels=False)
    raw, test = _read_path(path, keep_rgb)
    return test if test is not None else raw


def train_val_split(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """The report's split: stratified by class, seeded, so every run and member sees the same one."""
    if not 0 < val_fraction < 1:
        raise UserError(f"{option('val_fraction')} must lie strictly between 0 and 1, got {val_fraction}")
    labels = dataset.train.labels.numpy()
    counts = np.bincount(labels, minlength=dataset.num_classes)
    if counts.min() < 2 or round(len(labels) * val_fraction) < dataset.num_classes:
        raise UserError(f"{dataset.source}: too few images ({len(labels)}, smallest class {counts.min()}) for a "
                        f"stratified {val_fraction:.0%} validation split")
    if len(labels) - round(len(labels) * val_fraction) < dataset.num_classes:
        raise UserError(f"val_fraction {val_fraction:g} leaves {len(labels) - round(len(labels) * val_fraction)} of "
                        f"{len(labels)} images for training, fewer than the {dataset.num_classes} classes; "
                        "lower val_fraction (the report used 0.2)")
    from sklearn.model_selection import train_test_split  # lazy, as in cnnlab.metrics

    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=val_fraction, random_state=seed,
                                          stratify=labels)
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))

    def take(idx: torch.Tensor) -> Split:
        return Split(dataset.train.images[idx].contiguous(), dataset.train.labels[idx])

    return Splits(take(train_idx), take(val_idx), dataset.test, dataset)


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of pixel values scaled to 0..1 (used to normalize on the device)."""
    x = images.to(torch.float64) / 255.0
    return float(x.mean()), float(x.std())

