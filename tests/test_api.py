"""The Python API as a notebook user calls it: the README's example, in-memory arrays, runs as objects."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.errors import UserError

from conftest import FASHION_DIR, needs_fashion, train_test_images

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- notebook-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its notebook example"
    return match.group(1)


@needs_fashion
def test_readme_notebook_example_runs_as_written(tmp_path, monkeypatch):
    """The example verbatim, except its two settings: a small subset of real Fashion-MNIST, one epoch."""
    from cnnlab.data import load_dataset

    ds = load_dataset("fashion-mnist", data_dir=FASHION_DIR)
    keep = np.concatenate([np.flatnonzero(ds.train.labels.numpy() == k)[:200] for k in range(10)])
    np.savez(tmp_path / "subset.npz", x_train=ds.train.images[keep].numpy(), y_train=ds.train.labels[keep].numpy(),
             x_test=ds.test.images[:300].numpy(), y_test=ds.test.labels[:300].numpy(),
             class_names=np.array(ds.class_names))
    code = readme_example()
    assert 'data = "fashion-mnist"' in code and "epochs = 20" in code
    code = code.replace('data = "fashion-mnist"', f'data = "{tmp_path / "subset.npz"}"').replace("epochs = 20", "epochs = 1")
    monkeypatch.chdir(tmp_path)  # runs/ lands here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    run = namespace["run"]
    assert run.status == "finished" and run.metrics["epochs_done"] == 1 and len(run.history) == 1
    assert run.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert namespace["early"].metrics["weights_epoch"] == 1


@pytest.fixture(scope="module")
def arrays():
    return train_test_images(300, 60)


def test_train_on_arrays_and_use_the_run(arrays, tmp_path):
    x, y, xt, yt = arrays
    run = cnnlab.train("cnn1", (x, y, xt, yt), epochs=2, batch_size=32, device="cpu", precision="fp32",
                       out=tmp_path, progress=False)
    assert run.config["data"].startswith("memory:sha256=") and "train=300x1x16x16" in run.config["data"]
    assert run.metrics["test_accuracy"] > 0.8 and list(run.history["epoch"]) == [1, 2]
    predicted = run.predict(torch.from_numpy(xt))  # a tensor works as well as an array
    assert predicted.shape == (60,) and np.mean(predicted == yt) > 0.8
    assert np.allclose(run.predict_proba(xt).sum(1), 1, atol=1e-5)
    stored, _ = run.dir.logits("test")
    assert np.array_equal(run.logits(xt), stored)  # same precision, same kernels: the stored logits exactly
    with pytest.raises(UserError, match="images: shape 1x8x8 per image, but the model was trained on 1x16x16"):
        run.predict(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(UserError, match="pixel values must lie in 0..255"):
        run.predict(np.full((2, 16, 16), 300))


def test_arrays_are_checked_like_files(arrays, tmp_path):
    x, y, _, _ = arrays
    with pytest.raises(UserError, match="300 images but 299 labels"):
        cnnlab.train("cnn1", (x, y[:-1]), epochs=1, out=tmp_path, progress=False)
    with pytest.raises(UserError, match="only one class"):
        cnnlab.train("cnn1", (x, np.zeros_like(y)), epochs=1, out=tmp_path, progress=False)
    with pytest.raises(UserError, match="data: expected a dataset name"):
        cnnlab.train("cnn1", 42, epochs=1, out=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing written for refused input


def test_resume_on_arrays_needs_the_same_arrays(arrays, tmp_path):
    x, y, _, _ = arrays
    run = cnnlab.train("cnn1", (x, y), epochs=1, batch_size=32, device="cpu", out=tmp_path, progress=False)
    with pytest.raises(UserError, match="trained on in-memory arrays"):
        cnnlab.train(resume=run.path, epochs=2, progress=False)
    with pytest.raises(UserError, match="these arrays differ"):
        cnnlab.train(data=(x[::-1].copy(), y[::-1].copy()), resume=run.path, epochs=2, progress=False)
    longer = cnnlab.train(data=(x, y), resume=run.path, epochs=2, progress=False)
    assert longer.metrics["epochs_done"] == 2 and len(longer.history) == 2
    with pytest.raises(UserError, match="only epochs and device may change \\(got lr\\)"):
        cnnlab.train(data=(x, y), resume=run.path, lr=0.1, progress=False)


def test_config_values_are_checked_at_the_edge(tmp_path):
    cases = {"lr": ("fast", "lr: must be a number, got 'fast' (a string)"),
             "augment": ("no", "augment: must be true or false, got 'no' (a string)"),
             "epochs": (True, "epochs: must be an integer, got True (true or false)"),
             "val_fraction": (2, "val_fraction: must lie in [0, 1), got 2.0"),
             "batch_size": (0, "batch_size: must be a positive integer, got 0")}
    for key, (value, message) in cases.items():
        with pytest.raises(UserError) as info:
            cnnlab.train("cnn1", "fashion-mnist", out=tmp_path, progress=False, **{key: value})
        assert str(info.value) == message, key
    (tmp_path / "bad.toml").write_text('epochs = "ten"\n')
    with pytest.raises(UserError, match="epochs: must be an integer, got 'ten'"):
        cnnlab.train(config=tmp_path / "bad.toml", out=tmp_path, progress=False)


def test_recipe_defaults_are_overridden_and_written_whole(arrays, tmp_path):
    from cnnlab.config import RECIPES, build_config

    cfg = build_config({"recipe": "modern", "lr": 0.05})
    assert cfg.lr == 0.05 and cfg.model == RECIPES["modern"]["model"] and cfg.lr_schedule == "one-cycle"
    x, y, _, _ = arrays
    run = cnnlab.train(data=(x, y), recipe="cpu-budget", epochs=1, batch_size=64, device="cpu", out=tmp_path,
                       progress=False, model_params={"width": 8})
    stored = run.config
    assert stored["recipe"] == "cpu-budget" and stored["epochs"] == 1 and stored["optimizer"] == "sgd"
    assert stored["model_params"] == {"width": 8} and set(stored) == set(cfg.to_dict())


def test_load_run_refuses_unfinished_and_missing(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        cnnlab.load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match=r"half: not a cnnlab run directory \(no config.json\)"):
        cnnlab.load_run(tmp_path / "half")
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a finished cnnlab run directory .*status: fresh"):
        cnnlab.load_run(tmp_path / "half")
