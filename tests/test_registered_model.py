"""A model of the user's own, registered under a name with cnnlab.register_model: it trains, predicts,
evaluates, exports and joins a study and an ensemble like the built-in models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlab

from conftest import make_images

FAST = dict(epochs=1, batch_size=32, device="cpu", precision="fp32")


@cnnlab.register_model("test-tiny-net", description="a test's own model", min_image_size=4)
def tiny_net(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, num_classes))


@pytest.fixture(scope="module")
def arrays():
    return make_images(150, 16, classes=3), make_images(30, 16, classes=3, seed=7)


def test_a_registered_model_goes_everywhere_a_built_in_one_does(arrays, tmp_path):
    (x, y), (xt, yt) = arrays
    assert "test-tiny-net" in cnnlab.list_models()
    run = cnnlab.train("test-tiny-net", (x, y, xt, yt), out=tmp_path / "r", progress=False, **FAST)
    assert run.predict(xt[:5]).shape == (5,) and 0 <= cnnlab.evaluate(run, "test")["accuracy"] <= 1
    onnx = cnnlab.export(run)
    assert onnx["argmax_agreement"] > 0.9 and torch.equal(torch.tensor(run.predict(xt[:3])),
                                                          torch.tensor(cnnlab.predict(run, xt[:3])))
    study = cnnlab.study("test-tiny-net", 1, (x, y, xt, yt), out=tmp_path / "s", report=False,
                         say=lambda s: None, progress=False, **FAST)
    assert len(study["runs"]) == 1
    manifest = cnnlab.ensemble("test-tiny-net", 2, 0.0, data=(x, y, xt, yt), out=tmp_path / "e", say=lambda s: None,
                               progress=False, **FAST)
    assert manifest["qualified"] == 2
