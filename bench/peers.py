"""The plain-PyTorch peers of bench/run.py: the report's models as a user writes them with torch.nn.

Each peer is the model of src/cnnlab/models/seed_cnns.py layer for layer (same layers, shapes and
trainable parameters for 28x28 grayscale input), written out by hand. They deliberately do not
import cnnlab: a model-level speed-up in cnnlab (fused layers, another memory layout, in-place
activations) must not speed up the peer too. PyTorch's default init and BatchNorm epsilon are kept,
as a user would; neither changes the cost of a step. tests/test_bench_peers.py checks that the
trainable parameter counts equal cnnlab's.
"""

from __future__ import annotations

from torch import nn


def cnn1(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(),          # 28 -> 26
        nn.MaxPool2d(2), nn.Dropout(0.5),        # 26 -> 13
        nn.Flatten(),
        nn.Linear(32 * 13 * 13, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _cnn2_convs() -> list[nn.Module]:
    return [
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),  # 28 -> 14
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128), nn.Dropout(0.25),
    ]


def _cnn2_dense(flat: int, num_classes: int) -> list[nn.Module]:
    return [
        nn.Flatten(),
        nn.Linear(flat, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.25),
        nn.Linear(512, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    ]


def cnn2(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(*_cnn2_convs(), *_cnn2_dense(128 * 14 * 14, num_classes))


def cnn3(num_classes: int = 10) -> nn.Module:
    extra = [nn.Conv2d(128, 256, 3), nn.ReLU(), nn.BatchNorm2d(256), nn.Dropout(0.25)]  # 14 -> 12
    return nn.Sequential(*_cnn2_convs(), *extra, *_cnn2_dense(256 * 12 * 12, num_classes))


def cnn4(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),       # 28 -> 14
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 256, 3), nn.ReLU(),       # 14 -> 12
        nn.MaxPool2d(3), nn.Dropout(0.25),       # 12 -> 4
        nn.Flatten(),
        nn.Linear(256 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, num_classes),
    )


def tuned_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.13243678),                     # 28 -> 14
        nn.Conv2d(32, 64, 3), nn.ReLU(),                             # 14 -> 12
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.BatchNorm2d(64),         # 12 -> 10
        nn.MaxPool2d(2), nn.Dropout(0.25767502),                     # 10 -> 5
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 256), nn.ReLU(), nn.BatchNorm1d(256), nn.Dropout(0.31440486),
        nn.Linear(256, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.12715375),
        nn.Linear(512, num_classes),
    )


PEERS = {"cnn1": cnn1, "cnn2": cnn2, "cnn3": cnn3, "cnn4": cnn4, "tuned-cnn": tuned_cnn}
INPUT_SHAPE = (1, 28, 28)  # what the peers are written for


def build_peer(name: str, num_classes: int = 10) -> nn.Module | None:
    """The hand-written peer of a cnnlab model, or None where there is none (e.g. the ResNets)."""
    builder = PEERS.get(name)
    return builder(num_classes) if builder else None


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
