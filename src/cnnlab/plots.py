"""Figures, drawn with matplotlib from datasets and run directories only (never from the engine)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnlab.runs import atomic_target  # noqa: E402


def _save(fig, path: Path) -> Path:
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
    return _save(fig, path)
