"""Issue 21: training a model of your own (an nn.Module or a factory), reloading it only with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab

from conftest import make_images, write_npz_dataset

SETTINGS = dict(epochs=2, batch_size=16, device="cpu", precision="fp32", checkpoint_every=0, progress=False)


class TinyNet(nn.Module):
    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, num_classes))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "d.npz", 120, 30, size=12)


@pytest.mark.parametrize("kind", ["factory", "module"])
def test_train_a_module_or_factory_then_reload_it_only_with_it(data, tmp_path, kind):
    given = TinyNet if kind == "factory" else TinyNet(num_classes=3)
    before = {k: v.clone() for k, v in given.state_dict().items()} if kind == "module" else None
    run = cnnlab.train(given, str(data), out=tmp_path, **SETTINGS)
    assert run.metrics["val_accuracy"] > 0.6
    spec = json.loads((run.path / "model.json").read_text())["spec"]
    assert spec["name"] == "custom" and spec["class"] == f"{__name__}.TinyNet"
    assert json.loads((run.path / "config.json").read_text())["model"] == "custom"
    if kind == "module":  # the instance given is copied, never trained in place
        assert all(torch.equal(before[k], v) for k, v in given.state_dict().items())
    images, _ = make_images(8, 12)
    expected = run.predict(images)
    with pytest.raises(cnnlab.UserError, match=r"model of your own \(.*TinyNet\); pass it"):
        cnnlab.load_run(run.path).predict(images)
    assert np.array_equal(cnnlab.load_run(run.path, model=TinyNet).predict(images), expected)
    assert cnnlab.evaluate(run.path, "val")["accuracy"] == pytest.approx(run.metrics["val_accuracy"])  # stored logits


def test_a_module_is_reinitialised_per_seed():
    from cnnlab.models.custom import build_custom

    net = TinyNet()

    def built(seed):
        torch.manual_seed(seed)  # as engine.setup.prepare does before building
        return build_custom(net, num_classes=3, in_chans=1, image_size=12).body[0].weight

    assert torch.equal(built(1), built(1)) and not torch.equal(built(1), built(2))
    assert not torch.equal(built(1), net.body[0].weight)


def test_the_name_custom_alone_is_refused(data, tmp_path):
    with pytest.raises(cnnlab.UserError, match="model custom: a model of your own"):
        cnnlab.train("custom", str(data), out=tmp_path, **SETTINGS)
