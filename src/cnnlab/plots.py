"""Figures, drawn with matplotlib from datasets and run directories only (never from the engine)."""

from __future__ import annotations

import math

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from cnnlab.runs import atomic_target  # noqa: E402
from cnnlab.text import visible  # noqa: E402


def shown_safely(fig):
    """Every label, title and tick of the figure with control characters shown, not obeyed."""
    for text in fig.findobj(matplotlib.text.Text):
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text.get_text()):
            text.set_text(visible(text.get_text()))
    return fig


def save_figure(fig, path: Path) -> Path:
    shown_safely(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _show_image(ax, image: np.ndarray) -> None:
    """image: C x H x W uint8."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.transpose(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def preview_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
                 per_class: int = 8, seed: int = 0) -> Path:
    """A grid with one row of random examples per class."""
    rng = np.random.default_rng(seed)
    n = len(class_names)
    fig, axes = plt.subplots(n, per_class, figsize=(per_class * 1.0, n * 1.05), squeeze=False)
    for row, name in enumerate(class_names):
        idx = np.flatnonzero(labels == row)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for col in range(per_class):
            ax = axes[row, col]
            if col < len(pick):
                _show_image(ax, images[pick[col]])
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Examples per class")
    return save_figure(fig, path)


# ------------------------------------------------------------------ figures of one run


def epoch_axis(ax, epochs) -> None:
    """Whole epochs on the x axis; one epoch alone gets its one tick (the integer locator falls back to
    fractions, 0.95 to 1.05, where fewer than two whole numbers are in view)."""
    epochs = list(epochs)
    if len(set(epochs)) == 1:
        ax.set_xticks([epochs[0]])
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def accuracy_loss_plot(history: list[dict], name: str, path: Path) -> Path:
    """The report's acc_plot: training/validation accuracy and loss against epochs (validation only where the
    run had a split: without one its values are NaN)."""
    epochs = [int(r["epoch"]) for r in history]
    fig, ax = plt.subplots(figsize=(10, 6))
    for key, label in (("train_accuracy", "training accuracy"), ("train_loss", "training loss"),
                       ("val_accuracy", "validation accuracy"), ("val_loss", "validation loss")):
        values = [float(r[key]) for r in history]
        if not all(math.isnan(v) for v in values):
            ax.plot(epochs, values, marker="o" if len(epochs) < 15 else None, label=label)
    ax.set_title(f"{name} Accuracy and Loss")
    ax.set_xlabel("epochs")
    epoch_axis(ax, epochs)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def confusion_plot(matrix: list[list[int]], class_names: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    return save_figure(confusion_figure(matrix, class_names, title), path)


def confusion_figure(matrix, class_names: list[str], title: str = "Confusion matrix"):
    """The confusion matrix as a figure: counts, or shares (values with a fraction print with 2 decimals)."""
    cm = np.asarray(matrix)
    integral = np.issubdtype(cm.dtype, np.integer)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]) if integral else f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    return fig


def mistakes_grid(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path,
                  count: int = 24) -> Path:
    """The most confident mistakes: true class, predicted class and its probability."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    return save_figure(mistakes_figure(images, labels, probs, class_names, order), path)


def mistakes_figure(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                    order: np.ndarray, title: str = "Most confident mistakes", losses: np.ndarray | None = None):
    """A grid of the images at `order`, each titled with its true and predicted class (and loss if given)."""
    predicted = probs.argmax(axis=1)
    cols = 8
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.axis("on")
        _show_image(ax, images[i])
        extra = f"\nloss {losses[i]:.2f}" if losses is not None else ""
        ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[predicted[i]]} {probs[i, predicted[i]]:.2f}"
                     + extra, fontsize=7)
    fig.suptitle(title if len(order) else "No mistakes")
    return fig


