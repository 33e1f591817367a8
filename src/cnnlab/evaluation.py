"""Evaluation from run directories alone: stored logits -> metrics and figures. Never retrains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab import runs
from cnnlab.errors import UserError
from cnnlab.metrics import classification_metrics, softmax


def run_logits(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(run_dir) / "logits.safetensors"
    tensors = runs.load_tensors(path)
    if f"{split}_logits" not in tensors:
        raise UserError(f"{run_dir}: no {split} split in this run (its dataset has no labeled test split)")
    return tensors[f"{split}_logits"].float().numpy(), tensors[f"{split}_labels"].numpy()


def evaluate_run(run_dir: Path, split: str = "val") -> dict:
    if split not in ("val", "test"):
        raise UserError(f"--split must be val or test, got {split!r}")
    run_dir = runs.require_run_dir(run_dir)
    meta = runs.read_json(run_dir / "model.json")
    logits, labels = run_logits(run_dir, split)
    return classification_metrics(labels, logits, meta["class_names"])


def history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise UserError(f"{run_dir}: no history.csv (no finished epoch yet)")
    return runs.read_csv_rows(path)


def plot_run(run_dir: Path, mistakes: bool = True) -> list[Path]:
    """acc_loss.png, confusion_val.png and mistakes_val.png inside the run directory."""
    from cnnlab import plots

    run_dir = runs.require_run_dir(run_dir)
    meta = runs.read_json(run_dir / "model.json")
    names = meta["class_names"]
    out = [plots.accuracy_loss_plot(history(run_dir), meta["spec"]["name"], run_dir / "acc_loss.png")]
    metrics = evaluate_run(run_dir, "val")
    out.append(plots.confusion_plot(metrics["confusion_matrix"], names, run_dir / "confusion_val.png",
                                    f"{meta['spec']['name']}: validation confusion matrix"))
    if mistakes:
        images = validation_images(run_dir)
        logits, labels = run_logits(run_dir, "val")
        out.append(plots.mistakes_grid(images, labels, softmax(logits), names, run_dir / "mistakes_val.png"))
    return out


def validation_images(run_dir: Path) -> np.ndarray:
    """The run's validation images, rebuilt from its config (the split is seeded, so it is the same one)."""
    from cnnlab.data import load_dataset, train_val_split

    cfg = runs.read_json(Path(run_dir) / "config.json")
    ds = load_dataset(cfg["data"], data_dir=cfg.get("data_dir"), classes=cfg.get("classes"))
    return train_val_split(ds, cfg["val_fraction"], cfg["split_seed"]).val.images.numpy()
