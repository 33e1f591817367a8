"""Outputs that would destroy what a command reads: `predict -o` onto its --input or into a run's files,
`evaluate --json RUN/metrics.json`, an image written into an input image folder. Each is one line, exit 2,
before any work, nothing changed. Also --device for an .onnx model, checked as for a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab import ensembles, errors, evaluation, groups, outputs, runs, search, studies, submissions
from cnnlab.errors import UserError
from cnnlab.outputs import require_free_output

from conftest import make_images, small_cnn1_run, write_csv

SIZE = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_cnn1_run(tmp_path_factory, 120, epochs=1, size=SIZE)


@pytest.fixture
def test_csv(tmp_path):
    return write_csv(tmp_path / "test.csv", make_images(6, SIZE, seed=7)[0], None, ids=[f"a{i}" for i in range(6)])


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(code: int, err: str, *says: str) -> str:
    line = " ".join(err.split())
    assert code == 2 and err.strip().count("\n") == 0, err
    for text in says:
        assert text in line, line
    return line


@pytest.fixture
def no_work(monkeypatch):
    """Fail if predict starts reading images: a refusal comes first."""
    def read(*args, **kwargs):
        raise AssertionError("predict read its input before refusing the output")
    monkeypatch.setattr(submissions, "load_inputs", read)


# ------------------------------------------------------------------ predict -o


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_predict_onto_its_input_is_refused_and_the_input_kept(cli, run, test_csv, tmp_path, spelling, no_work):
    before = test_csv.read_bytes()
    out = {"same": test_csv, "dotted": tmp_path / "sub" / ".." / "test.csv", "symlink": tmp_path / "link.csv",
           "hardlink": tmp_path / "hard.csv"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out.symlink_to(test_csv)
    if spelling == "hardlink":
        os.link(test_csv, out)
    code, _, err = cli("predict", run.path, "--input", test_csv, "-o", out, "--device", "cpu")
    refused(code, err, f"--output {out}", "is the input", "give another file name")
    assert test_csv.read_bytes() == before


def test_predict_onto_the_runs_history_is_refused_and_the_run_kept(cli, run, test_csv, no_work):
    before = snapshot(run.path)
    code, _, err = cli("predict", run.path, "--input", test_csv, "-o", run.path / runs.HISTORY, "--device", "cpu")
    refused(code, err, f"{runs.HISTORY} is a file cnnlab keeps in a run", "give another file name or folder")
    assert snapshot(run.path) == before
    cnnlab.load_run(run.path).plot()  # still whole: the trial's `cnnlab plot` failed on a damaged history


def test_predict_through_a_link_to_the_run_directory_is_refused(cli, run, test_csv, tmp_path, no_work):
    (tmp_path / "alias").symlink_to(run.path, target_is_directory=True)
    before = snapshot(run.path)
    code, _, err = cli("predict", run.path, "--input", test_csv, "-o", tmp_path / "alias" / runs.HISTORY)
    refused(code, err, "is a file cnnlab keeps in a run")
    assert snapshot(run.path) == before


def test_a_submission_beside_the_run_or_in_the_image_folder_is_written(cli, run, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(make_images(4, SIZE, seed=7)[0]):
        Image.fromarray(image).save(folder / f"{i}.png")
    for out in (run.path / "submission.csv", folder / "submission.csv"):
        code, _, err = cli("predict", run.path, "--input", folder, "-o", out, "--device", "cpu")
        assert code == 0, err
        assert out.read_text().startswith("id,label\n")
        out.unlink()


# ------------------------------------------------------------------ the shared check


def test_evaluate_json_onto_the_runs_metrics_is_refused(run):
    with pytest.raises(UserError, match=r"^--json .*metrics.json: metrics.json is a file cnnlab keeps in a run"), \
            errors.command_line():
        require_free_output(run.path / runs.METRICS, inputs=[run.path], what="json")
    assert require_free_output(run.path / "test-metrics.json", inputs=[run.path], what="json")


def test_a_link_to_a_runs_file_is_refused(run, tmp_path):
    (tmp_path / "latest.json").symlink_to(run.path / runs.METRICS)
    with pytest.raises(UserError, match="metrics.json is a file cnnlab keeps in a run"):
        require_free_output(tmp_path / "latest.json", what="json")


def test_the_evaluate_command_refuses_before_evaluating(cli, run, monkeypatch):
    monkeypatch.setattr(cnnlab.api, "evaluate", lambda *a, **k: pytest.fail("evaluated before refusing --json"))
    before = snapshot(run.path)
    code, out, err = cli("evaluate", run.path, "--split", "val", "--json", run.path / runs.METRICS)
    refused(code, err, "metrics.json is a file cnnlab keeps in a run")
    assert snapshot(run.path) == before


@pytest.mark.parametrize("marker, kind", [("ensemble_settings.json", "an ensemble"), ("study.json", "a study"),
                                          ("optuna.journal", "a tune folder")])
def test_group_folders_own_names_are_refused_other_names_allowed(tmp_path, marker, kind):
    (tmp_path / marker).write_text("{}")
    for name in (marker, "groups.json", "trials.csv", "growth.png"):
        with pytest.raises(UserError, match=f"is a file cnnlab keeps in {kind}"):
            require_free_output(tmp_path / name, what="-o")
    assert require_free_output(tmp_path / "report.html")  # `cnnlab report STUDY -o STUDY/report.html` redraws it


def test_a_lone_config_json_does_not_make_a_folder_cnnlabs(tmp_path):
    (tmp_path / runs.CONFIG).write_text("{}")
    assert require_free_output(tmp_path / runs.METRICS)
    (tmp_path / runs.ENV).write_text("{}")  # a run that started: config.json and env.json
    with pytest.raises(UserError, match="is a file cnnlab keeps in a run"):
        require_free_output(tmp_path / runs.METRICS)


def test_images_inside_an_input_folder_and_folders_are_refused(tmp_path, monkeypatch):
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "0.png").write_bytes(b"")  # a class folder's image: a new PNG beside it would be read as another
    with pytest.raises(UserError, match="read as one of its images"):
        require_free_output(data / "new.png", inputs=[tmp_path / "data"], what="--plot")
    assert require_free_output(data / "notes.csv", inputs=[tmp_path / "data"])
    assert require_free_output(tmp_path / "plot.png", inputs=[tmp_path / "data"])
    with pytest.raises(UserError, match="read as one of its images"):  # predict reads loose files at the root too
        require_free_output(tmp_path / "data" / "grid.png", inputs=[tmp_path / "data"])
    idx = tmp_path / "idx"  # an IDX folder reads no images: previews may be written into it, one after another
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(b"")
    (idx / "preview.png").write_bytes(b"")
    assert require_free_output(idx / "preview-5.png", inputs=[idx])
    builtin = tmp_path / "fashion-mnist"  # a folder named as a built-in dataset is not what the name reads
    builtin.mkdir()
    (builtin / "old.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert require_free_output(Path("fashion-mnist") / "grid.png", inputs=["fashion-mnist"])
    with pytest.raises(UserError, match="is a folder"):
        require_free_output(data, inputs=[], what="-o")


def test_own_names_match_the_modules_that_write_them():
    written = {*outputs.RUN_FILES, runs.OWNER_LOCK, *evaluation.FIGURES.values(), ensembles.SETTINGS_FILE,
               ensembles.MANIFEST_FILE, groups.LOCK_FILE, groups.GROUPS_FILE, studies.SETTINGS_FILE, search.JOURNAL}
    assert written <= outputs.OWN_NAMES
    assert set(outputs.GROUP_MARKERS) == {ensembles.SETTINGS_FILE, studies.SETTINGS_FILE, search.JOURNAL}


# ------------------------------------------------------------------ --device for an .onnx model


@pytest.fixture(scope="module")
def onnx_model(run, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    cnnlab.export(run.path, path)
    return path


@pytest.mark.parametrize("device, says", [("tpu", "device: must be auto, cpu or cuda"), ("cuda", "device cuda: "),
                                          ("cuda:0", "device cuda:0: ")])
def test_onnx_predict_checks_the_device_as_a_run_does(cli, onnx_model, test_csv, tmp_path, device, says):
    out = tmp_path / "sub.csv"
    code, _, err = cli("predict", onnx_model, "--input", test_csv, "-o", out, "--device", device)
    refused(code, err, says)
    assert not out.exists()
    code, _, err = cli("predict", onnx_model, "--input", test_csv, "-o", out, "--device", "cpu")
    assert code == 0 and out.is_file(), err


def test_onnx_cuda_is_refused_where_there_is_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="^device cuda: .*ONNX Runtime's CPU provider.*use device='cpu' or auto"):
        submissions.onnx_device("cuda")
    submissions.onnx_device("auto")  # auto: the CPU provider, no refusal
    submissions.onnx_device("cpu")