def ensemble_growth_plot(growth: dict[str, list[float]], path: Path, title: str) -> Path:
    """Ensemble accuracy against the number of members voting."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for split, values in growth.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{split} accuracy")
    ax.set_xlabel("members voting")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------ figures across models (the study report)


def comparison_plot(groups: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Accuracy over repeats: each run as a point, the mean as a bar and ± one standard deviation,
    per model, on validation and test side by side."""
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) + 2), 4.5))
    for offset, split, color in ((-0.15, "val", "tab:blue"), (0.15, "test", "tab:orange")):
        for i, name in enumerate(names):
            values = np.asarray(groups[name].get(split, []), dtype=float) * 100
            if not len(values):
                continue
            x = i + offset + np.linspace(-0.05, 0.05, len(values)) if len(values) > 1 else np.array([i + offset])
            ax.scatter(x, values, s=18, color=color, alpha=0.7, label=split if i == 0 else None, zorder=3)
            ax.errorbar(i + offset, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0, fmt="_",
                        color="black", markersize=16, capsize=4, zorder=4)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy over repeats (points: runs; bars: mean ± std)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def accuracy_time_plot(points: dict[str, tuple[float, float, float, float]], path: Path) -> Path:
    """Mean test (or validation) accuracy against mean training time per run, with their spreads."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (seconds, seconds_sd, accuracy, accuracy_sd) in points.items():
        ax.errorbar(seconds, accuracy * 100, xerr=seconds_sd, yerr=accuracy_sd * 100, fmt="o", capsize=3, label=name)
        ax.annotate(name, (seconds, accuracy * 100), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training time per run (s, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against training time")
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def validation_curves_plot(curves: dict[str, list[dict]], path: Path) -> Path:
    """Validation accuracy against epochs, one line per model (its median run)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, history in curves.items():
        rows = [r for r in history if r.get("val_accuracy") not in (None, "", "nan")]
        ax.plot([int(r["epoch"]) for r in rows], [100 * float(r["val_accuracy"]) for r in rows],
                marker="o" if len(rows) < 15 else None, label=name)
    ax.set_xlabel("epochs")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy of every model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def training_curves_plot(curves: dict[str, tuple[list[dict], list[list[dict]]]], path: Path) -> Path:
    """Per model, training (dashed) and validation (solid) accuracy and loss against epochs: the median run's
    line, with the range over the repeats shaded. curves: label -> (median run's history, every run's)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (name, (median, every)) in enumerate(curves.items()):
        color = colors[n % len(colors)]
        for ax, key, scale in ((axes[0], "accuracy", 100), (axes[1], "loss", 1)):
            for split, style in (("train", "--"), ("val", "-")):
                column = f"{split}_{key}"
                values = {}
                for history in every:
                    for row in history:
                        if row.get(column) not in (None, "", "nan"):
                            values.setdefault(int(row["epoch"]), []).append(scale * float(row[column]))
                if not values:
                    continue
                epochs = sorted(values)
                if len(every) > 1:
                    ax.fill_between(epochs, [min(values[e]) for e in epochs], [max(values[e]) for e in epochs],
                                    color=color, alpha=0.15, linewidth=0)
                rows = [r for r in median if r.get(column) not in (None, "", "nan")]
                ax.plot([int(r["epoch"]) for r in rows], [scale * float(r[column]) for r in rows], style, color=color,
                        marker="o" if len(rows) < 15 else None, markersize=3,
                        label=f"{name} {'training' if split == 'train' else 'validation'}")
    for ax, label in ((axes[0], "accuracy (%)"), (axes[1], "loss")):
        ax.set_xlabel("epochs")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Training (dashed) and validation (solid), median run; shaded: range over repeats")
    return save_figure(fig, path)


def confusion_panels(predictions: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str], path: Path,
                     title: str) -> Path:
    """Counts and row-normalised confusion matrices (scikit-learn's ConfusionMatrixDisplay) for each split."""
    from sklearn.metrics import ConfusionMatrixDisplay  # lazy, as in cnnlab.metrics

    k = len(class_names)
    panels = [(split, norm) for split in predictions for norm in (None, "true")]
    size = 1.2 + 0.55 * k
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False,
                             constrained_layout=True)  # room for every panel's class names
    for ax, (split, norm) in zip(axes[0], panels):
        labels, predicted = predictions[split]
        ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=list(range(k)), display_labels=class_names,
                                                normalize=norm, ax=ax, colorbar=False, xticks_rotation=45,
                                                values_format=".2f" if norm else "d", cmap="Blues",
                                                text_kw={"fontsize": 7})
        ax.set_title(f"{split}: {'share of each true class' if norm else 'counts'}", fontsize=10)
    fig.suptitle(title)
    return save_figure(fig, path)
