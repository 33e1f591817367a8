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


def test_a_notebook_cell_run_twice_registers_again_and_another_function_is_refused():
    """Re-running a cell with @register_model raised 'registered twice' (a restart of the kernel was the only way
    out); the same function (module and name) now replaces its entry, another one under a taken name is one line."""
    def cell():
        @cnnlab.register_model("test-rerun-net")
        def rerun_net(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> nn.Module:
            """A one-layer net, registered from a cell."""
            return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes))
        return rerun_net

    first, second = cell(), cell()
    info = cnnlab.models.model_info("test-rerun-net")
    assert info.builder is second is not first and info.description == "A one-layer net, registered from a cell."
    with pytest.raises(cnnlab.UserError, match="the name 'cnn1' is taken by cnnlab.models.seed_cnns.cnn1"):
        cnnlab.register_model("cnn1", description="mine")(cell())
    with pytest.raises(cnnlab.UserError, match="the name 'test-rerun-net' is taken"):
        cnnlab.register_model("test-rerun-net")(tiny_net)
