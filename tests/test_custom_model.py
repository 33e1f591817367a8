"""Issue 21: training a model of your own (an nn.Module or a factory), reloading it only with it."""

from __future__ import annotations

import json
import os

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


def wide_net(*, num_classes, in_chans, image_size):
    """A factory: called per seed with num_classes, in_chans and image_size."""
    return nn.Sequential(nn.Conv2d(in_chans, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                         nn.Linear(6 * 9, num_classes))


QUIET = dict(say=lambda s: None, **SETTINGS)


def test_export_needs_the_model_and_then_works(data, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra")
    run = cnnlab.train(TinyNet, str(data), out=tmp_path, **SETTINGS)
    with pytest.raises(cnnlab.UserError, match=r"model of your own \(.*TinyNet\); pass it") as refused:
        cnnlab.export(run.path, tmp_path / "refused.onnx")
    assert len(str(refused.value).splitlines()) == 1 and not (tmp_path / "refused.onnx").exists()
    given = cnnlab.export(run.path, tmp_path / "given.onnx", model=TinyNet)
    assert given["argmax_agreement"] == 1.0 and (tmp_path / "given.onnx").is_file()
    loaded = cnnlab.export(cnnlab.load_run(run.path, model=TinyNet), tmp_path / "loaded.onnx")  # the Run carries it
    assert loaded["disagreements_outside_near_ties"] == 0
    assert run.export(tmp_path / "method.onnx")["images_checked"] > 0  # the Run train returned carries it too
    images, _ = make_images(8, 12)
    from cnnlab.deploy import onnx_predict_logits
    assert np.array_equal(onnx_predict_logits(tmp_path / "given.onnx", images[:, None]).argmax(1), run.predict(images))


def test_evaluate_a_custom_run_with_or_without_the_model(data, tmp_path):
    run = cnnlab.train(wide_net, str(data), out=tmp_path, **SETTINGS)
    for reloaded in (cnnlab.load_run(run.path), cnnlab.load_run(run.path, model=wide_net), run):
        assert reloaded.evaluate("test")["accuracy"] == pytest.approx(run.metrics["test_accuracy"])
    assert cnnlab.evaluate(run, "val")["accuracy"] == pytest.approx(run.metrics["val_accuracy"])


def test_a_study_compares_modules_and_factories_with_built_in_models(data, tmp_path):
    net = TinyNet(num_classes=3)
    result = cnnlab.study([net, wide_net, "cnn1"], 2, str(data), out=tmp_path / "s", **QUIET)
    names = sorted(r.path.name for r in result["runs"])
    assert names == ["TinyNet-seed0", "TinyNet-seed1", "cnn1-seed0", "cnn1-seed1", "wide_net-seed0", "wide_net-seed1"]
    first, second = (cnnlab.load_run(tmp_path / "s" / "runs" / f"TinyNet-seed{s}", model=TinyNet) for s in (0, 1))
    assert not torch.equal(first.model.body[0].weight, second.model.body[0].weight)  # re-initialised per seed
    settings = json.loads((tmp_path / "s" / "study.json").read_text())
    assert settings["custom_models"] == {"TinyNet": f"{__name__}.TinyNet", "wide_net": f"{__name__}.wide_net"}
    markdown = (tmp_path / "s" / "report.md").read_text()
    assert "| TinyNet" in markdown and "| wide\\_net" in markdown and "| custom" not in markdown
    images, _ = make_images(4, 12)
    assert cnnlab.load_run(tmp_path / "s" / "runs" / "wide_net-seed1", model=wide_net).predict(images).shape == (4,)
    assert all(r.predict(images).shape == (4,) for r in result["runs"])  # the study's Runs come with their models
    # continuing: the models passed again reuse the finished runs; by name alone it refuses in one line
    said = []
    again = cnnlab.study([net, wide_net, "cnn1"], 2, str(data), out=tmp_path / "s", report=False,
                         **{**QUIET, "say": said.append})
    assert len(again["runs"]) == 6 and all("reused" in s for s in said if s.startswith("["))
    with pytest.raises(cnnlab.UserError, match=r"TinyNet is a model of your own \(.*TinyNet\).*pass it") as refused:
        cnnlab.study(["TinyNet"], 2, str(data), out=tmp_path / "s", **QUIET)
    assert len(str(refused.value).splitlines()) == 1


def test_a_study_refuses_two_models_of_one_name(data, tmp_path):
    with pytest.raises(cnnlab.UserError, match="TinyNet is named twice"):
        cnnlab.study([TinyNet(), TinyNet], 1, str(data), out=tmp_path / "s", **QUIET)


@pytest.mark.parametrize("kind", ["factory", "module"])
def test_an_ensemble_of_a_model_of_your_own(data, tmp_path, kind):
    given = wide_net if kind == "factory" else TinyNet(num_classes=3)
    manifest = cnnlab.ensemble(given, 2, 0.0, data=str(data), out=tmp_path / "e", **QUIET)
    assert manifest["qualified"] == 2 and manifest["model"] == ("wide_net" if kind == "factory" else "TinyNet")
    settings = json.loads((tmp_path / "e" / "ensemble_settings.json").read_text())
    assert settings["custom_model"] == f"{__name__}.{manifest['model']}"
    images, _ = make_images(6, 12)
    builder = wide_net if kind == "factory" else TinyNet
    with pytest.raises(cnnlab.UserError, match="model of your own"):
        cnnlab.load_run(tmp_path / "e").predict(images)
    ensemble = cnnlab.load_run(tmp_path / "e", model=builder)
    assert ensemble.predict(images).shape == (6,)
    assert ensemble.evaluate("val")["accuracy"] == pytest.approx(manifest["val_accuracy"])
    # continuing needs the model again: by name alone (or another model) it refuses
    with pytest.raises(cnnlab.UserError, match="model of your own.*pass it"):
        cnnlab.ensemble(manifest["model"], 3, 0.0, data=str(data), out=tmp_path / "e", **QUIET)
    with pytest.raises(cnnlab.UserError, match=r"holds an ensemble of members 2 \(asked: members 3\)"):
        cnnlab.ensemble(given, 3, 0.0, data=str(data), out=tmp_path / "e", **QUIET)  # fixed by the first call
    assert cnnlab.ensemble(given, 2, 0.0, data=str(data), out=tmp_path / "e", **QUIET)["qualified"] == 2


def test_a_custom_ensemble_exports(data, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra")
    cnnlab.ensemble(TinyNet, 2, 0.0, data=str(data), out=tmp_path / "e", **QUIET)
    with pytest.raises(cnnlab.UserError, match="model of your own"):
        cnnlab.export(tmp_path / "e")
    assert cnnlab.export(tmp_path / "e", model=TinyNet)["members"] == 2


def test_ray_refuses_a_model_its_workers_cannot_import_in_one_line(data, tmp_path):
    def nested(*, num_classes, in_chans, image_size):
        return TinyNet(num_classes, in_chans, image_size)

    in_main = type("MainNet", (TinyNet,), {"__module__": "__main__"})  # as a class defined in a notebook
    for given, why in ((lambda **kw: TinyNet(**kw), "a lambda"), (nested, "nested"), (in_main(), "__main__")):
        for call in (lambda: cnnlab.study([given], 1, str(data), out=tmp_path / "s", ray=True, **QUIET),
                     lambda: cnnlab.ensemble(given, 2, 0.0, data=str(data), out=tmp_path / "e", ray=True, **QUIET)):
            with pytest.raises(cnnlab.UserError, match=f"{why}.*Ray workers cannot import.*register_model.*without ray") \
                    as refused:
                call()
            assert len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()  # refused before anything was written


NET_MODULE = '''
from torch import nn


class {name}(nn.Module):
    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.body(x)
'''


@pytest.mark.slow
def test_on_ray_an_importable_model_trains_and_one_the_workers_lack_is_one_line(data, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'cnnlab[ray]')")
    from cnnlab.distributed import loopback_only

    if ray.is_initialized():
        pytest.skip("a Ray cluster is already running; this test starts its own with the module on its path")
    shared, driver_only = tmp_path / "shared", tmp_path / "driver_only"
    for folder, name in ((shared, "RayNet"), (driver_only, "HiddenNet")):
        folder.mkdir()
        (folder / f"{name.lower()}_module.py").write_text(NET_MODULE.format(name=name))
        monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shared), os.environ.get("PYTHONPATH", "")]))  # workers'
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    import hiddennet_module
    import raynet_module

    loopback_only()
    ray.init(_node_ip_address="127.0.0.1", num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="WARNING")
    try:
        result = cnnlab.study([raynet_module.RayNet, "cnn1"], 1, str(data), out=tmp_path / "s", ray=True,
                              report=False, **QUIET)
        assert sorted(r.path.name for r in result["runs"]) == ["RayNet-seed0", "cnn1-seed0"]
        manifest = cnnlab.ensemble(raynet_module.RayNet(), 2, 0.0, data=str(data), out=tmp_path / "e", ray=True,
                                   **QUIET)
        assert manifest["qualified"] == 2 and manifest["model"] == "RayNet"
        images, _ = make_images(4, 12)
        assert cnnlab.load_run(tmp_path / "e", model=raynet_module.RayNet).predict(images).shape == (4,)
        with pytest.raises(cnnlab.UserError, match=r"HiddenNet: the Ray workers cannot load it \(.*No module named "
                                                   r"'hiddennet_module'\)") as refused:
            cnnlab.study([hiddennet_module.HiddenNet], 1, str(data), out=tmp_path / "h", ray=True, **QUIET)
        assert len(str(refused.value).splitlines()) == 1
    finally:
        ray.shutdown()


