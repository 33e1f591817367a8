"""The Python API's inputs as a notebook user gives them: tensors of any dtype, one image in every form,
exported .onnx files, and load_run's `model`; each refusal one line."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image

import cnnlab
from cnnlab import UserError
from cnnlab.api import as_images, dataset_from

needs_onnx = pytest.mark.skipif(not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")),
                                reason="needs onnx and onnxruntime (the export extra)")


@pytest.fixture(scope="module")
def images():
    return make_images(40, 16, classes=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory, images):
    x, y = images
    return cnnlab.train("cnn1", (x, y), epochs=1, device="cpu", precision="fp32",
                        out=tmp_path_factory.mktemp("runs"), progress=False)


@pytest.fixture(scope="module")
def onnx_file(run):
    if not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        pytest.skip("needs onnx and onnxruntime (the export extra)")
    return Path(run.export(run.path.parent / "model.onnx")["output"])


def test_bfloat16_and_float8_tensors_predict_and_make_datasets(run, images):
    x, y = images
    expected = run.predict(x[:6])
    for dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float16, torch.int64):
        tensor = torch.tensor(x[:6]).to(dtype) if dtype is not torch.float8_e4m3fn else \
            torch.tensor(np.minimum(x[:6], 240)).to(dtype)  # float8 e4m3 holds integers exactly up to 16 only
        got = run.predict(tensor)
        assert got.shape == (6,) and (dtype is torch.float8_e4m3fn or np.array_equal(got, expected)), dtype
    from_bf16 = dataset_from((torch.tensor(x).bfloat16(), torch.tensor(y)))  # the arrays data path of cnnlab.train
    assert torch.equal(from_bf16.train.images, dataset_from((x, y)).train.images)  # bf16 holds 0..255 exactly
    # a tensor that needs grad (a notebook's leftover) reads too
    assert np.array_equal(run.predict(torch.tensor(x[:6], dtype=torch.float32, requires_grad=True)), expected)


def test_one_image_in_every_form_is_a_batch_of_one(run, images):
    x, _ = images
    logits = run.logits(x[:3])
    one = x[0]
    forms = {"HxW": one, "1xHxW": one[None], "HxWx1": one[..., None], "flat": one.reshape(-1),
             "list": one.tolist(), "tensor": torch.tensor(one), "bf16": torch.tensor(one).bfloat16(),
             "PIL": Image.fromarray(one), "PIL RGB": Image.fromarray(np.stack([one] * 3, -1))}
    for name, form in forms.items():
        assert run.predict(form).shape == (1,), name
        assert run.predict_proba(form).shape == (1, 3), name
        assert np.allclose(run.logits(form), logits[:1], atol=1e-5), name
    assert cnnlab.predict(run, one).shape == (1,)


def test_batches_keep_their_meaning(run, images):
    x, _ = images
    expected = run.predict(x[:5])
    for name, batch in {"NxHxWx1": x[:5, ..., None], "Nx1xHxW": x[:5, None], "rows": x[:5].reshape(5, -1),
                        "PIL list": [Image.fromarray(i) for i in x[:5]], "tensor list": [torch.tensor(i) for i in x[:5]],
                        "nested lists": x[:5].tolist()}.items():
        assert np.array_equal(run.predict(batch), expected), name


def test_rgb_images_for_a_grayscale_model_are_converted_as_training_converts_them(run, images):
    """Training reads RGB as grayscale (Pillow's luma); predict refused the same arrays ("shape 3x16x16 per image,
    but the model was trained on 1x16x16") and read one H x W x 3 image as 16 rows."""
    x, _ = images
    rgb = np.stack([x[:5], x[:5] // 2, 255 - x[:5]], -1)  # N x H x W x 3, colours that differ
    gray = np.stack([np.asarray(Image.fromarray(i).convert("L")) for i in rgb])  # Pillow's own conversion
    expected = run.logits(gray)
    for name, form in {"NxHxWx3": rgb, "Nx3xHxW": rgb.transpose(0, 3, 1, 2), "tensor": torch.tensor(rgb),
                       "PIL list": [Image.fromarray(i) for i in rgb]}.items():
        assert np.allclose(run.logits(form), expected, atol=1e-5), name
    assert np.allclose(run.logits(rgb[0]), expected[:1], atol=1e-5)  # one H x W x 3 image


def test_as_images_reads_one_image_of_a_three_channel_or_oblong_model():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    chw = as_images(rgb, [3, 16, 16])
    assert chw.shape == (1, 3, 16, 16) and np.array_equal(chw[0].numpy(), rgb.transpose(2, 0, 1))
    assert torch.equal(as_images(rgb.transpose(2, 0, 1), [3, 16, 16]), chw)
    assert torch.equal(as_images(Image.fromarray(rgb), [3, 16, 16]), chw)
    rows = np.random.default_rng(1).integers(0, 256, (5, 32)).astype(np.uint8)  # 8x4 images, flattened
    assert np.array_equal(as_images(rows, [1, 8, 4]).numpy(), rows.reshape(5, 1, 8, 4))


def test_what_cannot_be_one_image_says_how_to_pass_one(run, images):
    x, _ = images
    big = np.zeros((28, 28), np.uint8) + 50
    for form in (big, big[..., None], big.tolist(), Image.fromarray(big)):
        with pytest.raises(UserError, match=re.escape("one image? pass images[None] (N x H x W)")):
            run.predict(form)
    with pytest.raises(UserError, match="not a rectangular array"):
        run.predict([x[0], x[1][:5]])
    with pytest.raises(UserError, match="is a path"):
        run.predict("digit.png")


def test_in_memory_messages_speak_of_arrays_not_files(run, images):
    x, y = images
    for bad in (x[:4] / 255.0, (x[:4] > 127).astype(np.uint8)):
        with pytest.raises(UserError, match="multiply by 255 first") as caught:
            run.predict(bad)
        assert "saving" not in str(caught.value)
    with pytest.raises(UserError, match="multiply by 255 first") as caught:
        dataset_from((x / 255.0, y))
    assert "saving" not in str(caught.value)
    with pytest.raises(UserError, match="convert them to uint8"):
        run.predict(np.full((2, 16, 16), "a"))


@needs_onnx
def test_predict_takes_an_exported_onnx_file(run, images, onnx_file):
    x, _ = images
    expected = run.predict(x[:8])
    assert np.array_equal(cnnlab.predict(onnx_file, x[:8]), expected)
    assert np.array_equal(cnnlab.predict(str(onnx_file), torch.tensor(x[:8]).bfloat16()), expected)
    assert cnnlab.predict(onnx_file, x[0]).shape == (1,)
    with pytest.raises(UserError, match=re.escape("one image? pass images[None]")):
        cnnlab.predict(onnx_file, np.zeros((28, 28), np.uint8) + 9)
    with pytest.raises(UserError, match="an exported ONNX model, which needs none"):  # model= was ignored
        cnnlab.submission(onnx_file, "test.csv", "sub.csv", model=torch.nn.Linear)
    with pytest.raises(UserError, match="must be uint8"):  # not numpy's TypeError on a bfloat16 tensor
        cnnlab.export(run, run.path.parent / "checked.onnx", check_images=torch.tensor(x[:4]).bfloat16())


@needs_onnx
def test_run_directory_functions_name_what_takes_an_onnx_file(onnx_file):
    for call in (cnnlab.load_run, cnnlab.evaluate, cnnlab.export, cnnlab.summary):
        with pytest.raises(UserError, match=r"an exported ONNX model, not a run directory; .*cnnlab\.predict\(") as caught:
            call(onnx_file)
        assert "no such run directory" not in str(caught.value) and "\n" not in str(caught.value)


class TinyNet(torch.nn.Module):
    def __init__(self, num_classes=3, in_chans=1, image_size=16):
        super().__init__()
        self.fc = torch.nn.Linear(in_chans * image_size * image_size, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_load_run_model_argument_must_fit_the_run(run, tmp_path):
    with pytest.raises(UserError, match="model= takes a model of your own .*, not 'cnn1'; .* holds cnn1, which needs none"):
        cnnlab.load_run(run.path, model="cnn1")
    with pytest.raises(UserError, match="holds cnn1, not a model of your own; load it without model="):
        cnnlab.load_run(run.path, model=TinyNet)  # was ignored: the run's cnn1 predicted
    own = tmp_path / "own"  # a run of a model of your own, as model.json records one (no training needed)
    own.mkdir()
    meta = json.loads((run.path / "model.json").read_text())
    meta["spec"] = {**meta["spec"], "name": "custom", "class": "tests.TinyNet"}
    (own / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"holds a model of your own \(tests.TinyNet\); pass the nn.Module or factory "
                                        r"it was trained with, .* not the name 'cnn1'"):
        cnnlab.load_run(own, model="cnn1")
    assert cnnlab.load_run(own, model=TinyNet).path == own


def test_docstrings_and_readme_name_the_callables():
    assert cnnlab.Run.logits.__doc__ and cnnlab.predict.__doc__ and cnnlab.evaluate.__doc__
    assert ".onnx" in cnnlab.predict.__doc__
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "cnnlab.list_models()" in readme and "has shape (1,)" in readme


def test_lr_find_never_draws_its_plot_over_a_training_image(tmp_path):
    """lr-find --data imgs --plot imgs/dog/1.png replaced a training image with the plot (exit 0)."""
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((16, 16), 40 * i % 256, np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    before = (tmp_path / "imgs" / "dog" / "1.png").read_bytes()
    with pytest.raises(UserError, match="read as one of its images"):
        cnnlab.lr_find("cnn1", str(tmp_path / "imgs"), plot=tmp_path / "imgs" / "dog" / "1.png", steps=5, device="cpu")
    assert (tmp_path / "imgs" / "dog" / "1.png").read_bytes() == before


def test_an_onnx_file_without_cnnlabs_metadata_is_one_line(tmp_path):
    """A model another tool wrote: predict read meta['input_shape'] (a KeyError)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(UserError, match="its metadata has no input_shape or class_ids"):
        cnnlab.predict(tmp_path / "other.onnx", np.zeros((1, 16, 16), np.uint8))
    from cnnlab.submissions import predict_run
    np.save(tmp_path / "x.npy", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(UserError, match="its metadata has no input_shape or class_ids"):
        predict_run(tmp_path / "other.onnx", tmp_path / "x.npy", tmp_path / "sub.csv", "cpu")
    assert not (tmp_path / "sub.csv").exists()


def test_a_file_given_as_a_run_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="is a file, not a run directory"):
        cnnlab.load_run(tmp_path / "notes.txt")


def test_evaluate_names_classes_by_the_labels_predict_returns(images, tmp_path, cli):
    """Labels 1..3 (classes=[1, 2, 3]): predict returns 1..3 and evaluate's per-class rows were numbered 0..2 (class 0 named '1')."""
    x, y = images
    run = cnnlab.train("cnn1", (x, y + 1), classes=[1, 2, 3], epochs=1, device="cpu", precision="fp32", out=tmp_path,
                       progress=False)
    assert set(run.predict(x).tolist()) <= {1, 2, 3}
    evaluation = run.evaluate()
    assert [(row["class"], row["name"]) for row in evaluation["per_class"]] == [(1, "1"), (2, "2"), (3, "3")]
    assert evaluation.per_class["id"].tolist() == [1, 2, 3]
    code, out, err = cli("evaluate", run.path)  # the CLI's confusion matrix: labelled 0..2 before
    assert code == 0, err
    rows = [[cell for cell in line.replace("┃", "│").split("│")[1:-1]] for line in
            out.split("confusion matrix")[1].splitlines() if "│" in line or "┃" in line]
    assert [cell.strip() for cell in rows[0]] == ["", "1", "2", "3"]  # the header, then each row's label
    assert [row[0].strip() for row in rows[1:]] == ["1", "2", "3"]


def test_class_names_as_labels_say_how_to_number_them(images, tmp_path):
    x, y = images
    words = np.array(["top", "bag", "shoe"])[y]
    with pytest.raises(UserError, match=re.escape("np.unique(labels, return_inverse=True) and pass class_names")):
        cnnlab.train("cnn1", (x, words), epochs=1, out=tmp_path, progress=False)
    names, numbered = np.unique(words, return_inverse=True)  # the advice, followed, trains
    run = cnnlab.train("cnn1", (x, numbered), class_names=list(names), epochs=1, device="cpu", out=tmp_path,
                       progress=False)
    assert run.evaluate().class_names == ["bag", "shoe", "top"]


def test_a_resume_takes_its_own_model_name_and_its_data_by_any_path(tmp_path, monkeypatch):
    """cnnlab.train("cnn1", data, resume=path), as the README's form reads, was refused ('got model'); another
    data path was ignored without a word. The data's fingerprints decide: the same file by another path (a
    relative one from another folder) continues, other data or arrays for a file are one line."""
    from conftest import write_npz_dataset

    monkeypatch.chdir(tmp_path)
    write_npz_dataset(tmp_path / "d.npz", 60, 20, size=16)
    other = write_npz_dataset(tmp_path / "other.npz", 60, 20, size=16, classes=2)
    run = cnnlab.train("cnn1", "d.npz", epochs=1, device="cpu", precision="fp32", out=tmp_path / "r", progress=False)
    assert cnnlab.train("cnn1", "d.npz", resume=run.path, epochs=2, progress=False).metrics["epochs_done"] == 2
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # "d.npz" no longer names it from here; "../d.npz" does
    assert cnnlab.train("cnn1", "../d.npz", resume=run.path, epochs=3, progress=False).metrics["epochs_done"] == 3
    (tmp_path / "link.npz").symlink_to(tmp_path / "d.npz")  # the same file under another name: a link, a copy
    assert cnnlab.train("cnn1", "../link.npz", resume=run.path, epochs=4, progress=False).metrics["epochs_done"] == 4
    (tmp_path / "copy.npz").write_bytes((tmp_path / "d.npz").read_bytes())
    assert cnnlab.train("cnn1", "../copy.npz", resume=run.path, epochs=5, progress=False).metrics["epochs_done"] == 5
    with pytest.raises(UserError, match=r"the data differs from what it was trained on \(other\.npz is not d\.npz"):
        cnnlab.train("cnn1", str(other), resume=run.path, epochs=6, progress=False)
    with pytest.raises(UserError, match=r"trained on d\.npz; pass that path \(or leave data out\), not arrays"):
        cnnlab.train("cnn1", make_images(60, 16), resume=run.path, epochs=6, progress=False)
    with pytest.raises(UserError, match=r"only epochs and device may change \(got model\)"):
        cnnlab.train("cnn4", resume=run.path, epochs=6, progress=False)
