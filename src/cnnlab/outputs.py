"""Where a command may write its output: never over its input, never over a file cnnlab keeps in a folder it
manages (a run, an ensemble, a study, a tune folder), never among the images of an input folder.

`cnnlab predict -o in.csv` replaced the test CSV it read; `evaluate --json RUN/metrics.json` left the run unusable;
`data preview -o imgs/cat/0.png` replaced a training image. Each is now one line before any work."""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.data import BUILTIN
from cnnlab.data.idx import idx_file
from cnnlab.data.image_folders import IMAGE_SUFFIXES
from cnnlab.errors import UserError, option
from cnnlab.runs import CHECKPOINT, CONFIG, ENV, HISTORY, LOGITS, METRICS, MODEL, OWNER_LOCK, SAMPLES, WEIGHTS

# The names cnnlab gives files in the folders it manages: a run, an ensemble (with groups.py's files), a study, a
# tune folder. Spelled here as text: this module sits below the modules
# that write them (tests/test_output_paths.py checks the list against their constants).
RUN_FILES = (CONFIG, ENV, HISTORY, METRICS, CHECKPOINT, LOGITS, WEIGHTS, MODEL, SAMPLES)
OWN_NAMES = frozenset(RUN_FILES + (
    OWNER_LOCK, "acc_loss.png", "confusion_val.png", "mistakes_val.png",  # evaluation.FIGURES
    "ensemble_settings.json", "ensemble.json", "growth.png", "groups.json", ".lock",  # ensembles, groups
    "study.json",  # studies
    "optuna.journal", "optuna.journal.lock", "trials.csv", "best.json", "tune.json", "tune.html",  # search
    "optimization_history.png", "param_importances.png"))
GROUP_MARKERS = {"ensemble_settings.json": "an ensemble", "study.json": "a study", "optuna.journal": "a tune folder"}


def managed_folder(folder: Path) -> str | None:
    """What cnnlab keeps in `folder` ('a run', 'an ensemble', 'a study', 'a tune folder'), or None. A run needs
    two of its files: a lone config.json or model.json of another tool's does not make a folder cnnlab's."""
    for marker, kind in GROUP_MARKERS.items():
        if (folder / marker).is_file():
            return kind
    return "a run" if sum((folder / name).is_file() for name in RUN_FILES) >= 2 else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # hard links too
    except OSError:
        pass
    return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def require_free_output(path: str | Path, inputs=(), what: str = "output") -> Path:
    """Refuse, before any work, an output path whose writing would destroy what a command reads or cnnlab keeps.

    The rule (the least surprising one: results beside a run stay allowed, as export's RUN/model.onnx is):
    - not a folder, and not any of `inputs` (the same file after links are resolved, hard links included);
    - not an image (.png, .jpg, ...) inside an input image folder: it would be read as one of them (an IDX
      folder reads none; a built-in dataset's name is no folder);
    - not one of cnnlab's own names (OWN_NAMES: config.json, metrics.json, history.csv, ...) in a folder cnnlab
      manages (managed_folder), neither where it is written nor where a link there points.
    `what` names the option in the message ("output": '--output' or 'output=' as the user gave it). Returns the
    path."""
    path = Path(path)
    shown = option(what, path) if what else str(path)
    if path.is_dir():
        raise UserError(f"{shown}: is a folder; give a file name")
    real = Path(os.path.realpath(path))
    for given in inputs:
        if given is None:
            continue
        if str(given) in BUILTIN:  # the readers take a built-in name before a folder of that name
            continue
        source = Path(os.path.expanduser(str(given)))  # as the readers expand it
        if source.is_dir():
            # anywhere in an image folder (predict reads its loose files too); an IDX folder reads no image
            if real.is_relative_to(os.path.realpath(source)) and real.suffix.lower() in IMAGE_SUFFIXES and \
                    not _idx_folder(source):
                raise UserError(f"{shown}: inside the input folder {source}, where it would be read as one of its "
                                "images; write it elsewhere")
        elif _same_file(path, source):
            raise UserError(f"{shown}: that is the input {source}; writing there would replace it: give another "
                            "file name")
    for place in {Path(os.path.realpath(path.parent)) / path.name, real}:  # where it is written, where a link points
        kind = managed_folder(place.parent) if place.name in OWN_NAMES else None
        if kind:
            raise UserError(f"{shown}: {place.name} is a file cnnlab keeps in {kind} ({place.parent}); writing there "
                            "would damage it: give another file name or folder")
    return path


def _idx_folder(folder: Path) -> bool:
    """Whether `folder` is read as IDX files (the images beside them are never read)."""
    return any(idx_file(folder, f"{prefix}-{kind}") is not None
               for prefix in ("train", "t10k", "test") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