class SameShapes(TinyNet):
    """Another class whose weights have TinyNet's names and shapes."""


def test_summary_of_a_class_a_factory_or_a_run_trained_with_one(data, tmp_path):
    """summary(TinyNet) said "got type", and a Run that carries its model was refused as "not a registered model"."""
    of_class = cnnlab.summary(TinyNet, num_classes=3, image_size=12)
    assert of_class.trainable == sum(p.numel() for p in TinyNet().parameters())
    assert cnnlab.summary(lambda **kw: TinyNet(**kw), num_classes=3, image_size=12).total == of_class.total
    run = cnnlab.train(TinyNet, str(data), out=tmp_path, **{**SETTINGS, "epochs": 1})
    assert cnnlab.summary(run).total == of_class.total and "TinyNet" in repr(cnnlab.summary(run))
    with pytest.raises(cnnlab.UserError, match=r"a model of your own; summarize the Run loaded with it"):
        cnnlab.summary(run.path)


def test_a_kaggle_submission_from_python_with_a_model_of_ones_own(data, tmp_path):
    """cnnlab.submission: the CLI's predict from a notebook; a Run of one's own model brings it (the CLI cannot)."""
    import csv

    run = cnnlab.train(TinyNet, str(data), out=tmp_path / "r", **{**SETTINGS, "epochs": 1})
    images, _ = make_images(6, 12, seed=3)
    np.save(tmp_path / "test.npy", images)
    result = cnnlab.submission(run, tmp_path / "test.npy", tmp_path / "sub.csv", columns="ImageId,Label")
    with open(tmp_path / "sub.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert result["rows"] == 6 and rows[0] == ["ImageId", "Label"]
    assert rows[1:] == [[str(i), str(label)] for i, label in enumerate(run.predict(images), 1)]
    with pytest.raises(cnnlab.UserError, match=r"model of your own"):
        cnnlab.submission(run.path, tmp_path / "test.npy", tmp_path / "sub2.csv")  # the directory alone
    assert not (tmp_path / "sub2.csv").exists()
    cnnlab.submission(run.path, tmp_path / "test.npy", tmp_path / "sub3.csv", columns="ImageId,Label", model=TinyNet)
    assert (tmp_path / "sub3.csv").read_text() == (tmp_path / "sub.csv").read_text()
    loaded = cnnlab.Run(run.path)  # a Run without its model, the model given beside it (it was dropped)
    cnnlab.submission(loaded, tmp_path / "test.npy", tmp_path / "sub5.csv", columns="ImageId,Label", model=TinyNet)
    assert (tmp_path / "sub5.csv").read_text() == (tmp_path / "sub.csv").read_text()
    built_in = cnnlab.train("cnn1", str(data), out=tmp_path / "b", **{**SETTINGS, "epochs": 1})
    with pytest.raises(cnnlab.UserError):  # a model for a run of a built-in one was ignored without a word
        cnnlab.submission(built_in.path, tmp_path / "test.npy", tmp_path / "sub4.csv", model=TinyNet)


def test_progress_names_the_class(data, tmp_path, capsys):
    cnnlab.train(TinyNet, str(data), out=tmp_path, **{**SETTINGS, "epochs": 1, "progress": True})
    out = " ".join(capsys.readouterr().out.split())
    assert "TinyNet on d (" in out and "custom on" not in out  # the header said "custom"


def test_a_resume_keeps_its_model_and_never_shortens_the_run(data, tmp_path):
    """A run of TinyNet continued with SameShapes loaded its weights without a word and recorded SameShapes as the
    run's model; now one line, the run untouched, and TinyNet continues it."""
    run = cnnlab.train(TinyNet, str(data), out=tmp_path, **{**SETTINGS, "checkpoint_every": 1})
    before = {f.name: f.read_bytes() for f in run.path.iterdir() if f.is_file()}
    with pytest.raises(cnnlab.UserError, match=rf"trained with model {__name__}.TinyNet, not {__name__}.SameShapes"):
        cnnlab.train(SameShapes, resume=run.path, epochs=3, progress=False)
    assert {f.name: f.read_bytes() for f in run.path.iterdir() if f.is_file()} == before
    moved = type("TinyNet", (TinyNet,), {"__module__": "trainer"})  # the class imported from elsewhere
    assert cnnlab.train(moved, resume=run.path, epochs=3, progress=False).metrics["epochs_done"] == 3
    before = {f.name: f.read_bytes() for f in run.path.iterdir() if f.is_file()}
    with pytest.raises(cnnlab.UserError, match=r"already trained 3 epoch\(s\); epochs=1 cannot shorten it"):
        cnnlab.train(TinyNet, resume=run.path, epochs=1, progress=False)  # did nothing, exit 0, config.json said 1
    assert {f.name: f.read_bytes() for f in run.path.iterdir() if f.is_file()} == before


class Scaled(nn.Module):
    """A learned scale held directly by a module without reset_parameters: no seed reaches it."""

    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__()
        self.net = TinyNet(num_classes, in_chans, image_size)
        self.scale = nn.Parameter(torch.rand(1) + 0.5)

    def forward(self, x):
        return self.net(x) * self.scale


def test_an_instance_with_parameters_no_seed_reaches_says_so_once(capsys):
    from cnnlab.models.custom import build_custom

    net = Scaled()
    for _ in range(2):
        built = build_custom(net, num_classes=3, in_chans=1, image_size=12)
    assert torch.equal(built.scale, net.scale)  # kept as built: what the warning is about
    err = capsys.readouterr().err
    assert err.count("cnnlab: warning:") == 1 and "scale keep the values the instance was built with" in err
    build_custom(TinyNet(), num_classes=3, in_chans=1, image_size=12)  # every layer resets: nothing to say
    assert capsys.readouterr().err == ""


class OwnReset(TinyNet):
    """A user's own _reset_parameters that takes an argument: only torch's layers get theirs called."""

    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__(num_classes, in_chans, image_size)
        self._reset_parameters(0.02)

    def _reset_parameters(self, std):
        self.std = std


def test_an_instance_with_its_own_reset_helper_trains_and_attention_is_reset(data, tmp_path):
    from cnnlab.models.custom import build_custom

    cnnlab.train(OwnReset(), str(data), out=tmp_path, **{**SETTINGS, "epochs": 1})  # a TypeError before
    attention = nn.MultiheadAttention(8, 2)
    torch.manual_seed(1)
    built = build_custom(attention, num_classes=3, in_chans=1, image_size=12)
    assert not torch.equal(built.in_proj_weight, attention.in_proj_weight)


def test_resuming_a_run_or_a_study_of_a_model_of_your_own_takes_it_again(data, tmp_path):
    from conftest import interrupt_at

    options = {**SETTINGS, "checkpoint_every": 1}
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(TinyNet, str(data), out=tmp_path / "r", callbacks=[interrupt_at(2)], **options)
    (run,) = (tmp_path / "r").iterdir()
    assert "model='TinyNet'" in repr(cnnlab.Run(run))  # the class, not "custom", before the run finished too
    with pytest.raises(cnnlab.UserError, match=r"holds a model of your own; pass it again") as refused:
        cnnlab.train(resume=run, progress=False)
    assert len(str(refused.value).splitlines()) == 1
    resumed = cnnlab.train(TinyNet, resume=run, progress=False)
    assert resumed.metrics["epochs_done"] == 2 and resumed.predict(make_images(3, 12)[0]).shape == (3,)

    net = TinyNet(num_classes=3)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.study([net], 1, str(data), out=tmp_path / "s", callbacks=[interrupt_at(2)], **{**QUIET, **options})
    said = []
    result = cnnlab.study([net], 1, str(data), out=tmp_path / "s", report=False, **{**QUIET, **options, "say": said.append})
    assert any("TinyNet-seed0: resuming" in s for s in said) and result["runs"][0].metrics["epochs_done"] == 2


def test_lr_find_takes_a_model_of_your_own_and_a_search_refuses_one_in_one_line(data, tmp_path):
    options = {k: v for k, v in SETTINGS.items() if k != "progress"}
    found = cnnlab.lr_find(TinyNet, str(data), plot=tmp_path / "lr.png", steps=6, **options)
    assert found.model == "TinyNet" and (tmp_path / "lr.png").is_file()
    # the advice is the Python call (`cnnlab train TinyNet --lr` cannot train it); plot=None writes no file and
    # the plot still shows inline (a TypeError from Path(None) before)
    assert f"use it: cnnlab.train(TinyNet, ..., lr={found.suggestion:.3g})" in repr(found)
    inline = cnnlab.lr_find(TinyNet, str(data), plot=None, steps=6, **options)
    import matplotlib.pyplot as plt
    open_before = len(plt.get_fignums())
    assert inline.plot is None and "plot=" not in repr(inline) and inline._repr_png_().startswith(b"\x89PNG")
    assert len(plt.get_fignums()) == open_before  # each display closes its figure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]
    with pytest.raises(cnnlab.UserError, match="model TinyNet: a search takes a registered model") as refused:
        cnnlab.tune(TinyNet(), 2, str(data), out=tmp_path / "t")
    assert len(str(refused.value).splitlines()) == 1


class SevenLogits(TinyNet):
    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__(7, in_chans, image_size)  # ignores num_classes


class TwoLogits(TinyNet):
    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__(2, in_chans, image_size)


class RGBNet(TinyNet):
    def __init__(self, num_classes=3, in_chans=1, image_size=12):
        super().__init__(num_classes, 3, image_size)


class TupleNet(TinyNet):
    def forward(self, x):
        return self.body(x), x


class MapNet(TinyNet):
    def forward(self, x):
        return x.expand(-1, 3, -1, -1)  # N x 3 x H x W: a segmentation-shaped output


@pytest.mark.parametrize("net, says", [
    (SevenLogits, r"returned shape \(2, 7\) for 2 images; the data has 3 classes, so it must return \(2, 3\)"),
    (TwoLogits, r"returned shape \(2, 2\) for 2 images; the data has 3 classes"),
    (RGBNet, r"its forward fails on images shaped \(2, 1, 12, 12\) .*RuntimeError.*; make it take 1-channel 12x12"),
    (TupleNet, r"its forward returned tuple; return one tensor of logits, N x 3"),
    (MapNet, r"returned shape \(2, 3, 12, 12\) for 2 images"),
])
def test_a_model_whose_outputs_are_not_one_logit_per_class_is_refused_before_training(data, tmp_path, net, says):
    # Too many outputs used to train without any error and leave a run no command could evaluate; the others
    # failed mid-step with torch's own errors
    with pytest.raises(cnnlab.UserError, match=says) as caught:
        cnnlab.train(net, str(data), out=tmp_path / "runs", **SETTINGS)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()  # refused before a directory was made
