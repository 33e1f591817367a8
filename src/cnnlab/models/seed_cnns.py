"""The report's sequential CNNs (section 1.1) and its tuned Kaggle model (section 1.3), layer for layer.

Keras conventions are kept so parameter counts match the report exactly: ReLU after every conv and
hidden dense layer, BatchNorm after the activation, Glorot-uniform init, 'valid' padding unless the
report's shapes show 'same'.
"""

from __future__ import annotations

from torch import nn

from .layers import Dropout, Flatten
from .registry import flat_features, keras_bn, keras_init, register_model


def _conv(cin: int, cout: int, padding: str | int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=padding), nn.ReLU(inplace=True)]


def _head(features: nn.Sequential, layers: list[nn.Module]) -> nn.Sequential:
    return keras_init(nn.Sequential(*features, Flatten(), *layers))


DROPOUT = {"type": "float", "low": 0.0, "high": 0.9}
UNITS = {"type": "categorical", "choices": [128, 256, 512]}


@register_model("cnn1", description="Report CNN1: one conv, max-pool, dropout, dense 128",
                min_image_size=4, tunable={"dropout": DROPOUT, "dense": UNITS})
def cnn1(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout: float = 0.5,
         dense: int = 128) -> nn.Module:
    """Conv2D(32, 3x3, valid) -> MaxPool 2 -> Dropout(0.5, as in the report's code) -> Dense(128) -> Dense(classes)."""
    features = nn.Sequential(*_conv(in_chans, 32, 0), nn.MaxPool2d(2), Dropout(dropout))
    flat = flat_features(features, in_chans, image_size, "cnn1")
    return _head(features, [nn.Linear(flat, dense), nn.ReLU(inplace=True), nn.Linear(dense, num_classes)])


def _cnn2_features(in_chans: int, conv_dropout: float, extra_block: bool) -> list[nn.Module]:
    layers = [*_conv(in_chans, 32, 1), keras_bn(32),
              *_conv(32, 32, 1), keras_bn(32), Dropout(conv_dropout),
              *_conv(32, 64, 1), nn.MaxPool2d(2), Dropout(conv_dropout),
              *_conv(64, 128, 1), keras_bn(128), Dropout(conv_dropout)]
    if extra_block:  # CNN3's extra block: a valid 3x3 conv to 256 channels
        layers += [*_conv(128, 256, 0), keras_bn(256), Dropout(conv_dropout)]
    return layers


def _cnn2_dense(flat: int, num_classes: int, dense_dropout: float) -> list[nn.Module]:
    return [nn.Linear(flat, 512), nn.ReLU(inplace=True), keras_bn(512, 1), Dropout(dense_dropout),
            nn.Linear(512, 128), nn.ReLU(inplace=True), keras_bn(128, 1), Dropout(dense_dropout),
            nn.Linear(128, num_classes)]


def _cnn2_family(name: str, extra_block: bool, num_classes: int, in_chans: int, image_size: int,
                 conv_dropout: float, dense_dropout: float) -> nn.Module:
    features = nn.Sequential(*_cnn2_features(in_chans, conv_dropout, extra_block))
    flat = flat_features(features, in_chans, image_size, name)
    return _head(features, _cnn2_dense(flat, num_classes, dense_dropout))


@register_model("cnn2", description="Report CNN2: four convs with BatchNorm, dense 512-128",
                min_image_size=2, tunable={"conv_dropout": DROPOUT, "dense_dropout": DROPOUT})
def cnn2(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, conv_dropout: float = 0.25,
         dense_dropout: float = 0.25) -> nn.Module:
    """The report gives no dropout rates for CNN2; 0.25 everywhere is our choice (a common Keras default)."""
    return _cnn2_family("cnn2", False, num_classes, in_chans, image_size, conv_dropout, dense_dropout)


@register_model("cnn3", description="Report CNN3: CNN2 plus a conv-256 block",
                min_image_size=6, tunable={"conv_dropout": DROPOUT, "dense_dropout": DROPOUT})
def cnn3(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, conv_dropout: float = 0.25,
         dense_dropout: float = 0.25) -> nn.Module:
    """CNN2 with one more block; dropout rates are our choice, as for CNN2."""
    return _cnn2_family("cnn3", True, num_classes, in_chans, image_size, conv_dropout, dense_dropout)


@register_model("cnn4", description="Report CNN4: VGG-like, two conv pairs, dense 256-256",
                min_image_size=14, tunable={"conv_dropout": DROPOUT, "dense_dropout": DROPOUT, "dense": UNITS})
def cnn4(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, conv_dropout: float = 0.25,
         dense_dropout: float = 0.5, dense: int = 256) -> nn.Module:
    """Its second pooling is 3x3 (12 -> 4). Dropout rates are not in the report: 0.25 after pools, 0.5 after dense."""
    features = nn.Sequential(*_conv(in_chans, 32, 1), *_conv(32, 64, 1), nn.MaxPool2d(2), Dropout(conv_dropout),
                             *_conv(64, 128, 1), *_conv(128, 256, 0), nn.MaxPool2d(3), Dropout(conv_dropout))
    flat = flat_features(features, in_chans, image_size, "cnn4")
    return _head(features, [nn.Linear(flat, dense), nn.ReLU(inplace=True), Dropout(dense_dropout),
                                  nn.Linear(dense, dense), nn.ReLU(inplace=True), Dropout(dense_dropout),
                                  nn.Linear(dense, num_classes)])


@register_model("tuned-cnn", description="Report 1.3: the hyperas-tuned CNN behind the 0.9240 Kaggle vote",
                min_image_size=14, tunable={"dropout1": DROPOUT, "dropout2": DROPOUT, "dropout3": DROPOUT,
                                            "dropout4": DROPOUT, "dense1": UNITS, "dense2": UNITS})
def tuned_cnn(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout1: float = 0.13243678,
              dropout2: float = 0.25767502, dropout3: float = 0.31440486, dropout4: float = 0.12715375,
              dense1: int = 256, dense2: int = 512) -> nn.Module:
    """Conv 32-32 same, pool, conv 64-64 valid, BN, pool, dense 256 + BN, dense 512 + BN; hyperas's dropout rates."""
    features = nn.Sequential(*_conv(in_chans, 32, 1), *_conv(32, 32, 1), nn.MaxPool2d(2), Dropout(dropout1),
                             *_conv(32, 64, 0), *_conv(64, 64, 0), keras_bn(64), nn.MaxPool2d(2), Dropout(dropout2))
    flat = flat_features(features, in_chans, image_size, "tuned-cnn")
    return _head(features, [nn.Linear(flat, dense1), nn.ReLU(inplace=True), keras_bn(dense1, 1), Dropout(dropout3),
                                  nn.Linear(dense1, dense2), nn.ReLU(inplace=True), keras_bn(dense2, 1), Dropout(dropout4),
                                  nn.Linear(dense2, num_classes)])
