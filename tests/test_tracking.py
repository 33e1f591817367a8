"""Experiment tracking: TensorBoard event files and an MLflow local store, read back with the libraries' own readers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import cnnlab

from conftest import write_npz_dataset

pytest.importorskip("tensorboard", reason="tracking extra not installed (pip install 'cnnlab[tracking]')")
mlflow = pytest.importorskip("mlflow", reason="tracking extra not installed (pip install 'cnnlab[tracking]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("d") / "d.npz", 240, 60)


SETTINGS = dict(epochs=3, batch_size=32, device="cpu", precision="fp32", progress=False)


def test_tensorboard_scalars_hparams_and_confusion_matrix(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = cnnlab.train("cnn1", str(data), out=tmp_path, tensorboard=True, **SETTINGS)
    events = EventAccumulator(str(tmp_path / "tensorboard" / run.path.name), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning_rate", "images_per_second"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3]
    history = run.history
    assert [round(e.value, 5) for e in events.Scalars("accuracy/val")] == [round(v, 5) for v in history["val_accuracy"]]
    assert "confusion_matrix/val" in tags["images"]


def test_mlflow_local_store_holds_params_and_per_epoch_metrics(data, tmp_path):
    run = cnnlab.train("cnn1", str(data), out=tmp_path, mlflow=True, **SETTINGS)
    uri = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["cnnlab"])
    assert len(found) == 1 and found.iloc[0]["params.model"] == "cnn1" and found.iloc[0]["status"] == "FINISHED"
    client = mlflow.tracking.MlflowClient(uri)
    run_id = found.iloc[0]["run_id"]
    history = client.get_metric_history(run_id, "accuracy/val")
    assert [m.step for m in history] == [1, 2, 3]
    assert [round(m.value, 6) for m in history] == [round(v, 6) for v in run.history["val_accuracy"]]
    assert client.get_run(run_id).info.artifact_uri.startswith(tmp_path.resolve().as_uri())  # beside the output
    artifacts = {a.path for a in client.list_artifacts(run_id, "run")}
    assert {"run/model.safetensors", "run/model.json", "run/history.csv"} <= artifacts


def test_a_study_is_one_parent_run_with_a_child_per_run(data, tmp_path):
    cnnlab.study(["cnn1", "tuned-cnn"], 1, str(data), out=tmp_path / "s", mlflow=True, report=False,
                 say=lambda text: None, **{k: v for k, v in SETTINGS.items() if k != "progress"})
    mlflow.set_tracking_uri(f"sqlite:///{(tmp_path / 's').resolve() / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["cnnlab"])
    parents = found[found["tags.mlflow.parentRunId"].isna()]
    children = found[found["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}


def test_without_the_extra_the_flag_is_one_line(monkeypatch, data, tmp_path, cli):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code, _, err = cli("train", "cnn1", "--data", data, "--epochs", "1", "--mlflow", "--out", tmp_path)
    assert code == 2 and "pip install 'cnnlab[tracking]'" in err and len(err.strip().splitlines()) == 1


UNWRITABLE = "/proc/cnnlab-nope"  # a folder nobody can create, root included (chmod does not stop root)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc for a folder root cannot create")
@pytest.mark.parametrize("args", [["--mlflow", "--out", UNWRITABLE], ["--tensorboard", "--tensorboard-dir", UNWRITABLE]])
def test_a_tracking_folder_that_cannot_be_made_is_one_line(data, cli, args):
    code, _, err = cli("train", "cnn1", "--data", data, "--epochs", "1", "--device", "cpu", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == [f"cnnlab: error: {UNWRITABLE}: cannot be created there; choose another path"], err


def test_a_studys_event_files_are_where_the_help_says(data, tmp_path):
    """OUT/tensorboard/RUN for every command (a study's were under OUT/runs/tensorboard, a search's under
    OUT/trials/tensorboard, where `tensorboard --logdir OUT/tensorboard` showed nothing)."""
    cnnlab.study(["cnn1"], 1, str(data), out=tmp_path / "s", tensorboard=True, report=False, say=lambda text: None,
                 **dict(SETTINGS, epochs=1))
    assert [p.name for p in (tmp_path / "s" / "tensorboard").iterdir()] == ["cnn1-seed0"]
    assert any((tmp_path / "s" / "tensorboard" / "cnn1-seed0").glob("events.out.tfevents.*"))
