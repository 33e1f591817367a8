"""Results that display themselves (issue 21): a Run, its evaluation, a study and an ensemble's vote as
HTML with inline figures; the validation sample a run on arrays keeps; export, predict and class names
for runs on in-memory arrays."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import cnnlab
from cnnlab import display, inference, runs
from cnnlab.errors import UserError

from conftest import train_test_images

FAST = dict(epochs=1, batch_size=32, device="cpu", precision="fp32", progress=False)
NAMES = ["top", "trouser", "bag"]


@pytest.fixture(scope="module")
def arrays():
    return train_test_images(300, 60)


@pytest.fixture(scope="module")
def run(arrays, tmp_path_factory):
    x, y, xt, yt = arrays
    return cnnlab.train("cnn1", (x, y, xt, yt), class_names=NAMES, out=tmp_path_factory.mktemp("runs"), **FAST)


def test_run_shows_itself(run):
    assert repr(run).startswith(f"Run({str(run.path)!r}, status='finished', model='cnn1', val_accuracy=")
    page = run._repr_html_()
    assert "<table>" in page and "data:image/png;base64," in page and "cnn1" in page and "Validation accuracy" in page
    assert "top, trouser, bag" in page


def test_evaluation_is_a_dict_with_tables_and_figures(run):
    ev = run.evaluate("val")
    assert isinstance(ev, dict) and ev["hardest_class"] in NAMES and 0 <= ev["accuracy"] <= 1
    assert json.loads(json.dumps(ev))["accuracy"] == ev["accuracy"]
    assert isinstance(ev.per_class, pd.DataFrame) and list(ev.per_class.index) == NAMES
    assert {"precision", "recall", "f1", "support"} <= set(ev.per_class.columns)
    assert ev.confusion_matrix.to_numpy().sum() == len(run.dir.logits("val")[1])
    assert np.allclose(ev.confusion_matrix_normalized.to_numpy().sum(1), 1)
    assert isinstance(ev.plot_confusion_matrix(), Figure)
    page = ev._repr_html_()
    assert "<table" in page and "data:image/png;base64," in page and "trouser" in page


def test_a_run_on_arrays_keeps_a_validation_sample(run):
    images, labels, positions = run.dir.samples()
    stored_logits, stored_labels = run.dir.logits("val")
    assert images.dtype == np.uint8 and images.shape[1:] == (1, 16, 16) and 0 < len(images) <= 256
    assert np.array_equal(stored_labels[positions], labels)
    fig = run.evaluate("val").plot_top_losses(k=4)  # drawn from the stored sample
    assert isinstance(fig, Figure)
    with pytest.raises(UserError, match="test images cannot be reloaded"):
        run.evaluate("test").plot_top_losses()


def test_plot_writes_files_and_shows_them_only_under_a_kernel(run, monkeypatch):
    shown = []
    monkeypatch.setattr(display, "show_files", lambda paths: shown.extend(paths) if display.in_notebook() else None)
    import cnnlab.api

    monkeypatch.setattr(cnnlab.api, "show_files", display.show_files)
    paths = run.plot()
    assert all(p.is_file() for p in paths) and any(p.name == "mistakes_val.png" for p in paths) and shown == []
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert display.in_notebook()
    assert run.plot() == paths and shown == paths
    fake.get_ipython = lambda: types.SimpleNamespace()  # a terminal IPython: no kernel, no inline images
    assert not display.in_notebook()


def test_predict_reuses_the_model_until_the_weights_change(run, arrays, monkeypatch):
    loads = []
    real = inference.load_model
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    fresh = cnnlab.load_run(run.path)
    x = arrays[2][:1]
    first = fresh.predict(x)
    fresh.predict_proba(x)
    fresh.logits(x)
    assert len(loads) == 1
    weights = run.dir.file(runs.WEIGHTS)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert np.array_equal(fresh.predict(x), first) and len(loads) == 2


def test_export_of_a_run_on_arrays_needs_no_images_and_carries_class_names(run, arrays, tmp_path):
    from cnnlab.deploy import read_onnx_metadata

    result = cnnlab.export(run, tmp_path / "a.onnx")  # checked on the stored validation sample
    assert result["images_checked"] == len(run.dir.samples()[0])
    assert read_onnx_metadata(tmp_path / "a.onnx")["class_names"] == NAMES
    given = cnnlab.export(run, tmp_path / "b.onnx", check_images=arrays[2][:5])
    assert given["images_checked"] == 5
    run.dir.file(runs.SAMPLES).rename(tmp_path / "kept")
    try:
        with pytest.raises(UserError, match=r"cnnlab.export\(run, check_images=images\)"):
            cnnlab.export(run, tmp_path / "c.onnx")
    finally:
        (tmp_path / "kept").rename(run.dir.file(runs.SAMPLES))


def test_class_names_keyword_reaches_the_run_and_read_only_arrays_train_quietly(arrays, tmp_path):
    x, y, _, _ = arrays
    rx = np.frombuffer(x.tobytes(), dtype=np.uint8).reshape(x.shape)
    ry = np.frombuffer(y.tobytes(), dtype=np.int64)
    assert not rx.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained = cnnlab.train("cnn1", (rx, ry), class_names=NAMES, out=tmp_path, **FAST)
        trained.predict(rx[:3])
    assert trained.class_names == NAMES and trained.evaluate()["per_class"][1]["name"] == "trouser"
    with pytest.raises(UserError, match="the keyword and the data dict's class_names differ"):
        cnnlab.train("cnn1", {"x_train": x, "y_train": y, "class_names": ["a", "b", "c"]}, class_names=NAMES,
                     out=tmp_path, **FAST)
    with pytest.raises(UserError, match="class_names: names the classes of in-memory arrays"):
        cnnlab.train("cnn1", "fashion-mnist", class_names=NAMES, out=tmp_path, **FAST)


def test_study_result_is_the_dict_and_shows_its_comparison(arrays, tmp_path):
    x, y, xt, yt = arrays
    result = cnnlab.study(["cnn1"], 1, (x, y, xt, yt), class_names=NAMES, out=tmp_path / "s", say=lambda s: None,
                          **FAST)
    assert set(result) == {"runs", "report", "markdown"} and result["report"].is_file()
    page = result._repr_html_()
    assert "<table>" in page and "data:image/png;base64," in page and "Accuracy over repeats" in page
    assert "trouser" in result["report"].read_text()


def test_ensemble_vote_evaluates_with_figures(arrays, tmp_path):
    x, y, xt, yt = arrays
    result = cnnlab.ensemble("cnn1", 2, 0.0, data=(x, y, xt, yt), class_names=NAMES, out=tmp_path / "e",
                             say=lambda s: None, **FAST)
    # the manifest, still the dict, shows the vote in a notebook: its accuracy, per-class table, growth figure
    assert result["qualified"] == 2 and json.loads(json.dumps(result)) == dict(result)
    page = result._repr_html_()
    assert f"{100 * result['test_accuracy']:.2f}%" in page and "trouser" in page and "data:image/png;base64," in page
    assert type(pickle.loads(pickle.dumps(result))) is dict
    assert "data:image/png;base64," in cnnlab.combine(tmp_path / "e")._repr_html_()
    vote = cnnlab.load_run(tmp_path / "e")
    ev = vote.evaluate("val")
    assert ev["accuracy"] >= 0 and list(ev.per_class.index) == NAMES
    assert isinstance(ev.plot_top_losses(4), Figure)  # from the first member's stored sample
    assert "data:image/png;base64," in ev._repr_html_() and "ensemble of 2" in vote._repr_html_()
    assert vote.predict(xt[:2]).shape == (2,)


def test_curves_of_one_epoch_or_without_validation_show_only_what_there_is(monkeypatch, tmp_path):
    """One epoch had ticks 0.95..1.05; a run without a validation split listed an empty 'validation' curve."""
    from cnnlab import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig) or path)
    row = {"epoch": 1, "train_accuracy": 0.5, "train_loss": 1.2, "val_accuracy": float("nan"),
           "val_loss": float("nan")}
    plots.accuracy_loss_plot([row], "cnn1", tmp_path / "a.png")
    (ax,) = drawn[0].axes
    assert list(ax.get_xticks()) == [1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training accuracy", "training loss"]
    frame = pd.DataFrame([row, {**row, "epoch": 2}])
    figures = []
    monkeypatch.setattr(display, "figure_png", lambda fig, dpi=90: figures.append(fig) or b"png")
    display.curve_png(frame, "cnn1 accuracy and loss")
    for ax in figures[0].axes:
        assert [line.get_label() for line in ax.get_lines()] == ["training"]
        assert all(float(t).is_integer() for t in ax.get_xticks())
