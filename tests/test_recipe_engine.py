"""The modern recipe's pieces inside the engine: schedules per step, TTA, EMA, class weights, no validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.config import build_config
from cnnlab.engine import class_weight_tensor, final_weights, prepare, split_logits, to_input, train_one_epoch
from cnnlab.errors import UserError
from cnnlab.schedules import lr_at

from conftest import train_test_images


@pytest.fixture(scope="module")
def arrays():
    return train_test_images(320, 80, classes=4)


@pytest.fixture(scope="module")
def npz(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("d") / "d.npz"
    x, y, xt, yt = arrays
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def small(npz, **kw):
    return build_config({"data": str(npz), "device": "cpu", "precision": "fp32", "batch_size": 32, **kw})


def test_the_modern_recipe_learns_a_short_run_on_the_cpu(arrays, tmp_path):
    x, y, xt, yt = arrays
    run = cnnlab.train(data=(x, y, xt, yt), recipe="modern", model_params={"width": 8}, epochs=3, batch_size=32,
                       device="cpu", out=tmp_path, progress=False)
    assert run.config["lr_schedule"] == "one-cycle" and run.config["tta"] and run.config["hflip"]
    assert run.metrics["test_accuracy"] > 0.6  # chance is 0.25


def test_a_schedule_sets_the_rate_of_every_step(npz, tmp_path):
    cfg = small(npz, lr_schedule="cosine", warmup_epochs=1, epochs=3, lr=0.01)
    run = cnnlab.train(config=cfg, out=tmp_path, progress=False)
    steps = -(-256 // 32)  # 320 images, 20% validation: 256 train, 8 steps per epoch
    total = 3 * steps
    expected = [lr_at("cosine", e * steps, total, 0.01, warmup_steps=steps) for e in range(3)]
    assert run.history["lr"].tolist() == pytest.approx(expected, rel=1e-12)  # the rate of each epoch's first step


def test_tta_is_the_mean_of_plain_and_mirrored_logits(npz):
    setup = prepare(small(npz, tta=True, model="cnn1"))
    images = setup.val.images[:10]
    model = setup.model.eval()
    with torch.no_grad():
        x = to_input(images).contiguous(memory_format=torch.channels_last)
        by_hand = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(split_logits(setup, images)[:, 0], by_hand, rtol=0, atol=0)


def test_ema_weights_are_what_the_run_keeps(npz):
    setup = prepare(small(npz, ema=0.9, model="cnn1"))
    train_one_epoch(setup, 1)
    kept = final_weights(setup)[0]
    assert setup.ema.updates == setup.steps_per_epoch
    assert all(torch.equal(kept[k], v) for k, v in setup.ema.module.state_dict().items())
    assert not torch.equal(kept["0.weight"], setup.model.state_dict()["0.weight"])


def test_balanced_class_weights(npz):
    setup = prepare(small(npz, class_weights="balanced", model="cnn1"))
    counts = torch.bincount(setup.train.labels, minlength=4).double()
    expected = len(setup.train) / (4 * counts)
    torch.testing.assert_close(class_weight_tensor(setup.config, setup.train, 4).double(), expected)
    with pytest.raises(UserError, match="class_weights: 3 weights for 4 classes"):
        prepare(small(npz, class_weights=[1.0, 2.0, 3.0], model="cnn1"))


def test_no_validation_split_trains_on_the_whole_pool(npz, tmp_path):
    run = cnnlab.train(config=small(npz, val_fraction=0, lr_schedule="one-cycle", epochs=2, model="cnn1"),
                       out=tmp_path, progress=False)
    assert run.metrics["test_accuracy"] > 0.6 and "val_accuracy" not in run.metrics
    assert run.history["val_loss"].isna().all()
    with pytest.raises(UserError, match="val_fraction = 0 leaves no validation split, which lr_schedule = plateau"):
        build_config({"val_fraction": 0})
    with pytest.raises(UserError, match="ensemble keeps members by their validation accuracy"):
        cnnlab.ensemble("cnn1", 2, data=str(npz), out=tmp_path / "e", val_fraction=0, lr_schedule="one-cycle")
