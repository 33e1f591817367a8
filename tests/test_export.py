"""ONNX export: the graph reproduces PyTorch (uint8 in, /255 inside), any batch size, metadata, ensembles as
one graph, clear errors, and nothing half-written when an export fails."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cnnlab import deploy as export  # noqa: E402
from cnnlab.engine import load_model, predict_logits  # noqa: E402
from cnnlab.ensembles import vote  # noqa: E402
from cnnlab.errors import UserError  # noqa: E402
from cnnlab.deploy import DEFAULT_TOLERANCE, ExportCheckError, export_onnx, onnx_predict_logits, read_onnx_metadata  # noqa: E402

from conftest import make_images, write_npz_dataset  # noqa: E402

SIZE = 16


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """Train a tiny run (1 epoch, fp32, CPU) into a fresh directory: the one place tests train."""
    from cnnlab.config import build_config
    from cnnlab.engine import fit as train

    data = write_npz_dataset(tmp_path_factory.mktemp("data") / "small.npz", 480, 60, size=SIZE)

    def make(model: str = "cnn1", seed: int = 0, run_dir=None):
        run = run_dir or tmp_path_factory.mktemp("runs") / f"{model}-{seed}"
        cfg = build_config(dict(data=str(data), model=model, epochs=1, batch_size=32, device="cpu",
                                precision="fp32", seed=seed))
        train(cfg, run)
        return run

    return make


@pytest.fixture(scope="module")
def images():
    """300 images the models never saw: real-looking class blobs, not noise."""
    x, _ = make_images(300, SIZE, seed=11)
    return x[:, None]


@pytest.fixture(scope="module")
def runs_by_model(train_run):
    return {name: train_run(name) for name in ("cnn1", "tuned-cnn")}


def torch_logits(run, images) -> np.ndarray:
    model, _ = load_model(run, "cpu")
    return predict_logits(model, torch.from_numpy(images)).numpy()


def assert_parity(onnx_out, reference):
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(onnx_out, reference, rtol=DEFAULT_TOLERANCE, atol=DEFAULT_TOLERANCE * scale)
    assert np.array_equal(onnx_out.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("model", ["cnn1", "tuned-cnn"])
def test_export_matches_pytorch(runs_by_model, images, model):
    run = runs_by_model[model]
    result = export_onnx(run, check_images=images)
    path = run / "model.onnx"
    assert result["output"] == str(path) and path.stat().st_size == result["bytes"] > 0
    assert result["images_checked"] == 300 and result["argmax_agreement"] == 1.0
    assert result["max_abs_diff"] <= result["atol"] and result["exporter"] == "dynamo"
    assert not list(run.glob(".*.tmp"))
    # independently of export's own check: uint8 pixels in, the run's fp32 logits out
    assert_parity(onnx_predict_logits(path, images), torch_logits(run, images))
    assert_parity(onnx_predict_logits(path, torch.from_numpy(images[:, 0])), torch_logits(run, images))  # N x H x W


def test_default_check_uses_validation_images_and_batch_is_dynamic(runs_by_model, images, tmp_path):
    run = runs_by_model["cnn1"]
    result = export_onnx(run, tmp_path / "out" / "cnn1.onnx")  # the run's 96 validation images
    assert result["images_checked"] == 96 and result["argmax_agreement"] == 1.0
    path = tmp_path / "out" / "cnn1.onnx"
    reference = torch_logits(run, images)
    one = onnx_predict_logits(path, images[:1])
    assert one.shape == (1, 3) and one.dtype == np.float32
    assert_parity(one, reference[:1])
    for batch_size in (300, 7):  # one batch of 300; uneven batches
        assert_parity(onnx_predict_logits(path, images, batch_size=batch_size), reference)
    assert onnx_predict_logits(path, images[:0]).shape == (0, 3)


def test_metadata_round_trip(runs_by_model, images):
    run = runs_by_model["tuned-cnn"]
    path = run / "model.onnx"
    if not path.is_file():
        export_onnx(run, check_images=images)
    meta = read_onnx_metadata(path)
    model_json = json.loads((run / "model.json").read_text())
    assert meta["class_names"] == model_json["class_names"] == ["0", "1", "2"]
    assert meta["class_ids"] == model_json["class_ids"]
    assert meta["input_layout"] == "NCHW uint8" and meta["scale"] == "pixels / 255"
    assert meta["input_shape"] == [1, SIZE, SIZE] and meta["model"] == "tuned-cnn"
    import cnnlab

    assert meta["cnnlab_version"] == cnnlab.__version__
    assert meta["inputs"] == [{"name": "images", "type": "uint8", "shape": ["batch", 1, SIZE, SIZE]}]
    assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["type"] == "float"
    assert isinstance(meta["opset"], int) and meta["opset"] >= 17


@pytest.fixture(scope="module")
def ensemble_dirs(train_run, tmp_path_factory):
    """An ensemble directory as cnnlab.ensembles.combine leaves it (model.json lists members and the vote),
    plus a soft-vote twin pointing at the same members."""
    root = tmp_path_factory.mktemp("ensemble")
    members = [f"members/member-{i:03d}" for i in range(3)]
    for i, rel in enumerate(members):
        train_run("cnn1", seed=i, run_dir=root / "hard" / rel)
    meta = json.loads((root / "hard" / members[0] / "model.json").read_text())
    (root / "hard" / "model.json").write_text(json.dumps({**meta, "ensemble": True, "members": members, "vote": "hard"}))
    (root / "soft").mkdir()
    (root / "soft" / "model.json").write_text(json.dumps({**meta, "ensemble": True, "vote": "soft",
                                                          "members": [f"../hard/{m}" for m in members]}))
    return root, [root / "hard" / m for m in members]


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_ensemble_exports_as_one_graph_that_votes(ensemble_dirs, images, method):
    root, members = ensemble_dirs
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(200, 1, SIZE, SIZE), dtype=np.uint8)  # members disagree on noise
    check = np.concatenate([images, noise])
    # hard: checked on blobs and noise; soft: on the first member's validation images (the default)
    result = export_onnx(root / method, check_images=check if method == "hard" else None)
    assert result["ensemble"] and result["members"] == 3 and result["vote"] == method
    assert result["images_checked"] == (500 if method == "hard" else 96) and result["argmax_agreement"] == 1.0
    path = root / method / "model.onnx"
    meta = read_onnx_metadata(path)
    assert meta["vote"] == method and meta["ensemble"] == "true" and meta["outputs"][0]["name"] == "scores"
    member_logits = np.stack([torch_logits(m, check) for m in members])
    assert (member_logits.argmax(2) != member_logits[0].argmax(1)).any(0).sum() > 10  # the vote has work to do
    expected = vote(member_logits, method)
    scores = onnx_predict_logits(path, check)
    assert np.array_equal(scores.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(scores, expected, atol=DEFAULT_TOLERANCE * 4, rtol=DEFAULT_TOLERANCE)
    if method == "hard":
        votes = np.floor(scores)
        assert (votes.max(1) < 3).sum() > 10 and (votes.sum(1) == 3).all()  # split votes, three per image


def test_wrong_images_are_refused_in_one_line(runs_by_model, images):
    run = runs_by_model["cnn1"]
    path = run / "model.onnx"
    if not path.is_file():
        export_onnx(run, check_images=images)
    with pytest.raises(UserError, match=r"images are 1x8x8 but the model takes 1x16x16") as err:
        onnx_predict_logits(path, np.zeros((2, 1, 8, 8), np.uint8))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="uint8"):
        onnx_predict_logits(path, images.astype(np.float32) / 255)
    with pytest.raises(UserError, match="check_images: images are 3x16x16"):
        export_onnx(run, check_images=np.zeros((4, 3, SIZE, SIZE), np.uint8))


def test_missing_or_corrupt_onnx_file(runs_by_model, images, tmp_path):
    run = runs_by_model["cnn1"]
    if not (run / "model.onnx").is_file():
        export_onnx(run, check_images=images)
    good = (run / "model.onnx").read_bytes()
    cases = {"missing.onnx": None, "empty.onnx": b"", "garbage.onnx": b"\x00\xffnot an onnx model" * 50,
             "truncated.onnx": good[: len(good) // 2]}
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(UserError, match=str(path)):
            onnx_predict_logits(path, images[:2])
        if name != "truncated.onnx":  # a truncated file may still parse; onnxruntime refuses it above
            with pytest.raises(UserError, match=str(path)):
                read_onnx_metadata(path)


def test_unfinished_run_is_refused(runs_by_model, tmp_path):
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((runs_by_model["cnn1"] / "config.json").read_text())
    with pytest.raises(UserError, match="not a finished cnnlab run directory"):
        export_onnx(unfinished)
    with pytest.raises(UserError, match="no such run directory"):
        export_onnx(tmp_path / "nowhere")
    assert sorted(p.name for p in unfinished.iterdir()) == ["config.json"]


def test_an_output_name_without_onnx_is_refused(runs_by_model, tmp_path):
    with pytest.raises(UserError, match=r"out\.txt: an ONNX file is written; give a name ending in \.onnx"):
        export_onnx(runs_by_model["cnn1"], tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_failed_check_leaves_nothing_behind(runs_by_model, images, tmp_path, monkeypatch):
    """A graph without the /255 is caught by the check; neither the output nor a temporary file remains,
    and an earlier export at that path is left as it was."""
    run = runs_by_model["tuned-cnn"]
    monkeypatch.setattr(export, "PIXEL_SCALE", 1.0)
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "sub" / "m.onnx"
    with pytest.raises(ExportCheckError, match="does not match PyTorch"):
        export_onnx(run, out, check_images=images)
    assert not out.exists() and not list(out.parent.iterdir())
    assert sorted(p.name for p in run.iterdir()) == before
    (tmp_path / "old.onnx").write_bytes(b"earlier export")
    with pytest.raises(ExportCheckError):
        export_onnx(run, tmp_path / "old.onnx", check_images=images[:50])
    assert (tmp_path / "old.onnx").read_bytes() == b"earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx", "sub"]


def test_falls_back_to_torchscript_exporter(runs_by_model, images, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this model\nsecond line")

    monkeypatch.setattr(export, "_dynamo_export", broken)
    run = runs_by_model["tuned-cnn"]
    result = export_onnx(run, tmp_path / "ts.onnx", check_images=images)
    assert result["exporter"] == "torchscript" and result["argmax_agreement"] == 1.0
    assert result["dynamo_failure"] == "RuntimeError: dynamo cannot trace this model"
    assert_parity(onnx_predict_logits(tmp_path / "ts.onnx", images[:1]), torch_logits(run, images[:1]))
    assert read_onnx_metadata(tmp_path / "ts.onnx")["exporter"] == "torchscript"


def test_missing_extra_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    for call in (lambda: export_onnx(tmp_path), lambda: onnx_predict_logits(tmp_path / "m.onnx", np.zeros((1, 1, 2, 2), np.uint8)),
                 lambda: read_onnx_metadata(tmp_path / "m.onnx")):
        with pytest.raises(UserError, match=r"pip install 'cnnlab\[export\]'"):
            call()


def test_cli_export_then_predict_from_onnx_equals_the_run(runs_by_model, tmp_path, cli):
    """`cnnlab export` then `cnnlab predict model.onnx`: the submission equals the fp32 run's own."""
    from conftest import write_csv

    run = runs_by_model["tuned-cnn"]
    code, out, err = cli("export", run, "-o", tmp_path / "m.onnx")
    assert code == 0 and "same predictions" in out, err
    x, _ = make_images(200, SIZE, seed=5)
    write_csv(tmp_path / "test.csv", x, None)
    code, _, err = cli("predict", tmp_path / "m.onnx", "--input", tmp_path / "test.csv", "-o", tmp_path / "onnx.csv")
    assert code == 0, err
    code, _, err = cli("predict", run, "--input", tmp_path / "test.csv", "-o", tmp_path / "torch.csv", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "onnx.csv").read_text() == (tmp_path / "torch.csv").read_text()
