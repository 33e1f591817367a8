"""Evaluation from run directories alone: stored logits -> metrics and figures. Never retrains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab import plots, runs
from cnnlab.config import build_config
from cnnlab.data import train_val_split
from cnnlab.data.prepared import load_data
from cnnlab.errors import UserError
from cnnlab.metrics import classification_metrics, softmax
from cnnlab.models.custom import spec_label
from cnnlab.runs import RunDir

FIGURES = {"curves": "acc_loss.png", "confusion": "confusion_val.png", "mistakes": "mistakes_val.png"}


def evaluate_run(run_dir: Path, split: str = "val") -> dict:
    if split not in ("val", "test"):
        raise UserError(f"split: must be val or test, got {split!r}")
    run = RunDir(run_dir).require_finished()
    meta = run.read_model_meta()
    logits, labels = run.logits(split)
    return classification_metrics(labels, logits, meta["class_names"], meta.get("class_ids"))


def history(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).history()


def plot_run(run_dir: Path, mistakes: bool = True) -> list[Path]:
    """acc_loss.png, confusion_val.png and mistakes_val.png inside the run directory."""
    run = RunDir(run_dir).require_finished()
    if run.read_model_meta().get("ensemble"):
        raise UserError(f"{run_dir}: an ensemble directory; its figure is growth.png, and each member under "
                        "members/ is a run directory to plot")
    with run.owned():  # one writer at a time; as the owner it also clears a killed writer's temporary files
        return _plot(run, mistakes)


def _plot(run: RunDir, mistakes: bool) -> list[Path]:
    run_dir = run.path
    meta = run.read_model_meta()
    names = meta["class_names"]
    name = spec_label(meta["spec"]["name"], meta["spec"])
    out = [plots.accuracy_loss_plot(run.history(), name, run.file(FIGURES["curves"]))]
    if not run.has_logits("val"):
        return out  # trained without a validation split (val_fraction = 0)
    metrics = evaluate_run(run_dir, "val")
    out.append(plots.confusion_plot(metrics["confusion_matrix"], names, run.file(FIGURES["confusion"]),
                                    f"{name}: validation confusion matrix"))
    if mistakes:
        sample = validation_sample(run_dir)
        if sample is None:
            return out  # in-memory data from before samples were kept: no images for the gallery
        images, _, positions = sample
        logits, labels = run.logits("val")
        out.append(plots.mistakes_grid(images, labels[positions], softmax(logits[positions]), names,
                                       run.file(FIGURES["mistakes"])))
    return out


def validation_images(run_dir: Path) -> np.ndarray:
    """The run's validation images, rebuilt from its config (the split is seeded, so it is the same one)."""
    cfg = build_config(RunDir(run_dir).read_config())
    return train_val_split(load_data(cfg), cfg.val_fraction, cfg.split_seed).val.images.numpy()


def validation_sample(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(uint8 images, labels, their positions in the validation split): every validation image when the data
    can be reloaded, else the sample a run on in-memory arrays keeps (runs.SAMPLES); None when neither is
    there. An ensemble directory answers with its first member's (the members share one split)."""
    run = RunDir(run_dir)
    meta = run.read_model_meta() if run.file(runs.MODEL).is_file() else {}
    if meta.get("ensemble") and meta.get("members"):
        run = RunDir(Path(run_dir) / meta["members"][0])
    stored = run.samples()
    if stored is not None:
        return stored
    try:
        images = validation_images(run.path)
    except UserError:
        return None
    _, labels = run.logits("val") if run.file(runs.LOGITS).is_file() else (None, None)
    return images, labels if labels is not None else np.zeros(len(images), np.int64), np.arange(len(images))
